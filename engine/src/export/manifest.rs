//! The manifest: a run's commit record, written create-only and last.

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{MANIFESTS_DIR, Manifest};
use crate::error::Error;
use crate::sink::ExportTarget;

pub(super) fn manifest_path(target: &ExportTarget, run_id: &str) -> Path {
    let key = format!("{MANIFESTS_DIR}/{run_id}.json");
    if target.prefix.as_ref().is_empty() {
        Path::from(key)
    } else {
        Path::from(format!("{}/{key}", target.prefix))
    }
}

/// A failed object store request, as runs and their history show it: the
/// destination's reply summarised, never its body.
pub(super) fn object_error(operation: &str, key: &Path, error: object_store::Error) -> Error {
    Error::Destination {
        operation: operation.to_string(),
        key: key.to_string(),
        summary: crate::sink::summary::store_error_summary(&error),
        retryable: crate::sink::summary::is_transient(&error),
    }
}

/// Write `manifest` create-only (a committed manifest is never rewritten):
/// the commit of its run. Returns its key.
pub(super) async fn write_manifest(
    target: &ExportTarget,
    manifest: &Manifest,
) -> std::result::Result<Path, ManifestError> {
    let path = manifest_path(target, &manifest.run_id);
    let body = serde_json::to_vec_pretty(manifest).map_err(|e| {
        ManifestError::NotWritten(Error::Internal(format!("manifest encoding: {e}")))
    })?;
    let put = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match target
        .store
        .put_opts(&path, PutPayload::from(body), put)
        .await
    {
        Ok(_) => Ok(path),
        Err(error) => {
            // The put may have been applied with its reply lost (a retry then
            // finds the object): read it back before calling it a failure.
            match target.store.get(&path).await {
                Ok(found) => match found.bytes().await {
                    Ok(bytes)
                        if serde_json::from_slice::<Manifest>(&bytes)
                            .is_ok_and(|m| m.run_id == manifest.run_id) =>
                    {
                        Ok(path)
                    }
                    _ => Err(ManifestError::Unknown(object_error(
                        "write manifest",
                        &path,
                        error,
                    ))),
                },
                Err(object_store::Error::NotFound { .. }) => Err(ManifestError::NotWritten(
                    object_error("write manifest", &path, error),
                )),
                Err(_) => Err(ManifestError::Unknown(object_error(
                    "write manifest",
                    &path,
                    error,
                ))),
            }
        }
    }
}

/// Why a manifest write failed.
#[derive(Debug)]
pub(super) enum ManifestError {
    /// It is certainly not there: the run did not commit.
    NotWritten(Error),
    /// It may be there: only `recover` can tell, by looking again.
    Unknown(Error),
}

impl From<ManifestError> for Error {
    fn from(error: ManifestError) -> Self {
        match error {
            ManifestError::NotWritten(e) | ManifestError::Unknown(e) => e,
        }
    }
}
