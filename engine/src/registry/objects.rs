//! Experiments and datasets: the project's other objects holding rows
//! (besides its logs), in the `objects` table of the state database.
//!
//! Each has a UUID, a name unique per project and type, and a table of row
//! versions of its own (see [`crate::store`]), with the same merge
//! semantics, `_xact_id` and compaction as the project's logs. A
//! [`Project`] handle made by [`Project::for_object`] addresses that table:
//! every operation over a project's table (ingest, query, export,
//! retention, compaction, vacuum) takes one, so they all work by object
//! type without a second code path.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

pub use spanlake_dsl::ObjectType;

use super::{Project, ProjectRegistry, is_constraint};
use crate::error::{Error, Result};

/// Which table of a project a [`Project`] handle addresses, when it is not
/// the project's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// `experiment` or `dataset`.
    pub object_type: ObjectType,
    /// The object's UUID (the key of its table).
    pub id: String,
    /// Its name.
    pub name: String,
}

/// One experiment or dataset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogObject {
    /// UUID.
    pub id: String,
    /// `experiment` or `dataset`.
    #[serde(serialize_with = "serialize_object_type")]
    pub object_type: ObjectType,
    /// Owning project UUID.
    pub project_id: String,
    /// Owning org UUID.
    pub org_id: String,
    /// Name, unique per project and type.
    pub name: String,
    /// Free text, if given.
    pub description: Option<String>,
    /// User metadata (a JSON object), if given.
    pub metadata: Option<serde_json::Value>,
    /// RFC 3339 creation time.
    pub created: String,
}

fn serialize_object_type<S: serde::Serializer>(t: &ObjectType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.as_str())
}

/// What to create (see [`ProjectRegistry::create_object`]).
#[derive(Debug, Clone, Default)]
pub struct NewObject {
    /// The name; without one, the first free of `experiment-1`,
    /// `experiment-2`, ... (`dataset-1`, ... for a dataset).
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// A JSON object.
    pub metadata: Option<serde_json::Value>,
    /// When the name is taken: `true` makes a new object with a suffixed
    /// name (`name-2`, ...; an `Eval` asks for this), `false` returns the
    /// existing one (get-or-create).
    pub ensure_new: bool,
}

pub(crate) const OBJECTS_SQL: &str = "
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY,
    object_type TEXT NOT NULL,
    project_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    metadata TEXT,
    created TEXT NOT NULL,
    UNIQUE (project_id, object_type, name)
);
";

const COLUMNS: &str = "id, object_type, project_id, org_id, name, description, metadata, created";

impl Project {
    /// A handle on the table of `object` (an experiment or dataset of this
    /// project): what the store, ingest, queries, exports and retention
    /// take to work on that table instead of the project's logs.
    pub fn for_object(&self, object: &LogObject) -> Project {
        Project {
            object: Some(ObjectRef {
                object_type: object.object_type,
                id: object.id.clone(),
                name: object.name.clone(),
            }),
            ..self.clone()
        }
    }

    /// The project's own handle (its logs), whichever table this one addresses.
    pub fn logs_handle(&self) -> Project {
        Project {
            object: None,
            ..self.clone()
        }
    }

    /// The type of the table this handle addresses.
    pub fn object_type(&self) -> ObjectType {
        self.object
            .as_ref()
            .map_or(ObjectType::ProjectLogs, |o| o.object_type)
    }

    /// The key of the table this handle addresses: the project id for its
    /// logs, the object's id otherwise (unique over every table of the data
    /// directory, as both are UUIDs).
    pub fn table_id(&self) -> &str {
        self.object.as_ref().map_or(&self.id, |o| &o.id)
    }
}

