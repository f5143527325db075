//! SQL text → [`ast::Query`]: Braintrust's SQL form of BTQL (spec §1.7),
//! parsed with sqlparser and mapped clause by clause onto the same AST as
//! the clause syntax, so the planner never knows which form was written.
//!
//! ```text
//!  SQL text ──sqlparser (BtqlSqlDialect)──► sqlparser AST ──SqlConverter──► ast::Query
//!                                               (line/column spans)          (byte spans)
//! ```
//!
//! Mapping (spec §1.2):
//!
//! | SQL | clause |
//! |---|---|
//! | `SELECT` list | `select:`; with `GROUP BY`, aggregates or `DISTINCT`: `dimensions:` + `measures:` |
//! | `FROM f('id', shape => 'x')` | `from: f('id') x` |
//! | `UNPIVOT (v FOR k IN (e))` | `unpivot: e as (k, v)`; `FOR _` gives `e as (v)` |
//! | `PIVOT (agg [AS a], … FOR p IN (ANY))` | `measures: agg as a, …` + `pivot: p` (`p` leaves `dimensions:`) |
//! | `TABLESAMPLE (n PERCENT \| n ROWS) [REPEATABLE (s)]` | `sample:` |
//! | `WHERE` / `HAVING` | `filter:` / `final_filter:` |
//! | `GROUP BY e \| n` | `dimensions:` (a position `n` or a select expression takes that item with its alias) |
//! | `ORDER BY` / `LIMIT n` / `OFFSET '<tok>'` | `sort:` / `limit:` / `cursor:` |
//!
//! With grouping, `dimensions:` follow `GROUP BY` order and `measures:` the
//! select order (pivot aggregates first). A non-aggregated select item must
//! be a group key (by expression, alias or last path segment), the pivot
//! column or a pivot measure alias.
//!
//! Spans: sqlparser gives line/column ranges (columns count characters);
//! [`LineIndex`] turns them into byte offsets. Nodes sqlparser leaves
//! unspanned take the union of their children, function calls and sources
//! are widened to their closing parenthesis, and a clause span is widened
//! back over its keyword (`WHERE`, `GROUP BY`, …).
//!
//! Everything outside this subset (joins, set operations, CTEs, window
//! functions, subqueries, numeric `OFFSET`, BTQL's `INCLUDES`, …) is a
//! `BTQL0103` diagnostic naming the construct; parse errors are `BTQL0001`.

mod dialect;
mod expr;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashSet;

use sqlparser::ast as sql;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::ast::{
    AliasedExpr, Clause, Expr, ExprKind, Literal, Query, Sample, SampleMethod, SelectList, Shape,
    SortItem, Source, UnpivotItem,
};
use crate::error::{Diagnostic, Diagnostics, Span, codes};
use crate::limits::{self, MAX_EXPRESSION_DEPTH};

use dialect::BtqlSqlDialect;

/// sqlparser's recursion limit: above what [`MAX_EXPRESSION_DEPTH`]
/// brackets take (a function call takes two levels, a query, its `SELECT`
/// and a clause a few), so the bracket check before parsing names the
/// bracket that goes too deep; the limit itself stops prefix chains
/// (`NOT NOT …`), which nest without brackets.
const RECURSION_LIMIT: usize = 2 * MAX_EXPRESSION_DEPTH + 16;

/// Most operators a SQL query may have: each may add a level to the
/// expression tree, which sqlparser (`Spanned::span`, `Drop`) walks
/// recursively before the converter refuses a tree deeper than
/// [`MAX_EXPRESSION_DEPTH`].
const MAX_OPERATORS: usize = 500;

/// Parses Braintrust SQL (spec §1.7) into a [`Query`].
///
/// Runs on the parser thread ([`limits::on_parser_stack`]), so a deep but
/// legal query never overflows a small caller stack such as a tokio
/// worker's. Panics propagate.
pub fn parse_sql(text: &str) -> Result<Query, Diagnostics> {
    limits::on_parser_stack(|| parse_sql_here(text))
}

/// Refuses, before sqlparser builds a tree too deep to walk, a query with
/// more than [`MAX_OPERATORS`] operators or with `(` / `[` nested more than
/// [`MAX_EXPRESSION_DEPTH`] levels (at the bracket that goes too deep).
fn check_tokens(text: &str, index: &LineIndex, tokens: &[TokenWithSpan]) -> Result<(), Diagnostic> {
    let at = |t: &TokenWithSpan| index.span(text, t.span).unwrap_or(Span::new(0, text.len()));
    let mut depth = 0usize;
    // Consecutive `NOT`, `-` and `+`: all but maybe the first are prefix
    // operators, each a level (sqlparser turns its own limit on them into
    // "expected end of statement").
    let mut prefix_run = 0usize;
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => {
                if depth >= MAX_EXPRESSION_DEPTH {
                    return Err(limits::too_deep(at(t)));
                }
                depth += 1;
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
        let prefix = match &t.token {
            Token::Minus | Token::Plus => true,
            Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case("NOT"),
            _ => false,
        };
        prefix_run = if prefix { prefix_run + 1 } else { 0 };
        if prefix_run > MAX_EXPRESSION_DEPTH {
            return Err(limits::too_deep(at(t)));
        }
    }
    let count = tokens
        .iter()
        .filter(|t| match &t.token {
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::StringConcat
            | Token::DoubleColon => true,
            Token::Word(w) => {
                w.quote_style.is_none()
                    && [
                        "AND", "OR", "NOT", "IS", "LIKE", "ILIKE", "BETWEEN", "MATCH", "WHEN", "IN",
                    ]
                    .iter()
                    .any(|k| w.value.eq_ignore_ascii_case(k))
            }
            _ => false,
        })
        .count();
    if count > MAX_OPERATORS {
        return Err(Diagnostic::new(
            codes::SYNTAX,
            format!("syntax error: the query has too many operators ({count})"),
            Span::new(0, text.len()),
        )
        .with_help(format!(
            "a SQL query may have at most {MAX_OPERATORS} operators; replace long `OR` chains with `IN (...)`"
        )));
    }
    Ok(())
}

