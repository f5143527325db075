//! The integration tests of spanlake: one binary (see `cli/Cargo.toml`).
//!
//! - `golden`: the BTQL behaviour suite over `tests/btql/*.test`;
//! - `cli`: exit codes, ingest atomicity, output formats, configuration;
//! - `export`: export automations, read back with DuckDB, on disk and S3;
//! - `paging`: cursors over a pinned snapshot;
//! - `retention`: retention automations (preview, run, history);
//! - `server`: the HTTP API, with the unmodified Braintrust SDK;
//! - `http`: the harness of HTTP tests (a `spanlake serve` process);
//! - `limits`: bounded work per query over HTTP (deep and adversarial queries).

mod cli;
mod compact;
mod export;
mod faults;
mod golden;
mod http;
mod limits;
mod paging;
mod retention;
mod roles;
mod server;
mod support;
