//! The parameters of BTQL's functions as bytes, so that a plan using them
//! can run in another process (an executor of a cluster): DataFusion's plan
//! codec sends a function by name, and nearly all of ours carry parameters
//! (a JSON path, a time zone, a seed, a match query) that the name alone
//! does not give back.
//!
//! The bytes are JSON: `{"fn": "json_get", ...}`. Decoding builds the
//! function with its constructor, so it is the very function the planner
//! made.

use std::sync::Arc;

use datafusion_common::{DataFusionError, Result};
use datafusion_expr::{AggregateUDF, ScalarUDF};
use serde::{Deserialize, Serialize};

use super::udf::{JsonObjectBuild, JsonPreview, JsonUnpivot, SampleHash, ScoresAvg, UnpivotPart};
use crate::ast::PathStep;
use crate::functions::{
    BucketUnit, Includes, JsonGet, JsonInList, JsonKind, JsonLength, Needle, TextMatch, TimeBucket,
};

/// One of our scalar functions with its parameters.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
enum Scalar {
    JsonGet {
        kind: JsonKind,
        path: Vec<PathStep>,
    },
    JsonLength,
    Includes {
        haystack_json: bool,
        needle_json: bool,
    },
    JsonInList {
        list: Vec<Needle>,
    },
    TextMatch {
        tokens: Vec<String>,
        json: bool,
    },
    TimeBucket {
        unit: BucketUnit,
        multiple: i64,
        tz_offset_minutes: i32,
    },
    JsonObjectBuild {
        keys: Vec<String>,
        json: Vec<bool>,
    },
    JsonPreview {
        limit: usize,
    },
    JsonUnpivot {
        part: UnpivotPart,
    },
    SampleHash {
        seed: i64,
    },
}

/// One of our aggregate functions with its parameters.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
enum Aggregate {
    ScoresAvg,
}

fn of_scalar(udf: &ScalarUDF) -> Option<Scalar> {
    let inner = udf.inner();
    if let Some(f) = inner.downcast_ref::<JsonGet>() {
        return Some(Scalar::JsonGet {
            kind: f.kind,
            path: f.path.clone(),
        });
    }
    if inner.downcast_ref::<JsonLength>().is_some() {
        return Some(Scalar::JsonLength);
    }
    if let Some(f) = inner.downcast_ref::<Includes>() {
        return Some(Scalar::Includes {
            haystack_json: f.haystack_json,
            needle_json: f.needle_json,
        });
    }
    if let Some(f) = inner.downcast_ref::<JsonInList>() {
        return Some(Scalar::JsonInList {
            list: f.list.clone(),
        });
    }
    if let Some(f) = inner.downcast_ref::<TextMatch>() {
        return Some(Scalar::TextMatch {
            tokens: f.query.clone(),
            json: f.json,
        });
    }
    if let Some(f) = inner.downcast_ref::<TimeBucket>() {
        return Some(Scalar::TimeBucket {
            unit: f.unit,
            multiple: f.multiple,
            tz_offset_minutes: f.tz_offset_minutes,
        });
    }
    if let Some(f) = inner.downcast_ref::<JsonObjectBuild>() {
        return Some(Scalar::JsonObjectBuild {
            keys: f.keys.clone(),
            json: f.json.clone(),
        });
    }
    if let Some(f) = inner.downcast_ref::<JsonPreview>() {
        return Some(Scalar::JsonPreview { limit: f.limit });
    }
    if let Some(f) = inner.downcast_ref::<JsonUnpivot>() {
        return Some(Scalar::JsonUnpivot { part: f.part });
    }
    if let Some(f) = inner.downcast_ref::<SampleHash>() {
        return Some(Scalar::SampleHash { seed: f.seed });
    }
    None
}

/// The bytes of `udf` when it is one of BTQL's functions (`None` for
/// DataFusion's own, which travel by name).
pub fn encode_udf(udf: &ScalarUDF) -> Option<Vec<u8>> {
    of_scalar(udf).map(|f| serde_json::to_vec(&f).expect("function parameters serialise"))
}

