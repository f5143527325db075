//! Exports to a local folder: fsync before the commit, staging files of
//! killed uploads.

use object_store::path::Path;

use crate::error::{Error, Result};

/// A destination on the local file system: the folder of the export path.
#[derive(Debug, Clone)]
pub(super) struct LocalFolder {
    /// The folder (absolute).
    root: std::path::PathBuf,
    /// fsync data files and manifests (the store's setting).
    fsync: bool,
}

impl LocalFolder {
    /// The local folder of `export_path`, `None` when it is not local (the
    /// same rule as [`crate::sink::target_from_url`]: a path, or `file://`).
    pub(super) fn of(export_path: &str, fsync: bool) -> Option<Self> {
        let root = if export_path.contains("://") {
            let url = url::Url::parse(export_path).ok()?;
            if url.scheme() != "file" {
                return None;
            }
            url.to_file_path().ok()?
        } else {
            std::path::absolute(export_path).ok()?
        };
        Some(Self { root, fsync })
    }

    /// The file of object `key` (a full key of the local store, whose root
    /// is `/`).
    pub(super) fn file_of(key: &str) -> Result<std::path::PathBuf> {
        let path = Path::parse(key)
            .map_err(|e| Error::Internal(format!("exported key `{key}` is not a path: {e}")))?;
        object_store::local::LocalFileSystem::new()
            .path_to_filesystem(&path)
            .map_err(|e| Error::Internal(format!("exported key `{key}` is not a local file: {e}")))
    }

    /// fsync the files of `keys`, their folders, and every folder up to the
    /// export folder's parent (partition folders, `_manifests` and the
    /// export folder itself may be new). Nothing without fsync.
    pub(super) async fn sync(&self, keys: Vec<String>) -> Result<()> {
        if !self.fsync || keys.is_empty() {
            return Ok(());
        }
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let files = keys
                .iter()
                .map(|key| Self::file_of(key))
                .collect::<Result<Vec<_>>>()?;
            crate::store::durable::sync_files(&files)?;
            let folders: std::collections::BTreeSet<&std::path::Path> =
                files.iter().filter_map(|f| f.parent()).collect();
            for folder in folders {
                crate::store::durable::sync_dirs_up_to(folder, &root)?;
            }
            root.parent()
                .map_or(Ok(()), crate::store::durable::sync_path)
        })
        .await
        .map_err(|e| Error::Internal(format!("fsync task failed: {e}")))?
    }

    /// Delete the staging files (`<name>#<n>`) of `run_id`'s data files and
    /// manifest left under the folder by uploads that never finished (a
    /// killed process). Returns their paths.
    pub(super) fn delete_staging(&self, run_id: &str) -> Result<Vec<String>> {
        let marker = format!("-{run_id}.");
        let manifest = format!("{run_id}.json");
        let owned = |name: &str| name.contains(&marker) || name == manifest;
        let mut deleted = Vec::new();
        for path in crate::store::durable::staging_files(&self.root, &owned)? {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
            deleted.push(path.display().to_string());
        }
        Ok(deleted)
    }
}
