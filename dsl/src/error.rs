//! Diagnostics: user errors as plain data (code, message, spans, help).
//!
//! Nothing here renders: the CLI turns a [`Span`] (byte offsets into the
//! query text) into line, column and caret. Codes are stable: `BTQL00xx`
//! syntax, `BTQL01xx` names and shapes, `BTQL02xx` types and functions,
//! `BTQL9xxx` internal errors (a broken invariant in spanlake, never the
//! user's fault; see [`Diagnostic::is_internal`]).

use std::fmt;

/// A half-open range of byte offsets into the query text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end` (byte offsets).
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }

    pub(crate) fn of(pair: &pest::iterators::Pair<'_, crate::syntax::Rule>) -> Span {
        // Non-atomic rules may end with skipped whitespace: leave it out.
        let span = pair.as_span();
        Span::new(span.start(), span.start() + span.as_str().trim_end().len())
    }
}

/// Stable diagnostic codes.
pub(crate) mod codes {
    pub(crate) const SYNTAX: &str = "BTQL0001";
    pub(crate) const DUPLICATE_CLAUSE: &str = "BTQL0002";
    pub(crate) const NUMBER_RANGE: &str = "BTQL0003";
    pub(crate) const TOO_DEEP: &str = "BTQL0004";
    pub(crate) const MISSING_FROM: &str = "BTQL0100";
    pub(crate) const UNKNOWN_SOURCE: &str = "BTQL0101";
    pub(crate) const SOURCE_ERROR: &str = "BTQL0102";
    pub(crate) const NOT_SUPPORTED: &str = "BTQL0103";
    pub(crate) const SPAN_PREDICATE_PLACE: &str = "BTQL0104";
    pub(crate) const UNKNOWN_FIELD: &str = "BTQL0110";
    pub(crate) const NOT_GROUPED: &str = "BTQL0113";
    pub(crate) const BAD_POSITION: &str = "BTQL0114";
    pub(crate) const DUPLICATE_NAME: &str = "BTQL0112";
    pub(crate) const UNKNOWN_FUNCTION: &str = "BTQL0200";
    pub(crate) const ARGUMENT_COUNT: &str = "BTQL0201";
    pub(crate) const AGGREGATE_IN_SELECT: &str = "BTQL0202";
    pub(crate) const LITERAL_REQUIRED: &str = "BTQL0203";
    pub(crate) const TYPE_MISMATCH: &str = "BTQL0204";
    pub(crate) const BAD_DATETIME: &str = "BTQL0205";
    pub(crate) const BAD_UNIT: &str = "BTQL0206";
    pub(crate) const NOT_AGGREGATE: &str = "BTQL0207";
    pub(crate) const UNPIVOT_TYPE: &str = "BTQL0208";
    pub(crate) const INTERNAL: &str = "BTQL9000";
}

/// One problem in a query, with where it is and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Stable code, e.g. `BTQL0110`.
    pub code: &'static str,
    /// Lowercase message, identifiers in backticks, no trailing period.
    pub message: String,
    /// Primary location.
    pub span: Span,
    /// Secondary locations with a note each.
    pub labels: Vec<(Span, String)>,
    /// What the user may do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without labels or help.
    pub fn new(code: &'static str, message: impl Into<String>, span: Span) -> Self {
        Self {
            code,
            message: message.into(),
            span,
            labels: Vec::new(),
            help: None,
        }
    }

    /// Adds a help text.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a labelled secondary span.
    #[must_use]
    pub fn with_label(mut self, span: Span, label: impl Into<String>) -> Self {
        self.labels.push((span, label.into()));
        self
    }

    /// An internal error: a broken invariant in spanlake, not a user mistake.
    pub(crate) fn internal(message: impl fmt::Display, span: Span) -> Self {
        Self::new(codes::INTERNAL, format!("internal error: {message}"), span)
    }

    /// Whether this reports a bug in spanlake rather than in the query.
    pub fn is_internal(&self) -> bool {
        self.code == codes::INTERNAL
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (at {}..{})",
            self.code, self.message, self.span.start, self.span.end
        )
    }
}

impl std::error::Error for Diagnostic {}

/// One or more diagnostics (planning may report several at once).
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether any of them is an internal error.
    pub fn is_internal(&self) -> bool {
        self.0.iter().any(Diagnostic::is_internal)
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Self {
        Diagnostics(vec![diagnostic])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
