//! The functions only the shape, unpivot and sample lowerings use.
//!
//! | function | what |
//! |---|---|
//! | [`JsonObjectBuild`] | a JSON object from columns (fixed keys; NULL members left out) |
//! | [`JsonPreview`] | a JSON value cut to `preview_length` characters (spec §2.3) |
//! | [`JsonUnpivot`] | the keys, the values or the elements of a JSON value, as a list to unnest |
//! | [`SampleHash`] | a deterministic pseudo-random number in `[0, 1)` from a key and a seed |
//! | [`ScoresAvg`] | aggregate: per key of JSON objects, the average of its numeric values |
//!
//! Numbers are written the way the renderers write `f64`: an integral value
//! below 2^53 without a fraction (`3`, not `3.0`).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, ListBuilder, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion_common::{Result, ScalarValue, exec_err};
use datafusion_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility,
};
use serde_json::{Map, Value};

/// A number as JSON text: integral values below 2^53 without a fraction,
/// non-finite values as `null`.
pub(crate) fn number_json(value: f64) -> String {
    const MAX_SAFE: f64 = 9_007_199_254_740_992.0;
    if !value.is_finite() {
        "null".to_string()
    } else if value.fract() == 0.0 && value.abs() < MAX_SAFE {
        format!("{}", value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or_else(|| "null".to_string(), |n| n.to_string())
    }
}

fn utf8(value: &ColumnarValue, rows: usize) -> Result<StringArray> {
    let array: ArrayRef = value.to_array(rows)?;
    let array = match array.data_type() {
        DataType::Utf8 => array,
        _ => arrow::compute::cast(&array, &DataType::Utf8)?,
    };
    Ok(array.as_string::<i32>().clone())
}

/// `json_object_build(v1, v2, ...)`: `{"k1": v1, "k2": v2, ...}` with the
/// keys given at planning; a member whose value is NULL is left out.
/// Each argument is a number, a boolean, a string, or JSON text (`json[i]`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct JsonObjectBuild {
    pub(crate) keys: Vec<String>,
    pub(crate) json: Vec<bool>,
    signature: Signature,
}

