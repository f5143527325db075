//! Sink errors. [`SinkError`] says what failed (and, for the object store,
//! the operation and key); [`WriteStreamError`] adds the files that an
//! aborted [`write_stream`](super::write_stream) had already completed, so
//! the caller can delete them as orphans. Messages never hold credentials.

use datafusion::error::DataFusionError;

use super::WrittenFile;

/// Errors of the export sink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink options are not acceptable; every problem is listed as
    /// `key: message`.
    #[error("invalid sink config: {}", problems.join("; "))]
    InvalidConfig {
        /// One `key: message` per problem.
        problems: Vec<String>,
    },
    /// The export URL cannot be used.
    #[error("invalid export url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, without any user info.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object store for an export URL could not be built.
    #[error("cannot open the object store of `{url}`")]
    OpenStore {
        /// The URL, without any user info.
        url: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// An object store request failed.
    #[error("object store `{operation}` failed on `{key}`")]
    ObjectStore {
        /// The operation: `put`, `put_multipart`, `upload_part`,
        /// `complete_multipart`.
        operation: &'static str,
        /// The full object key.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The input stream of record batches failed.
    #[error("the input stream failed")]
    Input(#[source] DataFusionError),
    /// Record batches could not be encoded into a file.
    #[error("cannot encode `{key}` as {format}")]
    Encode {
        /// The full object key.
        key: String,
        /// `parquet` or `jsonl`.
        format: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The input schema does not fit the sink (a missing or mistyped
    /// `created`, a JSON column that is not a string).
    #[error("{message}")]
    Schema {
        /// What is wrong, naming the column.
        message: String,
    },
    /// A broken invariant: a bug in spanlake.
    #[error("internal error: {0}")]
    Internal(String),
    /// Another partition of the same call failed: this one stopped.
    #[error("stopped because another partition of the export failed")]
    Stopped,
}

impl SinkError {
    /// Whether the operation may succeed if retried unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ObjectStore { source, .. } | Self::OpenStore { source, .. } => {
                object_store_retryable(source)
            }
            Self::Input(source) => datafusion_retryable(source),
            Self::InvalidConfig { .. }
            | Self::InvalidUrl { .. }
            | Self::Encode { .. }
            | Self::Schema { .. }
            | Self::Internal(_)
            | Self::Stopped => false,
        }
    }

    /// Whether this partition only stopped because another failed.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Stopped)
    }

    pub(crate) fn object_store(
        operation: &'static str,
        key: &object_store::path::Path,
        source: object_store::Error,
    ) -> Self {
        Self::ObjectStore {
            operation,
            key: key.to_string(),
            source,
        }
    }
}

/// Transient failures (network, throttling, server errors that outlived
/// object_store's own retries) are retryable; answers about the request
/// itself are not: a missing bucket, a refusal, an existing object, any
/// other 4xx but 429 (as [`super::summary::is_transient`] decides for every
/// destination error), or a local folder that cannot be made or written.
fn object_store_retryable(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    if !matches!(error, E::Generic { .. } | E::JoinError { .. }) {
        return false;
    }
    if super::summary::answered_status(error).is_some() {
        return super::summary::is_transient(error);
    }
    // No answer: an I/O error underneath decides (a refused or reset
    // connection may pass; a missing folder or a denied file will not).
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::Interrupted
                    | K::TimedOut
                    | K::WouldBlock
                    | K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::UnexpectedEof
            );
        }
        cause = current.source();
    }
    true
}

fn datafusion_retryable(error: &DataFusionError) -> bool {
    match error {
        DataFusionError::ObjectStore(source) => object_store_retryable(source),
        DataFusionError::IoError(_) => true,
        DataFusionError::Context(_, inner) => datafusion_retryable(inner),
        DataFusionError::Shared(inner) => datafusion_retryable(inner),
        DataFusionError::External(inner) => {
            if let Some(sink) = inner.downcast_ref::<SinkError>() {
                sink.is_retryable()
            } else if let Some(store) = inner.downcast_ref::<object_store::Error>() {
                object_store_retryable(store)
            } else {
                inner.downcast_ref::<std::io::Error>().is_some()
            }
        }
        _ => false,
    }
}

/// A failed [`write_stream`](super::write_stream): the cause, and the files
/// it had already completed (uploaded in full) before the failure. Those
/// files are not part of any committed export: delete them as orphans, or
/// leave them to the retry's clean-up. Files that were still open were
/// aborted and left nothing behind.
#[derive(Debug, thiserror::Error)]
#[error("export write failed after {} completed file(s)", completed.len())]
pub struct WriteStreamError {
    /// The cause.
    #[source]
    pub error: SinkError,
    /// Files completed before the failure, in completion order.
    pub completed: Vec<WrittenFile>,
}

impl WriteStreamError {
    /// Whether the write may succeed if retried unchanged (with a new run id).
    pub fn is_retryable(&self) -> bool {
        self.error.is_retryable()
    }
}