fn parse_sql_here(text: &str) -> Result<Query, Diagnostics> {
    let dialect = BtqlSqlDialect::default();
    let index = LineIndex::new(text);
    // A tokenizer error is reported by the parser, with its position.
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .unwrap_or_default();
    check_tokens(text, &index, &tokens)?;
    // Fuel for the parses below: linear in the tokens (see `dialect`).
    let fuel_tokens = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .count();
    let parse = |text: &str| {
        let fueled = BtqlSqlDialect::with_fuel_for(fuel_tokens);
        let result = Parser::new(&fueled)
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(text)
            .and_then(|mut parser| parser.parse_statements());
        (result, fueled.exhausted())
    };
    match parse(text) {
        (Ok(statements), _) => convert_statements(text, statements),
        (Err(error), exhausted) => {
            if exhausted {
                return Err(too_complex(text));
            }
            // sqlparser takes `PIVOT` only right after the source; the docs
            // also write it after `WHERE`/`GROUP BY` (spec §1.7). Retry with
            // it moved there, mapping spans back to the text as written.
            if let Some((moved, map)) = relocate_pivot(&dialect, text)
                && let (Ok(statements), _) = parse(&moved)
            {
                let to_original = |span: Span| map_span(&map, span);
                return match convert_statements(&moved, statements) {
                    Ok(mut query) => {
                        map_query_spans(&mut query, &to_original);
                        query.span = Span::new(0, text.len());
                        Ok(query)
                    }
                    Err(Diagnostics(ds)) => Err(Diagnostics(
                        ds.into_iter()
                            .map(|mut d| {
                                d.span = to_original(d.span);
                                d.labels = d
                                    .labels
                                    .into_iter()
                                    .map(|(s, l)| (to_original(s), l))
                                    .collect();
                                d
                            })
                            .collect(),
                    )),
                };
            }
            Err(parser_error(text, &index, &tokens, error))
        }
    }
}

/// The diagnostic for a parse that ran out of fuel (see `dialect`).
fn too_complex(text: &str) -> Diagnostics {
    Diagnostic::new(
        codes::TOO_DEEP,
        "the SQL query is too complex to parse",
        Span::new(0, text.len()),
    )
    .with_help(format!(
        "the SQL parser gives up after {} steps per token; check the query for unbalanced brackets or a dangling `.`",
        dialect::FUEL_PER_TOKEN
    ))
    .into()
}

/// The text with a `PIVOT (...)` written after `WHERE`/`GROUP BY`/... moved
/// to just after the `FROM` source, and for each byte of the new text (and
/// its end) the byte of the original it came from.
fn relocate_pivot(dialect: &BtqlSqlDialect, text: &str) -> Option<(String, Vec<usize>)> {
    let index = LineIndex::new(text);
    let tokens = Tokenizer::new(dialect, text)
        .tokenize_with_location()
        .ok()?;
    let word = |t: &Token, w: &str| matches!(t, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w));
    let mut depth = 0usize;
    let mut from_seen = false;
    let mut insert_at = None;
    let mut pivot = None;
    for (i, t) in tokens.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            token if depth == 0 => {
                if word(token, "FROM") {
                    from_seen = true;
                } else if from_seen
                    && insert_at.is_none()
                    && ["WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET"]
                        .iter()
                        .any(|w| word(token, w))
                {
                    insert_at = Some(index.offset(text, t.span.start)?);
                } else if insert_at.is_some() && word(token, "PIVOT") {
                    pivot = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let (insert_at, pivot) = (insert_at?, pivot?);
    // The balanced `( ... )` after PIVOT.
    let mut level = 0usize;
    let mut end = None;
    for t in tokens.iter().skip(pivot + 1) {
        match &t.token {
            Token::Whitespace(_) => {}
            Token::LParen => level += 1,
            Token::RParen if level > 0 => {
                level -= 1;
                if level == 0 {
                    end = Some(index.offset(text, t.span.end)?);
                    break;
                }
            }
            _ if level == 0 => return None,
            _ => {}
        }
    }
    let start = index.offset(text, tokens[pivot].span.start)?;
    let end = end?;
    let pieces = [
        (start, end),
        (end, end),
        (insert_at, start),
        (end, text.len()),
    ];
    let mut moved = text[..insert_at].to_string();
    let mut map: Vec<usize> = (0..insert_at).collect();
    for (i, (from, to)) in pieces.into_iter().enumerate() {
        if i == 1 {
            // A space after the moved PIVOT.
            moved.push(' ');
            map.push(end);
            continue;
        }
        moved.push_str(text.get(from..to)?);
        map.extend(from..to);
    }
    map.push(text.len());
    Some((moved, map))
}

/// A span of the relocated text → the original text.
fn map_span(map: &[usize], span: Span) -> Span {
    let at = |i: usize| {
        map.get(i)
            .copied()
            .unwrap_or_else(|| map.last().copied().unwrap_or(0))
    };
    let start = at(span.start);
    let end = if span.end > span.start {
        at(span.end - 1) + 1
    } else {
        start
    };
    Span::new(start.min(end), start.max(end))
}

/// Applies `f` to every span of an expression.
pub(crate) fn map_expr_spans(e: &mut Expr, f: &dyn Fn(Span) -> Span) {
    e.span = f(e.span);
    match &mut e.kind {
        ExprKind::Literal(_) | ExprKind::Interval { .. } | ExprKind::Ident(_) | ExprKind::Star => {}
        ExprKind::Array(items) | ExprKind::Function { args: items, .. } => {
            items.iter_mut().for_each(|i| map_expr_spans(i, f));
        }
        ExprKind::Access { base, .. } => map_expr_spans(base, f),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => map_expr_spans(expr, f),
        ExprKind::Binary { left, right, .. } => {
            map_expr_spans(left, f);
            map_expr_spans(right, f);
        }
        ExprKind::InList { expr, list } => {
            map_expr_spans(expr, f);
            list.iter_mut().for_each(|i| map_expr_spans(i, f));
        }
        ExprKind::Ternary {
            cond,
            then,
            otherwise,
        } => {
            map_expr_spans(cond, f);
            map_expr_spans(then, f);
            map_expr_spans(otherwise, f);
        }
    }
}

/// Applies `f` to every span of a query.
pub(crate) fn map_query_spans(q: &mut Query, f: &dyn Fn(Span) -> Span) {
    fn aliased(items: &mut [AliasedExpr], f: &dyn Fn(Span) -> Span) {
        for a in items {
            a.span = f(a.span);
            if let Some((_, s)) = &mut a.alias {
                *s = f(*s);
            }
            map_expr_spans(&mut a.expr, f);
        }
    }
    fn clause<T>(c: &mut Option<Clause<T>>, f: &dyn Fn(Span) -> Span, g: impl FnOnce(&mut T)) {
        if let Some(c) = c {
            c.span = f(c.span);
            g(&mut c.value);
        }
    }
    q.span = f(q.span);
    clause(&mut q.select, f, |s| match s {
        SelectList::Star(span) => *span = f(*span),
        SelectList::Items(items) => aliased(items, f),
    });
    clause(&mut q.from, f, |s| s.span = f(s.span));
    clause(&mut q.filter, f, |e| map_expr_spans(e, f));
    clause(&mut q.final_filter, f, |e| map_expr_spans(e, f));
    clause(&mut q.trace_filter, f, |e| map_expr_spans(e, f));
    clause(&mut q.span_filter, f, |e| map_expr_spans(e, f));
    clause(&mut q.dimensions, f, |d| aliased(d, f));
    clause(&mut q.measures, f, |d| aliased(d, f));
    clause(&mut q.pivot, f, |d| aliased(d, f));
    clause(&mut q.unpivot, f, |items| {
        for u in items {
            u.span = f(u.span);
            map_expr_spans(&mut u.expr, f);
        }
    });
    clause(&mut q.sort, f, |items| {
        for s in items {
            s.span = f(s.span);
            map_expr_spans(&mut s.expr, f);
        }
    });
    clause(&mut q.limit, f, |_| {});
    clause(&mut q.cursor, f, |_| {});
    clause(&mut q.sample, f, |_| {});
    clause(&mut q.preview_length, f, |_| {});
}

fn convert_statements(text: &str, statements: Vec<sql::Statement>) -> Result<Query, Diagnostics> {
    let index = LineIndex::new(text);
    let whole = Span::new(0, text.len());
    let mut statements = statements.into_iter();
    let statement = statements.next().ok_or_else(|| {
        Diagnostic::new(codes::SYNTAX, "syntax error: empty SQL query", whole)
            .with_help("write `SELECT ... FROM project_logs('<id>')`")
    })?;
    let converter = SqlConverter {
        text,
        index,
        names: HashSet::new(),
        depth: std::cell::Cell::new(0),
    };
    if let Some(extra) = statements.next() {
        return Err(Diagnostic::new(
            codes::NOT_SUPPORTED,
            "only one SQL statement per query is supported",
            converter.span_of(&extra).unwrap_or(whole),
        )
        .with_help("remove the statements after the first `;`")
        .into());
    }
    match statement {
        sql::Statement::Query(query) => converter.query(&query),
        other => Err(Diagnostic::new(
            codes::NOT_SUPPORTED,
            "only `SELECT` queries are supported",
            converter.span_of(&other).unwrap_or(whole),
        )
        .with_help("spanlake queries are read-only: write `SELECT ... FROM project_logs('<id>')`")
        .into()),
    }
}

/// Line starts of the text, to turn sqlparser's 1-based line/column
/// (in characters) into byte offsets.
#[derive(Debug)]
struct LineIndex {
    /// Byte offset of the first character of each line.
    starts: Vec<usize>,
    /// Whether each line is ASCII (a column is then a byte offset, found
    /// without walking the line: spans stay linear in a one-line query).
    ascii: Vec<bool>,
    len: usize,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let ascii = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).copied().unwrap_or(text.len());
                text.as_bytes()[start..end].is_ascii()
            })
            .collect();
        Self {
            starts,
            ascii,
            len: text.len(),
        }
    }

    /// Byte offset of a location; `None` for sqlparser's empty location
    /// (line 0). Past the end of a line or the text clamps to it.
    fn offset(&self, text: &str, location: Location) -> Option<usize> {
        let line = usize::try_from(location.line).ok()?.checked_sub(1)?;
        let column = usize::try_from(location.column).ok()?.checked_sub(1)?;
        let start = *self.starts.get(line)?;
        let end = self.starts.get(line + 1).copied().unwrap_or(self.len);
        if self.ascii.get(line).copied().unwrap_or(false) {
            return Some((start + column).min(end));
        }
        let line_text = text.get(start..end)?;
        Some(
            line_text
                .char_indices()
                .nth(column)
                .map_or(end, |(i, _)| start + i),
        )
    }

    fn span(&self, text: &str, span: sqlparser::tokenizer::Span) -> Option<Span> {
        let start = self.offset(text, span.start)?;
        let end = self.offset(text, span.end)?.max(start);
        Some(Span::new(start, end))
    }
}

