//! Fault hooks for the crash and concurrency tests, compiled in only with
//! the `test-hooks` feature (which `scripts/test` turns on): a release
//! build holds neither the hooks nor the names of their variables.
//!
//! - `SPANLAKE_TEST_KILL_AT=<point>`: the process kills itself with SIGKILL
//!   at that point, as a crash there would (`after_files`: an export's data
//!   files written, no manifest; `after_manifest`: manifest written, cursor
//!   not moved; `mid_upload`: in the sink, once the first data file is
//!   complete and the others are not; `before_complete`: once every part of
//!   a multipart upload is uploaded and before it completes;
//!   `retention_after_files`, `vacuum_mid`, `compact_after_files`).
//! - `SPANLAKE_TEST_PAUSE_AT=<point>:<file>`: a run reaching `point`
//!   creates `<file>.reached` and waits (asynchronously) until `<file>`
//!   exists, e.g. an export holding its pinned snapshot while a retention
//!   run and its vacuum go by (`export_snapshot`), or a cluster's task
//!   before it writes its files (`sink_partition`, in an executor).
//! - `SPANLAKE_TEST_STORE_RETRIES=<n>`: an S3 destination's requests are
//!   retried `n` times instead of 10 within a run, so that a test's burst
//!   of 503s reaches the scheduler's retries of whole runs.

/// Die here with SIGKILL when `SPANLAKE_TEST_KILL_AT` names `point`.
#[cfg(feature = "test-hooks")]
pub(crate) fn kill_point(point: &str) {
    if std::env::var("SPANLAKE_TEST_KILL_AT").is_ok_and(|at| at == point) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        // SIGKILL is not caught; should `kill` be missing, die as abruptly.
        std::process::abort();
    }
}

/// Inert without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn kill_point(_point: &str) {}

/// Wait here when `SPANLAKE_TEST_PAUSE_AT` names `point` (see the module).
#[cfg(feature = "test-hooks")]
pub(crate) async fn pause_point(point: &str) {
    let Ok(at) = std::env::var("SPANLAKE_TEST_PAUSE_AT") else {
        return;
    };
    let Some((name, file)) = at.split_once(':') else {
        return;
    };
    if name != point {
        return;
    }
    let _ = tokio::fs::write(format!("{file}.reached"), b"").await;
    while !tokio::fs::try_exists(file).await.unwrap_or(false) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Inert without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) async fn pause_point(_point: &str) {}

/// Retries of a destination's requests within a run: `default`, or
/// `SPANLAKE_TEST_STORE_RETRIES`.
#[cfg(feature = "test-hooks")]
pub(crate) fn store_retries(default: usize) -> usize {
    std::env::var("SPANLAKE_TEST_STORE_RETRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// `default` without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn store_retries(default: usize) -> usize {
    default
}