impl ProjectRegistry {
    /// Create an experiment or dataset of `project` (see [`NewObject`] for
    /// a name that is taken).
    pub fn create_object(
        &self,
        project: &Project,
        object_type: ObjectType,
        new: &NewObject,
    ) -> Result<LogObject> {
        if object_type == ObjectType::ProjectLogs {
            return Err(Error::Internal(
                "project logs are not created as objects".to_string(),
            ));
        }
        // Everything given is checked first, a get-or-create included.
        if let Some(name) = &new.name {
            validate_object_name(object_type, name)?;
        }
        if let Some(metadata) = &new.metadata
            && !metadata.is_object()
        {
            return Err(Error::InvalidArgument(format!(
                "metadata: must be a JSON object, got `{metadata}`"
            )));
        }
        // The first free name: the name given, then `name-2`, `name-3`, ...;
        // unnamed, `experiment-1`, `experiment-2`, ... (a concurrent creator
        // may take one: try the next). A get-or-create returns the object
        // of the name given, found or made by another connection meanwhile.
        let mut n = 1u32;
        loop {
            let name = match (&new.name, n) {
                (Some(name), 1) => name.clone(),
                (Some(name), n) => format!("{name}-{n}"),
                (None, n) => format!("{object_type}-{n}"),
            };
            let get_or_create = n == 1 && new.name.is_some() && !new.ensure_new;
            let taken = self.object_by_name(project, object_type, &name)?;
            if let Some(existing) = taken.clone()
                && get_or_create
            {
                return Ok(existing);
            }
            if taken.is_none() {
                let object = LogObject {
                    id: Uuid::new_v4().to_string(),
                    object_type,
                    project_id: project.id.clone(),
                    org_id: project.org_id.clone(),
                    name,
                    description: new.description.clone(),
                    metadata: new.metadata.clone(),
                    created: self.now_rfc3339(),
                };
                match self.insert_object(&object) {
                    Ok(()) => return Ok(object),
                    // A get-or-create whose name another connection has
                    // just taken: return that object (not `name-2`).
                    Err(Error::State(e)) if is_constraint(&e) && get_or_create => {
                        if let Some(existing) =
                            self.object_by_name(project, object_type, &object.name)?
                        {
                            return Ok(existing);
                        }
                    }
                    Err(Error::State(e)) if is_constraint(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            n += 1;
        }
    }

    fn insert_object(&self, object: &LogObject) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO objects ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
            params![
                object.id,
                object.object_type.as_str(),
                object.project_id,
                object.org_id,
                object.name,
                object.description,
                object.metadata.as_ref().map(ToString::to_string),
                object.created
            ],
        )?;
        Ok(())
    }

    /// The `object_type` of `project` named `name`, if any.
    pub fn object_by_name(
        &self,
        project: &Project,
        object_type: ObjectType,
        name: &str,
    ) -> Result<Option<LogObject>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM objects WHERE project_id = ?1 AND object_type = ?2 AND name = ?3"
                ),
                params![project.id, object_type.as_str(), name],
                row_to_object,
            )
            .optional()?)
    }

    /// The experiments or datasets of `project`, oldest first.
    pub fn list_objects(
        &self,
        project: &Project,
        object_type: ObjectType,
    ) -> Result<Vec<LogObject>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM objects WHERE project_id = ?1 AND object_type = ?2 ORDER BY created, name"
        ))?;
        let rows = stmt.query_map(params![project.id, object_type.as_str()], row_to_object)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every table of the data directory, each a handle of
    /// [`crate::store::Store::logs`]: per project (by name), its logs, then
    /// its experiments and its datasets (oldest first).
    pub fn all_tables(&self) -> Result<Vec<Project>> {
        let mut tables = Vec::new();
        for project in self.list()? {
            let mut objects = self.list_objects(&project, ObjectType::Experiment)?;
            objects.extend(self.list_objects(&project, ObjectType::Dataset)?);
            let handles: Vec<Project> = objects.iter().map(|o| project.for_object(o)).collect();
            tables.push(project);
            tables.extend(handles);
        }
        Ok(tables)
    }

    /// The `object_type` with this id, with the project it belongs to (a
    /// handle on its table, see [`Project::for_object`]); `org_id` limits
    /// it to one org (another org's object is unknown, exactly like one
    /// that does not exist).
    pub fn object_table(
        &self,
        object_type: ObjectType,
        id: &str,
        org_id: Option<&str>,
    ) -> Result<(LogObject, Project)> {
        let unknown = || Error::UnknownObject {
            object_type,
            id: id.to_string(),
        };
        let id = Uuid::parse_str(id)
            .map_err(|_| unknown())?
            .hyphenated()
            .to_string();
        let object = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM objects WHERE id = ?1 AND object_type = ?2"),
                params![id, object_type.as_str()],
                row_to_object,
            )
            .optional()?
            .filter(|o| org_id.is_none_or(|org| o.org_id == org))
            .ok_or_else(unknown)?;
        let project = self.get(&object.project_id)?.for_object(&object);
        Ok((object, project))
    }

    /// The table a query source names: the project's logs (`project_logs`,
    /// by project id or name) or one experiment or dataset (by id).
    pub fn source_table(
        &self,
        object_type: ObjectType,
        arg: &str,
        org_id: Option<&str>,
    ) -> Result<Project> {
        match object_type {
            ObjectType::ProjectLogs => match org_id {
                Some(org) => self.resolve_in_org(org, arg),
                None => self.resolve(arg),
            },
            _ => Ok(self.object_table(object_type, arg, org_id)?.1),
        }
    }

    /// The table of `object_type` in `project` that an automation works
    /// on: the project's logs, or the experiment or dataset `object_id`
    /// (which must belong to the project).
    pub fn automation_table(
        &self,
        project: &Project,
        object_type: ObjectType,
        object_id: Option<&str>,
    ) -> Result<Project> {
        match (object_type, object_id) {
            (ObjectType::ProjectLogs, None) => Ok(project.logs_handle()),
            (ObjectType::ProjectLogs, Some(_)) => Err(Error::InvalidArgument(
                "object_id: `project_logs` takes no object id (it is the project's logs)"
                    .to_string(),
            )),
            (_, None) => Err(Error::InvalidArgument(format!(
                "object_id: an export of `{object_type}` needs the id of one {object_type} of the project"
            ))),
            (_, Some(id)) => {
                let (object, table) = self.object_table(object_type, id, Some(&project.org_id))?;
                if object.project_id != project.id {
                    // Of the same org (another org's is unknown): say whose.
                    return Err(Error::InvalidArgument(format!(
                        "object_id: {object_type} `{}` belongs to project `{}`, not `{}`; create the export in project `{}`",
                        object.id, table.name, project.name, table.name
                    )));
                }
                Ok(table)
            }
        }
    }
}

