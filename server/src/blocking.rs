//! State-database work off the async workers: SQLite calls block (on disk,
//! and up to the busy timeout on another process's write lock), so every
//! handler runs them on tokio's blocking pool, never on a worker that other
//! orgs' requests are waiting for.

use std::sync::Arc;

use spanlake_engine::Error;
use spanlake_engine::registry::ProjectRegistry;

use crate::AppState;
use crate::error::ApiError;

/// How long a server's state-database connection waits for another
/// process's write lock before the request answers 503 with `Retry-After`
/// (the CLI's connections wait 10 s).
pub(crate) const STATE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl AppState {
    /// Run `work` on the blocking pool with this state.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Self>) -> Result<T, ApiError> + Send + 'static,
    {
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(|e| ApiError::from(Error::Internal(format!("state task failed: {e}"))))?
    }

    /// Run `work` with the project registry on the blocking pool.
    pub(crate) async fn registry<T, F>(self: &Arc<Self>, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&ProjectRegistry) -> spanlake_engine::Result<T> + Send + 'static,
    {
        self.blocking(move |state| Ok(work(&*state.store.registry()?)?))
            .await
    }
}
