//! The automation state database: definitions, cursors, runs and leases
//! of export and retention automations.
//!
//! ```text
//!  CLI / serve ──► StateDb (SQLite, <data-dir>/state.db, WAL)
//!                    automations  id, project, name, kind, config (JSON), status
//!                    cursors      automation → last exported _xact_id
//!                    runs         every run: trigger, status, rows, bytes, files, cursor range, error
//!                    leases       automation → holder until expiry (no two runs at once)
//! ```
//!
//! Guarantees: a cursor only moves in the same transaction that marks its
//! run `succeeded` or `behind`; a lease is held by at most one holder at a
//! time (taken with a conditional upsert, so two processes racing on the
//! same database cannot both win); every run is kept in the history until
//! `reset`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::registry::objects::ObjectType;
use crate::store::{STATE_DB, Store};

/// Key of the table version a run reads, in its run details (an export's
/// snapshot, pinned against vacuum until the run ends).
pub const SNAPSHOT_VERSION: &str = "snapshot_version";

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS automations (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('export', 'retention')),
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'paused')),
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT 'cli' CHECK (origin IN ('api', 'cli')),
    UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS cursors (
    automation_id TEXT PRIMARY KEY REFERENCES automations(id) ON DELETE CASCADE,
    xact_id INTEGER NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    automation_id TEXT NOT NULL REFERENCES automations(id) ON DELETE CASCADE,
    trigger TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'test')),
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'behind')),
    rows INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    files INTEGER NOT NULL DEFAULT 0,
    cursor_from INTEGER,
    cursor_to INTEGER,
    error TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_by_automation ON runs (automation_id, started);
CREATE TABLE IF NOT EXISTS leases (
    automation_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_micros INTEGER NOT NULL
);
";

/// Kind of automation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Export to object storage.
    Export,
    /// Delete old logs.
    Retention,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Export => "export",
            Self::Retention => "retention",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "export" => Ok(Self::Export),
            "retention" => Ok(Self::Retention),
            other => Err(Error::Internal(format!(
                "unknown automation kind `{other}`"
            ))),
        }
    }
}

/// Who last chose an automation's configuration: the HTTP API (its
/// destination is then held to the server's
/// [`DestinationPolicy`](crate::automation::policy::DestinationPolicy), at every run) or
/// the CLI, run by the machine's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Created, or its configuration changed, over the HTTP API.
    Api,
    /// Created with the CLI (and its configuration never changed over the
    /// API); automations stored before origins were recorded are `cli`.
    Cli,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Cli => "cli",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "api" => Ok(Self::Api),
            "cli" => Ok(Self::Cli),
            other => Err(Error::Internal(format!(
                "unknown automation origin `{other}`"
            ))),
        }
    }
}

/// A stored automation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Automation {
    /// UUIDv7.
    pub id: String,
    /// Project UUID.
    pub project_id: String,
    /// Unique within the project.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Export or retention.
    pub kind: Kind,
    /// The validated configuration, as JSON.
    pub config: serde_json::Value,
    /// `active` or `paused`.
    pub status: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
    /// Who last chose its configuration.
    pub origin: Origin,
}

impl Automation {
    /// The object type its configuration names (`object_type`;
    /// `project_logs` when absent).
    pub fn object_type(&self) -> Result<crate::registry::objects::ObjectType> {
        crate::registry::objects::config_object_type(
            self.config.get("object_type").and_then(|v| v.as_str()),
        )
        .map_err(|problem| {
            Error::InvalidArgument(format!(
                "the stored configuration of automation `{}` is not valid: {problem}",
                self.name
            ))
        })
    }

    /// The experiment or dataset its configuration names (`object_id`), if any.
    pub fn object_id(&self) -> Option<&str> {
        self.config.get("object_id").and_then(|v| v.as_str())
    }

    /// The tables it works on, each a handle of [`Store::logs`]: the
    /// project's logs; for an export of an experiment or dataset, that one
    /// object's table; for a retention of experiments or datasets, the
    /// table of every one of them in the project.
    pub fn tables(&self, store: &Store) -> Result<Vec<crate::registry::Project>> {
        let object_type = self.object_type()?;
        store.with_registry(|r| {
            let project = r.get(&self.project_id)?;
            match (self.kind, object_type) {
                (_, ObjectType::ProjectLogs) | (Kind::Export, _) => Ok(vec![r.automation_table(
                    &project,
                    object_type,
                    self.object_id(),
                )?]),
                (Kind::Retention, _) => Ok(r
                    .list_objects(&project, object_type)?
                    .iter()
                    .map(|o| project.for_object(o))
                    .collect()),
            }
        })
    }

