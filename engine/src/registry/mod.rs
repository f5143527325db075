//! Project registry in the state database (`<data-dir>/state.db`, SQLite).
//!
//! A project has a UUID and a name unique within its org. The local org (the
//! one the CLI works in) is generated once per data directory, kept in the
//! `meta` table, and named `local`; the HTTP server adds orgs with their API
//! keys (see [`crate::registry::apikeys`]). The CLI sees every org: a name that two
//! orgs use must then be given as the project id.

pub mod apikeys;
pub mod objects;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{Error, Result};

/// One project.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Project {
    /// Project UUID (the key of its log store).
    pub id: String,
    /// Unique, human-chosen name.
    pub name: String,
    /// Owning org UUID.
    pub org_id: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// The table this handle addresses when it is not the project's logs:
    /// one of its experiments or datasets (see [`Project::for_object`]).
    #[serde(skip)]
    pub object: Option<objects::ObjectRef>,
}

/// The project registry of one data directory.
#[derive(Debug)]
pub struct ProjectRegistry {
    conn: Connection,
    org_id: String,
    /// The time written into `created` and the digests' records (the
    /// store's, for a connection of its pool).
    clock: Clock,
}

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    org_id TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created TEXT NOT NULL,
    revoked TEXT
);
CREATE TABLE IF NOT EXISTS ingest_requests (
    digest TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    xact_id INTEGER NOT NULL,
    recorded_micros INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (
    project_id TEXT NOT NULL,
    xact_id INTEGER NOT NULL,
    committed_micros INTEGER NOT NULL,
    PRIMARY KEY (project_id, xact_id)
);
";

impl ProjectRegistry {
    /// Open (creating if needed) the registry in `state_db`.
    pub fn open(state_db: &Path) -> Result<Self> {
        let conn = Connection::open(state_db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        migrate_project_names(&conn)?;
        conn.execute_batch(SCHEMA_SQL)?;
        conn.execute_batch(objects::OBJECTS_SQL)?;
        let org_id: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'org_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let org_id = match org_id {
            Some(id) => id,
            None => {
                let id = Uuid::new_v4().to_string();
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('org_id', ?1)",
                    params![id],
                )?;
                conn.query_row("SELECT value FROM meta WHERE key = 'org_id'", [], |r| {
                    r.get(0)
                })?
            }
        };
        conn.execute(
            "INSERT OR IGNORE INTO orgs (id, name, created) VALUES (?1, ?2, ?3)",
            params![org_id, LOCAL_ORG_NAME, Clock::system().now_rfc3339()],
        )?;
        Ok(Self {
            conn,
            org_id,
            clock: Clock::system(),
        })
    }

    /// Another connection to the same registry, for a pool: the schema is
    /// in place already (a first [`ProjectRegistry::open`] made it).
    pub(crate) fn another(state_db: &Path, org_id: &str, clock: Clock) -> Result<Self> {
        let conn = Connection::open(state_db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Self {
            conn,
            org_id: org_id.to_string(),
            clock,
        })
    }

    /// Take the times this connection writes from `clock`.
    pub(crate) fn set_clock(&mut self, clock: &Clock) {
        self.clock = clock.clone();
    }

    /// The current time, as this registry writes it.
    pub(crate) fn now_rfc3339(&self) -> String {
        self.clock.now_rfc3339()
    }

    /// How long a statement waits for another connection's write lock
    /// before failing as busy ([`Error::is_busy`]); 10 s when opened. A
    /// server sets it short and answers busy with 503 instead of stalling.
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        Ok(self.conn.busy_timeout(timeout)?)
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The local org id.
    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    /// Create a project named `name` in the local org; fails if the name is taken.
    pub fn create(&self, name: &str) -> Result<Project> {
        self.create_in_org(&self.org_id.clone(), name)
    }

    /// Create a project named `name` in `org_id`; fails if the org already
    /// has a project of that name.
    pub fn create_in_org(&self, org_id: &str, name: &str) -> Result<Project> {
        validate_name(name)?;
        refuse_uuid_name(name)?;
        if self.by_name_in_org(org_id, name)?.is_some() {
            return Err(Error::ProjectExists(name.to_string()));
        }
        self.insert(&Uuid::new_v4().to_string(), name, org_id)
    }

    /// The project of `org_id` named `name`, created when missing
    /// (`POST /v1/project`: get-or-create, idempotent).
    pub fn get_or_create_in_org(&self, org_id: &str, name: &str) -> Result<Project> {
        validate_name(name)?;
        refuse_uuid_name(name)?;
        if let Some(project) = self.by_name_in_org(org_id, name)? {
            return Ok(project);
        }
        match self.insert(&Uuid::new_v4().to_string(), name, org_id) {
            Ok(project) => Ok(project),
            // Created concurrently by another connection: return that one.
            Err(Error::State(e)) if is_constraint(&e) => self
                .by_name_in_org(org_id, name)?
                .ok_or_else(|| Error::UnknownProject(name.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Find a project of `org_id` by UUID or by name. A UUID-shaped argument
    /// is only ever an id: it never falls back to a project *named* that
    /// UUID, so no name can stand in for another org's project id (and
    /// [`Self::create_in_org`] refuses UUID-shaped names). A project of
    /// another org is reported as unknown, exactly like one that does not
    /// exist.
    pub fn resolve_in_org(&self, org_id: &str, id_or_name: &str) -> Result<Project> {
        let unknown = || Error::UnknownProject(id_or_name.to_string());
        match Uuid::parse_str(id_or_name) {
            Ok(uuid) => self
                .get_in_org(org_id, &uuid.hyphenated().to_string())?
                .ok_or_else(unknown),
            Err(_) => self.by_name_in_org(org_id, id_or_name)?.ok_or_else(unknown),
        }
    }

    /// The project with id `id` if it belongs to `org_id` (by id only).
    pub fn get_in_org(&self, org_id: &str, id: &str) -> Result<Option<Project>> {
        Ok(self.by_id(id)?.filter(|p| p.org_id == org_id))
    }

    /// The project with id `id` (by id only, whatever its org): what an
    /// automation, which stores its project's id, runs against.
    pub fn get(&self, id: &str) -> Result<Project> {
        self.by_id(id)?
            .ok_or_else(|| Error::UnknownProject(id.to_string()))
    }

    /// The projects of `org_id`, by name.
    pub fn list_in_org(&self, org_id: &str) -> Result<Vec<Project>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, org_id, created FROM projects WHERE org_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![org_id], row_to_project)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn by_name_in_org(&self, org_id: &str, name: &str) -> Result<Option<Project>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, org_id, created FROM projects WHERE org_id = ?1 AND name = ?2",
                params![org_id, name],
                row_to_project,
            )
            .optional()?)
    }

    fn insert(&self, id: &str, name: &str, org_id: &str) -> Result<Project> {
        let project = Project {
            id: id.to_string(),
            name: name.to_string(),
            org_id: org_id.to_string(),
            created: self.now_rfc3339(),
            object: None,
        };
        self.conn.execute(
            "INSERT INTO projects (id, name, org_id, created) VALUES (?1, ?2, ?3, ?4)",
            params![project.id, project.name, project.org_id, project.created],
        )?;
        Ok(project)
    }

    /// All projects, by name.
    pub fn list(&self) -> Result<Vec<Project>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, org_id, created FROM projects ORDER BY name")?;
        let rows = stmt.query_map([], row_to_project)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The project named `name` in any org: the local org's first, else the
    /// only one; a name several other orgs use is ambiguous.
    fn by_name(&self, name: &str) -> Result<Option<Project>> {
        if let Some(local) = self.by_name_in_org(&self.org_id, name)? {
            return Ok(Some(local));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, org_id, created FROM projects WHERE name = ?1")?;
        let mut found: Vec<Project> = stmt
            .query_map(params![name], row_to_project)?
            .collect::<Result<_, _>>()?;
        if found.len() > 1 {
            return Err(Error::InvalidArgument(format!(
                "{} orgs have a project named `{name}`; give its id instead ({})",
                found.len(),
                found
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(found.pop())
    }

    fn by_id(&self, id: &str) -> Result<Option<Project>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, org_id, created FROM projects WHERE id = ?1",
                params![id],
                row_to_project,
            )
            .optional()?)
    }

    /// Find a project by UUID or by name (a UUID is tried first).
    pub fn resolve(&self, id_or_name: &str) -> Result<Project> {
        let found = match Uuid::parse_str(id_or_name) {
            Ok(uuid) => self.by_id(&uuid.hyphenated().to_string())?,
            Err(_) => None,
        };
        match found {
            Some(p) => Ok(p),
            None => self
                .by_name(id_or_name)?
                .ok_or_else(|| Error::UnknownProject(id_or_name.to_string())),
        }
    }

    /// Resolve for ingest: an unknown UUID creates the project (named after its
    /// id), an unknown name creates a project of that name.
    pub fn resolve_or_create(&self, id_or_name: &str) -> Result<Project> {
        match self.resolve(id_or_name) {
            Ok(p) => Ok(p),
            Err(Error::UnknownProject(_)) => match Uuid::parse_str(id_or_name) {
                Ok(uuid) => {
                    let id = uuid.hyphenated().to_string();
                    self.insert(&id, &id, &self.org_id.clone())
                }
                Err(_) => self.create(id_or_name),
            },
            Err(e) => Err(e),
        }
    }
}

impl ProjectRegistry {
    /// Record when a commit of `project_id` landed (for `trace_idle`).
    pub fn record_commit(
        &self,
        project_id: &str,
        xact_id: i64,
        committed_micros: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO commits (project_id, xact_id, committed_micros) VALUES (?1, ?2, ?3)",
            params![project_id, xact_id, committed_micros],
        )?;
        Ok(())
    }

    /// Remember that the requests with these digests were committed in
    /// `xact_id` (a server answers their replays without committing again).
    pub fn record_requests(
        &self,
        project_id: &str,
        digests: &[String],
        xact_id: i64,
    ) -> Result<()> {
        let now = self.clock.now_micros();
        let tx = self.conn.unchecked_transaction()?;
        for digest in digests {
            tx.execute(
                "INSERT OR IGNORE INTO ingest_requests (digest, project_id, xact_id, recorded_micros) VALUES (?1, ?2, ?3, ?4)",
                params![digest, project_id, xact_id, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The transaction a request with this digest was committed in, if any.
    pub fn request_xact(&self, digest: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT xact_id FROM ingest_requests WHERE digest = ?1",
                params![digest],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Forget request digests recorded before `micros`.
    pub fn forget_requests_before(&self, micros: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM ingest_requests WHERE recorded_micros < ?1",
            params![micros],
        )?)
    }

    /// The first commit of `project_id` that landed after `micros`, if any.
    /// (A commit with no record, e.g. one whose process died right after
    /// committing, counts as old.)
    pub fn first_commit_after(&self, project_id: &str, micros: i64) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT min(xact_id) FROM commits WHERE project_id = ?1 AND committed_micros > ?2",
            params![project_id, micros],
            |r| r.get(0),
        )?)
    }
}

fn row_to_project(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        org_id: r.get(2)?,
        created: r.get(3)?,
        object: None,
    })
}

