//! The BTQL abstract syntax tree, as written (before name resolution).
//!
//! Every node carries a [`Span`] of byte offsets into the query text. The
//! tree mirrors Braintrust's `ParsedQuery` (spec §1.9): one optional member
//! per clause. `NOT LIKE`, `NOT IN`, `NOT INCLUDES`, `NOT MATCH` are parsed
//! as `Unary { op: Not, .. }` around the positive form. `Display` prints an
//! expression in normalised source form (lowercase keywords, single spaces),
//! which is also the output name of an unaliased, non-path select item.

use std::fmt;

use crate::error::Span;

/// A parsed query: the clauses present, each at most once, in any order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// `select:`.
    pub select: Option<Clause<SelectList>>,
    /// `from:`.
    pub from: Option<Clause<Source>>,
    /// `filter:`.
    pub filter: Option<Clause<Expr>>,
    /// `dimensions:`.
    pub dimensions: Option<Clause<Vec<AliasedExpr>>>,
    /// `measures:`.
    pub measures: Option<Clause<Vec<AliasedExpr>>>,
    /// `pivot:`.
    pub pivot: Option<Clause<Vec<AliasedExpr>>>,
    /// `unpivot:`.
    pub unpivot: Option<Clause<Vec<UnpivotItem>>>,
    /// `sort:`.
    pub sort: Option<Clause<Vec<SortItem>>>,
    /// `limit:`.
    pub limit: Option<Clause<i64>>,
    /// `cursor:`.
    pub cursor: Option<Clause<String>>,
    /// `sample:`.
    pub sample: Option<Clause<Sample>>,
    /// `final_filter:`.
    pub final_filter: Option<Clause<Expr>>,
    /// `trace_filter:`.
    pub trace_filter: Option<Clause<Expr>>,
    /// `span_filter:`.
    pub span_filter: Option<Clause<Expr>>,
    /// `preview_length:`.
    pub preview_length: Option<Clause<i64>>,
    /// The whole query text.
    pub span: Span,
}

impl Query {
    /// The `from:` clause, if present.
    pub fn source(&self) -> Option<&Source> {
        self.from.as_ref().map(|clause| &clause.value)
    }

    /// The query without positions, as text: the same query in any form
    /// (clause syntax, SQL, JSON AST) and however spaced has one identity.
    /// What a cursor is bound to (with `cursor` cleared first). Positions
    /// are dropped from the derived `Debug` text, outside its string
    /// literals (where the same characters are the query's own text).
    pub fn identity(&self) -> String {
        const SPAN: &str = "Span { start: ";
        let debug = format!("{self:?}");
        let mut out = String::with_capacity(debug.len());
        let mut chars = debug.char_indices().peekable();
        let mut in_string = false;
        while let Some((at, c)) = chars.next() {
            if in_string {
                out.push(c);
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => in_string = false,
                    _ => {}
                }
            } else if c == '"' {
                in_string = true;
                out.push(c);
            } else if debug[at..].starts_with(SPAN) {
                out.push('_');
                let end = debug[at..].find('}').map_or(debug.len(), |end| at + end);
                while chars.peek().is_some_and(|(i, _)| *i <= end) {
                    chars.next();
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// One clause: its body and the span of the whole clause (keyword included).
#[derive(Debug, Clone, PartialEq)]
pub struct Clause<T> {
    /// The parsed body.
    pub value: T,
    /// From the keyword to the end of the body.
    pub span: Span,
}

/// Body of `select:`.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectList {
    /// `select: *`.
    Star(Span),
    /// `select: a, b as c`.
    Items(Vec<AliasedExpr>),
}

/// `expr [as alias]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasedExpr {
    /// The expression.
    pub expr: Expr,
    /// The explicit alias and its span.
    pub alias: Option<(String, Span)>,
    /// The whole item.
    pub span: Span,
}

/// `expr as (name[, value])` in `unpivot:`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpivotItem {
    /// The object or array to unpivot.
    pub expr: Expr,
    /// One name (array form) or two (key, value).
    pub names: Vec<String>,
    /// The whole item.
    pub span: Span,
}

/// `expr [asc|desc]` in `sort:`.
#[derive(Debug, Clone, PartialEq)]
pub struct SortItem {
    /// Sort key.
    pub expr: Expr,
    /// `desc` given.
    pub descending: bool,
    /// The whole item.
    pub span: Span,
}

/// `sample: 25%` (rate) or `sample: 10` (count), optional `seed N`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Rate or count.
    pub method: SampleMethod,
    /// Random seed.
    pub seed: Option<i64>,
}

