fn main() -> std::process::ExitCode {
    spanlake::main()
}
