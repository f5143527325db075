//! JSON path navigation over JSON text, borrowing from the input.
//!
//! A step into an object or an array is read with jiter: the keys are
//! compared as they come and the values before the wanted one are skipped
//! without being built, and the scan stops at it (negative indexes skip
//! every element, then count from the end). Nothing is allocated for keys
//! without escapes. Invalid JSON, a missing key, an out-of-range index or a
//! step into a scalar all give `None` (SQL NULL), never an error.
//!
//! Measured on the dimensions/measures query of 300k spans (four paths into
//! `metadata` and `metrics` per row): serde_json's deserializer with an
//! `IgnoredAny` visitor spent about 40% of the query's CPU skipping values.

use std::fmt;

use arrow::array::{Array, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::DataType;
use datafusion_common::Result;
use datafusion_expr::interval_arithmetic::Interval;
use datafusion_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use serde::de::{Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{array_result, utf8_arg};
use crate::ast::PathStep;

/// The raw text of the value at `path` inside `text`, or `None`.
pub(crate) fn navigate<'a>(text: &'a str, path: &[PathStep]) -> Option<&'a str> {
    let mut current = text.trim();
    for step in path {
        current = seek(current, step)?;
    }
    if current == "null" || current.is_empty() {
        None
    } else {
        Some(current)
    }
}

/// The raw text of the value one `step` inside the JSON value `text`, read
/// with jiter: the values before it are skipped without being built, and
/// the scan stops at the value (the first of duplicate keys). Text after
/// that value is not checked; the store's JSON columns are always valid
/// JSON, written by serde_json.
fn seek<'a>(text: &'a str, step: &PathStep) -> Option<&'a str> {
    let mut jiter = jiter::Jiter::new(text.as_bytes());
    let slice = |start: usize, end: usize| text.get(start..end).map(str::trim);
    match step {
        PathStep::Key(key) => {
            let mut next = jiter.next_object().ok()?;
            while let Some(candidate) = next {
                if candidate == key {
                    let start = jiter.current_index();
                    jiter.next_skip().ok()?;
                    return slice(start, jiter.current_index());
                }
                jiter.next_skip().ok()?;
                next = jiter.next_key().ok()?;
            }
            None
        }
        PathStep::Index(index) if *index >= 0 => {
            let mut peek = jiter.next_array().ok()?;
            let mut position = 0;
            while let Some(item) = peek {
                let start = jiter.current_index();
                jiter.known_skip(item).ok()?;
                if position == *index {
                    return slice(start, jiter.current_index());
                }
                peek = jiter.array_step().ok()?;
                position += 1;
            }
            None
        }
        PathStep::Index(index) => {
            let mut items: Vec<(usize, usize)> = Vec::new();
            let mut peek = jiter.next_array().ok()?;
            while let Some(item) = peek {
                let start = jiter.current_index();
                jiter.known_skip(item).ok()?;
                items.push((start, jiter.current_index()));
                peek = jiter.array_step().ok()?;
            }
            let from_end = index.unsigned_abs() as usize;
            let (start, end) = *items.get(items.len().checked_sub(from_end)?)?;
            slice(start, end)
        }
    }
}

/// The content of a JSON string value (borrowed when it has no escapes).
pub(crate) fn json_string(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !raw.starts_with('"') {
        return None;
    }
    let inner = &raw[1..raw.len().saturating_sub(1)];
    if !inner.contains('\\') {
        Some(std::borrow::Cow::Borrowed(inner))
    } else {
        serde_json::from_str::<String>(raw)
            .ok()
            .map(std::borrow::Cow::Owned)
    }
}

fn json_number(raw: &str) -> Option<f64> {
    match raw.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => raw.parse().ok(),
        _ => None,
    }
}

fn json_bool(raw: &str) -> Option<bool> {
    match raw {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// What [`JsonGet`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum JsonKind {
    /// The value as JSON text (`Utf8`); JSON `null` → NULL.
    Json,
    /// A JSON string's content (`Utf8`); other types → NULL.
    String,
    /// A JSON number (`Float64`); other types → NULL.
    Number,
    /// A JSON boolean (`Boolean`); other types → NULL.
    Bool,
    /// Display text (`Utf8`): a string's content, other values as JSON text.
    Text,
}

impl JsonKind {
    fn suffix(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::String => "str",
            Self::Number => "f64",
            Self::Bool => "bool",
            Self::Text => "text",
        }
    }
}

