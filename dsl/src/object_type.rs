//! The kinds of objects whose rows a query reads: a project's logs, one
//! experiment, one dataset. Each is a table of row versions with the same
//! merge semantics; the source function of a query names one
//! (`project_logs('<project>')`, `experiment('<id>')`, `dataset('<id>')`).

use std::fmt;

/// One kind of object holding rows (spec `data-model.md` §3.1 `origin.object_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ObjectType {
    /// The logs of a project (`project_logs`), the default.
    #[default]
    ProjectLogs,
    /// The rows of one experiment (an `Eval`'s cases, their spans and scores).
    Experiment,
    /// The records of one dataset.
    Dataset,
}

impl ObjectType {
    /// Every object type, in a stable order.
    pub const ALL: [ObjectType; 3] = [
        ObjectType::ProjectLogs,
        ObjectType::Experiment,
        ObjectType::Dataset,
    ];

    /// The name used in queries and configurations: `project_logs`,
    /// `experiment`, `dataset`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::ProjectLogs => "project_logs",
            ObjectType::Experiment => "experiment",
            ObjectType::Dataset => "dataset",
        }
    }

    /// The object type named `name` (any case), as [`Self::as_str`] writes it.
    pub fn parse(name: &str) -> Option<ObjectType> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    /// The field of an SDK row that names its object: `project_id`,
    /// `experiment_id` or `dataset_id`.
    pub fn id_field(self) -> &'static str {
        match self {
            ObjectType::ProjectLogs => "project_id",
            ObjectType::Experiment => "experiment_id",
            ObjectType::Dataset => "dataset_id",
        }
    }

    /// Whether rows of this type are spans of traces (so the `traces` and
    /// `summary` shapes apply); dataset records are not.
    pub fn has_traces(self) -> bool {
        !matches!(self, ObjectType::Dataset)
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accepted names, for error messages: `` `project_logs`, `experiment`, `dataset` ``.
pub fn object_type_names() -> String {
    ObjectType::ALL
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_none() {
        for t in ObjectType::ALL {
            assert_eq!(ObjectType::parse(t.as_str()), Some(t));
            assert_eq!(ObjectType::parse(&t.as_str().to_uppercase()), Some(t));
        }
        assert_eq!(ObjectType::parse("experiments"), None);
        assert_eq!(ObjectType::parse("prompt"), None);
        assert_eq!(
            object_type_names(),
            "`project_logs`, `experiment`, `dataset`"
        );
    }
}