    /// The one table an export works on (see [`Self::tables`]).
    pub fn export_table(&self, store: &Store) -> Result<crate::registry::Project> {
        self.tables(store)?
            .pop()
            .ok_or_else(|| Error::Internal(format!("export `{}` has no table", self.name)))
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The scheduler.
    Schedule,
    /// `run` from the CLI or the API.
    Manual,
    /// `test`.
    Test,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::Test => "test",
        }
    }
}

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Not finished (or crashed: see [`StateDb::runs`]).
    Running,
    /// Done, and caught up.
    Succeeded,
    /// Done with an error; the cursor did not move.
    Failed,
    /// Done, but stopped at its row cap: more data waits.
    Behind,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Behind => "behind",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "behind" => Self::Behind,
            other => return Err(Error::Internal(format!("unknown run status `{other}`"))),
        })
    }
}

/// One run in the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// UUIDv7.
    pub run_id: String,
    /// The automation.
    pub automation_id: String,
    /// What started it.
    pub trigger: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339, once finished.
    pub finished: Option<String>,
    /// Outcome.
    pub status: RunStatus,
    /// Rows written (or deleted, for retention).
    pub rows: u64,
    /// Bytes written (or purged).
    pub bytes: u64,
    /// Files written (or dropped).
    pub files: u64,
    /// Exclusive lower bound of the `_xact_id` range.
    pub cursor_from: Option<i64>,
    /// Inclusive upper bound of the `_xact_id` range.
    pub cursor_to: Option<i64>,
    /// The error of a failed run (never contains secrets).
    pub error: Option<String>,
    /// Kind-specific details (files, manifest key, cutoff, ...).
    pub details: serde_json::Value,
}

/// Figures of a finished run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutcome {
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Files.
    pub files: u64,
    /// Upper bound of the range read.
    pub cursor_to: Option<i64>,
    /// Details as JSON.
    pub details: serde_json::Value,
}

/// The state database.
#[derive(Debug)]
pub struct StateDb {
    conn: Connection,
    clock: Clock,
}

/// Refuse an automation status other than `active` or `paused`.
pub fn check_status(status: &str) -> Result<()> {
    if status == "active" || status == "paused" {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "`status` must be `active` or `paused`, not `{status}`"
        )))
    }
}

/// How long a run's lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3600);

/// One run's lease of its automation, for export and retention runs alike:
/// no other run of it starts while it is held. Renewed in the background
/// every sixth of [`LEASE_TTL`], so a long run keeps it (and an export its
/// pin on the snapshot it reads); released by [`RunLease::release`], or
/// lapsing [`LEASE_TTL`] after its process died.
#[derive(Debug)]
pub struct RunLease {
    automation_id: String,
    holder: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl RunLease {
    /// Take the lease of `automation` for the run `run_id`, or fail at once
    /// when another run holds it. The renewal opens `store`'s state
    /// database on its own.
    pub fn take(
        store: &Store,
        state: &StateDb,
        automation: &Automation,
        run_id: &str,
    ) -> Result<Self> {
        let state_path = store.data_dir().join(STATE_DB);
        let holder = lease_holder(run_id);
        if !state.try_lease(&automation.id, &holder, LEASE_TTL)? {
            return Err(Error::LeaseHeld {
                automation: automation.name.clone(),
            });
        }
        let renewal = tokio::spawn(Self::renew(
            state_path,
            state.clock.clone(),
            automation.id.clone(),
            holder.clone(),
        ));
        Ok(Self {
            automation_id: automation.id.clone(),
            holder,
            renewal,
        })
    }

    /// Renew `holder`'s lease of `automation_id` every sixth of its
    /// lifetime, until aborted.
    async fn renew(
        state_path: std::path::PathBuf,
        clock: Clock,
        automation_id: String,
        holder: String,
    ) {
        loop {
            tokio::time::sleep(LEASE_TTL / 6).await;
            let path = state_path.clone();
            let (id, who, clock) = (automation_id.clone(), holder.clone(), clock.clone());
            let renewed = tokio::task::spawn_blocking(move || {
                StateDb::open(&path)
                    .and_then(|db| db.with_clock(&clock).try_lease(&id, &who, LEASE_TTL))
            })
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("lease renewal task: {e}"))));
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%automation_id, "the run lost its lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%automation_id, error = %e, "could not renew the run's lease")
                }
            }
        }
    }

    /// Stop renewing and give the lease up.
    pub fn release(self, state: &StateDb) -> Result<()> {
        self.renewal.abort();
        state.release_lease(&self.automation_id, &self.holder)
    }
}