/// `json_get_<kind>(json_text)` at a fixed path; the path is part of the
/// function (and of its name, for EXPLAIN).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonGet {
    pub(crate) kind: JsonKind,
    pub(crate) path: Vec<PathStep>,
    name: String,
    signature: Signature,
}

impl JsonGet {
    /// Extraction of `path` as `kind`.
    pub fn new(kind: JsonKind, path: Vec<PathStep>) -> Self {
        let mut name = format!("json_get_{}", kind.suffix());
        for step in &path {
            match step {
                PathStep::Key(k) => name.push_str(&format!("[{k:?}]")),
                PathStep::Index(i) => name.push_str(&format!("[{i}]")),
            }
        }
        Self {
            kind,
            path,
            name,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonGet {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            JsonKind::Json | JsonKind::String | JsonKind::Text => DataType::Utf8,
            JsonKind::Number => DataType::Float64,
            JsonKind::Bool => DataType::Boolean,
        })
    }
    /// Unbounded, of the return type. DataFusion's default is an interval
    /// of type `Null`, on which deriving the ordering of `-f(x)` fails
    /// (and with it the physical plan's sanity check of a sort by it).
    fn evaluate_bounds(&self, _input: &[&Interval]) -> Result<Interval> {
        Interval::make_unbounded(&self.return_type(&[])?)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = utf8_arg(&args.args[0], args.number_rows)?;
        let rows = input
            .iter()
            .map(|text| text.and_then(|t| navigate(t, &self.path)));
        match self.kind {
            JsonKind::Json => {
                let mut out = StringBuilder::with_capacity(input.len(), input.value_data().len());
                rows.for_each(|v| out.append_option(v));
                array_result(out.finish())
            }
            JsonKind::String | JsonKind::Text => {
                let mut out =
                    StringBuilder::with_capacity(input.len(), input.value_data().len() / 2);
                for raw in rows {
                    match raw.map(|r| (json_string(r), r)) {
                        Some((Some(s), _)) => out.append_value(s),
                        Some((None, r)) if self.kind == JsonKind::Text => out.append_value(r),
                        _ => out.append_null(),
                    }
                }
                array_result(out.finish())
            }
            JsonKind::Number => {
                let mut out = Float64Builder::with_capacity(input.len());
                rows.for_each(|v| out.append_option(v.and_then(json_number)));
                array_result(out.finish())
            }
            JsonKind::Bool => {
                let mut out = BooleanBuilder::with_capacity(input.len());
                rows.for_each(|v| out.append_option(v.and_then(json_bool)));
                array_result(out.finish())
            }
        }
    }
}

/// `json_length(json_text)`: elements of an array, characters of a string,
/// NULL otherwise (`Int64`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonLength {
    signature: Signature,
}

impl Default for JsonLength {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

struct CountSeq;

impl<'de> Visitor<'de> for CountSeq {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Some(n))
    }
}

fn json_length(raw: &str) -> Option<i64> {
    if raw.starts_with('[') {
        let mut de = serde_json::Deserializer::from_str(raw);
        de.deserialize_seq(CountSeq).ok().flatten()
    } else {
        json_string(raw).map(|s| s.chars().count() as i64)
    }
}

impl ScalarUDFImpl for JsonLength {
    fn name(&self) -> &str {
        "json_length"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    /// Unbounded, of the return type. DataFusion's default is an interval
    /// of type `Null`, on which deriving the ordering of `-f(x)` fails
    /// (and with it the physical plan's sanity check of a sort by it).
    fn evaluate_bounds(&self, _input: &[&Interval]) -> Result<Interval> {
        Interval::make_unbounded(&self.return_type(&[])?)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = utf8_arg(&args.args[0], args.number_rows)?;
        let mut out = Int64Builder::with_capacity(input.len());
        for text in input.iter() {
            out.append_option(text.and_then(|t| navigate(t, &[])).and_then(json_length));
        }
        array_result(out.finish())
    }
}

/// A value to look for in JSON (`INCLUDES`, `IN`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Needle {
    /// A string.
    String(String),
    /// A number (ints and floats compare numerically).
    Number(f64),
    /// A boolean.
    Bool(bool),
}

impl Eq for Needle {}

impl std::hash::Hash for Needle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Needle::String(s) => s.hash(state),
            Needle::Number(n) => n.to_bits().hash(state),
            Needle::Bool(b) => b.hash(state),
        }
    }
}