/// Sampling method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleMethod {
    /// A fraction in `0..=1` (written as a percentage).
    Rate(f64),
    /// A number of rows.
    Count(i64),
}

/// Result shape of a source (spec §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Shape {
    /// One row per span (default).
    #[default]
    Spans,
    /// All spans of the matching traces.
    Traces,
    /// One summary row per matching trace.
    Summary,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::Spans => "spans",
            Shape::Traces => "traces",
            Shape::Summary => "summary",
        })
    }
}

/// `from: project_logs('id', ...) [shape]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Function name as written, e.g. `project_logs`.
    pub function: String,
    /// The literal string arguments (ids or names).
    pub args: Vec<String>,
    /// Shape word, `spans` when absent.
    pub shape: Shape,
    /// The source text (function, arguments and shape).
    pub span: Span,
}

/// An expression node.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is.
    pub span: Span,
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A decimal number.
    Float(f64),
    /// `'text'` or `"text"` in value position. Only quote escapes are
    /// decoded (`\'`, `''`); other backslashes are kept for LIKE patterns.
    String(String),
}

/// Interval units (spec §1.4; `week` accepted as 7 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntervalUnit {
    /// Years.
    Year,
    /// Months.
    Month,
    /// Weeks (7 days).
    Week,
    /// Days.
    Day,
    /// Hours.
    Hour,
    /// Minutes.
    Minute,
    /// Seconds.
    Second,
    /// Milliseconds.
    Millisecond,
    /// Microseconds.
    Microsecond,
}

impl IntervalUnit {
    /// Parses a singular or plural unit name, case-insensitively.
    pub fn parse(text: &str) -> Option<Self> {
        let lower = text.to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Some(match singular {
            "year" => Self::Year,
            "month" => Self::Month,
            "week" => Self::Week,
            "day" => Self::Day,
            "hour" => Self::Hour,
            "minute" => Self::Minute,
            "second" => Self::Second,
            "millisecond" => Self::Millisecond,
            "microsecond" => Self::Microsecond,
            _ => return None,
        })
    }

    /// Lowercase singular name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Year => "year",
            Self::Month => "month",
            Self::Week => "week",
            Self::Day => "day",
            Self::Hour => "hour",
            Self::Minute => "minute",
            Self::Second => "second",
            Self::Millisecond => "millisecond",
            Self::Microsecond => "microsecond",
        }
    }
}

/// Prefix operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `not` (three-valued).
    Not,
    /// `-` / `neg`.
    Neg,
}

/// Infix operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `or`.
    Or,
    /// `and`.
    And,
    /// `=` / `eq`.
    Eq,
    /// `!=` / `<>` / `ne`.
    NotEq,
    /// `<` / `lt`.
    Lt,
    /// `<=` / `le`.
    LtEq,
    /// `>` / `gt`.
    Gt,
    /// `>=` / `ge`.
    GtEq,
    /// `<=>`: null-safe equality.
    IsNotDistinctFrom,
    /// `<!=>`: null-safe inequality.
    IsDistinctFrom,
    /// `like`.
    Like,
    /// `ilike`.
    ILike,
    /// `match`: whole-word token search.
    Match,
    /// `includes` / `contains`.
    Includes,
    /// `+` / `add`.
    Add,
    /// `-` / `sub`.
    Sub,
    /// `*` / `mul`.
    Mul,
    /// `/` / `div`: real division.
    Div,
    /// `%` / `mod`.
    Mod,
}