impl Drop for RunLease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl StateDb {
    /// The state database of `store`, on the store's clock.
    pub fn of(store: &Store) -> Result<Self> {
        Ok(Self::open(&store.data_dir().join(STATE_DB))?.with_clock(store.clock()))
    }

    /// [`Self::of`] with another busy timeout (see
    /// [`Self::open_with_busy_timeout`]).
    pub fn of_with_busy_timeout(store: &Store, busy_timeout: Duration) -> Result<Self> {
        Ok(
            Self::open_with_busy_timeout(&store.data_dir().join(STATE_DB), busy_timeout)?
                .with_clock(store.clock()),
        )
    }

    /// Open (creating the tables if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_busy_timeout(path, Duration::from_secs(10))
    }

    /// [`Self::open`] with another busy timeout: how long a statement waits
    /// for another connection's write lock before failing as busy
    /// ([`Error::is_busy`]).
    pub fn open_with_busy_timeout(path: &Path, busy_timeout: Duration) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA_SQL)?;
        add_origin_column(&conn)?;
        Ok(Self {
            conn,
            clock: Clock::system(),
        })
    }

    /// The same database taking its time (runs' start and end, leases'
    /// expiry) from `clock`: a store's ([`crate::store::Store::clock`]).
    pub fn with_clock(mut self, clock: &Clock) -> Self {
        self.clock = clock.clone();
        self
    }

    fn now_rfc3339(&self) -> String {
        self.clock.now_rfc3339()
    }

    /// Store a new automation, `active`, created by `origin`. Fails if the
    /// project has one of that name.
    pub fn create(
        &self,
        project_id: &str,
        name: &str,
        description: &str,
        kind: Kind,
        config: &serde_json::Value,
        origin: Origin,
    ) -> Result<Automation> {
        self.create_with_status(
            project_id,
            name,
            description,
            kind,
            config,
            origin,
            "active",
        )
    }

    /// [`Self::create`] with `status` (`active` or `paused`) from the start:
    /// a paused one is never picked up by a scheduler before it is resumed.
    #[allow(clippy::too_many_arguments)]
    pub fn create_with_status(
        &self,
        project_id: &str,
        name: &str,
        description: &str,
        kind: Kind,
        config: &serde_json::Value,
        origin: Origin,
        status: &str,
    ) -> Result<Automation> {
        check_status(status)?;
        if self.find_by_name(project_id, name)?.is_some() {
            return Err(Error::InvalidArgument(format!(
                "an automation named `{name}` already exists in this project"
            )));
        }
        let now = self.now_rfc3339();
        let automation = Automation {
            id: uuid::Uuid::now_v7().to_string(),
            project_id: project_id.to_string(),
            name: name.to_string(),
            description: description.to_string(),
            kind,
            config: config.clone(),
            status: status.to_string(),
            created: now.clone(),
            updated: now,
            origin,
        };
        self.conn.execute(
            "INSERT INTO automations (id, project_id, name, description, kind, config, status, created, updated, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                automation.id,
                automation.project_id,
                automation.name,
                automation.description,
                kind.as_str(),
                automation.config.to_string(),
                automation.status,
                automation.created,
                automation.updated,
                origin.as_str()
            ],
        )?;
        Ok(automation)
    }

    fn row_to_automation(
        row: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<(Automation, String, String, String)> {
        Ok((
            Automation {
                id: row.get(0)?,
                project_id: row.get(1)?,
                name: row.get(2)?,
                description: row.get(3)?,
                kind: Kind::Export,
                config: serde_json::Value::Null,
                status: row.get(6)?,
                created: row.get(7)?,
                updated: row.get(8)?,
                origin: Origin::Cli,
            },
            row.get(4)?,
            row.get(5)?,
            row.get(9)?,
        ))
    }

    fn finish_automation(
        (mut a, kind, config, origin): (Automation, String, String, String),
    ) -> Result<Automation> {
        a.kind = Kind::parse(&kind)?;
        a.origin = Origin::parse(&origin)?;
        a.config = serde_json::from_str(&config)
            .map_err(|e| Error::Internal(format!("stored config of `{}`: {e}", a.id)))?;
        Ok(a)
    }

    const COLUMNS: &'static str =
        "id, project_id, name, description, kind, config, status, created, updated, origin";

    /// The automation with this id.
    pub fn get(&self, id: &str) -> Result<Option<Automation>> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM automations WHERE id = ?1", Self::COLUMNS),
                params![id],
                Self::row_to_automation,
            )
            .optional()?
            .map(Self::finish_automation)
            .transpose()
    }

    /// The automation named `name` in `project_id`.
    pub fn find_by_name(&self, project_id: &str, name: &str) -> Result<Option<Automation>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {} FROM automations WHERE project_id = ?1 AND name = ?2",
                    Self::COLUMNS
                ),
                params![project_id, name],
                Self::row_to_automation,
            )
            .optional()?
            .map(Self::finish_automation)
            .transpose()
    }

    /// All automations, optionally of one project, by creation.
    pub fn list(&self, project_id: Option<&str>) -> Result<Vec<Automation>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM automations WHERE ?1 IS NULL OR project_id = ?1 ORDER BY created, id",
            Self::COLUMNS
        ))?;
        let rows = stmt.query_map(params![project_id], Self::row_to_automation)?;
        rows.map(|r| Self::finish_automation(r?)).collect()
    }

    /// Set `active` or `paused`.
    pub fn set_status(&self, id: &str, status: &str) -> Result<()> {
        check_status(status)?;
        let changed = self.conn.execute(
            "UPDATE automations SET status = ?2, updated = ?3 WHERE id = ?1",
            params![id, status, self.now_rfc3339()],
        )?;
        if changed == 0 {
            return Err(Error::InvalidArgument(format!("no automation `{id}`")));
        }
        Ok(())
    }

    /// Delete an automation with its cursor, runs and lease.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM leases WHERE automation_id = ?1", params![id])?;
        let changed = self
            .conn
            .execute("DELETE FROM automations WHERE id = ?1", params![id])?;
        if changed == 0 {
            return Err(Error::InvalidArgument(format!("no automation `{id}`")));
        }
        Ok(())
    }

    /// The cursor (last exported `_xact_id`), if any run committed.
    pub fn cursor(&self, id: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT xact_id FROM cursors WHERE automation_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Clear the cursor and the history: the next run starts from the beginning.
    pub fn reset(&self, id: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM cursors WHERE automation_id = ?1", params![id])?;
        tx.execute("DELETE FROM runs WHERE automation_id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }

    /// Record the start of a run.
    pub fn start_run(
        &self,
        automation_id: &str,
        run_id: &str,
        trigger: Trigger,
        cursor_from: Option<i64>,
        cursor_to: Option<i64>,
        details: &serde_json::Value,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO runs (run_id, automation_id, trigger, started, status, cursor_from, cursor_to, details)
             VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)",
            params![
                run_id,
                automation_id,
                trigger.as_str(),
                self.now_rfc3339(),
                cursor_from,
                cursor_to,
                details.to_string()
            ],
        )?;
        Ok(())
    }

    /// Merge `details` into a run's details (e.g. that its files are still
    /// to be deleted); keys already there and not in `details` stay.
    pub fn update_run_details(&self, run_id: &str, details: &serde_json::Value) -> Result<()> {
        self.conn.execute(
            // Merged into what is there (RFC 7396): the failure's
            // `retryable` and the run's pinned snapshot stay.
            "UPDATE runs SET details = json_patch(COALESCE(details, '{}'), ?2) WHERE run_id = ?1",
            params![run_id, details.to_string()],
        )?;
        Ok(())
    }

    /// Finish a run successfully and, in the same transaction, move the cursor
    /// to `cursor_to` when given.
    pub fn finish_run(&self, run_id: &str, status: RunStatus, outcome: &RunOutcome) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let automation_id: String = tx.query_row(
            "SELECT automation_id FROM runs WHERE run_id = ?1",
            params![run_id],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE runs SET finished = ?2, status = ?3, rows = ?4, bytes = ?5, files = ?6,
                 cursor_to = COALESCE(?7, cursor_to), details = ?8
             WHERE run_id = ?1",
            params![
                run_id,
                self.now_rfc3339(),
                status.as_str(),
                outcome.rows,
                outcome.bytes,
                outcome.files,
                outcome.cursor_to,
                outcome.details.to_string()
            ],
        )?;
        if let Some(cursor) = outcome.cursor_to {
            tx.execute(
                "INSERT INTO cursors (automation_id, xact_id, updated) VALUES (?1, ?2, ?3)
                 ON CONFLICT (automation_id) DO UPDATE SET xact_id = excluded.xact_id, updated = excluded.updated",
                params![automation_id, cursor, self.now_rfc3339()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Finish a run as failed; the cursor does not move.
    pub fn fail_run(&self, run_id: &str, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET finished = ?2, status = 'failed', error = ?3 WHERE run_id = ?1",
            params![run_id, self.now_rfc3339(), error],
        )?;
        Ok(())
    }

    /// Mark a run failed with `error`, and whether retrying it unchanged
    /// may succeed (`details.retryable`: the scheduler backs off a
    /// retryable failure and waits a whole interval after another).
    pub fn fail_run_with(&self, run_id: &str, error: &str, retryable: bool) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET finished = ?2, status = 'failed', error = ?3,
                    details = json_set(COALESCE(details, '{}'), '$.retryable', json(?4))
             WHERE run_id = ?1",
            params![
                run_id,
                self.now_rfc3339(),
                error,
                if retryable { "true" } else { "false" }
            ],
        )?;
        Ok(())
    }

    /// Runs of an automation, newest first.
    pub fn runs(&self, automation_id: &str, limit: usize) -> Result<Vec<Run>> {
        let mut stmt = self.conn.prepare(
            "SELECT run_id, automation_id, trigger, started, finished, status, rows, bytes, files,
                    cursor_from, cursor_to, error, details
             FROM runs WHERE automation_id = ?1 ORDER BY started DESC, run_id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![automation_id, limit as i64], |r| {
            Ok((
                Run {
                    run_id: r.get(0)?,
                    automation_id: r.get(1)?,
                    trigger: r.get(2)?,
                    started: r.get(3)?,
                    finished: r.get(4)?,
                    status: RunStatus::Running,
                    rows: r.get(6)?,
                    bytes: r.get(7)?,
                    files: r.get(8)?,
                    cursor_from: r.get(9)?,
                    cursor_to: r.get(10)?,
                    error: r.get(11)?,
                    details: serde_json::Value::Null,
                },
                r.get::<_, String>(5)?,
                r.get::<_, String>(12)?,
            ))
        })?;
        rows.map(|row| {
            let (mut run, status, details) = row?;
            run.status = RunStatus::parse(&status)?;
            run.details = serde_json::from_str(&details)
                .map_err(|e| Error::Internal(format!("stored run details: {e}")))?;
            Ok(run)
        })
        .collect()
    }

    /// Take the lease of `automation_id` for `holder` until `ttl` from now.
    /// Succeeds when the lease is free, expired, already held by `holder`
    /// (a renewal), or held by a process of this machine that no longer
    /// exists (a crashed run); returns false when someone else holds it.
    ///
    /// Holders are written as `<host>:<pid>:<name>` (see [`lease_holder`]) so
    /// that a crashed holder on the same machine is recognised at once.
    pub fn try_lease(&self, automation_id: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = self.clock.now_micros();
        let expires = now + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2);
        let changed = self.conn.execute(
            "INSERT INTO leases (automation_id, holder, expires_micros) VALUES (?1, ?2, ?3)
             ON CONFLICT (automation_id) DO UPDATE SET holder = excluded.holder, expires_micros = excluded.expires_micros
             WHERE leases.holder = excluded.holder OR leases.expires_micros < ?4",
            params![automation_id, holder, expires, now],
        )?;
        if changed == 1 {
            return Ok(true);
        }
        let current: Option<String> = self
            .conn
            .query_row(
                "SELECT holder FROM leases WHERE automation_id = ?1",
                params![automation_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(current) = current.filter(|h| holder_is_dead(h)) else {
            return Ok(false);
        };
        // Take it over only from that same dead holder (another process may
        // be doing the same).
        let changed = self.conn.execute(
            "UPDATE leases SET holder = ?2, expires_micros = ?3 WHERE automation_id = ?1 AND holder = ?4",
            params![automation_id, holder, expires, current],
        )?;
        Ok(changed == 1)
    }

    /// Table versions of the table `project_id` (a project's logs, or an
    /// experiment or dataset by its id) pinned by running exports: the
    /// `cursor_to` snapshot of every export run still `running` whose
    /// automation's lease is held, unexpired, by that run's live process (a
    /// crashed run's pin lapses with its lease). Vacuum keeps every file these
    /// versions reference.
    pub fn pinned_versions(&self, project_id: &str) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare(
            "SELECT r.cursor_to, r.run_id, l.holder, r.details FROM runs r
               JOIN automations a ON a.id = r.automation_id
               JOIN leases l ON l.automation_id = a.id
              WHERE coalesce(json_extract(a.config, '$.object_id'), a.project_id) = ?1
                AND a.kind = 'export' AND r.status = 'running'
                AND r.cursor_to IS NOT NULL AND l.expires_micros >= ?2",
        )?;
        let now = self.clock.now_micros();
        let rows = stmt.query_map(params![project_id, now], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut versions = Vec::new();
        for row in rows {
            let (cursor_to, run_id, holder, details) = row?;
            if holder.ends_with(&format!(":{run_id}")) && !holder_is_dead(&holder) {
                // The version the run reads (see [`SNAPSHOT_VERSION`]),
                // else the one that committed its `cursor_to`.
                let snapshot = details
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                    .and_then(|d| d[SNAPSHOT_VERSION].as_i64());
                versions.push(snapshot.unwrap_or(cursor_to & !crate::store::schema::XACT_TOP_BITS));
            }
        }
        versions.sort_unstable();
        versions.dedup();
        Ok(versions)
    }

    /// Release the lease if `holder` holds it.
    pub fn release_lease(&self, automation_id: &str, holder: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM leases WHERE automation_id = ?1 AND holder = ?2",
            params![automation_id, holder],
        )?;
        Ok(())
    }
}