/// The object type a configuration's `object_type` names (`project_logs`
/// when it names none), or its problem: `` object_type: `x` is not one of
/// `project_logs`, `experiment`, `dataset` ``.
pub fn config_object_type(name: Option<&str>) -> std::result::Result<ObjectType, String> {
    match name {
        None => Ok(ObjectType::ProjectLogs),
        Some(name) => ObjectType::parse(name).ok_or_else(|| {
            format!(
                "object_type: `{name}` is not one of {}",
                spanlake_dsl::object_type_names()
            )
        }),
    }
}

/// An object id as its table is keyed: a UUID lowercase and hyphenated
/// (whichever spelling of it is given), anything else as given (an unknown
/// object then).
pub fn canonical_object_id(id: &str) -> String {
    Uuid::parse_str(id).map_or_else(|_| id.to_string(), |u| u.hyphenated().to_string())
}

fn validate_object_name(object_type: ObjectType, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "name: cannot be empty; leave it out and the {object_type} gets one"
        )));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "name: {object_type} name `{}` contains control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

fn row_to_object(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogObject> {
    let object_type: String = r.get(1)?;
    let metadata: Option<String> = r.get(6)?;
    Ok(LogObject {
        id: r.get(0)?,
        object_type: ObjectType::parse(&object_type).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown object type `{object_type}`").into(),
            )
        })?,
        project_id: r.get(2)?,
        org_id: r.get(3)?,
        name: r.get(4)?,
        description: r.get(5)?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        created: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (tempfile::TempDir, ProjectRegistry, Project) {
        let dir = tempfile::tempdir().unwrap();
        let registry = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        let project = registry.create("p").unwrap();
        (dir, registry, project)
    }

    #[test]
    fn ensure_new_suffixes_a_taken_name_and_get_or_create_returns_it() {
        let (_dir, registry, project) = registry();
        let new = |name: &str, ensure_new| NewObject {
            name: Some(name.to_string()),
            ensure_new,
            ..NewObject::default()
        };
        let first = registry
            .create_object(&project, ObjectType::Experiment, &new("run", true))
            .unwrap();
        let second = registry
            .create_object(&project, ObjectType::Experiment, &new("run", true))
            .unwrap();
        assert_eq!(
            (first.name.as_str(), second.name.as_str()),
            ("run", "run-2")
        );
        assert_ne!(first.id, second.id);
        let again = registry
            .create_object(&project, ObjectType::Experiment, &new("run", false))
            .unwrap();
        assert_eq!(again, first);
        // A dataset of the same name is another object.
        let dataset = registry
            .create_object(&project, ObjectType::Dataset, &new("run", false))
            .unwrap();
        assert_ne!(dataset.id, first.id);
        let unnamed = registry
            .create_object(&project, ObjectType::Experiment, &NewObject::default())
            .unwrap();
        assert_eq!(unnamed.name, "experiment-1");
        let listed: Vec<String> = registry
            .list_objects(&project, ObjectType::Experiment)
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(listed.len(), 3);
        assert!(listed.contains(&"run-2".to_string()));
    }

    #[test]
    fn a_handle_addresses_the_objects_table_and_other_orgs_do_not_see_it() {
        let (_dir, registry, project) = registry();
        let dataset = registry
            .create_object(&project, ObjectType::Dataset, &NewObject::default())
            .unwrap();
        let (found, table) = registry
            .object_table(ObjectType::Dataset, &dataset.id, Some(&project.org_id))
            .unwrap();
        assert_eq!(found, dataset);
        assert_eq!(table.table_id(), dataset.id);
        assert_eq!(table.id, project.id);
        assert_eq!(table.object_type(), ObjectType::Dataset);
        assert_eq!(table.logs_handle().table_id(), project.id);
        let err = registry
            .object_table(ObjectType::Dataset, &dataset.id, Some("another-org"))
            .unwrap_err();
        assert_eq!(err.to_string(), format!("unknown dataset `{}`", dataset.id));
        // An experiment id is not a dataset.
        assert!(matches!(
            registry.object_table(ObjectType::Experiment, &dataset.id, None),
            Err(Error::UnknownObject { .. })
        ));
        assert!(matches!(
            registry.object_table(ObjectType::Dataset, "not-a-uuid", None),
            Err(Error::UnknownObject { .. })
        ));
        let metadata = NewObject {
            metadata: Some(serde_json::json!([1])),
            ..NewObject::default()
        };
        let err = registry
            .create_object(&project, ObjectType::Dataset, &metadata)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata: must be a JSON object, got `[1]`"
        );
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    /// An automation of project P naming an experiment of project Q (of the
    /// same org) is told it belongs to Q.
    #[test]
    fn an_object_of_another_project_is_said_to_belong_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let registry = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        let p = registry.create("p").unwrap();
        let q = registry.create("q").unwrap();
        let experiment = registry
            .create_object(&q, ObjectType::Experiment, &NewObject::default())
            .unwrap();
        let err = registry
            .automation_table(&p, ObjectType::Experiment, Some(&experiment.id))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "object_id: experiment `{}` belongs to project `q`, not `p`; create the export in project `q`",
                experiment.id
            )
        );
    }

    /// A get-or-create of a name that exists checks the metadata too.
    #[test]
    fn get_or_create_of_an_existing_name_refuses_bad_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let registry = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        let project = registry.create("p").unwrap();
        let mut new = NewObject {
            name: Some("ds".to_string()),
            ..NewObject::default()
        };
        registry
            .create_object(&project, ObjectType::Dataset, &new)
            .unwrap();
        new.metadata = Some(serde_json::json!("text"));
        let err = registry
            .create_object(&project, ObjectType::Dataset, &new)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata: must be a JSON object, got `\"text\"`"
        );
    }

    /// Get-or-create of one name from several connections at once (as the
    /// server's pooled connections do) gives one object, never `ds-2`.
    #[test]
    fn concurrent_get_or_create_of_one_name_gives_one_object() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let project = ProjectRegistry::open(&db).unwrap().create("p").unwrap();
        let threads = 6;
        let rounds = 30;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (db, project, barrier) =
                    (db.clone(), project.clone(), std::sync::Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let registry = ProjectRegistry::open(&db).unwrap();
                    (0..rounds)
                        .map(|round| {
                            barrier.wait();
                            let new = NewObject {
                                name: Some(format!("ds{round}")),
                                ..NewObject::default()
                            };
                            registry
                                .create_object(&project, ObjectType::Dataset, &new)
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Vec<LogObject>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for round in 0..rounds {
            let ids: std::collections::BTreeSet<&str> =
                results.iter().map(|r| r[round].id.as_str()).collect();
            assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
            assert_eq!(results[0][round].name, format!("ds{round}"));
        }
        let registry = ProjectRegistry::open(&db).unwrap();
        assert_eq!(
            registry
                .list_objects(&project, ObjectType::Dataset)
                .unwrap()
                .len(),
            rounds
        );
    }
}
