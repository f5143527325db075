//! The spanlake engine: the log store of span row versions (Delta Lake),
//! ingest with merge semantics, BTQL queries streamed as Arrow record
//! batches, and the export and retention automations over them. See
//! `DESIGN.md` at the repository root for the architecture.
//!
//! # Layers
//!
//! Modules by stage of the data's flow; each uses only the layers below it
//! (`engine/tests/layers.rs` fails on an import cycle between them):
//!
//! ```text
//!  automation  runner (one path for both kinds), scheduler, destinations policy   ◄── cli, server
//!  objects                     experiments' and datasets' summaries (BTQL over their tables)
//!  export   retention          an export run: config, target, cursor, run, manifest, recover, probe │ retention: plan, rewrite
//!  state                       automations, cursors, runs, leases (state.db)
//!  cluster                     Ballista: scheduler and executor roles, the plan codec, plans run on a cluster
//!  sink                        object stores, credentials, JSONL and Parquet writers, partitions
//!  query                       BTQL over the resolved view: run, cursors, pivot, rows as JSON
//!  ingest                      JSONL and SDK rows into commits, with merge semantics; group commits with replay protection
//!  store                       tables, durable commits, resolve (fold), merge, compaction, vacuum
//!  registry                    projects, orgs, API keys, request digests (state.db)
//!  session  config  clock  metrics  faults  error    DataFusion sessions, units, the clock, operation figures, test hooks, errors
//! ```

pub mod automation;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod export;
mod faults;
pub mod ingest;
pub mod metrics;
pub mod objects;
pub mod query;
pub mod registry;
pub mod retention;
pub mod session;
pub mod sink;
pub mod state;
pub mod store;

pub use error::{Error, Result};