/// The table an export configuration reads, as compared across an
/// update: its object type (`project_logs` when absent) and the canonical
/// (lowercase, hyphenated) UUID of its object, if any.
fn export_table_key(config: &serde_json::Value) -> (String, Option<String>) {
    let object_type = config["object_type"].as_str().map_or_else(
        || ObjectType::ProjectLogs.as_str().to_string(),
        |name| ObjectType::parse(name).map_or_else(|| name.to_string(), |t| t.as_str().to_string()),
    );
    let object_id = config["object_id"]
        .as_str()
        .map(crate::registry::objects::canonical_object_id);
    (object_type, object_id)
}

/// Refuse an export update that changes the table it reads: its cursor is
/// an `_xact_id` of that table, meaningless in another (rows would be
/// skipped, or another table's rows sent where this one's went).
pub fn check_export_table_kept(current: &serde_json::Value, new: &serde_json::Value) -> Result<()> {
    let (current_type, current_id) = export_table_key(current);
    let (new_type, new_id) = export_table_key(new);
    let key = if current_type != new_type {
        "object_type"
    } else if current_id != new_id {
        "object_id"
    } else {
        return Ok(());
    };
    let is = match key {
        "object_type" => format!("`{current_type}`"),
        _ => current_id.map_or_else(|| "not set".to_string(), |id| format!("`{id}`")),
    };
    Err(Error::InvalidArgument(format!(
        "`config.{key}` is fixed after creation (it is {is}): the export's cursor counts in that table; create another export to export another table"
    )))
}

