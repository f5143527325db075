//! The spanlake engine: the log store of span row versions (Delta Lake),
//! ingest with merge semantics, and BTQL queries streamed as Arrow record
//! batches. See `DESIGN.md` at the repository root for the architecture.

pub mod apikeys;
pub mod automation;
pub mod credentials;
pub mod error;
pub mod export;
pub mod ingest;
pub mod merge;
pub mod pivot;
pub mod policy;
pub mod projects;
pub mod query;
pub mod retention;
pub mod rows;
pub mod scheduler;
pub mod sink;
pub mod store;

pub use error::{Error, Result};