impl BinaryOp {
    /// Normalised source spelling.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Or => "or",
            Self::And => "and",
            Self::Eq => "=",
            Self::NotEq => "!=",
            Self::Lt => "<",
            Self::LtEq => "<=",
            Self::Gt => ">",
            Self::GtEq => ">=",
            Self::IsNotDistinctFrom => "<=>",
            Self::IsDistinctFrom => "<!=>",
            Self::Like => "like",
            Self::ILike => "ilike",
            Self::Match => "match",
            Self::Includes => "includes",
            Self::Add => "+",
            Self::Sub => "-",
            Self::Mul => "*",
            Self::Div => "/",
            Self::Mod => "%",
        }
    }

    /// Whether it is one of the six comparisons or their null-safe forms.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            Self::Eq
                | Self::NotEq
                | Self::Lt
                | Self::LtEq
                | Self::Gt
                | Self::GtEq
                | Self::IsNotDistinctFrom
                | Self::IsDistinctFrom
        )
    }
}

/// A path step after `.` or inside `[...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PathStep {
    /// `.name`, `."quoted name"` or `['name']`.
    Key(String),
    /// `[3]` or `[-1]` (from the end).
    Index(i64),
}

/// Expression kinds (spec §1.5).
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal.
    Literal(Literal),
    /// `interval N unit`.
    Interval {
        /// Count.
        value: i64,
        /// Unit.
        unit: IntervalUnit,
    },
    /// `[a, b]`.
    Array(Vec<Expr>),
    /// A top-level name (first path segment), bare or double-quoted.
    Ident(String),
    /// `base.key`, `base[i]`, `base['key']`.
    Access {
        /// What is accessed.
        base: Box<Expr>,
        /// The step.
        step: PathStep,
    },
    /// `*` (only as a function argument, as in `count(*)`).
    Star,
    /// `name(args)`.
    Function {
        /// Name as written.
        name: String,
        /// Arguments.
        args: Vec<Expr>,
    },
    /// `not e`, `-e`.
    Unary {
        /// Operator.
        op: UnaryOp,
        /// Operand.
        expr: Box<Expr>,
    },
    /// `l op r`.
    Binary {
        /// Operator.
        op: BinaryOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// `e in [a, b]` / `e in (a, b)`.
    InList {
        /// Tested value.
        expr: Box<Expr>,
        /// Candidates.
        list: Vec<Expr>,
    },
    /// `e is [not] null`.
    IsNull {
        /// Tested value.
        expr: Box<Expr>,
        /// `is not null`.
        negated: bool,
    },
    /// `cond ? then : else`.
    Ternary {
        /// Condition.
        cond: Box<Expr>,
        /// Value when the condition is true.
        then: Box<Expr>,
        /// Value otherwise (false or null).
        otherwise: Box<Expr>,
    },
}

impl Expr {
    /// If this is a plain field path (`a.b[0].c`), its steps, the first being
    /// the top-level name.
    pub fn as_path(&self) -> Option<Vec<PathStep>> {
        match &self.kind {
            ExprKind::Ident(name) => Some(vec![PathStep::Key(name.clone())]),
            ExprKind::Access { base, step } => {
                let mut path = base.as_path()?;
                path.push(step.clone());
                Some(path)
            }
            _ => None,
        }
    }
}

