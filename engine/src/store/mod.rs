//! The log store: one Delta Lake table of row versions per project, under
//! `<data-dir>/projects/<project-id>/logs`, one per experiment and dataset
//! (`experiments/<id>/logs`, `datasets/<id>/logs`, see [`table_dir`]), and
//! the project registry in `<data-dir>/state.db`.
//!
//! ```text
//!  ingest ──(one writer per project: a file lock)──► Delta commit N
//!            every event of commit N gets _xact_id = 0x0DE1<<48 | N
//!
//!  read:  snapshot at version V ──► resolve (fold versions per id) ──► spans view
//! ```
//!
//! Guarantees: a commit is atomic (all rows of an ingest or none); `_xact_id`
//! increases with every commit and is durable (it is the Delta version, which
//! never changes once written); a reader sees one snapshot for its whole query.
//! With [`StoreOptions::fsync`] (the default), a writer returns only once its
//! data files, its log entry and the folders holding them are fsynced (see
//! [`durable`]), so an acknowledged commit survives a power loss.

mod commit;
pub mod compact;
pub mod durable;
pub mod merge;
pub mod resolve;
pub(crate) mod scan;
pub mod schema;
pub mod vacuum;

pub(crate) use commit::commit_durably;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::kernel::StructField;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::operations::create::CreateBuilder;
use url::Url;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::registry::{Project, ProjectRegistry};

/// File name of the state database inside the data directory.
pub const STATE_DB: &str = "state.db";

/// How a [`Store`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// fsync data files before a commit, and the commit (with the folders
    /// involved) before the writer returns, so that what was acknowledged
    /// survives a power loss; the same for the manifests and data files of
    /// exports to a local folder. Default `true`; `false` (the CLI's
    /// `--no-fsync`) trades that for speed on throwaway stores: a crash of
    /// the process loses nothing, a crash of the machine may lose the last
    /// seconds of commits or leave a commit whose data files are empty.
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { fsync: true }
    }
}

/// A data directory: the project registry and the log tables.
#[derive(Debug)]
pub struct Store {
    data_dir: PathBuf,
    registry: RegistryPool,
    options: StoreOptions,
    clock: Clock,
}

/// Connections to the project registry, each used by one caller at a time:
/// a statement waiting on another process's write lock holds only its own
/// connection, so other callers (other orgs' requests) are not queued
/// behind it. Idle connections are kept, up to [`RegistryPool::IDLE`].
#[derive(Debug)]
struct RegistryPool {
    path: PathBuf,
    /// The local org (see [`ProjectRegistry::org_id`]).
    org_id: String,
    state: Mutex<PoolState>,
    /// The store's clock, given to each connection as it is taken.
    clock: Clock,
}

#[derive(Debug, Default)]
struct PoolState {
    idle: Vec<ProjectRegistry>,
    /// Set on every connection as it is taken (an in-memory setting of
    /// SQLite's: no I/O).
    busy_timeout: Option<Duration>,
}

impl RegistryPool {
    const IDLE: usize = 8;

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // Every change under this lock is a push, a pop or an assignment: a
        // panic elsewhere cannot leave it half-done.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Result<ProjectRegistry> {
        let (idle, timeout) = {
            let mut state = self.state();
            (state.idle.pop(), state.busy_timeout)
        };
        let mut registry = match idle {
            Some(registry) => registry,
            None => ProjectRegistry::another(&self.path, &self.org_id, self.clock.clone())?,
        };
        registry.set_clock(&self.clock);
        if let Some(timeout) = timeout {
            registry.set_busy_timeout(timeout)?;
        }
        Ok(registry)
    }

    fn give_back(&self, registry: ProjectRegistry) {
        let mut state = self.state();
        if state.idle.len() < Self::IDLE {
            state.idle.push(registry);
        }
    }
}

/// A registry connection of the store's pool, back in the pool when
/// dropped.
#[derive(Debug)]
pub struct RegistryGuard<'a> {
    pool: &'a RegistryPool,
    registry: Option<ProjectRegistry>,
}

impl std::ops::Deref for RegistryGuard<'_> {
    type Target = ProjectRegistry;

    fn deref(&self) -> &ProjectRegistry {
        self.registry.as_ref().expect("taken only on drop")
    }
}