macro_rules! scalar_none {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E>(self, _v: $t) -> Result<Self::Value, E> { Ok(None) })*
    };
}

impl Needle {
    /// Whether the raw JSON value equals this needle (same type, same value).
    fn matches(&self, raw: &str) -> bool {
        match self {
            Needle::String(s) => json_string(raw).is_some_and(|v| v == s.as_str()),
            Needle::Number(n) => json_number(raw).is_some_and(|v| v == *n),
            Needle::Bool(b) => json_bool(raw) == Some(*b),
        }
    }

    /// A needle from raw JSON text; `None` for null, objects and arrays.
    fn from_raw(raw: &str) -> Option<Needle> {
        json_string(raw)
            .map(|s| Needle::String(s.into_owned()))
            .or_else(|| json_number(raw).map(Needle::Number))
            .or_else(|| json_bool(raw).map(Needle::Bool))
    }
}

/// Calls `f` on each element (array) or each top-level value (object);
/// `None` when `raw` is a scalar or invalid.
fn for_each_member<'a>(raw: &'a str, mut f: impl FnMut(&'a str) -> bool) -> Option<bool> {
    struct Members<'f, 'a>(&'f mut dyn FnMut(&'a str) -> bool);
    impl<'a> Visitor<'a> for Members<'_, 'a> {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a container")
        }
        scalar_none!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut any = false;
            while let Some(v) = seq.next_element::<&'a RawValue>()? {
                any = any || (self.0)(v.get());
            }
            Ok(Some(any))
        }
        fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut any = false;
            while map.next_key::<IgnoredAny>()?.is_some() {
                let v = map.next_value::<&'a RawValue>()?;
                any = any || (self.0)(v.get());
            }
            Ok(Some(any))
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    de.deserialize_any(Members(&mut f)).ok().flatten()
}

/// `includes(haystack, needle)` → `Boolean`. The haystack is JSON text (or,
/// with `haystack_json = false`, a plain string). Array: some element equals
/// the needle; object: some top-level value does; scalar: it equals the
/// needle. NULL haystack → false (spec §1.6.2); NULL needle → NULL. The
/// needle argument may be `Utf8` (a string, or JSON text with
/// `needle_json`), a number or a boolean.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Includes {
    pub(crate) haystack_json: bool,
    pub(crate) needle_json: bool,
    signature: Signature,
}

