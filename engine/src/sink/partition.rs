//! Hive partitioning by the UTC `created` of each row, and the schema
//! preparation shared by both formats.
//!
//! A partition key is the number of whole days (or hours) since the Unix
//! epoch, rounded towards minus infinity, or `None` for a null `created`:
//!
//! ```text
//!   created (µs UTC)         day key   hour key   folder (hour)
//!   2026-11-24T10:15:00Z  →  20781     498754     date=2026-11-24/hour=10
//!   null                  →  None      None       date=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__
//! ```
//!
//! Null `created` goes to Hive's default partition, which Spark, Hive,
//! DuckDB and Trino read back as a null partition value: no row is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};

use super::config::Partitioning;
use super::error::SinkError;

/// The column rows are partitioned by.
pub(crate) const CREATED_COLUMN: &str = "created";
/// Partition value of rows whose `created` is null: Hive's name for a null
/// partition value, read back as null by Spark, Hive, DuckDB and Trino.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";
/// Arrow field metadata key of an extension type.
pub(crate) const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
/// Arrow's canonical JSON extension type.
pub(crate) const JSON_EXTENSION_NAME: &str = "arrow.json";

/// Whether `field` is tagged as JSON text (the `arrow.json` extension).
pub(crate) fn is_json(field: &arrow::datatypes::Field) -> bool {
    field
        .metadata()
        .get(EXTENSION_NAME_KEY)
        .is_some_and(|name| name == JSON_EXTENSION_NAME)
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Partition key of a row: days or hours since the epoch, `None` for a null
/// `created` (and for every row with [`Partitioning::None`]).
pub(crate) type PartitionKey = Option<i64>;

/// The input schema turned into the written one, and how to convert batches.
#[derive(Debug)]
pub(crate) struct PreparedSchema {
    /// The written schema: timestamps as µs UTC, JSON columns tagged with the
    /// `arrow.json` extension type.
    pub(crate) schema: SchemaRef,
    /// Columns cast to `Timestamp(µs, UTC)`.
    casts: Vec<usize>,
    /// Index of `created`, when partitioning needs it.
    pub(crate) created: Option<usize>,
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Check the input schema and derive the written one. Top-level timestamps
/// of any unit or zone become microseconds adjusted to UTC (an instant does
/// not change; a zone-less timestamp is taken as UTC). `json_columns` must
/// be strings when present; absent names are ignored, so one list of JSON
/// fields serves every export shape.
pub(crate) fn prepare_schema(
    input: &Schema,
    partitioning: Partitioning,
    json_columns: &[String],
) -> Result<PreparedSchema, SinkError> {
    let mut casts = Vec::new();
    let mut fields = Vec::with_capacity(input.fields().len());
    for (index, field) in input.fields().iter().enumerate() {
        let mut field = Field::clone(field);
        if let DataType::Timestamp(unit, zone) = field.data_type()
            && (*unit != TimeUnit::Microsecond || zone.as_deref() != Some("UTC"))
        {
            casts.push(index);
            field = field.with_data_type(utc_micros());
        }
        if json_columns.iter().any(|name| name == field.name()) {
            if !matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Err(SinkError::Schema {
                    message: format!(
                        "JSON column `{}` has type {}; expected a string type",
                        field.name(),
                        field.data_type()
                    ),
                });
            }
            let mut metadata = field.metadata().clone();
            metadata.insert(
                EXTENSION_NAME_KEY.to_owned(),
                JSON_EXTENSION_NAME.to_owned(),
            );
            field = field.with_metadata(metadata);
        }
        fields.push(field);
    }
    let created = match partitioning {
        Partitioning::None => None,
        Partitioning::Day | Partitioning::Hour => {
            let Some((index, field)) = input.column_with_name(CREATED_COLUMN) else {
                return Err(SinkError::Schema {
                    message: format!(
                        "partitioning `{}` needs a `{CREATED_COLUMN}` column",
                        partitioning.name()
                    ),
                });
            };
            if !matches!(field.data_type(), DataType::Timestamp(..)) {
                return Err(SinkError::Schema {
                    message: format!(
                        "column `{CREATED_COLUMN}` has type {}; partitioning needs a timestamp",
                        field.data_type()
                    ),
                });
            }
            Some(index)
        }
    };
    let schema = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
    Ok(PreparedSchema {
        schema,
        casts,
        created,
    })
}

impl PreparedSchema {
    /// Convert an input batch to the written schema.
    pub(crate) fn convert(&self, batch: &RecordBatch) -> Result<RecordBatch, SinkError> {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for &index in &self.casts {
            columns[index] =
                cast(&columns[index], &utc_micros()).map_err(|source| SinkError::Schema {
                    message: format!(
                        "cannot convert column `{}` to UTC microseconds: {source}",
                        self.schema.field(index).name()
                    ),
                })?;
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|source| {
            SinkError::Schema {
                message: format!("a batch does not match the stream schema: {source}"),
            }
        })
    }
}

/// Split `batch` into one batch per partition key, in order of first
/// appearance; rows keep their order within a partition. A batch with a
/// single key is returned as is, without copying.
pub(crate) fn split_by_partition(
    batch: &RecordBatch,
    created: Option<usize>,
    partitioning: Partitioning,
) -> Result<Vec<(PartitionKey, RecordBatch)>, SinkError> {
    let Some(created) = created else {
        return Ok(vec![(None, batch.clone())]);
    };
    let unit = match partitioning {
        Partitioning::Day => MICROS_PER_DAY,
        Partitioning::Hour => MICROS_PER_HOUR,
        Partitioning::None => return Ok(vec![(None, batch.clone())]),
    };
    let column = batch.column(created);
    let Some(created) = column.as_primitive_opt::<TimestampMicrosecondType>() else {
        return Err(SinkError::Internal(format!(
            "`{CREATED_COLUMN}` is {} after conversion",
            column.data_type()
        )));
    };
    let key_of = |row: usize| -> PartitionKey {
        created
            .is_valid(row)
            .then(|| created.value(row).div_euclid(unit))
    };
    let mut slots: HashMap<PartitionKey, usize> = HashMap::new();
    let mut groups: Vec<(PartitionKey, Vec<u32>)> = Vec::new();
    let mut last: Option<(PartitionKey, usize)> = None;
    for row in 0..batch.num_rows() {
        let key = key_of(row);
        let slot = match last {
            Some((last_key, slot)) if last_key == key => slot,
            _ => *slots.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            }),
        };
        last = Some((key, slot));
        let row = u32::try_from(row)
            .map_err(|_| SinkError::Internal("a batch has more than 2^32 rows".to_owned()))?;
        groups[slot].1.push(row);
    }
    if groups.len() <= 1 {
        return Ok(groups
            .into_iter()
            .map(|(key, _)| (key, batch.clone()))
            .collect());
    }
    groups
        .into_iter()
        .map(|(key, rows)| {
            let indices = UInt32Array::from(rows);
            let part = take_record_batch(batch, &indices).map_err(|source| {
                SinkError::Internal(format!("cannot split a batch by partition: {source}"))
            })?;
            Ok((key, part))
        })
        .collect()
}

