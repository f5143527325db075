//! JSON Lines files: one JSON object per row and line, optionally gzip.
//!
//! - Every column is a key; nulls are written as `null`, so every line has
//!   the same keys.
//! - Timestamps (UTC after schema preparation) are RFC 3339 with six
//!   fractional digits and `Z`: `2026-11-24T10:15:00.000000Z`.
//! - JSON columns (tagged `arrow.json`) are written as their JSON values,
//!   not as strings. Valid JSON text is copied as is, except that raw line
//!   breaks (only possible as whitespace between tokens) become spaces so a
//!   value never spans lines; text that is not valid JSON is written as a
//!   JSON string, so no value is lost and no line is corrupted.
//! - Each batch is encoded into memory, compressed, then handed to the
//!   upload; the file size used for rolling is the compressed size.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, FieldRef};
use arrow::error::ArrowError;
use arrow::json::writer::{
    Encoder, EncoderFactory, EncoderOptions, LineDelimited, NullableEncoder, WriterBuilder,
};
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::value::RawValue;

use super::error::SinkError;
use super::partition::is_json;
use super::upload::{Upload, UploadedObject};

const FORMAT: &str = "jsonl";
/// chrono format of UTC timestamps: RFC 3339, microseconds, `Z`.
const TIMESTAMP_UTC_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// One JSON Lines file being written.
pub(crate) struct JsonlFile {
    upload: Upload,
    gzip: Option<GzEncoder<Vec<u8>>>,
}

impl std::fmt::Debug for JsonlFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlFile")
            .field("upload", &self.upload)
            .field("gzip", &self.gzip.is_some())
            .finish()
    }
}

impl JsonlFile {
    pub(crate) fn new(upload: Upload, gzip: bool) -> Self {
        Self {
            upload,
            gzip: gzip.then(|| GzEncoder::new(Vec::new(), Compression::default())),
        }
    }

    fn key(&self) -> String {
        self.upload.path().to_string()
    }

    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let lines = encode_lines(batch).map_err(|e| self.encode_error(e))?;
        let out = match &mut self.gzip {
            None => lines,
            Some(gzip) => match gzip.write_all(&lines) {
                Ok(()) => std::mem::take(gzip.get_mut()),
                Err(e) => return Err(self.encode_error(e)),
            },
        };
        self.upload.put(Bytes::from(out)).await
    }

    /// Bytes handed to the upload (compressed when gzip is on).
    pub(crate) fn size(&self) -> u64 {
        self.upload.bytes()
    }

    /// Flush the gzip trailer and complete the upload; aborts on failure.
    pub(crate) async fn finish(mut self) -> Result<UploadedObject, SinkError> {
        if let Some(gzip) = self.gzip.take() {
            let tail = match gzip.finish() {
                Ok(tail) => tail,
                Err(e) => {
                    let error = self.encode_error(e);
                    self.upload.abort().await;
                    return Err(error);
                }
            };
            if let Err(error) = self.upload.put(Bytes::from(tail)).await {
                self.upload.abort().await;
                return Err(error);
            }
        }
        self.upload.finish().await
    }

    pub(crate) async fn abort(self) {
        self.upload.abort().await;
    }

    fn encode_error(&self, source: impl std::error::Error + Send + Sync + 'static) -> SinkError {
        SinkError::Encode {
            key: self.key(),
            format: FORMAT,
            source: Box::new(source),
        }
    }
}

/// Encode `batch` as JSON Lines, one `\n`-terminated object per row.
fn encode_lines(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut lines = Vec::with_capacity(256 * batch.num_rows());
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_timestamp_tz_format(TIMESTAMP_UTC_FORMAT.to_owned())
        .with_encoder_factory(Arc::new(JsonTextEncoderFactory))
        .build::<_, LineDelimited>(&mut lines);
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(lines)
}

/// Writes the string columns tagged `arrow.json` as raw JSON values.
#[derive(Debug)]
struct JsonTextEncoderFactory;

impl EncoderFactory for JsonTextEncoderFactory {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        if !is_json(field) {
            return Ok(None);
        }
        let strings = match array.data_type() {
            DataType::Utf8 => array.as_string::<i32>().clone(),
            DataType::LargeUtf8 | DataType::Utf8View => {
                cast(array, &DataType::Utf8)?.as_string::<i32>().clone()
            }
            _ => return Ok(None),
        };
        let nulls = strings.nulls().cloned();
        Ok(Some(NullableEncoder::new(
            Box::new(JsonTextEncoder { strings }),
            nulls,
        )))
    }
}

struct JsonTextEncoder {
    strings: StringArray,
}

impl Encoder for JsonTextEncoder {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        write_json_text(self.strings.value(idx), out);
    }
}

/// Append `text` as a JSON value: itself when it is valid JSON (with raw
/// line breaks turned into spaces), else as a JSON string.
fn write_json_text(text: &str, out: &mut Vec<u8>) {
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => {
            let raw = raw.get();
            if raw.contains(['\n', '\r']) {
                // Inside valid JSON, a raw line break can only be
                // whitespace between tokens.
                out.extend(raw.bytes().map(|b| match b {
                    b'\n' | b'\r' => b' ',
                    other => other,
                }));
            } else {
                out.extend_from_slice(raw.as_bytes());
            }
        }
        Err(_) => {
            // A `&str` always serializes.
            let _ = serde_json::to_writer(&mut *out, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_text(text: &str) -> String {
        let mut out = Vec::new();
        write_json_text(text, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_text_is_raw_and_single_line() {
        assert_eq!(json_text(r#"{"a": [1, 2]}"#), r#"{"a": [1, 2]}"#);
        assert_eq!(json_text("  \"hi\" "), "\"hi\"");
        assert_eq!(
            json_text("12345678901234567890123"),
            "12345678901234567890123"
        );
        assert_eq!(
            json_text("{\n  \"a\": \"x\\ny\"\r\n}"),
            "{   \"a\": \"x\\ny\"  }"
        );
        assert_eq!(json_text("not json"), "\"not json\"");
        assert_eq!(json_text(""), "\"\"");
        assert_eq!(json_text("{\"a\":1} {"), "\"{\\\"a\\\":1} {\"");
    }
}
