//! Time bucketing: `second(ts)` … `year(ts)` and `date_trunc(unit, ts)`.
//!
//! A bucket is computed in the caller's local time: `local = utc − offset`
//! where the offset is in minutes with the JavaScript `getTimezoneOffset`
//! sign (480 = UTC−8). The local time is truncated, then shifted back, so
//! the result is the UTC instant at which the local bucket starts. Fixed
//! widths (`15 minutes`, `2 hours`, `3 days`) are aligned on the Unix epoch
//! in local time; weeks start on Monday; months and years use the calendar.

use std::sync::Arc;

use arrow::array::{Array, AsArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use chrono::{Datelike, NaiveDate};
use datafusion_common::Result;
use datafusion_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

use super::array_result;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Bucket unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BucketUnit {
    /// Seconds.
    Second,
    /// Minutes.
    Minute,
    /// Hours.
    Hour,
    /// Days.
    Day,
    /// Weeks starting Monday.
    Week,
    /// Calendar months.
    Month,
    /// Calendar years.
    Year,
}

impl BucketUnit {
    /// Parses `hour`, `hours`; case-insensitive.
    pub fn parse(text: &str) -> Option<Self> {
        let lower = text.to_ascii_lowercase();
        Some(match lower.strip_suffix('s').unwrap_or(&lower) {
            "second" => Self::Second,
            "minute" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "year" => Self::Year,
            _ => return None,
        })
    }

    /// Parses a `date_trunc` unit: `'day'`, `'15 minutes'`, `'2 hours'`.
    /// Weeks, months and years take no multiple.
    pub fn parse_with_multiple(text: &str) -> Option<(Self, i64)> {
        let mut words = text.split_whitespace();
        let first = words.next()?;
        let (multiple, unit) = match first.parse::<i64>() {
            Ok(n) => (n, Self::parse(words.next()?)?),
            Err(_) => (1, Self::parse(first)?),
        };
        if words.next().is_some() || multiple < 1 {
            return None;
        }
        if multiple != 1 && matches!(unit, Self::Week | Self::Month | Self::Year) {
            return None;
        }
        Some((unit, multiple))
    }

    fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// Truncates a UTC microsecond timestamp to the start of its local bucket.
pub(crate) fn bucket_start(
    micros: i64,
    unit: BucketUnit,
    multiple: i64,
    tz_offset_minutes: i32,
) -> Option<i64> {
    let offset = i64::from(tz_offset_minutes) * MICROS_PER_MINUTE;
    let local = micros.checked_sub(offset)?;
    let floor_to = |width: i64| local.div_euclid(width) * width;
    let truncated = match unit {
        BucketUnit::Second => floor_to(MICROS_PER_SECOND * multiple),
        BucketUnit::Minute => floor_to(MICROS_PER_MINUTE * multiple),
        BucketUnit::Hour => floor_to(MICROS_PER_HOUR * multiple),
        BucketUnit::Day => floor_to(MICROS_PER_DAY * multiple),
        BucketUnit::Week => {
            let day = local.div_euclid(MICROS_PER_DAY);
            // 1970-01-01 was a Thursday: day 0 is 3 days after a Monday.
            (day - (day + 3).rem_euclid(7)) * MICROS_PER_DAY
        }
        BucketUnit::Month | BucketUnit::Year => {
            let day = local.div_euclid(MICROS_PER_DAY);
            let date = NaiveDate::from_num_days_from_ce_opt(i32::try_from(day + 719_163).ok()?)?;
            let month = if unit == BucketUnit::Year {
                1
            } else {
                date.month()
            };
            let first = NaiveDate::from_ymd_opt(date.year(), month, 1)?;
            i64::from(first.num_days_from_ce() - 719_163) * MICROS_PER_DAY
        }
    };
    truncated.checked_add(offset)
}

/// `time_bucket(ts)` → `Timestamp(µs, UTC)`; unit, multiple and offset are
/// fixed at plan time.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimeBucket {
    pub(crate) unit: BucketUnit,
    pub(crate) multiple: i64,
    pub(crate) tz_offset_minutes: i32,
    name: String,
    signature: Signature,
}

impl TimeBucket {
    /// Buckets of `multiple` `unit`s in the zone `tz_offset_minutes` (JS sign).
    pub fn new(unit: BucketUnit, multiple: i64, tz_offset_minutes: i32) -> Self {
        let name = format!(
            "time_bucket[{multiple} {}, tz_offset={tz_offset_minutes}]",
            unit.name()
        );
        Self {
            unit,
            multiple,
            tz_offset_minutes,
            name,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TimeBucket {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(crate::schema::timestamp_type())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let target = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
        let input = if input.data_type() == &target {
            input
        } else {
            arrow::compute::cast(&input, &target)?
        };
        let input = input.as_primitive::<TimestampMicrosecondType>();
        let out: TimestampMicrosecondArray = input
            .iter()
            .map(|v| {
                v.and_then(|m| bucket_start(m, self.unit, self.multiple, self.tz_offset_minutes))
            })
            .collect();
        array_result(out.with_timezone("UTC"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
            .timestamp_micros()
    }

    #[test]
    fn buckets_in_utc() {
        let t = at("2024-11-09T13:47:21.5Z");
        assert_eq!(
            bucket_start(t, BucketUnit::Second, 1, 0),
            Some(at("2024-11-09T13:47:21Z"))
        );
        assert_eq!(
            bucket_start(t, BucketUnit::Minute, 15, 0),
            Some(at("2024-11-09T13:45:00Z"))
        );
        assert_eq!(
            bucket_start(t, BucketUnit::Hour, 1, 0),
            Some(at("2024-11-09T13:00:00Z"))
        );
        assert_eq!(
            bucket_start(t, BucketUnit::Day, 1, 0),
            Some(at("2024-11-09T00:00:00Z"))
        );
        // 2024-11-09 is a Saturday; its week starts Monday 2024-11-04.
        assert_eq!(
            bucket_start(t, BucketUnit::Week, 1, 0),
            Some(at("2024-11-04T00:00:00Z"))
        );
        assert_eq!(
            bucket_start(t, BucketUnit::Month, 1, 0),
            Some(at("2024-11-01T00:00:00Z"))
        );
        assert_eq!(
            bucket_start(t, BucketUnit::Year, 1, 0),
            Some(at("2024-01-01T00:00:00Z"))
        );
        // A Monday stays on itself; before 1970 works too.
        assert_eq!(
            bucket_start(at("2024-11-04T00:00:00Z"), BucketUnit::Week, 1, 0),
            Some(at("2024-11-04T00:00:00Z"))
        );
        assert_eq!(
            bucket_start(at("1969-12-31T12:00:00Z"), BucketUnit::Week, 1, 0),
            Some(at("1969-12-29T00:00:00Z"))
        );
    }

    #[test]
    fn buckets_with_offset() {
        // 480 = UTC−8: 2024-11-09T03:00Z is 2024-11-08T19:00 local.
        let t = at("2024-11-09T03:00:00Z");
        assert_eq!(
            bucket_start(t, BucketUnit::Day, 1, 480),
            Some(at("2024-11-08T08:00:00Z"))
        );
        assert_eq!(
            bucket_start(t, BucketUnit::Month, 1, 480),
            Some(at("2024-11-01T08:00:00Z"))
        );
        // −330 = UTC+5:30.
        assert_eq!(
            bucket_start(t, BucketUnit::Hour, 1, -330),
            Some(at("2024-11-09T02:30:00Z"))
        );
        // Monday week start in local time: Monday 2024-11-04 01:00 local (UTC−8).
        assert_eq!(
            bucket_start(at("2024-11-04T09:00:00Z"), BucketUnit::Week, 1, 480),
            Some(at("2024-11-04T08:00:00Z"))
        );
        assert_eq!(
            bucket_start(at("2024-11-04T07:00:00Z"), BucketUnit::Week, 1, 480),
            Some(at("2024-10-28T08:00:00Z"))
        );
    }

    #[test]
    fn parses_units() {
        assert_eq!(
            BucketUnit::parse_with_multiple("15 minutes"),
            Some((BucketUnit::Minute, 15))
        );
        assert_eq!(
            BucketUnit::parse_with_multiple("Hour"),
            Some((BucketUnit::Hour, 1))
        );
        assert_eq!(BucketUnit::parse_with_multiple("2 weeks"), None);
        assert_eq!(BucketUnit::parse_with_multiple("0 days"), None);
        assert_eq!(BucketUnit::parse_with_multiple("fortnight"), None);
    }

    #[test]
    fn udf_on_arrays() {
        let udf = TimeBucket::new(BucketUnit::Day, 1, 0);
        let input = TimestampMicrosecondArray::from(vec![Some(at("2024-11-09T13:47:21Z")), None])
            .with_timezone("UTC");
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(Arc::new(input))],
                arg_fields: vec![],
                number_rows: 2,
                return_field: Arc::new(arrow::datatypes::Field::new(
                    "x",
                    crate::schema::timestamp_type(),
                    true,
                )),
                config_options: Arc::default(),
            })
            .unwrap()
            .to_array(2)
            .unwrap();
        let out = out.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(out.value(0), at("2024-11-09T00:00:00Z"));
        assert!(out.is_null(1));
    }
}