/// The hive folder of a partition key: `date=2026-11-24`,
/// `date=2026-11-24/hour=07`, or `""` without partitioning.
pub(crate) fn partition_path(partitioning: Partitioning, key: PartitionKey) -> String {
    match (partitioning, key) {
        (Partitioning::None, _) => String::new(),
        (Partitioning::Day, None) => format!("date={NULL_PARTITION}"),
        (Partitioning::Hour, None) => format!("date={NULL_PARTITION}/hour={NULL_PARTITION}"),
        (Partitioning::Day, Some(days)) => format!("date={}", date_of_days(days)),
        (Partitioning::Hour, Some(hours)) => format!(
            "date={}/hour={:02}",
            date_of_days(hours.div_euclid(24)),
            hours.rem_euclid(24)
        ),
    }
}

/// `YYYY-MM-DD` of a day number since 1970-01-01 (proleptic Gregorian),
/// valid for every day an `i64` of microseconds can reach.
fn date_of_days(days: i64) -> String {
    // Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Like chrono and ISO 8601: a sign outside 0000..=9999.
    match year {
        0..=9999 => format!("{year:04}-{month:02}-{day:02}"),
        10_000.. => format!("+{year}-{month:02}-{day:02}"),
        _ => format!("-{:04}-{month:02}-{day:02}", -year),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use chrono::{DateTime, Utc};

    #[test]
    fn dates_match_chrono() {
        for days in (-800_000..800_000).step_by(997).chain([-1, 0, 1, 20_781]) {
            let chrono_date = DateTime::<Utc>::from_timestamp(days * 86_400, 0)
                .unwrap()
                .format("%Y-%m-%d")
                .to_string();
            assert_eq!(date_of_days(days), chrono_date, "day {days}");
        }
    }

    #[test]
    fn paths() {
        let micros = 1_795_515_300_000_000_i64; // 2026-11-24T10:15:00Z
        let day = micros.div_euclid(MICROS_PER_DAY);
        let hour = micros.div_euclid(MICROS_PER_HOUR);
        assert_eq!(
            partition_path(Partitioning::Day, Some(day)),
            "date=2026-11-24"
        );
        assert_eq!(
            partition_path(Partitioning::Hour, Some(hour)),
            "date=2026-11-24/hour=10"
        );
        assert_eq!(
            partition_path(Partitioning::Hour, Some(-1)),
            "date=1969-12-31/hour=23"
        );
        assert_eq!(
            partition_path(Partitioning::Day, None),
            "date=__HIVE_DEFAULT_PARTITION__"
        );
        assert_eq!(partition_path(Partitioning::None, Some(3)), "");
    }

    #[test]
    fn split_keeps_order_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(CREATED_COLUMN, utc_micros(), true),
        ]));
        let day = MICROS_PER_DAY;
        let created = TimestampMicrosecondArray::from(vec![
            Some(day + 5),
            None,
            Some(2 * day),
            Some(day + 7),
            Some(-1),
            None,
        ])
        .with_timezone("UTC");
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![0, 1, 2, 3, 4, 5])),
                Arc::new(created),
            ],
        )
        .unwrap();
        let parts = split_by_partition(&batch, Some(1), Partitioning::Day).unwrap();
        let summary: Vec<(PartitionKey, Vec<i64>)> = parts
            .iter()
            .map(|(key, part)| {
                let ids = part.column(0).as_primitive::<arrow::datatypes::Int64Type>();
                (*key, ids.values().to_vec())
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Some(1), vec![0, 3]),
                (None, vec![1, 5]),
                (Some(2), vec![2]),
                (Some(-1), vec![4]),
            ]
        );
    }

    #[test]
    fn prepare_checks_columns() {
        let schema = Schema::new(vec![
            Field::new("input", DataType::Int64, true),
            Field::new(
                CREATED_COLUMN,
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                true,
            ),
        ]);
        let err = prepare_schema(&schema, Partitioning::Day, &["input".into()]).unwrap_err();
        assert!(err.to_string().contains("JSON column `input`"), "{err}");
        let prepared = prepare_schema(&schema, Partitioning::Day, &[]).unwrap();
        assert_eq!(prepared.schema.field(1).data_type(), &utc_micros());
        assert_eq!(prepared.created, Some(1));
        let no_created = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
        assert!(prepare_schema(&no_created, Partitioning::Hour, &[]).is_err());
        assert!(prepare_schema(&no_created, Partitioning::None, &[]).is_ok());
    }
}
