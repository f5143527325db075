//! Parquet files: [`AsyncArrowWriter`] over an [`Upload`], zstd level 3 by
//! default, row groups bounded by rows and bytes, timestamps as
//! `TIMESTAMP(MICROS, isAdjustedToUTC = true)`, and the JSON columns
//! annotated with the Parquet `JSON` logical type.
//!
//! parquet-rs maps the `arrow.json` extension type to the JSON logical type
//! only with its `arrow_canonical_extension_types` feature, which would
//! rebuild the whole DataFusion graph; instead the Parquet schema is derived
//! as usual and the tagged columns are rewritten to `BYTE_ARRAY (JSON)`
//! before the writer is built.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::ArrowSchemaConverter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::async_writer::{AsyncArrowWriter, AsyncFileWriter};
use parquet::basic::{Compression, ConvertedType, LogicalType, Type as PhysicalType, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::{ColumnPath, SchemaDescriptor, Type, TypePtr};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;

use super::config::{ParquetCompression, SinkConfig};
use super::error::SinkError;
use super::partition::is_json;
use super::upload::{Upload, UploadedObject};

const FORMAT: &str = "parquet";

/// Columns of the spans schema whose values are nearly all distinct: a
/// dictionary would only be hashed into and abandoned. Without one, a
/// Parquet export of 300k spans took 5 to 7% less CPU and its files were 1%
/// smaller (the repetitive ones, such as `span_attributes`, `metadata` or
/// `tags`, keep theirs).
const HIGH_CARDINALITY: &[&str] = &[
    "id",
    "span_id",
    "root_span_id",
    "_pagination_key",
    "span_parents",
    "input",
    "output",
    "expected",
    "error",
    "metrics",
    "context",
];

impl AsyncFileWriter for Upload {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            self.put(bs)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    /// Finishing the object is left to [`ParquetFile::finish`], which keeps
    /// the error types and aborts on failure.
    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async { Ok(()) }.boxed()
    }
}

/// Shared by every file of one `write_stream`: properties and the Parquet
/// schema with its JSON annotations.
#[derive(Debug, Clone)]
pub(crate) struct ParquetLayout {
    properties: WriterProperties,
    parquet_schema: SchemaDescriptor,
}

impl ParquetLayout {
    pub(crate) fn new(
        schema: &Schema,
        config: &SinkConfig,
        compression: ParquetCompression,
    ) -> Result<Self, SinkError> {
        let compression = match compression {
            ParquetCompression::Zstd { level } => Compression::ZSTD(
                ZstdLevel::try_new(level)
                    .map_err(|e| SinkError::Internal(format!("zstd level {level}: {e}")))?,
            ),
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::None => Compression::UNCOMPRESSED,
        };
        let row_group_bytes = usize::try_from(config.row_group_bytes).unwrap_or(usize::MAX);
        let mut builder = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(config.row_group_rows))
            .set_max_row_group_bytes(Some(row_group_bytes))
            .set_created_by(format!("spanlake {}", env!("CARGO_PKG_VERSION")));
        for field in schema.fields() {
            let name = field.name().as_str();
            let path = ColumnPath::from(name);
            // Min and max of JSON text order nothing a reader filters on.
            if is_json(field) {
                builder =
                    builder.set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
            }
            if HIGH_CARDINALITY.contains(&name) {
                builder = builder.set_column_dictionary_enabled(path, false);
            }
        }
        let properties = builder.build();
        let converted = ArrowSchemaConverter::new()
            .with_coerce_types(properties.coerce_types())
            .convert(schema)
            .map_err(|e| SinkError::Schema {
                message: format!("cannot map the schema to Parquet: {e}"),
            })?;
        let parquet_schema = annotate_json_columns(schema, &converted)?;
        Ok(Self {
            properties,
            parquet_schema,
        })
    }
}

/// Rewrite the top-level columns tagged `arrow.json` as `BYTE_ARRAY (JSON)`.
fn annotate_json_columns(
    schema: &Schema,
    converted: &SchemaDescriptor,
) -> Result<SchemaDescriptor, SinkError> {
    let root = converted.root_schema();
    let mut fields: Vec<TypePtr> = Vec::with_capacity(root.get_fields().len());
    for (field, parquet_field) in schema.fields().iter().zip(root.get_fields()) {
        if !is_json(field) {
            fields.push(Arc::clone(parquet_field));
            continue;
        }
        let info = parquet_field.get_basic_info();
        let annotated = Type::primitive_type_builder(info.name(), PhysicalType::BYTE_ARRAY)
            .with_repetition(info.repetition())
            .with_logical_type(Some(LogicalType::Json))
            .with_converted_type(ConvertedType::JSON)
            .with_id(info.has_id().then(|| info.id()))
            .build()
            .map_err(|e| SinkError::Internal(format!("JSON column `{}`: {e}", field.name())))?;
        fields.push(Arc::new(annotated));
    }
    let annotated_root = Type::group_type_builder(root.name())
        .with_fields(fields)
        .build()
        .map_err(|e| SinkError::Internal(format!("Parquet schema: {e}")))?;
    Ok(SchemaDescriptor::new(Arc::new(annotated_root)))
}

/// One Parquet file being written.
pub(crate) struct ParquetFile {
    key: String,
    writer: AsyncArrowWriter<Upload>,
}

impl std::fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFile")
            .field("key", &self.key)
            .field("bytes_written", &self.writer.bytes_written())
            .field("in_progress_rows", &self.writer.in_progress_rows())
            .finish_non_exhaustive()
    }
}

impl ParquetFile {
    pub(crate) fn new(
        upload: Upload,
        schema: &arrow::datatypes::SchemaRef,
        layout: &ParquetLayout,
    ) -> Result<Self, SinkError> {
        let key = upload.path().to_string();
        let options = ArrowWriterOptions::new()
            .with_properties(layout.properties.clone())
            .with_parquet_schema(layout.parquet_schema.clone());
        let writer = AsyncArrowWriter::try_new_with_options(upload, Arc::clone(schema), options)
            .map_err(|e| encode_error(&key, e))?;
        Ok(Self { key, writer })
    }

    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let result = self.writer.write(batch).await;
        result.map_err(|e| encode_error(&self.key, e))
    }

    /// Bytes uploaded or buffered for upload, plus the estimated size of
    /// the row group in progress.
    pub(crate) fn size(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Write the footer and complete the upload; aborts on failure.
    pub(crate) async fn finish(mut self) -> Result<UploadedObject, SinkError> {
        if let Err(error) = self.writer.finish().await {
            let error = encode_error(&self.key, error);
            self.writer.into_inner().abort().await;
            return Err(error);
        }
        self.writer.into_inner().finish().await
    }

    pub(crate) async fn abort(self) {
        self.writer.into_inner().abort().await;
    }
}

/// Recover a [`SinkError`] raised by the upload underneath the writer
/// (parquet may wrap it more than once).
fn encode_error(key: &str, error: ParquetError) -> SinkError {
    let encode = |source: Box<dyn std::error::Error + Send + Sync>| SinkError::Encode {
        key: key.to_owned(),
        format: FORMAT,
        source,
    };
    match error {
        ParquetError::External(inner) => match inner.downcast::<SinkError>() {
            Ok(sink) => *sink,
            Err(other) => match other.downcast::<ParquetError>() {
                Ok(parquet) => encode_error(key, *parquet),
                Err(other) => encode(other),
            },
        },
        other => encode(Box::new(other)),
    }
}