/// Migration: state databases made before origins were recorded get the
/// `origin` column, every existing automation `cli` (they could only be
/// told apart by org, which a local-org API key shares). Two processes
/// opening an old database at once may both try: the loser finds it there.
fn add_origin_column(conn: &Connection) -> Result<()> {
    let has_origin = |conn: &Connection| -> Result<bool> {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('automations')")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for name in names {
            if name? == "origin" {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if has_origin(conn)? {
        return Ok(());
    }
    match conn.execute_batch(
        "ALTER TABLE automations ADD COLUMN origin TEXT NOT NULL DEFAULT 'cli' CHECK (origin IN ('api', 'cli'))",
    ) {
        Ok(()) => Ok(()),
        Err(_) if has_origin(conn)? => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// A lease holder name for this process: `<host>:<pid>:<name>`.
pub fn lease_holder(name: &str) -> String {
    format!("{}:{}:{name}", host_name(), std::process::id())
}

/// Whether `holder` names a process of this machine that has exited.
fn holder_is_dead(holder: &str) -> bool {
    let mut parts = holder.splitn(3, ':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == host_name()
        && pid != std::process::id()
        && std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl StateDb {
    /// Change an automation's name, description and validated configuration
    /// (its cursor and history stay); with `origin`, who chose the
    /// configuration now (in the same statement).
    pub fn update(
        &self,
        id: &str,
        name: &str,
        description: &str,
        config: &serde_json::Value,
        origin: Option<Origin>,
    ) -> Result<Automation> {
        let current = self
            .get(id)?
            .ok_or_else(|| Error::InvalidArgument(format!("no automation with id `{id}`")))?;
        if name != current.name && self.find_by_name(&current.project_id, name)?.is_some() {
            return Err(Error::InvalidArgument(format!(
                "an automation named `{name}` already exists in this project"
            )));
        }
        if current.kind == Kind::Export {
            check_export_table_kept(&current.config, config)?;
        }
        self.conn.execute(
            "UPDATE automations SET name = ?2, description = ?3, config = ?4, updated = ?5,
                 origin = COALESCE(?6, origin) WHERE id = ?1",
            params![
                id,
                name,
                description,
                config.to_string(),
                self.now_rfc3339(),
                origin.map(Origin::as_str)
            ],
        )?;
        self.get(id)?
            .ok_or_else(|| Error::Internal(format!("automation `{id}` vanished")))
    }

    /// The last run, totals, and whether the automation keeps up.
    pub fn status_json(&self, automation: &Automation) -> Result<serde_json::Value> {
        let runs = self.runs(&automation.id, 10_000)?;
        let cursor = self.cursor(&automation.id)?;
        Ok(serde_json::json!({
            "automation": automation.name,
            "status": automation.status,
            "cursor": cursor.map(|c| c.to_string()),
            "last_run": runs.first(),
            "totals": {
                "runs": runs.len(),
                "rows": runs.iter().map(|r| r.rows).sum::<u64>(),
                "bytes": runs.iter().map(|r| r.bytes).sum::<u64>(),
                "files": runs.iter().map(|r| r.files).sum::<u64>(),
            },
            "keeping_up": runs.first().map(|r| r.status != RunStatus::Behind),
        }))
    }
}

impl crate::store::vacuum::PinnedVersions for StateDb {
    fn pinned_versions(&self, project_id: &str) -> Result<Vec<i64>> {
        StateDb::pinned_versions(self, project_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    /// An export given an object id in capitals, without hyphens, stores
    /// (and runs, so its manifests name) the canonical id, the key of its
    /// table: vacuum sees its run's pin. Object types are stored canonical.
    #[test]
    fn an_export_of_an_uppercase_object_id_stores_and_pins_the_canonical_id() {
        use crate::automation::runner::AutomationConfig;
        let (_dir, db) = db();
        let canonical = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let (validated, stored) = AutomationConfig::validate(
            Kind::Export,
            serde_json::json!({
                "object_type": "Experiment",
                "object_id": canonical.replace('-', "").to_uppercase(),
                "data": "spans",
                "export_path": "s3://b/p",
            }),
        )
        .unwrap();
        assert_eq!(
            (stored["object_type"].as_str(), stored["object_id"].as_str()),
            (Some("experiment"), Some(canonical)),
            "{stored}"
        );
        let AutomationConfig::Export(config) = validated else {
            panic!("an export");
        };
        assert_eq!(config.object_id.as_deref(), Some(canonical));
        let a = db
            .create("p", "e", "", Kind::Export, &stored, Origin::Api)
            .unwrap();
        let holder = lease_holder("r1");
        assert!(
            db.try_lease(&a.id, &holder, Duration::from_secs(60))
                .unwrap()
        );
        db.start_run(
            &a.id,
            "r1",
            Trigger::Manual,
            None,
            Some(7),
            &serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(db.pinned_versions(canonical).unwrap(), vec![7]);

        let (_, stored) = AutomationConfig::validate(
            Kind::Retention,
            serde_json::json!({"object_type": "DATASET", "retention_days": 3, "grace": "1h", "interval": "1h"}),
        )
        .unwrap();
        assert_eq!(stored["object_type"], "dataset", "{stored}");
    }

    #[test]
    fn automations_runs_and_cursor() {
        let (_dir, db) = db();
        let config = serde_json::json!({"data": "spans"});
        let a = db
            .create("p", "nightly", "", Kind::Export, &config, Origin::Cli)
            .unwrap();
        assert!(
            db.create("p", "nightly", "", Kind::Export, &config, Origin::Api)
                .is_err()
        );
        assert_eq!(db.get(&a.id).unwrap().unwrap(), a);
        assert_eq!(db.find_by_name("p", "nightly").unwrap().unwrap().id, a.id);
        assert_eq!(db.list(Some("p")).unwrap().len(), 1);
        assert_eq!(db.cursor(&a.id).unwrap(), None);

        db.start_run(
            &a.id,
            "r1",
            Trigger::Manual,
            None,
            Some(10),
            &serde_json::json!({}),
        )
        .unwrap();
        db.fail_run("r1", "boom").unwrap();
        assert_eq!(
            db.cursor(&a.id).unwrap(),
            None,
            "a failed run never moves the cursor"
        );

        db.start_run(
            &a.id,
            "r2",
            Trigger::Manual,
            None,
            Some(10),
            &serde_json::json!({}),
        )
        .unwrap();
        let outcome = RunOutcome {
            rows: 5,
            cursor_to: Some(10),
            ..RunOutcome::default()
        };
        db.finish_run("r2", RunStatus::Behind, &outcome).unwrap();
        assert_eq!(db.cursor(&a.id).unwrap(), Some(10));
        let runs = db.runs(&a.id, 10).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            runs.iter().find(|r| r.run_id == "r1").unwrap().status,
            RunStatus::Failed
        );

        db.reset(&a.id).unwrap();
        assert_eq!(db.cursor(&a.id).unwrap(), None);
        assert!(db.runs(&a.id, 10).unwrap().is_empty());

        db.set_status(&a.id, "paused").unwrap();
        assert_eq!(db.get(&a.id).unwrap().unwrap().status, "paused");
        db.delete(&a.id).unwrap();
        assert!(db.get(&a.id).unwrap().is_none());
    }

    #[test]
    fn origins_are_recorded_and_old_databases_default_to_cli() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database of before origins: the old `automations` table.
            let conn = Connection::open(&path).unwrap();
            let old_schema = SCHEMA_SQL.replace(
                "    origin TEXT NOT NULL DEFAULT 'cli' CHECK (origin IN ('api', 'cli')),\n",
                "",
            );
            assert!(!old_schema.contains("origin"));
            conn.execute_batch(&old_schema).unwrap();
            conn.execute(
                "INSERT INTO automations (id, project_id, name, kind, config, status, created, updated)
                 VALUES ('old', 'p', 'old', 'export', '{}', 'active', 't', 't')",
                [],
            )
            .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let again = StateDb::open(&path).unwrap();
        assert_eq!(again.get("old").unwrap().unwrap().origin, Origin::Cli);
        let config = serde_json::json!({});
        let api = db
            .create("p", "api", "", Kind::Export, &config, Origin::Api)
            .unwrap();
        assert_eq!(db.get(&api.id).unwrap().unwrap().origin, Origin::Api);
        // A rename keeps the origin; a configuration chosen over the API sets it.
        let renamed = db.update("old", "old2", "", &config, None).unwrap();
        assert_eq!(renamed.origin, Origin::Cli);
        let changed = db
            .update("old", "old2", "", &config, Some(Origin::Api))
            .unwrap();
        assert_eq!(changed.origin, Origin::Api);
        assert_eq!(
            serde_json::to_value(&changed).unwrap()["origin"],
            serde_json::json!("api")
        );
    }

    #[test]
    fn one_lease_holder_at_a_time() {
        let (dir, db) = db();
        let other = StateDb::open(&dir.path().join("state.db")).unwrap();
        assert!(db.try_lease("a", "one", Duration::from_secs(60)).unwrap());
        assert!(
            !other
                .try_lease("a", "two", Duration::from_secs(60))
                .unwrap()
        );
        assert!(
            db.try_lease("a", "one", Duration::from_secs(60)).unwrap(),
            "renewal"
        );
        db.release_lease("a", "one").unwrap();
        assert!(
            other
                .try_lease("a", "two", Duration::from_secs(60))
                .unwrap()
        );
        // A lease of a process of this machine that has exited can be taken over.
        let host = super::host_name();
        assert!(
            db.try_lease(
                "c",
                &format!("{host}:999999999:run"),
                Duration::from_secs(60)
            )
            .unwrap()
        );
        assert!(
            other
                .try_lease("c", "two", Duration::from_secs(60))
                .unwrap()
        );
        // An expired lease can be taken over.
        assert!(
            other
                .try_lease("b", "two", Duration::from_micros(0))
                .unwrap()
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(db.try_lease("b", "one", Duration::from_secs(60)).unwrap());
    }
}
