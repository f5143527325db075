//! Rows of a query result as JSON: values keep their JSON types (a JSON
//! column is written as the JSON value it holds, datetimes are RFC 3339 UTC
//! ending in `Z`, integral floats print as integers, as JavaScript would).
//! Shared by `spanlake query` and the HTTP API.

use std::io::Write;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use spanlake_dsl::OutputColumn;

/// Writing into a `Vec` fails only on a value that cannot be encoded.
type Result<T> = std::io::Result<T>;

/// Append `{"col": value, ...}` for `row` to `buf`.
pub fn write_row_object(
    buf: &mut Vec<u8>,
    batch: &RecordBatch,
    columns: &[OutputColumn],
    row: usize,
) -> Result<()> {
    buf.push(b'{');
    for (index, column) in columns.iter().enumerate() {
        if index > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut *buf, &column.name)?;
        buf.push(b':');
        write_json_value(buf, batch.column(index).as_ref(), row, column.json)?;
    }
    buf.push(b'}');
    Ok(())
}

pub fn write_float(buf: &mut Vec<u8>, value: f64) -> Result<()> {
    const MAX_SAFE: f64 = 9_007_199_254_740_992.0;
    if !value.is_finite() {
        buf.extend_from_slice(b"null");
    } else if value.fract() == 0.0 && value.abs() < MAX_SAFE {
        write!(buf, "{}", value as i64)?;
    } else {
        serde_json::to_writer(&mut *buf, &value)?;
    }
    Ok(())
}

/// RFC 3339 UTC with a `Z`, and only as many fraction digits as needed (0, 3, 6).
pub fn format_timestamp_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(
        || micros.to_string(),
        |dt| dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

pub fn timestamp_micros(array: &dyn Array, row: usize) -> Option<i64> {
    Some(match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            array.as_primitive::<TimestampSecondType>().value(row) * 1_000_000
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            array.as_primitive::<TimestampMillisecondType>().value(row) * 1_000
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            array.as_primitive::<TimestampMicrosecondType>().value(row)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            array.as_primitive::<TimestampNanosecondType>().value(row) / 1_000
        }
        _ => return None,
    })
}

/// Append the JSON value of `array[row]`; `json`: the column holds JSON text.
pub fn write_json_value(
    buf: &mut Vec<u8>,
    array: &dyn Array,
    row: usize,
    json: bool,
) -> Result<()> {
    if array.is_null(row) {
        buf.extend_from_slice(b"null");
        return Ok(());
    }
    macro_rules! int {
        ($t:ty) => {{
            write!(buf, "{}", array.as_primitive::<$t>().value(row))?;
        }};
    }
    match array.data_type() {
        DataType::Null => buf.extend_from_slice(b"null"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = string_value(array, row);
            if json {
                buf.extend_from_slice(text.as_bytes());
            } else {
                serde_json::to_writer(&mut *buf, text)?;
            }
        }
        DataType::Boolean => {
            let value = array.as_boolean().value(row);
            buf.extend_from_slice(if value { b"true" } else { b"false" });
        }
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float16 => {
            write_float(
                buf,
                f64::from(array.as_primitive::<Float16Type>().value(row)),
            )?;
        }
        DataType::Float32 => {
            write_float(
                buf,
                f64::from(array.as_primitive::<Float32Type>().value(row)),
            )?;
        }
        DataType::Float64 => write_float(buf, array.as_primitive::<Float64Type>().value(row))?,
        DataType::Timestamp(..) => {
            let micros = timestamp_micros(array, row).unwrap_or_default();
            serde_json::to_writer(&mut *buf, &format_timestamp_micros(micros))?;
        }
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            let date = chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0)
                .map(|d| d.date_naive().to_string())
                .unwrap_or_default();
            serde_json::to_writer(&mut *buf, &date)?;
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())
                .map_err(std::io::Error::other)?;
            serde_json::to_writer(&mut *buf, &formatter.value(row).to_string())?;
        }
    }
    Ok(())
}

/// A string cell's text (Utf8, LargeUtf8 or Utf8View).
pub fn string_value(array: &dyn Array, row: usize) -> &str {
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row),
        _ => array.as_string_view().value(row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_and_timestamps() {
        let mut buf = Vec::new();
        write_float(&mut buf, 2.0).unwrap();
        buf.push(b' ');
        write_float(&mut buf, 0.25).unwrap();
        buf.push(b' ');
        write_float(&mut buf, f64::NAN).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "2 0.25 null");
        assert_eq!(format_timestamp_micros(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp_micros(1_500),
            "1970-01-01T00:00:00.001500Z"
        );
    }
}
