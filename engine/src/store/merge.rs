//! Folding insert events into row state (data-model spec §3.2).
//!
//! The store keeps every insert event for an `id` as a row version; a read
//! folds those versions in order with [`apply_event`], starting from `None`
//! (no row). Before storage, each incoming event is split by
//! [`split_control_fields`] into its row fields and an [`EventOp`].
//!
//! # Control fields
//!
//! | field            | accepted type                                   | absent / `null` |
//! |------------------|-------------------------------------------------|-----------------|
//! | `_is_merge`      | boolean                                         | `false`         |
//! | `_object_delete` | boolean                                         | `false`         |
//! | `_merge_paths`   | array of arrays of strings                      | `[]`            |
//! | `_array_delete`  | array of `{"path": [string...], "delete": [..]}` | `[]`            |
//!
//! Any other type is a [`ControlFieldError`]; the event is then left
//! untouched (nothing is removed), so the caller can reject it whole. All
//! four fields are validated even when they end up unused. Precedence:
//! `_object_delete: true` wins over everything ([`EventOp::Delete`]); else
//! `_is_merge: true` gives [`EventOp::Merge`]; else [`EventOp::Replace`].
//! `_merge_paths` / `_array_delete` on a replace are validated but ignored
//! (the spec defines them only together with `_is_merge`). Every other field,
//! including `_parent_id`, stays in the event untouched.
//!
//! # Fold semantics
//!
//! * **Replace**: the row becomes exactly the event's fields. The one
//!   exception: if the fields lack `id`, the previous row's `id` is carried
//!   over (the key always stays in the row).
//! * **Delete**: the row is gone (`None`); the event's fields are discarded.
//! * **Merge onto no row** (never written, or deleted): the fields are
//!   inserted as-is (then `_array_delete` is applied, which is harmless). A
//!   merge after a delete therefore starts a fresh row.
//! * **Merge onto a row**, key by key over the event's fields:
//!   * `id`, `span_id`, `root_span_id`, `span_parents`, `_parent_id`,
//!     `created` of the event are *ignored*: the row keeps its own (or keeps
//!     lacking them: the span structure of a row is fixed by the event that
//!     created it, as in Braintrust, where these fields are skipped on merge).
//!   * top-level `tags`: when both old and new are arrays, the result is the
//!     set union: the existing elements in their order, then the new
//!     elements not already present (duplicates among the new ones dropped).
//!     Listing `["tags"]` in `_merge_paths` turns this off (new array replaces
//!     the old). Otherwise (either side not an array) the new value overwrites.
//!   * objects on both sides are merged recursively, key by key;
//!   * anything else (scalars, arrays, `null`, or an object replacing a
//!     non-object) overwrites. In particular **a JSON `null` overwrites**: the
//!     key is set to `null`, it is *not* removed and *not* treated as "no
//!     change". This matches the SDK's client-side merge and keeps "set to
//!     null" expressible; a field can still be left unchanged by omitting it.
//!   * `_merge_paths`: at each listed path the new value replaces the old one
//!     wholesale (no recursion below it), while the objects above it still
//!     merge. An empty path matches nothing.
//!   * after merging, each `_array_delete` entry removes every element equal
//!     (as a [`serde_json::Value`], so `1` ≠ `1.0`) to one of its `delete`
//!     values from the array at `path` (object keys only). Missing paths,
//!     non-object intermediates and non-array targets are silently skipped.
//!
//! # Guarantees
//!
//! * Pure and deterministic: the output depends only on the inputs.
//! * Key order is preserved (with `serde_json`'s `preserve_order`): merged keys
//!   keep their old position, new keys are appended in event order.
//! * Values are moved, never cloned, while merging; the cost is linear in the
//!   size of the event plus the lengths of the arrays touched by `tags` union
//!   and `_array_delete` (long string lists are hashed).

use std::collections::HashSet;

use serde_json::{Map, Value};

/// Control field: the event is merged into the existing row.
pub const IS_MERGE: &str = "_is_merge";
/// Control field: paths whose values replace the old ones wholesale on merge.
pub const MERGE_PATHS: &str = "_merge_paths";
/// Control field: values to remove from arrays after a merge.
pub const ARRAY_DELETE: &str = "_array_delete";
/// Control field: the event deletes the row.
pub const OBJECT_DELETE: &str = "_object_delete";

/// Top-level fields that a merge onto an existing row ignores: the row keeps
/// its own.
pub const MERGE_KEPT_FIELDS: [&str; 6] = [
    "id",
    "span_id",
    "root_span_id",
    "span_parents",
    "_parent_id",
    "created",
];

/// Top-level fields that a merge set-unions (unless listed in `_merge_paths`).
pub const SET_UNION_FIELDS: [&str; 1] = ["tags"];

/// Lists whose combined length exceeds this are deduplicated with a hash set
/// of their string elements instead of a quadratic scan.
const LINEAR_SCAN_LIMIT: usize = 32;

