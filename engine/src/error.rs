//! Engine errors. User mistakes (bad input, unknown project) are kept apart
//! from failures of the storage or execution layers and from `Internal`
//! (a broken invariant: a bug).

use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the spanlake engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query that does not parse or plan; the diagnostics carry spans.
    #[error("invalid query")]
    Query(#[from] spanlake_dsl::Diagnostics),
    /// Invalid input lines were found; nothing of the input was committed.
    #[error("{} invalid line(s) in `{source_name}`; nothing was committed", errors.len())]
    InvalidInput {
        /// Where the input came from (a path, or `-` for stdin).
        source_name: String,
        /// Every error found, in line order.
        errors: Vec<LineError>,
    },
    /// A project name or id that does not exist.
    #[error("unknown project `{0}`")]
    UnknownProject(String),
    /// An experiment or dataset id that does not exist (or belongs to
    /// another org).
    #[error("unknown {object_type} `{id}`")]
    UnknownObject {
        /// `experiment` or `dataset`.
        object_type: spanlake_dsl::ObjectType,
        /// The id as given.
        id: String,
    },
    /// A project with this name exists already.
    #[error("a project named `{0}` already exists")]
    ProjectExists(String),
    /// A user-supplied value is not acceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// Another run of the automation holds its lease: this one did not
    /// start (nothing failed; the other run goes on).
    #[error(
        "automation `{automation}` is running already (another process holds its lease); try again when it finishes"
    )]
    LeaseHeld {
        /// The automation's name.
        automation: String,
    },
    /// A request to an export destination failed: the operation, the key
    /// and the destination's answer summarised (never its body).
    #[error("{operation} `{key}` failed: {summary}")]
    Destination {
        /// `write`, `read`, `delete`, ...
        operation: String,
        /// The object's key.
        key: String,
        /// What the destination answered.
        summary: String,
        /// Whether it may succeed when retried unchanged (a 5xx, 429, a
        /// timeout or a failed connection; not a missing bucket or a
        /// refused permission).
        retryable: bool,
    },
    /// An export's data files could not be written: what failed (the
    /// operation and key, the destination's answer summarised).
    #[error("export failed: {message}")]
    Sink {
        message: String,
        /// Whether it may succeed when retried unchanged (see
        /// [`crate::sink::summary::is_transient`]).
        retryable: bool,
    },
    /// The credentials of a destination could not be had (an STS
    /// AssumeRole refused or unanswered): the role, the answer summarised
    /// and the likely fix, never a secret.
    #[error("{message}")]
    Credentials {
        message: String,
        /// Whether it may succeed when retried unchanged (STS unreachable,
        /// a 5xx or 429; not a refusal).
        retryable: bool,
    },
    /// Another process holds the write lock of a project's store.
    #[error("the store of project `{project}` is locked by another writer ({path})")]
    Locked {
        /// Project id.
        project: String,
        /// Lock file.
        path: PathBuf,
    },
    /// File system error, with the path it happened on.
    #[error("i/o error on `{path}`")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The automation state database.
    #[error("state database error")]
    State(#[from] rusqlite::Error),
    /// The Delta log store.
    #[error("log store error")]
    Delta(#[from] deltalake::DeltaTableError),
    /// Query execution.
    #[error("query execution failed")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow encoding or decoding.
    #[error("arrow error")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A broken invariant: a bug in spanlake.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Build an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the operation may succeed if retried unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Locked { .. } => true,
            Self::Destination { retryable, .. }
            | Self::Sink { retryable, .. }
            | Self::Credentials { retryable, .. } => *retryable,
            Self::LeaseHeld { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
            Self::Delta(deltalake::DeltaTableError::Transaction { .. }) => true,
            Self::State(_) => self.is_busy(),
            _ => false,
        }
    }

    /// Whether the state database was busy (another connection held its
    /// write lock past the busy timeout): worth retrying shortly.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Self::State(e) if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            )
        )
    }

    /// Whether this error was caused by the user's input (query or data), as
    /// opposed to configuration, I/O or a bug. The CLI maps it to exit code 1.
    pub fn is_user_data_error(&self) -> bool {
        matches!(
            self,
            Self::Query(_)
                | Self::InvalidInput { .. }
                | Self::UnknownProject(_)
                | Self::UnknownObject { .. }
        )
    }
}

/// `error` and its causes, joined with `: ` (a layer's message covers that
/// layer only; a run's history or an API answer must say what failed
/// underneath).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One invalid input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}