impl Drop for RegistryGuard<'_> {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.take() {
            self.pool.give_back(registry);
        }
    }
}

impl Store {
    /// Open the data directory, creating it if it does not exist, with the
    /// default options (fsync on).
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(data_dir, StoreOptions::default())
    }

    /// Open the data directory, creating it if it does not exist.
    pub fn open_with(data_dir: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let data_dir = data_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| Error::io(&data_dir, e))?;
        let path = data_dir.join(STATE_DB);
        let first = ProjectRegistry::open(&path)?;
        let clock = Clock::system();
        Ok(Self {
            data_dir,
            registry: RegistryPool {
                path,
                org_id: first.org_id().to_string(),
                state: Mutex::new(PoolState {
                    idle: vec![first],
                    busy_timeout: None,
                }),
                clock: clock.clone(),
            },
            options,
            clock,
        })
    }

    /// The same store taking its time from `clock` (see [`crate::clock`]).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.registry.clock = clock.clone();
        self.clock = clock;
        self
    }

    /// The store's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The same data directory opened again, with the same options (its own
    /// registry connection), e.g. for a server sharing the process.
    pub fn reopen(&self) -> Result<Self> {
        Ok(Self::open_with(&self.data_dir, self.options)?.with_clock(self.clock.clone()))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// How this store writes.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// Whether writers fsync (see [`StoreOptions::fsync`]).
    pub fn fsync(&self) -> bool {
        self.options.fsync
    }

    /// A connection to the project registry, this caller's alone until the
    /// guard is dropped.
    pub fn registry(&self) -> Result<RegistryGuard<'_>> {
        Ok(RegistryGuard {
            pool: &self.registry,
            registry: Some(self.registry.take()?),
        })
    }

    /// How long the registry's statements wait for another process's write
    /// lock before failing as busy ([`Error::is_busy`]); 10 s unless set.
    pub fn set_registry_busy_timeout(&self, timeout: Duration) {
        self.registry.state().busy_timeout = Some(timeout);
    }

    /// Run `work` with the project registry from async code: SQLite calls
    /// block (on disk, and up to the busy timeout on another process's
    /// write lock), so on a multi-threaded tokio runtime the worker first
    /// hands its other tasks to the rest of the pool
    /// ([`tokio::task::block_in_place`]); elsewhere (a current-thread
    /// runtime, plain threads) it simply runs.
    pub fn with_registry<T>(&self, work: impl FnOnce(&ProjectRegistry) -> Result<T>) -> Result<T> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| work(&*self.registry()?))
        } else {
            work(&*self.registry()?)
        }
    }

    fn project_dir(&self, project: &Project) -> PathBuf {
        table_dir(&self.data_dir, project)
    }

    /// Open the logs of `project` for reading, at their latest version. A
    /// project without any ingested data reads as empty.
    pub async fn logs(&self, project: &Project) -> Result<ProjectLogs> {
        self.logs_at(project, None).await
    }

    /// Open the logs of `project` as of table version `version` (the latest
    /// when `None`), e.g. the snapshot a cursor or an export run pinned.
    pub async fn logs_at(&self, project: &Project, version: Option<i64>) -> Result<ProjectLogs> {
        let location = self.project_dir(project).join("logs");
        let table = if location.join("_delta_log").is_dir() {
            let url = dir_url(&location)?;
            Some(match version {
                None => deltalake::open_table(url).await?,
                Some(v) => {
                    // A snapshot whose files a vacuum may have purged fails
                    // clearly instead of reading partial rows.
                    vacuum::check_snapshot_kept(&self.project_dir(project), project, v)?;
                    let v = u64::try_from(v)
                        .map_err(|_| Error::InvalidArgument(format!("no table version {v}")))?;
                    deltalake::open_table_with_version(url, v).await?
                }
            })
        } else {
            None
        };
        Ok(ProjectLogs {
            project: project.clone(),
            table,
        })
    }

    /// Open the logs of `project` for writing: take the project's write lock
    /// (failing at once if another process holds it) and create the table if
    /// it does not exist yet.
    pub async fn logs_for_write(&self, project: &Project) -> Result<(ProjectLogs, WriteLock)> {
        let dir = self.project_dir(project);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join("write.lock");
        let file = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    project: project.table_id().to_string(),
                    path: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let lock = WriteLock { _file: file };
        let location = dir.join("logs");
        let table = if location.join("_delta_log").is_dir() {
            deltalake::open_table(dir_url(&location)?).await?
        } else {
            std::fs::create_dir_all(&location).map_err(|e| Error::io(&location, e))?;
            let table = create_table(&location).await?;
            if self.fsync() {
                // The first log entry, and every folder from `_delta_log` up
                // to the data directory (created just now, or by `open`).
                let log = location.join("_delta_log");
                let first = log.join(format!("{:020}.json", 0));
                let data_dir = self.data_dir.clone();
                tokio::task::spawn_blocking(move || {
                    durable::sync_files(&[first])?;
                    durable::sync_dirs_up_to(&location, &data_dir)?;
                    data_dir.parent().map_or(Ok(()), durable::sync_path)
                })
                .await
                .map_err(|e| Error::Internal(format!("fsync task failed: {e}")))??;
            }
            table
        };
        Ok((
            ProjectLogs {
                project: project.clone(),
                table: Some(table),
            },
            lock,
        ))
    }
}