/// How one insert event is applied to the current state of its row.
#[derive(Debug, Clone, PartialEq)]
pub enum EventOp {
    /// The row becomes exactly the event's fields.
    Replace,
    /// The event's fields are deep-merged into the row (see module docs).
    Merge {
        /// Paths at which the new value replaces the old one wholesale.
        merge_paths: Vec<Vec<String>>,
        /// Values to remove from arrays after merging.
        array_delete: Vec<ArrayDelete>,
    },
    /// The row is deleted.
    Delete,
}

/// One `_array_delete` entry: remove the `delete` values from the array at `path`.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayDelete {
    /// Object keys leading from the row to the array.
    pub path: Vec<String>,
    /// Values to remove (compared with JSON value equality).
    pub delete: Vec<Value>,
}

/// A control field of an insert event has an invalid shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlFieldError {
    /// A control field (or a part of it) has the wrong JSON type.
    #[error("`{field}` must be {expected}; found {found} at `{at}`")]
    WrongType {
        /// The control field, e.g. `_merge_paths`.
        field: &'static str,
        /// What the whole field must be, e.g. "an array of arrays of strings".
        expected: &'static str,
        /// The JSON type found, e.g. "a number".
        found: &'static str,
        /// Where inside the field, e.g. `_merge_paths[1][0]`.
        at: String,
    },
    /// An `_array_delete` entry lacks `path` or `delete`.
    #[error("`_array_delete` must be {ARRAY_DELETE_EXPECTED}; entry {index} has no `{key}`")]
    MissingArrayDeleteKey {
        /// Index of the entry in `_array_delete`.
        index: usize,
        /// The missing key (`path` or `delete`).
        key: &'static str,
    },
}

const BOOL_EXPECTED: &str = "a boolean (or null)";
const MERGE_PATHS_EXPECTED: &str = "an array of arrays of strings";
const ARRAY_DELETE_EXPECTED: &str =
    "an array of objects {\"path\": [string, ...], \"delete\": [value, ...]}";

/// Parses the control fields `_is_merge`, `_merge_paths`, `_array_delete` and
/// `_object_delete` out of `event`, removing them (other keys, including
/// `_parent_id`, stay untouched and in order) and returning how to apply it.
///
/// # Errors
///
/// [`ControlFieldError`] when a control field has the wrong type; `event` is
/// then left unchanged.
pub fn split_control_fields(event: &mut Map<String, Value>) -> Result<EventOp, ControlFieldError> {
    let is_merge = parse_bool(event.get(IS_MERGE), IS_MERGE)?;
    let object_delete = parse_bool(event.get(OBJECT_DELETE), OBJECT_DELETE)?;
    let merge_paths = parse_merge_paths(event.get(MERGE_PATHS))?;
    let array_delete = parse_array_delete(event.get(ARRAY_DELETE))?;
    for key in [IS_MERGE, MERGE_PATHS, ARRAY_DELETE, OBJECT_DELETE] {
        event.shift_remove(key);
    }
    Ok(if object_delete {
        EventOp::Delete
    } else if is_merge {
        EventOp::Merge {
            merge_paths,
            array_delete,
        }
    } else {
        EventOp::Replace
    })
}

/// Applies one event to the current state of a row (`None` = no row, or
/// deleted) and returns the new state (`None` = deleted). See the module docs
/// for the exact semantics.
#[must_use]
pub fn apply_event(
    state: Option<Map<String, Value>>,
    op: &EventOp,
    mut fields: Map<String, Value>,
) -> Option<Map<String, Value>> {
    match op {
        EventOp::Delete => None,
        EventOp::Replace => {
            if !fields.contains_key("id")
                && let Some(id) = state.and_then(|mut row| row.shift_remove("id"))
            {
                // Keep the key, at the front where rows usually carry it.
                fields.shift_insert(0, "id".to_owned(), id);
            }
            Some(fields)
        }
        EventOp::Merge {
            merge_paths,
            array_delete,
        } => {
            let mut row = match state {
                None => fields,
                Some(mut row) => {
                    merge_row(&mut row, fields, merge_paths);
                    row
                }
            };
            for entry in array_delete {
                apply_array_delete(&mut row, entry);
            }
            Some(row)
        }
    }
}

/// Merges the event's top-level `fields` into `row`.
fn merge_row(
    row: &mut Map<String, Value>,
    fields: Map<String, Value>,
    merge_paths: &[Vec<String>],
) {
    let paths: Vec<&[String]> = merge_paths
        .iter()
        .map(Vec::as_slice)
        .filter(|p| !p.is_empty())
        .collect();
    for (key, value) in fields {
        if MERGE_KEPT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let (wholesale, below) = paths_below(&paths, &key);
        if !wholesale
            && SET_UNION_FIELDS.contains(&key.as_str())
            && let Some(Value::Array(old)) = row.get_mut(&key)
        {
            match value {
                Value::Array(new) => union_into(old, new),
                other => {
                    row.insert(key, other);
                }
            }
            continue;
        }
        merge_entry(row, key, value, wholesale, &below);
    }
}