/// A sqlparser error → `BTQL0001` at the token it names.
fn parser_error(
    text: &str,
    index: &LineIndex,
    tokens: &[TokenWithSpan],
    error: ParserError,
) -> Diagnostics {
    let whole = Span::new(0, text.len());
    let raw = match error {
        ParserError::TokenizerError(message) | ParserError::ParserError(message) => message,
        ParserError::RecursionLimitExceeded => {
            return Diagnostic::new(
                codes::TOO_DEEP,
                format!("expression nested more than {MAX_EXPRESSION_DEPTH} levels deep"),
                whole,
            )
            .with_help(format!(
                "the SQL parser accepts at most {RECURSION_LIMIT} levels of nesting, \
                 brackets and prefix operators (`NOT`, `-`) together"
            ))
            .into();
        }
    };
    // Messages end with " at Line: L, Column: C".
    let (message, location) = match raw.rfind(" at Line: ") {
        Some(at) => {
            let location = raw[at + " at Line: ".len()..]
                .split_once(", Column: ")
                .and_then(|(line, column)| {
                    Some(Location::new(
                        line.trim().parse().ok()?,
                        column.trim().parse().ok()?,
                    ))
                });
            (raw[..at].to_string(), location)
        }
        None => (raw, None),
    };
    let start = location.and_then(|l| index.offset(text, l));
    let span = match start {
        None => Span::new(text.len(), text.len()),
        Some(start) => {
            // Widen to the token that starts there, when the text tokenizes.
            let token_end = tokens
                .iter()
                .find(|t| index.offset(text, t.span.start) == Some(start))
                .and_then(|t| index.span(text, t.span))
                .map_or(start, |s| s.end);
            Span::new(start, token_end)
        }
    };
    let message = match message.strip_prefix("Expected: ") {
        Some(rest) => match rest.split_once(", found: ") {
            Some((expected, found)) => format!("expected {expected}, found `{found}`"),
            None => format!("expected {rest}"),
        },
        None => {
            let mut chars = message.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_lowercase().chain(chars).collect::<String>()
            })
        }
    };
    Diagnostic::new(codes::SYNTAX, format!("syntax error: {message}"), span).into()
}

/// `BTQL0103` for a SQL construct outside the supported subset.
fn unsupported(what: &str, span: Span, help: &str) -> Diagnostic {
    Diagnostic::new(
        codes::NOT_SUPPORTED,
        format!("{what} is not supported in SQL queries"),
        span,
    )
    .with_help(help.to_string())
}

/// Converts one parsed statement; holds the text for spans.
#[derive(Debug)]
struct SqlConverter<'t> {
    text: &'t str,
    index: LineIndex,
    /// Names a lone double-quoted identifier may mean: select aliases and
    /// unpivot columns (besides the top-level fields). Any other `"x"` is a
    /// string literal, as in BTQL (spec §1.4).
    names: HashSet<String>,
    /// Current expression depth (see [`expr::MAX_EXPR_DEPTH`]).
    depth: std::cell::Cell<usize>,
}

/// PIVOT parts.
#[derive(Debug)]
struct PivotParts {
    measures: Vec<AliasedExpr>,
    key: Expr,
}

/// FROM parts.
#[derive(Debug, Default)]
struct FromParts {
    source: Option<Source>,
    unpivot: Vec<UnpivotItem>,
    pivot: Option<PivotParts>,
    sample: Option<(Sample, Span)>,
}

/// One converted SELECT item.
#[derive(Debug)]
enum Item {
    Star(Span),
    Expr(AliasedExpr),
}