/// The function [`encode_udf`] wrote into `bytes`; `None` when `bytes` are
/// not ours (empty, or another codec's).
pub fn decode_udf(bytes: &[u8]) -> Result<Option<Arc<ScalarUDF>>> {
    if !bytes.starts_with(b"{\"fn\":") {
        return Ok(None);
    }
    let f: Scalar = serde_json::from_slice(bytes).map_err(|e| {
        DataFusionError::Internal(format!("a BTQL function's parameters do not decode: {e}"))
    })?;
    let udf = match f {
        Scalar::JsonGet { kind, path } => ScalarUDF::from(JsonGet::new(kind, path)),
        Scalar::JsonLength => ScalarUDF::from(JsonLength::default()),
        Scalar::Includes {
            haystack_json,
            needle_json,
        } => ScalarUDF::from(Includes::new(haystack_json, needle_json)),
        Scalar::JsonInList { list } => ScalarUDF::from(JsonInList::new(list)),
        Scalar::TextMatch { tokens, json } => ScalarUDF::from(TextMatch::from_tokens(tokens, json)),
        Scalar::TimeBucket {
            unit,
            multiple,
            tz_offset_minutes,
        } => ScalarUDF::from(TimeBucket::new(unit, multiple, tz_offset_minutes)),
        Scalar::JsonObjectBuild { keys, json } => ScalarUDF::from(JsonObjectBuild::new(keys, json)),
        Scalar::JsonPreview { limit } => ScalarUDF::from(JsonPreview::new(limit)),
        Scalar::JsonUnpivot { part } => ScalarUDF::from(JsonUnpivot::new(part)),
        Scalar::SampleHash { seed } => ScalarUDF::from(SampleHash::new(seed)),
    };
    Ok(Some(Arc::new(udf)))
}

/// The bytes of `udaf` when it is one of BTQL's aggregates.
pub fn encode_udaf(udaf: &AggregateUDF) -> Option<Vec<u8>> {
    let f = udaf
        .inner()
        .downcast_ref::<ScoresAvg>()
        .map(|_| Aggregate::ScoresAvg)?;
    Some(serde_json::to_vec(&f).expect("aggregate parameters serialise"))
}

/// The aggregate [`encode_udaf`] wrote into `bytes`; `None` when the bytes
/// are not ours.
pub fn decode_udaf(bytes: &[u8]) -> Result<Option<Arc<AggregateUDF>>> {
    if !bytes.starts_with(b"{\"fn\":") {
        return Ok(None);
    }
    let f: Aggregate = serde_json::from_slice(bytes).map_err(|e| {
        DataFusionError::Internal(format!("a BTQL aggregate's parameters do not decode: {e}"))
    })?;
    Ok(Some(Arc::new(match f {
        Aggregate::ScoresAvg => AggregateUDF::new_from_impl(ScoresAvg::default()),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(udf: ScalarUDF) {
        let bytes = encode_udf(&udf).expect("ours");
        let back = decode_udf(&bytes).unwrap().expect("ours");
        assert_eq!(back.name(), udf.name());
        assert!(*back == udf, "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn every_function_with_parameters_comes_back_equal() {
        round_trip(ScalarUDF::from(JsonGet::new(
            JsonKind::Number,
            vec![PathStep::Key("tokens".into()), PathStep::Index(-1)],
        )));
        round_trip(ScalarUDF::from(JsonLength::default()));
        round_trip(ScalarUDF::from(Includes::new(true, false)));
        round_trip(ScalarUDF::from(JsonInList::new(vec![
            Needle::String("a".into()),
            Needle::Number(1.5),
            Needle::Bool(true),
        ])));
        round_trip(ScalarUDF::from(TextMatch::new("Hello wörld", true)));
        round_trip(ScalarUDF::from(TimeBucket::new(BucketUnit::Hour, 6, 480)));
        round_trip(ScalarUDF::from(JsonObjectBuild::new(
            vec!["a".into(), "b".into()],
            vec![true, false],
        )));
        round_trip(ScalarUDF::from(JsonPreview::new(120)));
        round_trip(ScalarUDF::from(JsonUnpivot::new(UnpivotPart::Values)));
        round_trip(ScalarUDF::from(SampleHash::new(-7)));
        let avg = AggregateUDF::new_from_impl(ScoresAvg::default());
        let back = decode_udaf(&encode_udaf(&avg).unwrap()).unwrap().unwrap();
        assert_eq!(back.name(), avg.name());
    }

    #[test]
    fn datafusions_own_functions_are_not_ours() {
        let upper = datafusion_functions::string::upper();
        assert!(encode_udf(&upper).is_none());
        assert!(decode_udf(b"").unwrap().is_none());
        assert!(decode_udf(b"{\"fn\":\"nope\"}").is_err());
    }
}
