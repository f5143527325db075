//! Benchmarks live in `dsl.rs` (criterion) and the `*.py` scripts; see `README.md`.