/// Name of the org a data directory starts with.
pub const LOCAL_ORG_NAME: &str = "local";

pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ConstraintViolation)
    )
}

/// Registries written before orgs had their own projects kept names unique
/// across the data directory; make them unique per org (one transaction).
fn migrate_project_names(conn: &Connection) -> Result<()> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'projects'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if sql.is_some_and(|sql| sql.contains("name TEXT NOT NULL UNIQUE")) {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE projects_by_org (
                 id TEXT PRIMARY KEY,
                 name TEXT NOT NULL,
                 org_id TEXT NOT NULL,
                 created TEXT NOT NULL,
                 UNIQUE (org_id, name)
             );
             INSERT INTO projects_by_org SELECT id, name, org_id, created FROM projects;
             DROP TABLE projects;
             ALTER TABLE projects_by_org RENAME TO projects;
             COMMIT;",
        )?;
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "a project name cannot be empty".to_string(),
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "project name `{}` contains control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// Names that read as a UUID would be taken for a project id (another
/// org's, perhaps): refused for projects created by name.
fn refuse_uuid_name(name: &str) -> Result<()> {
    if Uuid::parse_str(name.trim()).is_ok() {
        return Err(Error::InvalidArgument(format!(
            "project name `{name}` looks like a project id (a UUID); choose a name that is not a UUID, \
             or address an existing project by its id"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        let p = reg.create("alpha").unwrap();
        assert!(matches!(reg.create("alpha"), Err(Error::ProjectExists(_))));
        assert_eq!(reg.resolve("alpha").unwrap(), p);
        assert_eq!(reg.resolve(&p.id).unwrap(), p);
        assert!(matches!(reg.resolve("beta"), Err(Error::UnknownProject(_))));
        let id = "0b1e2c3d-0000-4000-8000-000000000001";
        let q = reg.resolve_or_create(id).unwrap();
        assert_eq!(q.id, id);
        assert_eq!(reg.list().unwrap().len(), 2);
        // The org id is stable across reopenings.
        let org = reg.org_id().to_string();
        drop(reg);
        let again = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(again.org_id(), org);
    }

    #[test]
    fn a_uuid_never_resolves_by_name_in_an_org() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        let a = reg.create_in_org(reg.org_id(), "a-project").unwrap();
        let other = "4f0a3c1e-0000-4000-8000-0000000000b0";
        // Another org cannot name a project after a's id ...
        let err = reg.create_in_org(other, &a.id).unwrap_err();
        assert!(err.to_string().contains("looks like a project id"), "{err}");
        assert!(
            reg.get_or_create_in_org(other, &a.id.to_uppercase())
                .is_err()
        );
        // ... and a's id does not resolve in the other org, even if such a
        // name exists (written before names were checked).
        reg.insert(&Uuid::new_v4().to_string(), &a.id, other)
            .unwrap();
        assert!(matches!(
            reg.resolve_in_org(other, &a.id),
            Err(Error::UnknownProject(_))
        ));
        assert_eq!(reg.resolve_in_org(reg.org_id(), &a.id).unwrap(), a);
        assert!(reg.get_in_org(other, &a.id).unwrap().is_none());
        assert_eq!(reg.get(&a.id).unwrap(), a);
    }
}
