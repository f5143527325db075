//! fsync of what a writer put on the local file system, so that an
//! acknowledged write survives a power loss.
//!
//! object_store's local store (and so deltalake over it) writes each object
//! to a staging file `<name>#<n>` and renames or hard-links it into place,
//! and never calls fsync: until the kernel writes its page cache back (up to
//! about 30 s later), a power loss can lose a file that a commit or a
//! manifest names, or the commit itself. The writers of this crate call these
//! functions at the points that make their acknowledgement durable:
//!
//! ```text
//!  data files written ──sync_files (each file, then each folder once)──►
//!  commit / manifest written ──sync_files──► acknowledged
//! ```
//!
//! A folder that may have been created by the write (a partition folder, a
//! new `_delta_log`) also needs its own entry synced in its parent:
//! [`sync_dirs_up_to`] syncs a folder and its ancestors up to a root that is
//! known to be durable.
//!
//! Syncing is on unless a store or an export was opened without it
//! ([`StoreOptions::fsync`](super::StoreOptions::fsync), the CLI's
//! `--no-fsync`): then these writes are as durable as the page cache.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// fsync `path` (a file or a folder).
pub fn sync_path(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// fsync each file of `files`, then each folder holding one of them (once
/// per folder), so that both their bytes and their names are durable.
pub fn sync_files(files: &[PathBuf]) -> Result<()> {
    let mut dirs = BTreeSet::new();
    for file in files {
        sync_path(file)?;
        if let Some(dir) = file.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    for dir in dirs {
        sync_path(&dir)?;
    }
    Ok(())
}

/// fsync `dir` and every folder above it up to `root` (included): after
/// `create_dir_all`, each new folder's entry in its parent. A `dir` outside
/// `root` is synced alone.
pub fn sync_dirs_up_to(dir: &Path, root: &Path) -> Result<()> {
    let mut current = Some(dir);
    while let Some(folder) = current {
        sync_path(folder)?;
        if folder == root || !folder.starts_with(root) {
            break;
        }
        current = folder.parent();
    }
    Ok(())
}

/// [`sync_files`] on a blocking thread (fsync can take milliseconds).
pub async fn sync_files_blocking(files: Vec<PathBuf>) -> Result<()> {
    tokio::task::spawn_blocking(move || sync_files(&files))
        .await
        .map_err(|e| Error::Internal(format!("fsync task failed: {e}")))?
}

/// Files left by object_store's local store under `dir` (recursively) for
/// uploads that never finished: `<name>#<n>`, which its listings hide. Only
/// those whose `<name>` satisfies `owned` are returned.
pub fn staging_files(dir: &Path, owned: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&folder, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&folder, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((target, suffix)) = name.rsplit_once('#')
                && !suffix.is_empty()
                && suffix.bytes().all(|b| b.is_ascii_digit())
                && owned(target)
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_owned_staging_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("date=2026-01-01");
        std::fs::create_dir_all(&sub).unwrap();
        for name in [
            "part-00000-run1.parquet",
            "part-00000-run1.parquet#1",
            "part-00001-run2.parquet#12",
            "notes#draft",
        ] {
            std::fs::write(sub.join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("part-00002-run1.jsonl#3"), b"x").unwrap();
        let found = staging_files(dir.path(), &|name| name.contains("-run1.")).unwrap();
        assert_eq!(
            found,
            vec![
                dir.path().join("date=2026-01-01/part-00000-run1.parquet#1"),
                dir.path().join("part-00002-run1.jsonl#3"),
            ]
        );
        sync_files(&found).unwrap();
        sync_dirs_up_to(&sub, dir.path()).unwrap();
        assert!(
            staging_files(&dir.path().join("missing"), &|_| true)
                .unwrap()
                .is_empty()
        );
    }
}
