//! BTQL `MATCH`: whole-word token search (spec §1.6.4).
//!
//! Tokens are maximal runs of alphanumeric characters, compared lowercase.
//! A row matches when every query token appears among the tokens of the
//! value: of the string itself, or (for JSON) of every string leaf found by
//! walking objects and arrays recursively (keys, numbers and booleans are
//! not text). A query with no tokens matches every non-null value.

use std::fmt;

use arrow::array::{Array, BooleanBuilder};
use arrow::datatypes::DataType;
use datafusion_common::Result;
use datafusion_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{array_result, utf8_arg};

/// Lowercase tokens of `text`.
pub(crate) fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Marks in `found` the query tokens present in `text`.
fn mark_tokens(text: &str, query: &[String], found: &mut [bool]) {
    for token in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
    {
        let lowered;
        let token = if token
            .bytes()
            .all(|b| !b.is_ascii_uppercase() && b.is_ascii())
        {
            token
        } else {
            lowered = token.to_lowercase();
            lowered.as_str()
        };
        for (q, hit) in query.iter().zip(found.iter_mut()) {
            if !*hit && q == token {
                *hit = true;
            }
        }
    }
}

/// Walks string leaves of a JSON value, marking found tokens.
struct Leaves<'q, 'f> {
    query: &'q [String],
    found: &'f mut [bool],
}

impl<'de> DeserializeSeed<'de> for Leaves<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Leaves<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        mark_tokens(v, self.query, self.found);
        Ok(())
    }
    fn visit_bool<E>(self, _v: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _v: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _v: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _v: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Leaves {
                query: self.query,
                found: &mut *self.found,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Leaves {
                query: self.query,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

/// Whether `text` (JSON when `json`) contains every token of `query`.
pub(crate) fn text_matches(
    text: &str,
    json: bool,
    query: &[String],
    found: &mut Vec<bool>,
) -> bool {
    found.clear();
    found.resize(query.len(), false);
    if json {
        let mut de = serde_json::Deserializer::from_str(text);
        if de
            .deserialize_any(Leaves {
                query,
                found: found.as_mut_slice(),
            })
            .is_err()
        {
            // Not JSON after all: search the raw text.
            found.iter_mut().for_each(|f| *f = false);
            mark_tokens(text, query, found);
        }
    } else {
        mark_tokens(text, query, found);
    }
    found.iter().all(|f| *f)
}

/// `text MATCH 'query'` with a literal query (`Boolean`; NULL text → NULL).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TextMatch {
    pub(crate) query: Vec<String>,
    pub(crate) json: bool,
    signature: Signature,
}

impl TextMatch {
    /// Matches `query`'s tokens in a JSON (`json = true`) or plain string argument.
    pub fn new(query: &str, json: bool) -> Self {
        Self {
            query: tokenize(query),
            json,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    /// The match of already tokenized `tokens` (what [`TextMatch::new`]
    /// makes of its query).
    pub fn from_tokens(tokens: Vec<String>, json: bool) -> Self {
        Self {
            query: tokens,
            json,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TextMatch {
    fn name(&self) -> &str {
        "text_match"
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
        let mut found = Vec::with_capacity(self.query.len());
        for text in input.iter() {
            out.append_option(text.map(|t| text_matches(t, self.json, &self.query, &mut found)));
        }
        array_result(out.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str, json: bool, query: &str) -> bool {
        text_matches(text, json, &tokenize(query), &mut Vec::new())
    }

    #[test]
    fn whole_words_only() {
        assert!(m("I like Apple pie", false, "apple"));
        assert!(!m("application", false, "app"));
        assert!(m("value-added", false, "value"));
        assert!(m("a b c", false, "C  a"));
        assert!(!m("a b", false, "a d"));
        assert!(m("anything", false, "--"));
    }

    #[test]
    fn json_string_leaves() {
        let doc = r#"{"msg": "Timeout after 30s", "tags": ["Prod-EU"], "n": 5, "key": "x"}"#;
        assert!(m(doc, true, "timeout"));
        assert!(m(doc, true, "eu prod"));
        assert!(!m(doc, true, "msg"), "keys are not text");
        assert!(!m(doc, true, "5"), "numbers are not text");
        assert!(m(r#""hello world""#, true, "world"));
        assert!(m("not { json", true, "json"));
    }
}