/// Merges `from` into `into` key by key; `paths` are the `_merge_paths`
/// suffixes relative to this object.
fn merge_objects(into: &mut Map<String, Value>, from: Map<String, Value>, paths: &[&[String]]) {
    for (key, value) in from {
        let (wholesale, below) = paths_below(paths, &key);
        merge_entry(into, key, value, wholesale, &below);
    }
}

/// Merges one `key: value` into `into`: recursively when both sides are
/// objects and the key is not a wholesale merge path, else by overwriting.
fn merge_entry(
    into: &mut Map<String, Value>,
    key: String,
    value: Value,
    wholesale: bool,
    below: &[&[String]],
) {
    match value {
        Value::Object(new) if !wholesale => match into.get_mut(&key) {
            Some(Value::Object(old)) => merge_objects(old, new, below),
            _ => {
                into.insert(key, Value::Object(new));
            }
        },
        other => {
            into.insert(key, other);
        }
    }
}

/// For a child `key`, returns whether a merge path ends exactly there
/// (wholesale replacement) and the suffixes of the paths continuing below it.
/// `paths` never contains empty slices.
fn paths_below<'a>(paths: &[&'a [String]], key: &str) -> (bool, Vec<&'a [String]>) {
    let mut wholesale = false;
    let mut below = Vec::new();
    for path in paths {
        if let Some((first, rest)) = path.split_first()
            && first == key
        {
            if rest.is_empty() {
                wholesale = true;
            } else {
                below.push(rest);
            }
        }
    }
    (wholesale, below)
}

/// Appends to `old` the elements of `new` not already present (in `old` or
/// earlier in `new`), keeping `old`'s order. Short lists use a linear scan;
/// long ones hash their string elements (non-strings still scan linearly).
fn union_into(old: &mut Vec<Value>, new: Vec<Value>) {
    if old.len().saturating_add(new.len()) <= LINEAR_SCAN_LIMIT {
        for value in new {
            if !old.contains(&value) {
                old.push(value);
            }
        }
        return;
    }
    let mut seen: HashSet<String> = old
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    for value in new {
        let present = match &value {
            Value::String(s) => !seen.insert(s.clone()),
            other => old.contains(other),
        };
        if !present {
            old.push(value);
        }
    }
}

/// Removes the entry's `delete` values from the array at its `path`, if any.
fn apply_array_delete(row: &mut Map<String, Value>, entry: &ArrayDelete) {
    let Some((last, parents)) = entry.path.split_last() else {
        return;
    };
    if entry.delete.is_empty() {
        return;
    }
    let mut object = row;
    for key in parents {
        match object.get_mut(key) {
            Some(Value::Object(child)) => object = child,
            _ => return,
        }
    }
    let Some(Value::Array(array)) = object.get_mut(last) else {
        return;
    };
    if entry.delete.len() <= LINEAR_SCAN_LIMIT {
        array.retain(|v| !entry.delete.contains(v));
    } else {
        let strings: HashSet<&str> = entry.delete.iter().filter_map(Value::as_str).collect();
        array.retain(|v| match v {
            Value::String(s) => !strings.contains(s.as_str()),
            other => !entry.delete.contains(other),
        });
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(
    field: &'static str,
    expected: &'static str,
    found: &Value,
    at: String,
) -> ControlFieldError {
    ControlFieldError::WrongType {
        field,
        expected,
        found: type_name(found),
        at,
    }
}

fn parse_bool(value: Option<&Value>, field: &'static str) -> Result<bool, ControlFieldError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(wrong_type(field, BOOL_EXPECTED, other, field.to_owned())),
    }
}

/// Parses an array of strings at `at` (used for `_merge_paths` items and
/// `_array_delete[i].path`).
fn parse_string_path(
    value: &Value,
    field: &'static str,
    expected: &'static str,
    at: &str,
) -> Result<Vec<String>, ControlFieldError> {
    let Value::Array(items) = value else {
        return Err(wrong_type(field, expected, value, at.to_owned()));
    };
    items
        .iter()
        .enumerate()
        .map(|(j, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(wrong_type(field, expected, other, format!("{at}[{j}]"))),
        })
        .collect()
}

fn parse_merge_paths(value: Option<&Value>) -> Result<Vec<Vec<String>>, ControlFieldError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(wrong_type(
                MERGE_PATHS,
                MERGE_PATHS_EXPECTED,
                other,
                MERGE_PATHS.to_owned(),
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, path)| {
            parse_string_path(
                path,
                MERGE_PATHS,
                MERGE_PATHS_EXPECTED,
                &format!("{MERGE_PATHS}[{i}]"),
            )
        })
        .collect()
}

