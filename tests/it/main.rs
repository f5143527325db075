//! The integration tests of spanlake: one binary (see `cli/Cargo.toml`).
//!
//! - `golden`: the BTQL behaviour suite over `tests/btql/*.test`;
//! - `console`: the web console in headless Chromium (Selenium);
//! - `cli`: exit codes, ingest atomicity, output formats, configuration;
//! - `durability`: no error after a commit, kill -9 of the server and of
//!   local exports;
//! - `export`: export automations, read back with DuckDB, on disk and S3;
//! - `paging`: cursors over a pinned snapshot;
//! - `retention`: retention automations (preview, run, history);
//! - `server`: the HTTP API, with the unmodified Braintrust SDK;
//! - `objects`: experiments and datasets (an SDK `Eval` over a dataset,
//!   export, retention by object type);
//! - `tenants`: two orgs' keys on every route of the HTTP API;
//! - `destinations`: where exports created over the API may write;
//! - `clouds`: exports to GCS and Azure Blob Storage, against their emulators;
//! - `bounds`: memory and time per request of the HTTP API;
//! - `limits`: bounded work per query over HTTP (deep and adversarial queries);
//! - `http`: the harness of HTTP tests (a `spanlake serve` process).

mod bounds;
mod cli;
mod clouds;
mod cluster;
mod compact;
mod compat;
mod console;
mod destinations;
mod durability;
mod export;
mod faults;
mod golden;
mod http;
mod limits;
mod objects;
mod paging;
mod retention;
mod roles;
mod server;
mod support;
mod tenants;
