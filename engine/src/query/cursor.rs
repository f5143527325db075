//! Paging by cursor: the page size and cursor of a query, and what a
//! cursor pins (the query's identity, the snapshot, the rows already read).

use std::hash::Hasher;

use crate::error::{Error, Result};

/// Reading a result in pages, the same for the CLI and the server: `size`
/// rows per page, starting after `cursor` (the token of the previous page)
/// or at the first row.
///
/// The query's own text may carry the cursor too (`cursor: '<token>'`, SQL
/// `OFFSET '<token>'`, as the BTQL docs page); it then pages even without
/// a [`Paging`] of the caller, and may not name another cursor than
/// `cursor`. Without a `size`, the query's `limit:` is the page size
/// (at most `max_size`; the `traces` shape excepted, whose `limit:` counts
/// traces, everywhere), else `default_size`.
#[derive(Debug, Clone)]
pub struct Paging {
    /// Rows per page, at least 1; `None`: see above.
    pub size: Option<u64>,
    /// Rows per page when neither `size` nor the query's `limit:` sets one.
    pub default_size: u64,
    /// The largest page a query's `limit:` may ask for.
    pub max_size: u64,
    /// The cursor of the previous page.
    pub cursor: Option<String>,
}

impl Paging {
    /// Rows per page when the query gives none: the server's default.
    pub const DEFAULT_SIZE: u64 = 1000;
    /// The largest page a query's `limit:` may ask for.
    pub const MAX_SIZE: u64 = 100_000;

    /// Pages of exactly `size` rows (the query's `limit:` stays a limit).
    pub fn of(size: u64, cursor: Option<String>) -> Self {
        Self {
            size: Some(size),
            cursor,
            ..Self::default()
        }
    }
}

impl Default for Paging {
    fn default() -> Self {
        Self {
            size: None,
            default_size: Self::DEFAULT_SIZE,
            max_size: Self::MAX_SIZE,
            cursor: None,
        }
    }
}

/// The paging of `query` under `asked`: the cursor of its text joined with
/// the caller's, and the page size (the `limit:` taken out of the query
/// when it is the page size). `None`: the query is read whole.
pub(super) fn paging_of(
    query: &mut spanlake_dsl::ast::Query,
    asked: Option<&Paging>,
) -> Result<Option<(u64, Option<String>)>> {
    let in_text = query.cursor.take().map(|clause| clause.value);
    let mut paging = match (asked, &in_text) {
        (Some(asked), _) => asked.clone(),
        (None, Some(_)) => Paging::default(),
        (None, None) => return Ok(None),
    };
    match (&paging.cursor, in_text) {
        (Some(given), Some(text)) if *given != text => {
            return Err(Error::InvalidArgument(
                "the query text names one cursor and the request another; give the cursor once"
                    .into(),
            ));
        }
        (_, Some(text)) => paging.cursor = Some(text),
        _ => {}
    }
    let traces = query
        .source()
        .is_some_and(|s| s.shape == spanlake_dsl::ast::Shape::Traces);
    let size = match paging.size {
        Some(size) => size,
        None if traces => paging.default_size,
        None => match query.limit.take() {
            Some(limit) if limit.value < 1 => {
                return Err(Error::InvalidArgument("`limit` must be at least 1".into()));
            }
            Some(limit) if u64::try_from(limit.value).unwrap_or(u64::MAX) > paging.max_size => {
                return Err(Error::InvalidArgument(format!(
                    "`limit` is the page size and may be at most {}; read more rows by sending the query again with each answer's `cursor`",
                    paging.max_size
                )));
            }
            Some(limit) => u64::try_from(limit.value).unwrap_or(u64::MAX),
            None => paging.default_size,
        },
    };
    if size == 0 {
        return Err(Error::InvalidArgument(
            "the page size must be at least 1".into(),
        ));
    }
    Ok(Some((size, paging.cursor)))
}

/// What a cursor pins: the query it belongs to, the snapshot (table version
/// per project) and how many rows earlier pages returned. Encoded as
/// URL-safe base64 of JSON: opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct CursorState {
    /// Format version.
    pub(super) v: u32,
    /// Fingerprint of the query text and time zone offset.
    pub(super) q: String,
    /// Table version per project id (absent: the project had no data).
    pub(super) s: std::collections::BTreeMap<String, Option<i64>>,
    /// Rows returned by earlier pages.
    pub(super) o: u64,
}

impl CursorState {
    pub(super) fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub(super) fn decode(token: &str) -> Result<Self> {
        use base64::Engine;
        let invalid = || {
            Error::InvalidArgument(
                "the cursor is not valid: pass the `cursor` of a previous page unchanged"
                    .to_string(),
            )
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| invalid())?;
        let state: Self = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if state.v != 1 {
            return Err(invalid());
        }
        Ok(state)
    }
}

/// What a cursor is bound to: the query's identity once paging took its
/// cursor (and, when it is the page size, its `limit:`) out, the page size
/// and the time zone. So the same query in any form, with or without its
/// `cursor:`, continues, and a cursor read under one meaning of `limit:`
/// (a limit with `--page-size`, the page size otherwise) is refused under
/// the other. FNV-1a, not the std hasher: the same in every build of one
/// version (a version whose AST differs refuses older cursors, clearly).
pub(super) fn query_fingerprint(
    query: &spanlake_dsl::ast::Query,
    page_size: u64,
    tz_offset_minutes: i32,
) -> String {
    let mut hash = fnv::FnvHasher::default();
    hash.write(query.identity().as_bytes());
    hash.write(&page_size.to_le_bytes());
    hash.write(&tz_offset_minutes.to_le_bytes());
    format!("{:016x}", hash.finish())
}