fn parse_array_delete(value: Option<&Value>) -> Result<Vec<ArrayDelete>, ControlFieldError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(wrong_type(
                ARRAY_DELETE,
                ARRAY_DELETE_EXPECTED,
                other,
                ARRAY_DELETE.to_owned(),
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{ARRAY_DELETE}[{i}]");
            let Value::Object(entry) = item else {
                return Err(wrong_type(ARRAY_DELETE, ARRAY_DELETE_EXPECTED, item, at));
            };
            let path = entry
                .get("path")
                .ok_or(ControlFieldError::MissingArrayDeleteKey {
                    index: i,
                    key: "path",
                })?;
            let path = parse_string_path(
                path,
                ARRAY_DELETE,
                ARRAY_DELETE_EXPECTED,
                &format!("{at}.path"),
            )?;
            let delete = match entry.get("delete") {
                None => {
                    return Err(ControlFieldError::MissingArrayDeleteKey {
                        index: i,
                        key: "delete",
                    });
                }
                Some(Value::Array(values)) => values.clone(),
                Some(other) => {
                    return Err(wrong_type(
                        ARRAY_DELETE,
                        ARRAY_DELETE_EXPECTED,
                        other,
                        format!("{at}.delete"),
                    ));
                }
            };
            Ok(ArrayDelete { path, delete })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("test fixture must be an object, got {other}"),
        }
    }

    /// Splits the control fields out of a raw event and applies it.
    fn apply_raw(state: Option<Value>, event: Value) -> Option<Value> {
        let mut fields = obj(event);
        let op = split_control_fields(&mut fields).expect("valid control fields");
        apply_event(state.map(obj), &op, fields).map(Value::Object)
    }

    /// Folds raw events in order from no row.
    fn fold(events: Vec<Value>) -> Option<Value> {
        events.into_iter().fold(None, apply_raw)
    }

    fn merge(state: Value, event: Value) -> Value {
        let mut event = obj(event);
        event.insert(IS_MERGE.to_owned(), Value::Bool(true));
        apply_raw(Some(state), Value::Object(event)).expect("merge keeps the row")
    }

    fn split_err(event: Value) -> ControlFieldError {
        let mut fields = obj(event);
        let before = fields.clone();
        let err = split_control_fields(&mut fields).expect_err("invalid control fields");
        assert_eq!(fields, before, "a failed split leaves the event untouched");
        err
    }

    fn keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect()
    }

    // ---- merge semantics -------------------------------------------------

    #[test]
    fn spec_example_deep_merge() {
        let out = merge(
            json!({"id": "r", "input": {"a": 5, "b": 10}}),
            json!({"id": "r", "input": {"b": 11, "c": 20}}),
        );
        assert_eq!(out, json!({"id": "r", "input": {"a": 5, "b": 11, "c": 20}}));
    }

    #[test]
    fn nested_merge_recurses_and_adds_keys() {
        let out = merge(
            json!({"id": "r", "metadata": {"m": {"x": 1, "y": {"z": 1}}, "k": 0}, "output": "o"}),
            json!({"metadata": {"m": {"y": {"w": 2}}, "new": true}, "scores": {"s": 0.5}}),
        );
        assert_eq!(
            out,
            json!({
                "id": "r",
                "metadata": {"m": {"x": 1, "y": {"z": 1, "w": 2}}, "k": 0, "new": true},
                "output": "o",
                "scores": {"s": 0.5}
            })
        );
    }

    #[test]
    fn key_order_is_preserved() {
        let out = merge(
            json!({"id": "r", "a": 1, "b": {"x": 1, "y": 2}, "c": 3}),
            json!({"d": 4, "b": {"z": 3, "x": 9}, "a": 0}),
        );
        assert_eq!(keys(&out), ["id", "a", "b", "c", "d"]);
        assert_eq!(keys(&out["b"]), ["x", "y", "z"]);
        assert_eq!(out["b"], json!({"x": 9, "y": 2, "z": 3}));
    }

    #[test]
    fn arrays_overwrite() {
        let out = merge(
            json!({"id": "r", "output": [1, 2, 3], "metadata": {"list": ["a", "b"]}}),
            json!({"output": [4], "metadata": {"list": []}}),
        );
        assert_eq!(
            out,
            json!({"id": "r", "output": [4], "metadata": {"list": []}})
        );
    }

    #[test]
    fn scalars_and_type_changes_overwrite() {
        let out = merge(
            json!({"id": "r", "a": 1, "b": {"x": 1}, "c": "s", "d": {"k": 1}}),
            json!({"a": "now a string", "b": 7, "c": {"now": "object"}, "d": [1]}),
        );
        assert_eq!(
            out,
            json!({"id": "r", "a": "now a string", "b": 7, "c": {"now": "object"}, "d": [1]})
        );
    }

    #[test]
    fn null_overwrites_and_is_not_removed() {
        let out = merge(
            json!({"id": "r", "output": {"x": 1}, "expected": 5, "metadata": {"a": 1, "b": 2}}),
            json!({"output": null, "metadata": {"a": null}}),
        );
        assert_eq!(
            out,
            json!({"id": "r", "output": null, "expected": 5, "metadata": {"a": null, "b": 2}})
        );
        assert!(out.as_object().expect("object").contains_key("output"));
        // And a later object merges onto the null as a fresh value.
        let out = merge(out, json!({"output": {"y": 2}}));
        assert_eq!(out["output"], json!({"y": 2}));
    }

    #[test]
    fn merge_paths_depth_one_replaces_wholesale() {
        let mut event = obj(json!({
            "_is_merge": true,
            "_merge_paths": [["output"]],
            "output": {"b": 2},
            "input": {"y": 2}
        }));
        let op = split_control_fields(&mut event).expect("valid");
        let out = apply_event(
            Some(obj(
                json!({"id": "r", "output": {"a": 1}, "input": {"x": 1}}),
            )),
            &op,
            event,
        );
        assert_eq!(
            out.map(Value::Object),
            Some(json!({"id": "r", "output": {"b": 2}, "input": {"x": 1, "y": 2}}))
        );
    }

    #[test]
    fn merge_paths_depth_two_merges_above_and_replaces_at() {
        let out = apply_raw(
            Some(json!({
                "id": "r",
                "input": {"a": {"keep": false, "old": 1}, "b": 10, "c": {"deep": {"x": 1}}}
            })),
            json!({
                "_is_merge": true,
                "_merge_paths": [["input", "a"], ["unrelated", "path"]],
                "input": {"a": {"new": 2}, "c": {"deep": {"y": 2}}}
            }),
        );
        assert_eq!(
            out,
            Some(json!({
                "id": "r",
                "input": {"a": {"new": 2}, "b": 10, "c": {"deep": {"x": 1, "y": 2}}}
            }))
        );
    }

    #[test]
    fn merge_path_deeper_than_event_value_still_merges_above() {
        // Path ends below a non-object new value: the value just overwrites.
        let out = apply_raw(
            Some(json!({"id": "r", "metadata": {"a": {"b": 1}, "c": 1}})),
            json!({"_is_merge": true, "_merge_paths": [["metadata", "a", "b"]], "metadata": {"a": {"b": {"z": 1}}}}),
        );
        assert_eq!(
            out,
            Some(json!({"id": "r", "metadata": {"a": {"b": {"z": 1}}, "c": 1}}))
        );
    }

    #[test]
    fn empty_merge_path_matches_nothing() {
        let out = apply_raw(
            Some(json!({"id": "r", "input": {"a": 1}})),
            json!({"_is_merge": true, "_merge_paths": [[]], "input": {"b": 2}}),
        );
        assert_eq!(out, Some(json!({"id": "r", "input": {"a": 1, "b": 2}})));
    }

    #[test]
    fn tags_are_set_unioned() {
        let out = merge(
            json!({"id": "r", "tags": ["a", "b"]}),
            json!({"tags": ["c", "a", "d", "c"]}),
        );
        assert_eq!(out, json!({"id": "r", "tags": ["a", "b", "c", "d"]}));
    }

    #[test]
    fn tags_union_large_lists_uses_hashing_path() {
        let old: Vec<Value> = (0..40).map(|i| json!(format!("t{i}"))).collect();
        let new: Vec<Value> = (30..50)
            .map(|i| json!(format!("t{i}")))
            .chain([json!("t45"), json!(1), json!(1)])
            .collect();
        let out = merge(json!({"id": "r", "tags": old}), json!({"tags": new}));
        let mut expected: Vec<Value> = (0..50).map(|i| json!(format!("t{i}"))).collect();
        expected.push(json!(1));
        assert_eq!(out["tags"], Value::Array(expected));
    }

    #[test]
    fn tags_in_merge_paths_replace() {
        let out = apply_raw(
            Some(json!({"id": "r", "tags": ["a", "b"]})),
            json!({"_is_merge": true, "_merge_paths": [["tags"]], "tags": ["c"]}),
        );
        assert_eq!(out, Some(json!({"id": "r", "tags": ["c"]})));
    }

    #[test]
    fn tags_non_array_cases_overwrite() {
        // Existing tags absent or null: the new array is taken.
        assert_eq!(
            merge(json!({"id": "r"}), json!({"tags": ["a"]}))["tags"],
            json!(["a"])
        );
        assert_eq!(
            merge(json!({"id": "r", "tags": null}), json!({"tags": ["a"]}))["tags"],
            json!(["a"])
        );
        // New tags null: overwrites (clears) like any null.
        assert_eq!(
            merge(json!({"id": "r", "tags": ["a"]}), json!({"tags": null}))["tags"],
            Value::Null
        );
    }

    #[test]
    fn only_top_level_tags_union() {
        let out = merge(
            json!({"id": "r", "metadata": {"tags": ["a"]}}),
            json!({"metadata": {"tags": ["b"]}}),
        );
        assert_eq!(out["metadata"]["tags"], json!(["b"]));
    }

    #[test]
    fn array_delete_on_tags() {
        let out = apply_raw(
            Some(json!({"id": "r", "tags": ["foo", "keep", "bar", "foo"]})),
            json!({
                "_is_merge": true,
                "tags": ["new"],
                "_array_delete": [{"path": ["tags"], "delete": ["foo", "bar", "absent"]}]
            }),
        );
        assert_eq!(out, Some(json!({"id": "r", "tags": ["keep", "new"]})));
    }

    #[test]
    fn array_delete_after_merge_can_remove_new_values() {
        let out = apply_raw(
            Some(json!({"id": "r", "tags": ["a"]})),
            json!({
                "_is_merge": true,
                "tags": ["b"],
                "_array_delete": [{"path": ["tags"], "delete": ["b"]}]
            }),
        );
        assert_eq!(out, Some(json!({"id": "r", "tags": ["a"]})));
    }

    #[test]
    fn array_delete_on_nested_array() {
        let out = apply_raw(
            Some(json!({"id": "r", "metadata": {"inner": {"list": [1, {"o": 1}, 2, "x", 1.0]}}})),
            json!({
                "_is_merge": true,
                "_array_delete": [{"path": ["metadata", "inner", "list"], "delete": [1, {"o": 1}]}]
            }),
        );
        // 1.0 is a different JSON number from 1.
        assert_eq!(
            out,
            Some(json!({"id": "r", "metadata": {"inner": {"list": [2, "x", 1.0]}}}))
        );
    }

    #[test]
    fn array_delete_large_delete_list() {
        let delete: Vec<Value> = (0..40)
            .map(|i| json!(format!("t{i}")))
            .chain([json!(7)])
            .collect();
        let out = apply_raw(
            Some(json!({"id": "r", "tags": ["t1", "keep", 7, 8, "t39"]})),
            json!({"_is_merge": true, "_array_delete": [{"path": ["tags"], "delete": delete}]}),
        );
        assert_eq!(out, Some(json!({"id": "r", "tags": ["keep", 8]})));
    }

    #[test]
    fn array_delete_missing_or_non_array_targets_are_noops() {
        let row = json!({"id": "r", "a": {"b": "string"}, "c": 5});
        let out = apply_raw(
            Some(row.clone()),
            json!({
                "_is_merge": true,
                "_array_delete": [
                    {"path": ["a", "b"], "delete": ["string"]},
                    {"path": ["c", "d"], "delete": [5]},
                    {"path": ["missing"], "delete": [1]},
                    {"path": [], "delete": [1]}
                ]
            }),
        );
        assert_eq!(out, Some(row));
    }

    #[test]
    fn merge_keeps_original_identity_fields() {
        let out = merge(
            json!({
                "id": "r",
                "created": "2024-01-01T00:00:00Z",
                "span_id": "s1",
                "root_span_id": "root1",
                "span_parents": ["p1"],
                "_parent_id": "parent1",
                "output": 1
            }),
            json!({
                "id": "r",
                "created": "2099-01-01T00:00:00Z",
                "span_id": "s2",
                "root_span_id": "root2",
                "span_parents": ["p2"],
                "_parent_id": "parent2",
                "output": 2
            }),
        );
        assert_eq!(
            out,
            json!({
                "id": "r",
                "created": "2024-01-01T00:00:00Z",
                "span_id": "s1",
                "root_span_id": "root1",
                "span_parents": ["p1"],
                "_parent_id": "parent1",
                "output": 2
            })
        );
    }

    #[test]
    fn merge_ignores_identity_fields_even_where_the_row_lacks_them() {
        let out = merge(
            json!({"id": "r", "span_parents": null, "output": 1}),
            json!({"span_parents": ["p"], "span_id": "s", "created": "c", "root_span_id": "root"}),
        );
        assert_eq!(out, json!({"id": "r", "span_parents": null, "output": 1}));
    }

    #[test]
    fn merge_keeps_id() {
        let out = merge(json!({"id": "r", "a": 1}), json!({"id": "other", "a": 2}));
        assert_eq!(out, json!({"id": "r", "a": 2}));
        let out = merge(json!({"id": "r", "a": 1}), json!({"a": 2}));
        assert_eq!(out, json!({"id": "r", "a": 2}));
    }

    #[test]
    fn replace_becomes_exactly_fields() {
        let out = apply_raw(
            Some(json!({"id": "r", "created": "old", "tags": ["a"], "input": {"a": 1}})),
            json!({"id": "r", "input": {"b": 2}, "_is_merge": false}),
        );
        assert_eq!(out, Some(json!({"id": "r", "input": {"b": 2}})));
    }

    #[test]
    fn replace_without_id_keeps_old_id() {
        let out = apply_raw(Some(json!({"id": "r", "a": 1})), json!({"b": 2}));
        assert_eq!(out, Some(json!({"id": "r", "b": 2})));
        assert_eq!(keys(out.as_ref().expect("row")), ["id", "b"]);
    }

    #[test]
    fn replace_ignores_merge_only_control_fields() {
        let out = apply_raw(
            Some(json!({"id": "r", "tags": ["a", "b"]})),
            json!({
                "id": "r",
                "tags": ["b", "c"],
                "_merge_paths": [["tags"]],
                "_array_delete": [{"path": ["tags"], "delete": ["b"]}]
            }),
        );
        assert_eq!(out, Some(json!({"id": "r", "tags": ["b", "c"]})));
    }

    #[test]
    fn merge_on_unknown_id_inserts_as_is() {
        let out = fold(vec![json!({
            "_is_merge": true,
            "_merge_paths": [["input"]],
            "_array_delete": [{"path": ["tags"], "delete": ["x"]}],
            "id": "r",
            "span_id": "s",
            "tags": ["x", "y"],
            "input": {"a": null}
        })]);
        assert_eq!(
            out,
            Some(json!({"id": "r", "span_id": "s", "tags": ["y"], "input": {"a": null}}))
        );
    }

    #[test]
    fn delete_returns_none() {
        let out = apply_raw(
            Some(json!({"id": "r", "a": 1})),
            json!({"id": "r", "_object_delete": true}),
        );
        assert_eq!(out, None);
        // Deleting a missing row is still "no row".
        assert_eq!(
            apply_raw(None, json!({"id": "r", "_object_delete": true})),
            None
        );
    }

    #[test]
    fn delete_wins_over_merge() {
        let mut event = obj(json!({"id": "r", "_is_merge": true, "_object_delete": true, "a": 1}));
        assert_eq!(split_control_fields(&mut event), Ok(EventOp::Delete));
        assert_eq!(event, obj(json!({"id": "r", "a": 1})));
        assert_eq!(
            apply_event(Some(obj(json!({"id": "r"}))), &EventOp::Delete, event),
            None
        );
    }

    #[test]
    fn delete_then_replace_starts_new_row() {
        let out = fold(vec![
            json!({"id": "r", "created": "c1", "input": {"a": 1}, "tags": ["t"]}),
            json!({"id": "r", "_object_delete": true}),
            json!({"id": "r", "created": "c2", "output": 2}),
        ]);
        assert_eq!(out, Some(json!({"id": "r", "created": "c2", "output": 2})));
    }

    #[test]
    fn delete_then_merge_starts_new_row() {
        let out = fold(vec![
            json!({"id": "r", "created": "c1", "input": {"a": 1}, "tags": ["t"]}),
            json!({"id": "r", "_object_delete": true}),
            json!({"id": "r", "_is_merge": true, "created": "c2", "input": {"b": 2}, "tags": ["u"]}),
        ]);
        assert_eq!(
            out,
            Some(json!({"id": "r", "created": "c2", "input": {"b": 2}, "tags": ["u"]}))
        );
    }

    #[test]
    fn sdk_span_lifecycle_fold() {
        let out = fold(vec![
            json!({
                "id": "r", "span_id": "s", "root_span_id": "s", "span_parents": [],
                "created": "c", "metrics": {"start": 1.0},
                "span_attributes": {"name": "root", "type": "task", "exec_counter": 1}
            }),
            json!({"id": "r", "span_id": "s", "root_span_id": "s", "_is_merge": true,
                   "input": {"q": "hi"}, "tags": ["a"]}),
            json!({"id": "r", "span_id": "s", "root_span_id": "s", "_is_merge": true,
                   "output": "hello", "metrics": {"end": 2.0}, "tags": ["b"]}),
        ]);
        assert_eq!(
            out,
            Some(json!({
                "id": "r", "span_id": "s", "root_span_id": "s", "span_parents": [],
                "created": "c", "metrics": {"start": 1.0, "end": 2.0},
                "span_attributes": {"name": "root", "type": "task", "exec_counter": 1},
                "input": {"q": "hi"}, "tags": ["a", "b"], "output": "hello"
            }))
        );
    }

    // ---- control-field parsing ------------------------------------------

    #[test]
    fn split_removes_control_fields_and_keeps_others_in_order() {
        let mut event = obj(json!({
            "id": "r",
            "_is_merge": true,
            "input": 1,
            "_merge_paths": [["input"], ["a", "b"]],
            "_parent_id": "p",
            "_array_delete": [{"path": ["tags"], "delete": ["x", 1]}],
            "_object_delete": false,
            "output": 2
        }));
        let op = split_control_fields(&mut event).expect("valid");
        assert_eq!(
            op,
            EventOp::Merge {
                merge_paths: vec![
                    vec!["input".to_owned()],
                    vec!["a".to_owned(), "b".to_owned()]
                ],
                array_delete: vec![ArrayDelete {
                    path: vec!["tags".to_owned()],
                    delete: vec![json!("x"), json!(1)],
                }],
            }
        );
        assert_eq!(
            keys(&Value::Object(event)),
            ["id", "input", "_parent_id", "output"]
        );
    }

    #[test]
    fn split_defaults_and_nulls() {
        let mut event = obj(json!({"id": "r"}));
        assert_eq!(split_control_fields(&mut event), Ok(EventOp::Replace));
        let mut event = obj(json!({
            "id": "r", "_is_merge": null, "_object_delete": null,
            "_merge_paths": null, "_array_delete": null
        }));
        assert_eq!(split_control_fields(&mut event), Ok(EventOp::Replace));
        assert_eq!(event, obj(json!({"id": "r"})));
        let mut event = obj(json!({"_is_merge": true, "_object_delete": false}));
        assert_eq!(
            split_control_fields(&mut event),
            Ok(EventOp::Merge {
                merge_paths: vec![],
                array_delete: vec![]
            })
        );
    }

    #[test]
    fn error_is_merge_not_bool() {
        let err = split_err(json!({"id": "r", "_is_merge": "yes"}));
        assert_eq!(
            err,
            ControlFieldError::WrongType {
                field: "_is_merge",
                expected: BOOL_EXPECTED,
                found: "a string",
                at: "_is_merge".to_owned(),
            }
        );
        assert_eq!(
            err.to_string(),
            "`_is_merge` must be a boolean (or null); found a string at `_is_merge`"
        );
    }

    #[test]
    fn error_object_delete_not_bool() {
        let err = split_err(json!({"_object_delete": 1}));
        assert!(
            err.to_string()
                .starts_with("`_object_delete` must be a boolean"),
            "{err}"
        );
    }

    #[test]
    fn error_merge_paths_shapes() {
        let err = split_err(json!({"_is_merge": true, "_merge_paths": ["input"]}));
        assert_eq!(
            err.to_string(),
            "`_merge_paths` must be an array of arrays of strings; found a string at `_merge_paths[0]`"
        );
        let err = split_err(json!({"_is_merge": true, "_merge_paths": [["a"], ["b", 3]]}));
        assert_eq!(
            err.to_string(),
            "`_merge_paths` must be an array of arrays of strings; found a number at `_merge_paths[1][1]`"
        );
        let err = split_err(json!({"_merge_paths": {"a": 1}}));
        assert!(
            err.to_string()
                .contains("found an object at `_merge_paths`"),
            "{err}"
        );
    }

    #[test]
    fn error_array_delete_shapes() {
        let err = split_err(json!({"_is_merge": true, "_array_delete": {"path": ["tags"]}}));
        assert!(
            err.to_string()
                .starts_with("`_array_delete` must be an array of objects"),
            "{err}"
        );
        let err = split_err(json!({"_array_delete": ["tags"]}));
        assert!(
            err.to_string()
                .ends_with("found a string at `_array_delete[0]`"),
            "{err}"
        );
        let err = split_err(json!({"_array_delete": [{"delete": ["x"]}]}));
        assert_eq!(
            err,
            ControlFieldError::MissingArrayDeleteKey {
                index: 0,
                key: "path"
            }
        );
        assert!(err.to_string().ends_with("entry 0 has no `path`"), "{err}");
        let err = split_err(
            json!({"_array_delete": [{"path": ["tags"], "delete": ["x"]}, {"path": ["tags"]}]}),
        );
        assert_eq!(
            err,
            ControlFieldError::MissingArrayDeleteKey {
                index: 1,
                key: "delete"
            }
        );
        let err = split_err(json!({"_array_delete": [{"path": "tags", "delete": ["x"]}]}));
        assert!(
            err.to_string()
                .ends_with("found a string at `_array_delete[0].path`"),
            "{err}"
        );
        let err = split_err(json!({"_array_delete": [{"path": ["tags", null], "delete": ["x"]}]}));
        assert!(
            err.to_string()
                .ends_with("found null at `_array_delete[0].path[1]`"),
            "{err}"
        );
        let err = split_err(json!({"_array_delete": [{"path": ["tags"], "delete": "x"}]}));
        assert!(
            err.to_string()
                .ends_with("found a string at `_array_delete[0].delete`"),
            "{err}"
        );
    }

    #[test]
    fn errors_reported_even_for_delete_events() {
        let err = split_err(json!({"_object_delete": true, "_merge_paths": "oops"}));
        assert!(matches!(
            err,
            ControlFieldError::WrongType {
                field: "_merge_paths",
                ..
            }
        ));
    }
}
