//! The integration tests of spanlake: one binary (see `cli/Cargo.toml`).
//!
//! - `golden`: the BTQL behaviour suite over `tests/btql/*.test`;
//! - `cli`: exit codes, ingest atomicity, output formats, configuration.

mod cli;
mod golden;
mod support;