/// The folder of the table `project` addresses (its `logs` Delta table, its
/// write lock, its vacuum record): `projects/<project id>` for a project's
/// logs, `experiments/<id>` and `datasets/<id>` for its experiments and
/// datasets (see [`Project::for_object`]).
pub fn table_dir(data_dir: &Path, project: &Project) -> PathBuf {
    let folder = match project.object_type() {
        crate::registry::objects::ObjectType::ProjectLogs => "projects",
        crate::registry::objects::ObjectType::Experiment => "experiments",
        crate::registry::objects::ObjectType::Dataset => "datasets",
    };
    data_dir.join(folder).join(project.table_id())
}

/// Held while a process writes to a project's table; released on drop.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
}

async fn create_table(location: &Path) -> Result<DeltaTable> {
    let schema = schema::physical_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            StructField::try_from_arrow(f.as_ref())
                .map_err(|e| Error::Internal(format!("schema conversion: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let table = CreateBuilder::new()
        .with_location(dir_url(location)?.to_string())
        .with_table_name("project_logs")
        .with_columns(columns)
        .with_configuration_property(
            deltalake::TableProperty::DataSkippingStatsColumns,
            Some(schema::STATS_COLUMNS),
        )
        .with_save_mode(deltalake::protocol::SaveMode::Ignore)
        .await?;
    Ok(table)
}

fn dir_url(path: &Path) -> Result<Url> {
    Url::from_directory_path(path)
        .map_err(|()| Error::Internal(format!("not an absolute path: {}", path.display())))
}

/// The logs of one project at one snapshot.
#[derive(Debug)]
pub struct ProjectLogs {
    project: Project,
    table: Option<DeltaTable>,
}

impl ProjectLogs {
    /// The logs of a project read as empty (no data at that snapshot).
    pub fn empty(project: &Project) -> Self {
        Self {
            project: project.clone(),
            table: None,
        }
    }

    /// The project.
    pub fn project(&self) -> &Project {
        &self.project
    }

    /// The Delta table, `None` when nothing was ever ingested.
    pub fn table(&self) -> Option<&DeltaTable> {
        self.table.as_ref()
    }

    /// Mutable access for writers.
    pub(crate) fn table_mut(&mut self) -> Option<&mut DeltaTable> {
        self.table.as_mut()
    }

    /// The snapshot version, `None` when nothing was ever ingested.
    pub fn version(&self) -> Option<i64> {
        self.table
            .as_ref()
            .and_then(DeltaTable::version)
            .and_then(|v| i64::try_from(v).ok())
    }
}

/// Ingest `lines` (JSON Lines) into project `p` of `store`, creating it: a
/// commit for the store's unit tests.
#[cfg(test)]
pub(crate) async fn ingest_test_lines(store: &Store, lines: &[&str]) {
    let project = store.registry().unwrap().resolve_or_create("p").unwrap();
    let input = std::io::Cursor::new(lines.join("\n").into_bytes());
    crate::ingest::ingest(
        store,
        &project,
        Box::new(input),
        "test",
        &crate::ingest::IngestOptions::default(),
    )
    .await
    .unwrap();
}