fn is_plain_ident(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str, quote: char) -> fmt::Result {
    f.write_fmt(format_args!("{quote}"))?;
    for c in text.chars() {
        if c == quote {
            f.write_fmt(format_args!("\\{c}"))?;
        } else {
            f.write_fmt(format_args!("{c}"))?;
        }
    }
    f.write_fmt(format_args!("{quote}"))
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::String(s) => write_quoted(f, s, '\''),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Literal(l) => write!(f, "{l}"),
            ExprKind::Interval { value, unit } => write!(f, "interval {value} {}", unit.name()),
            ExprKind::Array(items) => {
                f.write_str("[")?;
                write_list(f, items)?;
                f.write_str("]")
            }
            ExprKind::Ident(name) => {
                if is_plain_ident(name) {
                    f.write_str(name)
                } else {
                    write_quoted(f, name, '"')
                }
            }
            ExprKind::Access { base, step } => {
                write!(f, "{base}")?;
                match step {
                    PathStep::Key(key) if is_plain_ident(key) => write!(f, ".{key}"),
                    PathStep::Key(key) => {
                        f.write_str(".")?;
                        write_quoted(f, key, '"')
                    }
                    PathStep::Index(i) => write!(f, "[{i}]"),
                }
            }
            ExprKind::Star => f.write_str("*"),
            ExprKind::Function { name, args } => {
                write!(f, "{}(", name.to_ascii_lowercase())?;
                write_list(f, args)?;
                f.write_str(")")
            }
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => write!(f, "not {}", Paren(expr)),
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => write!(f, "-{}", Paren(expr)),
            ExprKind::Binary { op, left, right } => {
                write!(f, "{} {} {}", Paren(left), op.symbol(), Paren(right))
            }
            ExprKind::InList { expr, list } => {
                write!(f, "{} in [", Paren(expr))?;
                write_list(f, list)?;
                f.write_str("]")
            }
            ExprKind::IsNull { expr, negated } => {
                let not = if *negated { "not " } else { "" };
                write!(f, "{} is {not}null", Paren(expr))
            }
            ExprKind::Ternary {
                cond,
                then,
                otherwise,
            } => {
                write!(
                    f,
                    "{} ? {} : {}",
                    Paren(cond),
                    Paren(then),
                    Paren(otherwise)
                )
            }
        }
    }
}

/// Displays an operand, parenthesised when it is itself an operator.
#[derive(Debug)]
struct Paren<'a>(&'a Expr);

impl fmt::Display for Paren<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.kind {
            ExprKind::Binary { .. }
            | ExprKind::Unary { .. }
            | ExprKind::InList { .. }
            | ExprKind::IsNull { .. }
            | ExprKind::Ternary { .. } => write!(f, "({})", self.0),
            _ => write!(f, "{}", self.0),
        }
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Expr]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl Expr {
    /// Nesting depth of the expression tree (a leaf is 1).
    pub fn depth(&self) -> usize {
        let children: Vec<&Expr> = match &self.kind {
            ExprKind::Literal(_)
            | ExprKind::Interval { .. }
            | ExprKind::Ident(_)
            | ExprKind::Star => Vec::new(),
            ExprKind::Array(items) => items.iter().collect(),
            ExprKind::Access { base, .. } => vec![base],
            ExprKind::Function { args, .. } => args.iter().collect(),
            ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => vec![expr],
            ExprKind::Binary { left, right, .. } => vec![left, right],
            ExprKind::InList { expr, list } => std::iter::once(&**expr).chain(list).collect(),
            ExprKind::Ternary {
                cond,
                then,
                otherwise,
            } => vec![cond, then, otherwise],
        };
        1 + children.into_iter().map(Expr::depth).max().unwrap_or(0)
    }
}

impl Query {
    /// Every expression of the query, clause by clause.
    pub fn expressions(&self) -> Vec<&Expr> {
        let mut out: Vec<&Expr> = Vec::new();
        if let Some(Clause {
            value: SelectList::Items(items),
            ..
        }) = &self.select
        {
            out.extend(items.iter().map(|i| &i.expr));
        }
        for clause in [
            &self.filter,
            &self.final_filter,
            &self.trace_filter,
            &self.span_filter,
        ]
        .into_iter()
        .flatten()
        {
            out.push(&clause.value);
        }
        for clause in [&self.dimensions, &self.measures, &self.pivot]
            .into_iter()
            .flatten()
        {
            out.extend(clause.value.iter().map(|i| &i.expr));
        }
        if let Some(clause) = &self.unpivot {
            out.extend(clause.value.iter().map(|i| &i.expr));
        }
        if let Some(clause) = &self.sort {
            out.extend(clause.value.iter().map(|i| &i.expr));
        }
        out
    }
}
