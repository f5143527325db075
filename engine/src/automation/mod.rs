//! Automations (export and retention): their configuration, and their state
//! in the state database: definitions, cursors, runs and leases.
//!
//! ```text
//!  CLI / serve ──► StateDb (SQLite, <data-dir>/state.db, WAL)
//!                    automations  id, project, name, kind, config (JSON), status
//!                    cursors      automation → last exported _xact_id
//!                    runs         every run: trigger, status, rows, bytes, files, cursor range, error
//!                    leases       automation → holder until expiry (no two runs at once)
//! ```

pub mod config;
pub mod state;