impl JsonObjectBuild {
    /// Members named `keys`; `json[i]` says argument `i` is JSON text.
    pub(crate) fn new(keys: Vec<String>, json: Vec<bool>) -> Self {
        Self {
            keys,
            json,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn cell_json(array: &dyn Array, row: usize, is_json: bool) -> Result<Option<String>> {
    if array.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match array.data_type() {
        DataType::Float64 => number_json(array.as_primitive::<Float64Type>().value(row)),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Utf8 if is_json => array.as_string::<i32>().value(row).to_string(),
        DataType::Utf8 => {
            Value::String(array.as_string::<i32>().value(row).to_string()).to_string()
        }
        other => return exec_err!("json_object_build: unsupported argument type {other}"),
    }))
}

impl ScalarUDFImpl for JsonObjectBuild {
    fn name(&self) -> &str {
        "json_object_build"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        if arrays.len() != self.keys.len() {
            return exec_err!(
                "json_object_build: {} keys, {} values",
                self.keys.len(),
                arrays.len()
            );
        }
        let mut out = StringBuilder::with_capacity(rows, rows * 32);
        for row in 0..rows {
            let mut text = String::from("{");
            for (i, array) in arrays.iter().enumerate() {
                if let Some(value) = cell_json(array.as_ref(), row, self.json[i])? {
                    if text.len() > 1 {
                        text.push(',');
                    }
                    text.push_str(&Value::String(self.keys[i].clone()).to_string());
                    text.push(':');
                    text.push_str(&value);
                }
            }
            text.push('}');
            out.append_value(text);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `json_preview(json)`: a string longer than the limit is cut to its first
/// `limit` characters; another value whose JSON text is longer than the
/// limit becomes the string of its first `limit` characters of JSON text;
/// shorter values are returned unchanged (spec §2.3 recommendation).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct JsonPreview {
    pub(crate) limit: usize,
    signature: Signature,
}

impl JsonPreview {
    /// Cut at `limit` characters.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

pub(crate) fn preview(text: &str, limit: usize) -> String {
    let cut = |s: &str| Value::String(s.chars().take(limit).collect()).to_string();
    match serde_json::from_str::<Value>(text) {
        Ok(Value::String(s)) if s.chars().count() > limit => cut(&s),
        Ok(Value::String(_)) => text.to_string(),
        _ if text.chars().count() > limit => cut(text),
        _ => text.to_string(),
    }
}

impl ScalarUDFImpl for JsonPreview {
    fn name(&self) -> &str {
        "json_preview"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = utf8(&args.args[0], args.number_rows)?;
        let mut out = StringBuilder::with_capacity(input.len(), input.value_data().len());
        for text in input.iter() {
            out.append_option(text.map(|t| preview(t, self.limit)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// What [`JsonUnpivot`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum UnpivotPart {
    /// Keys of an object (strings).
    Keys,
    /// Values of an object (JSON text), in key order.
    Values,
    /// Elements of an array (JSON text).
    Elements,
}

/// `json_unpivot_<part>(json)`: a `List<Utf8>` to unnest; NULL when the
/// value is not an object (keys, values) or not an array (elements), so
/// such rows, like empty ones, emit nothing.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct JsonUnpivot {
    pub(crate) part: UnpivotPart,
    name: String,
    signature: Signature,
}

impl JsonUnpivot {
    /// Lists `part`.
    pub(crate) fn new(part: UnpivotPart) -> Self {
        let suffix = match part {
            UnpivotPart::Keys => "keys",
            UnpivotPart::Values => "values",
            UnpivotPart::Elements => "elements",
        };
        Self {
            part,
            name: format!("json_unpivot_{suffix}"),
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonUnpivot {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Utf8,
            true,
        ))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = utf8(&args.args[0], args.number_rows)?;
        let mut out = ListBuilder::new(StringBuilder::new());
        for text in input.iter() {
            let parsed = text.and_then(|t| serde_json::from_str::<Value>(t).ok());
            match (self.part, parsed) {
                (UnpivotPart::Keys, Some(Value::Object(map))) => {
                    map.keys().for_each(|k| out.values().append_value(k));
                    out.append(true);
                }
                (UnpivotPart::Values, Some(Value::Object(map))) => {
                    for v in map.values() {
                        if v.is_null() {
                            out.values().append_null();
                        } else {
                            out.values().append_value(v.to_string());
                        }
                    }
                    out.append(true);
                }
                (UnpivotPart::Elements, Some(Value::Array(items))) => {
                    for v in &items {
                        if v.is_null() {
                            out.values().append_null();
                        } else {
                            out.values().append_value(v.to_string());
                        }
                    }
                    out.append(true);
                }
                _ => out.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `sample_hash(key)`: a number in `[0, 1)` that depends only on the key
/// text and the seed (FNV-1a, then splitmix64 with the seed; top 53 bits /
/// 2^53).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SampleHash {
    pub(crate) seed: i64,
    signature: Signature,
}

impl SampleHash {
    /// Hashing with `seed`.
    pub(crate) fn new(seed: i64) -> Self {
        Self {
            seed,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

pub(crate) fn sample_hash(key: &str, seed: i64) -> f64 {
    // FNV-1a over the key bytes, then the splitmix64 finaliser with the seed:
    // fixed arithmetic, so a seed gives the same sample on every build.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl ScalarUDFImpl for SampleHash {
    fn name(&self) -> &str {
        "sample_hash"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = utf8(&args.args[0], args.number_rows)?;
        let mut out = Float64Builder::with_capacity(input.len());
        for key in input.iter() {
            out.append_value(sample_hash(key.unwrap_or(""), self.seed));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Aggregate `scores_avg(json)`: over JSON objects, for each key the
/// average of its numeric values (NULL and non-numbers ignored); keys
/// without any number are left out, and no key at all gives NULL. The
/// partial state is JSON text `{"key": [sum, count], ...}`, so it merges
/// across partitions and spills like any string.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ScoresAvg {
    signature: Signature,
}

impl Default for ScoresAvg {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for ScoresAvg {
    fn name(&self) -> &str {
        "scores_avg"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn accumulator(&self, _acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<ScoresAccumulator>::default())
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("sums", DataType::Utf8, true))])
    }
}

/// Running `(sum, count)` per key, in first-seen order.
#[derive(Debug, Default)]
struct ScoresAccumulator {
    sums: Vec<(String, f64, f64)>,
}

impl ScoresAccumulator {
    fn add(&mut self, key: &str, sum: f64, count: f64) {
        match self.sums.iter_mut().find(|(k, _, _)| k == key) {
            Some(entry) => {
                entry.1 += sum;
                entry.2 += count;
            }
            None => self.sums.push((key.to_string(), sum, count)),
        }
    }
}

impl Accumulator for ScoresAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = arrow::compute::cast(&values[0], &DataType::Utf8)?;
        for text in array.as_string::<i32>().iter().flatten() {
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
                for (key, value) in &map {
                    if let Some(x) = value.as_f64() {
                        self.add(key, x, 1.0);
                    }
                }
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let array = arrow::compute::cast(&states[0], &DataType::Utf8)?;
        for text in array.as_string::<i32>().iter().flatten() {
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
                for (key, value) in &map {
                    if let Some([sum, count]) = value.as_array().map(|a| {
                        [
                            a.first().and_then(Value::as_f64),
                            a.get(1).and_then(Value::as_f64),
                        ]
                    }) {
                        self.add(key, sum.unwrap_or(0.0), count.unwrap_or(0.0));
                    }
                }
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let mut map = Map::new();
        for (key, sum, count) in &self.sums {
            map.insert(key.clone(), serde_json::json!([sum, count]));
        }
        Ok(vec![ScalarValue::Utf8(Some(
            Value::Object(map).to_string(),
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.sums.is_empty() {
            return Ok(ScalarValue::Utf8(None));
        }
        let mut text = String::from("{");
        for (i, (key, sum, count)) in self.sums.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&Value::String(key.clone()).to_string());
            text.push(':');
            text.push_str(&number_json(sum / count));
        }
        text.push('}');
        Ok(ScalarValue::Utf8(Some(text)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self
                .sums
                .iter()
                .map(|(k, _, _)| k.capacity() + 24)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_cuts_strings_and_long_json_only() {
        assert_eq!(preview("\"abcdef\"", 3), "\"abc\"");
        assert_eq!(preview("\"ab\"", 3), "\"ab\"");
        assert_eq!(preview("{\"a\":1}", 3), "\"{\\\"a\"");
        assert_eq!(preview("{\"a\":1}", 10), "{\"a\":1}");
        assert_eq!(preview("12345", 3), "\"123\"");
    }

    #[test]
    fn sample_hash_is_deterministic_and_in_range() {
        let a = sample_hash("t1", 7);
        assert_eq!(a, sample_hash("t1", 7));
        assert_ne!(a, sample_hash("t1", 8));
        assert!((0.0..1.0).contains(&a));
    }

    #[test]
    fn numbers_are_written_like_the_renderers() {
        assert_eq!(number_json(3.0), "3");
        assert_eq!(number_json(0.25), "0.25");
        assert_eq!(number_json(f64::NAN), "null");
    }
}