impl Includes {
    /// See the type docs.
    pub fn new(haystack_json: bool, needle_json: bool) -> Self {
        Self {
            haystack_json,
            needle_json,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

fn haystack_contains(raw: &str, needle: &Needle) -> bool {
    match for_each_member(raw, |member| needle.matches(member)) {
        Some(found) => found,
        None => needle.matches(raw),
    }
}

impl ScalarUDFImpl for Includes {
    fn name(&self) -> &str {
        "includes"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::AsArray;
        let rows = args.number_rows;
        let haystack = utf8_arg(&args.args[0], rows)?;
        let needle_array = args.args[1].to_array(rows)?;
        let needle_array = match needle_array.data_type() {
            DataType::Utf8 | DataType::Boolean | DataType::Float64 => needle_array,
            DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
                arrow::compute::cast(&needle_array, &DataType::Utf8)?
            }
            _ => arrow::compute::cast(&needle_array, &DataType::Float64)?,
        };
        let mut out = BooleanBuilder::with_capacity(rows);
        for i in 0..rows {
            if needle_array.is_null(i) {
                out.append_null();
                continue;
            }
            let needle = match needle_array.data_type() {
                DataType::Boolean => Some(Needle::Bool(needle_array.as_boolean().value(i))),
                DataType::Float64 => Some(Needle::Number(
                    needle_array
                        .as_primitive::<arrow::datatypes::Float64Type>()
                        .value(i),
                )),
                _ => {
                    let text = needle_array.as_string::<i32>().value(i);
                    if self.needle_json {
                        Needle::from_raw(text.trim())
                    } else {
                        Some(Needle::String(text.to_string()))
                    }
                }
            };
            let Some(needle) = needle else {
                out.append_null();
                continue;
            };
            if haystack.is_null(i) {
                out.append_value(false);
                continue;
            }
            let text = haystack.value(i);
            let found = if self.haystack_json {
                haystack_contains(text.trim(), &needle)
            } else {
                matches!(&needle, Needle::String(s) if s == text)
            };
            out.append_value(found);
        }
        array_result(out.finish())
    }
}

/// `json_in(json_text)` for BTQL `IN` with a JSON left side and a literal
/// list: true when the value, or (for an array) any element, equals an item.
/// NULL input → NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonInList {
    pub(crate) list: Vec<Needle>,
    signature: Signature,
}

impl JsonInList {
    /// `IN` against these items.
    pub fn new(list: Vec<Needle>) -> Self {
        Self {
            list,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonInList {
    fn name(&self) -> &str {
        "json_in_list"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = utf8_arg(&args.args[0], args.number_rows)?;
        let mut out = BooleanBuilder::with_capacity(input.len());
        for text in input.iter() {
            let value = text.and_then(|t| navigate(t, &[]));
            out.append_option(value.map(|raw| {
                if raw.starts_with('[') {
                    for_each_member(raw, |m| self.list.iter().any(|n| n.matches(m)))
                        .unwrap_or(false)
                } else {
                    self.list.iter().any(|n| n.matches(raw))
                }
            }));
        }
        array_result(out.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> PathStep {
        PathStep::Key(k.to_string())
    }

    #[test]
    fn navigate_paths() {
        let doc = r#"{"a": {"b c": [1, {"x": "y"}, 3]}, "m": "s\"q", "n": null}"#;
        assert_eq!(
            navigate(doc, &[key("a"), key("b c"), PathStep::Index(0)]),
            Some("1")
        );
        assert_eq!(
            navigate(doc, &[key("a"), key("b c"), PathStep::Index(-1)]),
            Some("3")
        );
        assert_eq!(
            navigate(doc, &[key("a"), key("b c"), PathStep::Index(-3)]),
            Some("1")
        );
        assert_eq!(
            navigate(doc, &[key("a"), key("b c"), PathStep::Index(-4)]),
            None
        );
        assert_eq!(
            navigate(doc, &[key("a"), key("b c"), PathStep::Index(3)]),
            None
        );
        assert_eq!(
            navigate(doc, &[key("a"), key("b c"), PathStep::Index(1), key("x")]),
            Some("\"y\"")
        );
        assert_eq!(navigate(doc, &[key("n")]), None);
        assert_eq!(navigate(doc, &[key("missing"), key("x")]), None);
        assert_eq!(navigate(doc, &[key("m"), key("x")]), None);
        assert_eq!(
            json_string(navigate(doc, &[key("m")]).unwrap()).unwrap(),
            "s\"q"
        );
        assert_eq!(navigate("not json", &[key("a")]), None);
        assert_eq!(
            navigate(r#"{"a":{"z":1,"b":2}}"#, &[key("a")]),
            Some(r#"{"z":1,"b":2}"#)
        );
        // A key of a value skipped on the way is not the one sought; the
        // first of duplicate keys wins; escaped keys compare decoded.
        let metrics = r#"{ "x" : {"tokens": 1, "s": "}\"{"}, "tokens" : 2.5 , "tokens": 3 }"#;
        assert_eq!(navigate(metrics, &[key("tokens")]), Some("2.5"));
        assert_eq!(
            navigate(r#"{"a\"b": [1, 2]}"#, &[key("a\"b"), PathStep::Index(1)]),
            Some("2")
        );
        assert_eq!(
            navigate(r#"[ {"k": "v"} , 7 ]"#, &[PathStep::Index(0), key("k")]),
            Some("\"v\"")
        );
        assert_eq!(navigate("[]", &[PathStep::Index(-1)]), None);
        assert_eq!(navigate("", &[key("a")]), None);
    }

    #[test]
    fn includes_and_length() {
        assert!(haystack_contains(
            r#"["a","b"]"#,
            &Needle::String("b".into())
        ));
        assert!(!haystack_contains(
            r#"["a","b"]"#,
            &Needle::String("c".into())
        ));
        assert!(haystack_contains(r#"[1, 2.0]"#, &Needle::Number(2.0)));
        assert!(haystack_contains(
            r#"{"k": "v"}"#,
            &Needle::String("v".into())
        ));
        assert!(!haystack_contains(
            r#"{"k": "v"}"#,
            &Needle::String("k".into())
        ));
        assert!(haystack_contains(r#""v""#, &Needle::String("v".into())));
        assert_eq!(json_length("[1,[2,3],{}]"), Some(3));
        assert_eq!(json_length("\"héllo\""), Some(5));
        assert_eq!(json_length("{}"), None);
    }
}