impl SqlConverter<'_> {
    fn whole(&self) -> Span {
        Span::new(0, self.text.len())
    }

    /// Byte span of a sqlparser node, `None` when sqlparser has none.
    fn span_of(&self, node: &impl sql::Spanned) -> Option<Span> {
        self.index.span(self.text, node.span())
    }

    /// Byte span of a raw sqlparser span.
    fn raw(&self, span: sqlparser::tokenizer::Span) -> Option<Span> {
        self.index.span(self.text, span)
    }

    fn span_or_whole(&self, node: &impl sql::Spanned) -> Span {
        self.span_of(node).unwrap_or_else(|| self.whole())
    }

    /// `span` widened back over the keyword words before it (`["GROUP",
    /// "BY"]`), when they are there (only whitespace between).
    fn with_keyword(&self, words: &[&str], span: Span) -> Span {
        let mut start = span.start;
        for word in words.iter().rev() {
            let before = self.text.get(..start).unwrap_or("").trim_end();
            let Some(word_start) = before.len().checked_sub(word.len()) else {
                return span;
            };
            match before.get(word_start..) {
                Some(found) if found.eq_ignore_ascii_case(word) => start = word_start,
                _ => return span,
            }
        }
        Span::new(start, span.end)
    }

    /// `span` widened to a `)` that follows it (after whitespace).
    fn through_paren(&self, span: Span) -> Span {
        let rest = self.text.get(span.end..).unwrap_or("");
        let trimmed = rest.trim_start();
        if trimmed.starts_with(')') {
            Span::new(span.start, span.end + (rest.len() - trimmed.len()) + 1)
        } else {
            span
        }
    }

    fn query(mut self, query: &sql::Query) -> Result<Query, Diagnostics> {
        self.refuse_query_extras(query)?;
        let select = match query.body.as_ref() {
            sql::SetExpr::Select(select) => select,
            sql::SetExpr::SetOperation { op, .. } => {
                return Err(unsupported(
                    &format!("`{op}`"),
                    self.span_or_whole(query.body.as_ref()),
                    "run one query per source and combine the results yourself",
                )
                .into());
            }
            sql::SetExpr::Query(_) => {
                return Err(unsupported(
                    "a parenthesized query",
                    self.span_or_whole(query.body.as_ref()),
                    "remove the parentheses around the query",
                )
                .into());
            }
            _ => {
                return Err(unsupported(
                    "this statement",
                    self.span_or_whole(query.body.as_ref()),
                    "write `SELECT ... FROM project_logs('<id>')`",
                )
                .into());
            }
        };
        self.refuse_select_extras(select)?;
        self.collect_names(select);

        let mut out = Query {
            span: self.whole(),
            ..Query::default()
        };
        let mut errors = Vec::new();
        let mut keep = |result: Result<(), Diagnostic>| {
            if let Err(d) = result {
                errors.push(d);
            }
        };

        let from = self.from(&select.from)?;
        if let Some(source) = from.source.clone() {
            let span = self.with_keyword(&["FROM"], source.span);
            out.from = Some(Clause {
                value: source,
                span,
            });
        }
        if !from.unpivot.is_empty() {
            let span = from
                .unpivot
                .iter()
                .map(|u| u.span)
                .reduce(Span::to)
                .unwrap_or_else(|| self.whole());
            out.unpivot = Some(Clause {
                value: from.unpivot.clone(),
                span,
            });
        }
        if let Some((sample, span)) = from.sample.clone() {
            out.sample = Some(Clause {
                value: sample,
                span,
            });
        }

        keep(self.projection(select, &from, &mut out));

        if let Some(selection) = &select.selection {
            keep(self.expr(selection).map(|e| {
                let span = self.with_keyword(&["WHERE"], e.span);
                out.filter = Some(Clause { value: e, span });
            }));
        }
        if let Some(having) = &select.having {
            keep(self.expr(having).map(|e| {
                let span = self.with_keyword(&["HAVING"], e.span);
                out.final_filter = Some(Clause { value: e, span });
            }));
        }
        if let Some(order_by) = &query.order_by {
            keep(self.order_by(order_by).map(|sort| out.sort = sort));
        }
        if let Some(limit) = &query.limit_clause {
            keep(self.limit(limit, &mut out));
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(Diagnostics(errors))
        }
    }

    fn refuse_query_extras(&self, query: &sql::Query) -> Result<(), Diagnostic> {
        if let Some(with) = &query.with {
            return Err(unsupported(
                "`WITH` (common table expressions)",
                self.span_or_whole(with),
                "query `project_logs(...)` directly",
            ));
        }
        let whole = self.whole();
        if query.fetch.is_some() {
            return Err(unsupported("`FETCH`", whole, "use `LIMIT n`"));
        }
        if !query.locks.is_empty() || query.for_clause.is_some() {
            return Err(unsupported("`FOR ...`", whole, "remove the `FOR` clause"));
        }
        if query.format_clause.is_some() {
            return Err(unsupported(
                "`FORMAT`",
                whole,
                "choose the output format with the client (`--format`)",
            ));
        }
        if !query.pipe_operators.is_empty() {
            return Err(unsupported(
                "pipe syntax (`|>`)",
                whole,
                "write a plain `SELECT` query, or use the BTQL clause syntax",
            ));
        }
        // `SETTINGS` carries engine hints with no BTQL counterpart (spec
        // §1.2): accepted and ignored.
        Ok(())
    }

    fn refuse_select_extras(&self, select: &sql::Select) -> Result<(), Diagnostic> {
        let whole = self.whole();
        let select_span = self
            .raw(select.select_token.0.span)
            .unwrap_or_else(|| self.whole());
        if let Some(sql::Distinct::On(_)) = &select.distinct {
            return Err(unsupported(
                "`DISTINCT ON`",
                select_span,
                "group with `GROUP BY` and pick values with `any_value(...)`",
            ));
        }
        if select.top.is_some() {
            return Err(unsupported("`TOP`", select_span, "use `LIMIT n`"));
        }
        if select.into.is_some() {
            return Err(unsupported(
                "`SELECT INTO`",
                select_span,
                "queries are read-only",
            ));
        }
        if !select.lateral_views.is_empty() {
            return Err(unsupported(
                "`LATERAL VIEW`",
                whole,
                "use `UNPIVOT (value FOR _ IN (array))`",
            ));
        }
        if let Some(prewhere) = &select.prewhere {
            return Err(unsupported(
                "`PREWHERE`",
                self.span_or_whole(prewhere),
                "use `WHERE`",
            ));
        }
        if !select.connect_by.is_empty() {
            return Err(unsupported(
                "`CONNECT BY`",
                whole,
                "query spans by `root_span_id`",
            ));
        }
        if !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
        {
            return Err(unsupported(
                "`CLUSTER BY` / `DISTRIBUTE BY` / `SORT BY`",
                whole,
                "use `ORDER BY`",
            ));
        }
        if !select.named_window.is_empty() || select.qualify.is_some() {
            return Err(unsupported(
                "window functions (`WINDOW`, `QUALIFY`)",
                whole,
                "aggregate with `GROUP BY` instead",
            ));
        }
        if select.value_table_mode.is_some() || select.exclude.is_some() {
            return Err(unsupported(
                "this `SELECT` form",
                select_span,
                "write `SELECT expr [AS alias], ...` or `SELECT *`",
            ));
        }
        Ok(())
    }

    /// Names that a lone `"x"` may refer to (see [`Self::names`]).
    fn collect_names(&mut self, select: &sql::Select) {
        for item in &select.projection {
            if let sql::SelectItem::ExprWithAlias { alias, .. } = item {
                self.names.insert(alias.value.clone());
            }
        }
        let mut factor = select.from.first().map(|t| &t.relation);
        while let Some(f) = factor {
            factor = match f {
                sql::TableFactor::Unpivot {
                    table, value, name, ..
                } => {
                    self.names.insert(name.value.clone());
                    if let sql::Expr::Identifier(ident) = value {
                        self.names.insert(ident.value.clone());
                    }
                    Some(table.as_ref())
                }
                sql::TableFactor::Pivot {
                    table,
                    aggregate_functions,
                    ..
                } => {
                    for agg in aggregate_functions {
                        if let Some(alias) = &agg.alias {
                            self.names.insert(alias.value.clone());
                        }
                    }
                    Some(table.as_ref())
                }
                _ => None,
            };
        }
    }

    fn from(&self, from: &[sql::TableWithJoins]) -> Result<FromParts, Diagnostic> {
        let Some(first) = from.first() else {
            return Ok(FromParts::default());
        };
        if let Some(second) = from.get(1) {
            return Err(unsupported(
                "more than one `FROM` source (a join)",
                self.factor_span(&second.relation),
                "query one source; `any_span(...)` and `shape => 'traces'` relate spans of a trace",
            ));
        }
        if let Some(join) = first.joins.first() {
            return Err(unsupported(
                "`JOIN`",
                self.factor_span(&join.relation),
                "query one source; `any_span(...)` and `shape => 'traces'` relate spans of a trace",
            ));
        }
        let mut parts = FromParts::default();
        self.table_factor(&first.relation, &mut parts)?;
        Ok(parts)
    }

    /// Span of a table factor; a `Table` source through its `)` (sqlparser
    /// stops at the name).
    fn factor_span(&self, factor: &sql::TableFactor) -> Span {
        let span = self.span_or_whole(factor);
        let sql::TableFactor::Table {
            args: Some(args), ..
        } = factor
        else {
            return span;
        };
        let end = args
            .args
            .iter()
            .filter_map(|arg| match arg {
                sql::FunctionArg::Unnamed(value)
                | sql::FunctionArg::Named { arg: value, .. }
                | sql::FunctionArg::ExprNamed { arg: value, .. } => self.arg_span(value),
            })
            .fold(span, Span::to);
        self.through_paren(end)
    }

    fn table_factor(
        &self,
        factor: &sql::TableFactor,
        parts: &mut FromParts,
    ) -> Result<(), Diagnostic> {
        let span = self.factor_span(factor);
        match factor {
            sql::TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_hints,
            } => {
                if alias.is_some() {
                    return Err(unsupported(
                        "a table alias",
                        span,
                        "remove the alias: table aliases are reserved",
                    ));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || !index_hints.is_empty()
                {
                    return Err(unsupported(
                        "this table modifier",
                        span,
                        "write `FROM project_logs('<id>'[, shape => 'traces'])`",
                    ));
                }
                parts.source = Some(self.source(name, args.as_ref(), span)?);
                if let Some(sample) = sample {
                    let sample = match sample {
                        sql::TableSampleKind::BeforeTableAlias(s)
                        | sql::TableSampleKind::AfterTableAlias(s) => s,
                    };
                    parts.sample = Some(self.sample(sample, span)?);
                }
                Ok(())
            }
            sql::TableFactor::Unpivot {
                table,
                value,
                name,
                columns,
                null_inclusion,
                alias,
            } => {
                self.table_factor(table, parts)?;
                if parts.pivot.is_some() {
                    return Err(unsupported(
                        "`UNPIVOT` after `PIVOT`",
                        span,
                        "write every `UNPIVOT` before the `PIVOT`",
                    ));
                }
                if null_inclusion.is_some() || alias.is_some() {
                    return Err(unsupported(
                        "`UNPIVOT` options and aliases",
                        span,
                        "write `UNPIVOT (value FOR key IN (expr))`",
                    ));
                }
                let value_name = match value {
                    sql::Expr::Identifier(ident) => ident.value.clone(),
                    other => {
                        return Err(unsupported(
                            "an `UNPIVOT` value that is not a name",
                            self.span_of(other).unwrap_or(span),
                            "write `UNPIVOT (value FOR key IN (expr))`",
                        ));
                    }
                };
                let [column] = columns.as_slice() else {
                    return Err(unsupported(
                        "`UNPIVOT` over several expressions",
                        span,
                        "unpivot one object or array per `UNPIVOT`, chaining several",
                    ));
                };
                if column.alias.is_some() {
                    return Err(unsupported(
                        "an alias inside `UNPIVOT ... IN (...)`",
                        span,
                        "name the columns with `value FOR key`",
                    ));
                }
                let expr = self.expr(&column.expr)?;
                let names = if name.value == "_" {
                    vec![value_name]
                } else {
                    vec![name.value.clone(), value_name]
                };
                // From the end of what it applies to, over `UNPIVOT (...)`.
                let previous_end = parts
                    .unpivot
                    .last()
                    .map(|u| u.span.end)
                    .or(parts.source.as_ref().map(|s| s.span.end));
                let item_span = previous_end.map_or(span, |end| Span::new(end, span.end.max(end)));
                let item_span = self.through_paren(self.through_paren(item_span));
                parts.unpivot.push(UnpivotItem {
                    expr,
                    names,
                    span: trim_span(self.text, item_span),
                });
                Ok(())
            }
            sql::TableFactor::Pivot {
                table,
                aggregate_functions,
                value_column,
                value_source,
                default_on_null,
                alias,
            } => {
                self.table_factor(table, parts)?;
                if parts.pivot.is_some() {
                    return Err(unsupported(
                        "more than one `PIVOT`",
                        span,
                        "pivot once, listing every aggregate in it",
                    ));
                }
                if default_on_null.is_some() || alias.is_some() {
                    return Err(unsupported(
                        "`PIVOT` options and aliases",
                        span,
                        "write `PIVOT (agg [AS name], ... FOR column IN (ANY))`",
                    ));
                }
                match value_source {
                    sql::PivotValueSource::Any(order) if order.is_empty() => {}
                    _ => {
                        return Err(unsupported(
                            "`PIVOT` over a list of values or a subquery",
                            span,
                            "write `IN (ANY)`: every distinct value becomes a column",
                        ));
                    }
                }
                let [key] = value_column.as_slice() else {
                    return Err(unsupported(
                        "`PIVOT` on several columns",
                        span,
                        "pivot on a single path: `FOR metadata.model IN (ANY)`",
                    ));
                };
                let key = self.expr(key)?;
                let measures = aggregate_functions
                    .iter()
                    .map(|agg| {
                        let expr = self.expr(&agg.expr)?;
                        let alias = agg
                            .alias
                            .as_ref()
                            .map(|a| (a.value.clone(), self.raw(a.span).unwrap_or(expr.span)));
                        let span = alias.as_ref().map_or(expr.span, |(_, s)| expr.span.to(*s));
                        Ok(AliasedExpr { expr, alias, span })
                    })
                    .collect::<Result<_, Diagnostic>>()?;
                parts.pivot = Some(PivotParts { measures, key });
                Ok(())
            }
            sql::TableFactor::Derived { .. } => Err(unsupported(
                "a subquery in `FROM`",
                span,
                "query `project_logs(...)` directly; filter with `WHERE` and aggregate with `GROUP BY`",
            )),
            _ => Err(unsupported(
                "this `FROM` source",
                span,
                "write `FROM project_logs('<id>'[, shape => 'traces'])`",
            )),
        }
    }

    fn source(
        &self,
        name: &sql::ObjectName,
        args: Option<&sql::TableFunctionArgs>,
        span: Span,
    ) -> Result<Source, Diagnostic> {
        let function = match name.0.as_slice() {
            [sql::ObjectNamePart::Identifier(ident)] => ident.value.clone(),
            _ => {
                return Err(unsupported(
                    "a qualified source name",
                    self.span_of(name).unwrap_or(span),
                    "write `FROM project_logs('<id>')`",
                ));
            }
        };
        let mut source = Source {
            function,
            args: Vec::new(),
            shape: Shape::Spans,
            span: self.through_paren(span),
        };
        let Some(args) = args else {
            return Ok(source);
        };
        if args.settings.is_some() {
            return Err(unsupported(
                "`SETTINGS` inside a source",
                span,
                "write `FROM project_logs('<id>'[, shape => 'traces'])`",
            ));
        }
        let string_arg = |arg: &sql::FunctionArgExpr| match arg {
            sql::FunctionArgExpr::Expr(sql::Expr::Value(v)) => match &v.value {
                sql::Value::SingleQuotedString(s) | sql::Value::DoubleQuotedString(s) => {
                    Some(s.clone())
                }
                _ => None,
            },
            // `project_logs("id")`: a double-quoted id, as in BTQL.
            sql::FunctionArgExpr::Expr(sql::Expr::Identifier(ident))
                if ident.quote_style == Some('"') =>
            {
                Some(ident.value.clone())
            }
            _ => None,
        };
        for arg in &args.args {
            match arg {
                sql::FunctionArg::Unnamed(value) => match string_arg(value) {
                    Some(text) => source.args.push(text),
                    None => {
                        return Err(Diagnostic::new(
                            codes::LITERAL_REQUIRED,
                            "source arguments must be string literals",
                            self.arg_span(value).unwrap_or(span),
                        )
                        .with_help("write `project_logs('<project id or name>')`"));
                    }
                },
                sql::FunctionArg::Named { name, arg, .. }
                    if name.value.eq_ignore_ascii_case("shape") =>
                {
                    let arg_span = self.arg_span(arg).unwrap_or(span);
                    source.shape = match string_arg(arg).map(|s| s.to_ascii_lowercase()).as_deref()
                    {
                        Some("spans") => Shape::Spans,
                        Some("traces") => Shape::Traces,
                        Some("summary") => Shape::Summary,
                        _ => {
                            return Err(Diagnostic::new(
                                codes::SOURCE_ERROR,
                                "invalid `shape`",
                                arg_span,
                            )
                            .with_help("write `shape => 'spans'`, `'traces'` or `'summary'`"));
                        }
                    };
                }
                sql::FunctionArg::Named { name, .. } => {
                    return Err(Diagnostic::new(
                        codes::SOURCE_ERROR,
                        format!("unknown source argument `{}`", name.value),
                        self.raw(name.span).unwrap_or(span),
                    )
                    .with_help(
                        "the only named argument is `shape => 'spans' | 'traces' | 'summary'`",
                    ));
                }
                sql::FunctionArg::ExprNamed { name, .. } => {
                    return Err(Diagnostic::new(
                        codes::SOURCE_ERROR,
                        "invalid named source argument",
                        self.span_of(name).unwrap_or(span),
                    )
                    .with_help(
                        "the only named argument is `shape => 'spans' | 'traces' | 'summary'`",
                    ));
                }
            }
        }
        Ok(source)
    }

    fn arg_span(&self, arg: &sql::FunctionArgExpr) -> Option<Span> {
        match arg {
            sql::FunctionArgExpr::Expr(e) => self.span_of(e),
            _ => None,
        }
    }

    fn sample(&self, sample: &sql::TableSample, span: Span) -> Result<(Sample, Span), Diagnostic> {
        let help = "write `TABLESAMPLE (25 PERCENT)` or `TABLESAMPLE (100 ROWS)`, optionally `REPEATABLE (seed)`";
        if sample.bucket.is_some() || sample.offset.is_some() {
            return Err(unsupported("this `TABLESAMPLE` form", span, help));
        }
        let Some(quantity) = &sample.quantity else {
            return Err(unsupported("`TABLESAMPLE` without a quantity", span, help));
        };
        let value_span = self.span_of(&quantity.value).unwrap_or(span);
        let number = match &quantity.value {
            sql::Expr::Value(v) => match &v.value {
                sql::Value::Number(n, _) => Some(n.as_str()),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| {
            Diagnostic::new(
                codes::SYNTAX,
                "the sample size must be a number",
                value_span,
            )
            .with_help(help)
        })?;
        let percent = matches!(quantity.unit, Some(sql::TableSampleUnit::Percent))
            || (quantity.unit.is_none()
                && matches!(
                    sample.name,
                    Some(sql::TableSampleMethod::Bernoulli | sql::TableSampleMethod::System)
                ));
        let method = if percent {
            let value: f64 = number.parse().map_err(|_| {
                Diagnostic::new(codes::NUMBER_RANGE, "invalid sample size", value_span)
            })?;
            if !(0.0..=100.0).contains(&value) {
                return Err(Diagnostic::new(
                    codes::NUMBER_RANGE,
                    "a sample percentage must be between 0 and 100",
                    value_span,
                ));
            }
            SampleMethod::Rate(value / 100.0)
        } else {
            let count: i64 = number.parse().map_err(|_| {
                Diagnostic::new(
                    codes::NUMBER_RANGE,
                    "a sample row count must be an integer",
                    value_span,
                )
                .with_help(help)
            })?;
            SampleMethod::Count(count)
        };
        let seed = match &sample.seed {
            None => None,
            Some(seed) => {
                let seed_span = self.span_of(&seed.value).unwrap_or(span);
                Some(match &seed.value.value {
                    sql::Value::Number(n, _) => n.parse::<i64>().map_err(|_| {
                        Diagnostic::new(
                            codes::NUMBER_RANGE,
                            "a sample seed must be an integer",
                            seed_span,
                        )
                    })?,
                    _ => {
                        return Err(Diagnostic::new(
                            codes::NUMBER_RANGE,
                            "a sample seed must be an integer",
                            seed_span,
                        ));
                    }
                })
            }
        };
        let end = sample
            .seed
            .as_ref()
            .and_then(|s| self.span_of(&s.value))
            .map_or(value_span.end, |s| s.end);
        let clause_span = self.with_keyword(
            &["TABLESAMPLE"],
            self.through_paren(Span::new(value_span.start, end)),
        );
        Ok((Sample { method, seed }, clause_span))
    }

    /// SELECT list (and GROUP BY / PIVOT / DISTINCT) → select, or
    /// dimensions + measures + pivot.
    fn projection(
        &self,
        select: &sql::Select,
        from: &FromParts,
        out: &mut Query,
    ) -> Result<(), Diagnostic> {
        let mut items = Vec::with_capacity(select.projection.len());
        for item in &select.projection {
            items.push(self.select_item(item)?);
        }
        let group_keys: &[sql::Expr] = match &select.group_by {
            sql::GroupByExpr::All(_) => {
                return Err(unsupported(
                    "`GROUP BY ALL`",
                    self.span_of(&select.group_by)
                        .unwrap_or_else(|| self.whole()),
                    "list the group keys: `GROUP BY metadata.model, 2`",
                ));
            }
            sql::GroupByExpr::Expressions(keys, modifiers) => {
                if !modifiers.is_empty() {
                    return Err(unsupported(
                        "`GROUP BY` modifiers (`ROLLUP`, `CUBE`, `TOTALS`)",
                        self.span_of(&select.group_by)
                            .unwrap_or_else(|| self.whole()),
                        "group by plain expressions",
                    ));
                }
                keys
            }
        };
        let distinct = matches!(select.distinct, Some(sql::Distinct::Distinct));
        let has_aggregate = items
            .iter()
            .any(|i| matches!(i, Item::Expr(a) if expr::has_aggregate(&a.expr)));
        let select_span = {
            let start = self.raw(select.select_token.0.span).map_or(0, |s| s.start);
            let end = items
                .iter()
                .map(|i| match i {
                    Item::Star(s) => *s,
                    Item::Expr(a) => a.span,
                })
                .map(|s| s.end)
                .max()
                .unwrap_or(start);
            Span::new(start, end)
        };

        if group_keys.is_empty() && from.pivot.is_none() && !has_aggregate && !distinct {
            let value = match items.as_slice() {
                [Item::Star(span)] => SelectList::Star(*span),
                _ => SelectList::Items(
                    items
                        .into_iter()
                        .map(|i| match i {
                            Item::Expr(a) => Ok(a),
                            Item::Star(span) => Err(unsupported(
                                "`*` together with other select items",
                                span,
                                "select `*` alone, or list the fields",
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            out.select = Some(Clause {
                value,
                span: select_span,
            });
            return Ok(());
        }

        if distinct && (has_aggregate || !group_keys.is_empty() || from.pivot.is_some()) {
            return Err(unsupported(
                "`SELECT DISTINCT` with `GROUP BY` or aggregates",
                select_span,
                "drop `DISTINCT`: grouped rows are already distinct",
            ));
        }

        // Grouped: items by kind.
        let mut exprs: Vec<&AliasedExpr> = Vec::new();
        for item in &items {
            match item {
                Item::Expr(a) => exprs.push(a),
                Item::Star(span) if from.pivot.is_none() => {
                    return Err(unsupported(
                        "`SELECT *` with `GROUP BY`, `DISTINCT` or aggregates",
                        *span,
                        "select the group keys and the aggregates by name",
                    ));
                }
                Item::Star(_) => {}
            }
        }

        let mut dimensions: Vec<AliasedExpr> = Vec::new();
        if distinct {
            dimensions = exprs.iter().map(|a| (*a).clone()).collect();
        }
        for key in group_keys {
            let key_expr = self.expr(key)?;
            let dimension = match &key_expr.kind {
                ExprKind::Literal(Literal::Int(n)) => {
                    let item = usize::try_from(*n)
                        .ok()
                        .and_then(|n| n.checked_sub(1))
                        .and_then(|i| items.get(i));
                    match item {
                        Some(Item::Expr(a)) if !expr::has_aggregate(&a.expr) => a.clone(),
                        Some(Item::Expr(_)) => {
                            return Err(Diagnostic::new(
                                codes::AGGREGATE_IN_SELECT,
                                format!("`GROUP BY {n}` refers to an aggregate"),
                                key_expr.span,
                            )
                            .with_help("group by the position of a non-aggregated select item"));
                        }
                        _ => {
                            return Err(Diagnostic::new(
                                codes::AGGREGATE_IN_SELECT,
                                format!("`GROUP BY {n}` is not the position of a select item"),
                                key_expr.span,
                            )
                            .with_help(format!(
                                "positions count select items from 1 to {}",
                                items.len()
                            )));
                        }
                    }
                }
                _ => exprs
                    .iter()
                    .find(|a| {
                        !expr::has_aggregate(&a.expr)
                            && (expr::same(&a.expr, &key_expr)
                                || matches!(&key_expr.kind, ExprKind::Ident(name)
                                    if a.alias.as_ref().is_some_and(|(alias, _)| alias == name)))
                    })
                    .map(|a| (*a).clone())
                    .unwrap_or(AliasedExpr {
                        span: key_expr.span,
                        expr: key_expr,
                        alias: None,
                    }),
            };
            dimensions.push(dimension);
        }

        let mut measures: Vec<AliasedExpr> = Vec::new();
        if let Some(pivot) = &from.pivot {
            dimensions.retain(|d| !expr::same(&d.expr, &pivot.key));
            measures.extend(pivot.measures.iter().cloned());
        }
        for item in &exprs {
            if expr::has_aggregate(&item.expr) {
                let in_pivot = from.pivot.as_ref().is_some_and(|p| {
                    p.measures.iter().any(|m| {
                        expr::same(&m.expr, &item.expr)
                            || (m.alias.is_some()
                                && m.alias.as_ref().map(|a| &a.0)
                                    == item.alias.as_ref().map(|a| &a.0))
                    })
                });
                if !in_pivot {
                    measures.push((*item).clone());
                }
                continue;
            }
            let name = output_name(item);
            let grouped = dimensions.iter().any(|d| {
                expr::same(&d.expr, &item.expr) || (name.is_some() && output_name(d) == name)
            });
            let pivoted = from.pivot.as_ref().is_some_and(|p| {
                expr::same(&p.key, &item.expr)
                    || (name.is_some() && path_name(&p.key) == name)
                    || p.measures.iter().any(|m| {
                        name.is_some() && m.alias.as_ref().map(|a| a.0.as_str()) == name.as_deref()
                    })
            });
            if !grouped && !pivoted {
                return Err(Diagnostic::new(
                    codes::AGGREGATE_IN_SELECT,
                    format!("`{}` is neither grouped nor aggregated", item.expr),
                    item.span,
                )
                .with_help(format!(
                    "add it to `GROUP BY`, or aggregate it, e.g. `any_value({})`",
                    item.expr
                )));
            }
        }

        let group_span = group_keys
            .iter()
            .filter_map(|k| self.span_of(k))
            .reduce(Span::to)
            .map(|s| self.with_keyword(&["GROUP", "BY"], s));
        if !dimensions.is_empty() {
            out.dimensions = Some(Clause {
                value: dimensions,
                span: group_span.unwrap_or(select_span),
            });
        }
        if !measures.is_empty() {
            out.measures = Some(Clause {
                value: measures,
                span: select_span,
            });
        }
        if let Some(pivot) = &from.pivot {
            out.pivot = Some(Clause {
                value: vec![AliasedExpr {
                    expr: pivot.key.clone(),
                    alias: None,
                    span: pivot.key.span,
                }],
                span: pivot.key.span,
            });
        }
        Ok(())
    }

    fn select_item(&self, item: &sql::SelectItem) -> Result<Item, Diagnostic> {
        let span = self.span_or_whole(item);
        match item {
            sql::SelectItem::UnnamedExpr(e) => {
                let expr = self.expr(e)?;
                Ok(Item::Expr(AliasedExpr {
                    span: expr.span,
                    expr,
                    alias: None,
                }))
            }
            sql::SelectItem::ExprWithAlias { expr: e, alias } => {
                let expr = self.expr(e)?;
                let alias_span = self.raw(alias.span).unwrap_or(expr.span);
                Ok(Item::Expr(AliasedExpr {
                    span: expr.span.to(alias_span),
                    expr,
                    alias: Some((alias.value.clone(), alias_span)),
                }))
            }
            sql::SelectItem::Wildcard(options) => {
                if options.opt_ilike.is_some()
                    || options.opt_exclude.is_some()
                    || options.opt_except.is_some()
                    || options.opt_replace.is_some()
                    || options.opt_rename.is_some()
                    || options.opt_alias.is_some()
                {
                    return Err(unsupported(
                        "`*` with options (`EXCEPT`, `REPLACE`, ...)",
                        span,
                        "select `*` alone, or list the fields",
                    ));
                }
                let star = self.raw(options.wildcard_token.0.span).unwrap_or(span);
                Ok(Item::Star(star))
            }
            sql::SelectItem::QualifiedWildcard(..) => Err(unsupported(
                "a qualified `*`",
                span,
                "select `*`, or a path such as `metadata`",
            )),
            sql::SelectItem::ExprWithAliases { .. } => Err(unsupported(
                "several aliases for one select item",
                span,
                "give each select item one alias",
            )),
        }
    }

    fn order_by(
        &self,
        order_by: &sql::OrderBy,
    ) -> Result<Option<Clause<Vec<SortItem>>>, Diagnostic> {
        let span = self.span_or_whole(order_by);
        if order_by.interpolate.is_some() {
            return Err(unsupported("`INTERPOLATE`", span, "remove it"));
        }
        let exprs = match &order_by.kind {
            sql::OrderByKind::Expressions(exprs) => exprs,
            sql::OrderByKind::All(_) => {
                return Err(unsupported("`ORDER BY ALL`", span, "list the sort keys"));
            }
        };
        let mut items = Vec::with_capacity(exprs.len());
        for item in exprs {
            let expr = self.expr(&item.expr)?;
            let item_span = self.span_of(item).map_or(expr.span, |s| s.to(expr.span));
            if item.options.nulls_first.is_some() {
                return Err(unsupported(
                    "`NULLS FIRST` / `NULLS LAST`",
                    item_span,
                    "nulls sort last ascending and first descending; remove the option",
                ));
            }
            if item.with_fill.is_some() {
                return Err(unsupported("`WITH FILL`", item_span, "remove it"));
            }
            items.push(SortItem {
                expr,
                descending: item.options.asc == Some(false),
                span: item_span,
            });
        }
        let body = items
            .iter()
            .map(|i| i.span)
            .reduce(Span::to)
            .unwrap_or(span);
        Ok(Some(Clause {
            value: items,
            span: self.with_keyword(&["ORDER", "BY"], body),
        }))
    }

    fn limit(&self, limit: &sql::LimitClause, out: &mut Query) -> Result<(), Diagnostic> {
        let span = self.span_or_whole(limit);
        match limit {
            sql::LimitClause::OffsetCommaLimit { .. } => Err(unsupported(
                "`LIMIT offset, count`",
                span,
                "write `LIMIT n`, and page with `OFFSET '<cursor>'`",
            )),
            sql::LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            } => {
                if !limit_by.is_empty() {
                    return Err(unsupported("`LIMIT ... BY`", span, "write `LIMIT n`"));
                }
                if let Some(limit) = limit {
                    let value = self.expr(limit)?;
                    let n = int_value(&value).ok_or_else(|| {
                        Diagnostic::new(codes::SYNTAX, "`LIMIT` takes an integer", value.span)
                            .with_help("write `LIMIT 100`")
                    })?;
                    out.limit = Some(Clause {
                        value: n,
                        span: self.with_keyword(&["LIMIT"], value.span),
                    });
                }
                if let Some(offset) = offset {
                    let value_span = self.span_of(&offset.value).unwrap_or(span);
                    let cursor = match &offset.value {
                        sql::Expr::Value(v) => match &v.value {
                            sql::Value::SingleQuotedString(s) => Some(s.clone()),
                            _ => None,
                        },
                        _ => None,
                    };
                    match cursor {
                        Some(cursor) if offset.rows == sql::OffsetRows::None => {
                            out.cursor = Some(Clause {
                                value: cursor,
                                span: self.with_keyword(&["OFFSET"], value_span),
                            });
                        }
                        _ => {
                            return Err(unsupported(
                                "a numeric `OFFSET`",
                                self.with_keyword(&["OFFSET"], value_span),
                                "page with the cursor of the previous response: `OFFSET '<cursor>'`",
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The integer an expression stands for (`5`, `-5`).
fn int_value(e: &Expr) -> Option<i64> {
    match &e.kind {
        ExprKind::Literal(Literal::Int(n)) => Some(*n),
        ExprKind::Unary {
            op: crate::ast::UnaryOp::Neg,
            expr,
        } => match &expr.kind {
            ExprKind::Literal(Literal::Int(n)) => n.checked_neg(),
            _ => None,
        },
        _ => None,
    }
}

/// Output name of a select item: its alias, else the last key of a path.
fn output_name(item: &AliasedExpr) -> Option<String> {
    match &item.alias {
        Some((alias, _)) => Some(alias.clone()),
        None => path_name(&item.expr),
    }
}

/// Last key of a path (`metadata.model` → `model`).
fn path_name(e: &Expr) -> Option<String> {
    e.as_path()?.iter().rev().find_map(|step| match step {
        crate::ast::PathStep::Key(key) => Some(key.clone()),
        crate::ast::PathStep::Index(_) => None,
    })
}

/// `span` without leading/trailing whitespace of the text it covers.
fn trim_span(text: &str, span: Span) -> Span {
    let Some(slice) = text.get(span.start..span.end) else {
        return span;
    };
    let start = span.start + (slice.len() - slice.trim_start().len());
    let end = (span.start + slice.trim_end().len()).max(start);
    Span::new(start, end)
}
