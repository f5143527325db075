//! The UDFs BTQL plans use, each a [`ScalarUDFImpl`] referenced directly in
//! plan expressions (no registry).
//!
//! All are vectorised: one call per batch, one pass over the input array,
//! writing into an Arrow builder. JSON is read without building `Value`
//! trees: [`json`] walks the text with serde visitors that borrow from the
//! input and skip what the path does not need, and returns slices of the
//! original text, so selected objects keep their key order and formatting.
//!
//! | UDF | what |
//! |---|---|
//! | [`JsonGet`] | value at a path (keys, indexes, negative indexes) as JSON text, string, f64, bool or display text |
//! | [`JsonLength`] | array length or string length of a JSON value |
//! | [`TextMatch`] | BTQL `MATCH`: all query tokens appear among the tokens of the string leaves |
//! | [`Includes`] | BTQL `INCLUDES`: array element / object value / scalar equal to the needle |
//! | [`JsonInList`] | BTQL `IN` with a JSON left side: the value, or any element of an array, is in the list |
//! | [`TimeBucket`] | time truncation with a time zone offset, multiples and Monday weeks |

mod json;
mod text;
mod time;

pub use json::{Includes, JsonGet, JsonInList, JsonKind, JsonLength, Needle};
pub use text::TextMatch;
pub(crate) use time::bucket_start as time_bucket_start;
pub use time::{BucketUnit, TimeBucket};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use datafusion_common::{Result, exec_err};
use datafusion_expr::ColumnarValue;

#[expect(unused_imports, reason = "re-exported for doc links")]
use datafusion_expr::ScalarUDFImpl;

/// The argument as a `Utf8` array of `rows` rows (casting other string types).
fn utf8_arg(value: &ColumnarValue, rows: usize) -> Result<StringArray> {
    let array: ArrayRef = value.to_array(rows)?;
    let array = match array.data_type() {
        DataType::Utf8 => array,
        DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
            arrow::compute::cast(&array, &DataType::Utf8)?
        }
        other => return exec_err!("expected a string argument, got {other}"),
    };
    Ok(array.as_string::<i32>().clone())
}

fn array_result(array: impl Array + 'static) -> Result<ColumnarValue> {
    Ok(ColumnarValue::Array(Arc::new(array)))
}
