//! Text → [`ast::Query`]: the pest grammar (`btql.pest`) and the fold of its
//! pairs into the AST.
//!
//! ```text
//!  query text ──nesting check──pest──► flat pairs ──precedence fold──► ast::Expr (with spans)
//! ```
//!
//! Before pest runs, [`limits::check_btql_nesting`] refuses brackets nested
//! deeper than [`MAX_EXPRESSION_DEPTH`] (pest recurses once per bracket).
//! The grammar keeps expressions flat (`prefix* operand postfix* (infix …)*`)
//! and [`folded_expr`] gives the precedence of spec §1.5 (a Pratt parser
//! whose recursion is an explicit stack), loosest first:
//! `?:` < `or` < `and` < `not` < comparisons and predicates (`=`, `like`,
//! `in`, `is null`, …) < `+ -` < `* / %` < unary `-` < `.field` / `[index]`.
//! Clauses may come in any order, each at most once; a repeated clause is a
//! diagnostic. pest errors become a `BTQL0001` diagnostic whose message names
//! what was expected in words (see [`rule_name`]).

use pest::Parser as _;
use pest::iterators::{Pair, Pairs};

use crate::ast::{
    AliasedExpr, BinaryOp, Clause, Expr, ExprKind, IntervalUnit, Literal, PathStep, Query, Sample,
    SampleMethod, SelectList, Shape, SortItem, Source, UnaryOp, UnpivotItem,
};
use crate::error::{Diagnostic, Diagnostics, Span, codes};
use crate::limits::{self, MAX_EXPRESSION_DEPTH};

mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "btql.pest"]
    pub(crate) struct BtqlParser;
}

pub(crate) use grammar::{BtqlParser, Rule};

/// Parses BTQL clause syntax into a [`Query`].
///
/// Brackets nested deeper than [`MAX_EXPRESSION_DEPTH`] are refused before
/// pest reads the text, and expressions deeper than that while they are
/// folded; the parse runs on the parser thread
/// ([`limits::on_parser_stack`]).
pub fn parse_query(text: &str) -> Result<Query, Diagnostics> {
    limits::on_parser_stack(|| parse_query_here(text))
}

fn parse_query_here(text: &str) -> Result<Query, Diagnostics> {
    limits::check_btql_nesting(text)?;
    let mut pairs = BtqlParser::parse(Rule::query, text).map_err(|error| {
        let at = match error.location {
            pest::error::InputLocation::Pos(p) | pest::error::InputLocation::Span((p, _)) => p,
        };
        unknown_clause(text, at).map_or_else(|| pest_to_diagnostic(error), Diagnostics::from)
    })?;
    let query_pair = pairs.next().ok_or_else(|| {
        Diagnostic::internal(
            "the grammar produced no `query` pair",
            Span::new(0, text.len()),
        )
    })?;
    let mut query = Query {
        span: Span::new(0, text.len()),
        ..Query::default()
    };
    let mut errors = Vec::new();
    for clause in query_pair.into_inner() {
        if clause.as_rule() == Rule::EOI {
            continue;
        }
        if let Err(diagnostic) = add_clause(&mut query, clause) {
            errors.push(diagnostic);
        }
    }
    if errors.is_empty() {
        Ok(query)
    } else {
        Err(Diagnostics(errors))
    }
}

/// Parses a bare expression (a filter box, an automation filter).
pub fn parse_expr(text: &str) -> Result<Expr, Diagnostics> {
    limits::on_parser_stack(|| parse_expr_here(text))
}

/// [`parse_expr`] on the caller's thread (for a front end already on the
/// parser thread).
pub(crate) fn parse_expr_here(text: &str) -> Result<Expr, Diagnostics> {
    let query = parse_query_here(&format!("filter: {text}")).map_err(|Diagnostics(ds)| {
        let shift = |s: Span| Span::new(s.start.saturating_sub(8), s.end.saturating_sub(8));
        Diagnostics(
            ds.into_iter()
                .map(|mut d| {
                    d.span = shift(d.span);
                    d.labels = d.labels.into_iter().map(|(s, l)| (shift(s), l)).collect();
                    d
                })
                .collect(),
        )
    })?;
    let mut expr = query
        .filter
        .map(|c| c.value)
        .ok_or_else(|| Diagnostic::internal("no filter parsed", Span::new(0, text.len())))?;
    shift_expr(&mut expr, 8);
    Ok(expr)
}

fn shift_expr(expr: &mut Expr, by: usize) {
    expr.span = Span::new(expr.span.start - by, expr.span.end - by);
    match &mut expr.kind {
        ExprKind::Literal(_) | ExprKind::Interval { .. } | ExprKind::Ident(_) | ExprKind::Star => {}
        ExprKind::Array(items) | ExprKind::Function { args: items, .. } => {
            items.iter_mut().for_each(|e| shift_expr(e, by))
        }
        ExprKind::Access { base, .. } => shift_expr(base, by),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => shift_expr(expr, by),
        ExprKind::Binary { left, right, .. } => {
            shift_expr(left, by);
            shift_expr(right, by);
        }
        ExprKind::InList { expr, list } => {
            shift_expr(expr, by);
            list.iter_mut().for_each(|e| shift_expr(e, by));
        }
        ExprKind::Ternary {
            cond,
            then,
            otherwise,
        } => {
            shift_expr(cond, by);
            shift_expr(then, by);
            shift_expr(otherwise, by);
        }
    }
}

/// Human words for grammar rules, used in "expected …" messages.
pub(crate) fn rule_name(rule: &Rule) -> String {
    match rule {
        Rule::EOI => "end of query",
        Rule::query => "a query",
        Rule::select_clause
        | Rule::from_clause
        | Rule::filter_clause
        | Rule::sort_clause
        | Rule::limit_clause
        | Rule::dimensions_clause
        | Rule::measures_clause
        | Rule::pivot_clause
        | Rule::unpivot_clause
        | Rule::cursor_clause
        | Rule::sample_clause
        | Rule::final_filter_clause
        | Rule::trace_filter_clause
        | Rule::span_filter_clause
        | Rule::preview_length_clause => "a clause such as `select:` or `filter:`",
        Rule::expr | Rule::paren | Rule::aliased | Rule::sort_item => "an expression",
        Rule::unpivot_item => "`expr as (name, value)`",
        Rule::alias | Rule::ident | Rule::ident_any | Rule::quoted_ident => "a name",
        Rule::source | Rule::source_arg => "a source such as `project_logs('<id>')`",
        Rule::shape => "`spans`, `traces` or `summary`",
        Rule::sort_dir => "`asc` or `desc`",
        Rule::star => "`*`",
        Rule::close_paren => "`)`",
        Rule::percent => "`%`",
        Rule::not_op | Rule::not_kw => "`not`",
        Rule::kw_as => "`as`",
        Rule::kw_is => "`is`",
        Rule::kw_in => "`in`",
        Rule::kw_null => "`null`",
        Rule::kw_seed => "`seed`",
        Rule::kw_interval => "`interval`",
        Rule::neg_op => "`-`",
        Rule::field_step => "`.field`",
        Rule::index_step => "`[index]`",
        Rule::is_null_op => "`is null`",
        Rule::in_op => "`in [...]`",
        Rule::ternary_op => "`? :`",
        Rule::or_op | Rule::and_op => "`and` or `or`",
        Rule::cmp_op => "a comparison such as `=`",
        Rule::text_op | Rule::text_kw => "`like`, `match` or `includes`",
        Rule::add_op | Rule::mul_op => "an arithmetic operator",
        Rule::function => "a function call",
        Rule::array => "an array such as `[1, 2]`",
        Rule::interval => "an interval such as `interval 1 day`",
        Rule::interval_unit => "an interval unit such as `day`",
        Rule::null | Rule::boolean | Rule::float | Rule::integer => "a literal",
        Rule::signed_integer => "an integer",
        Rule::string | Rule::single_inner => "a string such as `'text'`",
        Rule::dq_string | Rule::double_inner => "a double-quoted string",
        Rule::WHITESPACE | Rule::COMMENT => "whitespace",
        other => return format!("`{other:?}`"),
    }
    .to_string()
}

/// Clause keywords, for suggestions.
const CLAUSES: &[&str] = &[
    "select",
    "from",
    "filter",
    "sort",
    "limit",
    "dimensions",
    "measures",
    "pivot",
    "unpivot",
    "cursor",
    "sample",
    "final_filter",
    "trace_filter",
    "span_filter",
    "preview_length",
];

/// A parse error where a clause was expected and the text there reads
/// `word:` with an unknown `word`: name it and suggest the closest clause.
fn unknown_clause(text: &str, at: usize) -> Option<Diagnostic> {
    let rest = text.get(at..)?;
    let word_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let word = &rest[..word_len];
    if word.is_empty()
        || !rest[word_len..].trim_start().starts_with(':')
        || CLAUSES.iter().any(|c| c.eq_ignore_ascii_case(word))
    {
        return None;
    }
    let lower = word.to_ascii_lowercase();
    let closest = CLAUSES
        .iter()
        .map(|c| (strsim::levenshtein(&lower, c), *c))
        .min()
        .filter(|(distance, _)| *distance <= 2)
        .map(|(_, c)| c);
    let list = CLAUSES
        .iter()
        .map(|c| format!("`{c}:`"))
        .collect::<Vec<_>>()
        .join(", ");
    let help = match closest {
        Some(c) => format!("did you mean `{c}:`? clauses are {list}"),
        None => format!("clauses are {list}"),
    };
    Some(
        Diagnostic::new(
            codes::SYNTAX,
            format!("unknown clause `{word}:`"),
            Span::new(at, at + word_len),
        )
        .with_help(help),
    )
}

fn pest_to_diagnostic(error: pest::error::Error<Rule>) -> Diagnostics {
    let span = match error.location {
        pest::error::InputLocation::Pos(p) => Span::new(p, p),
        pest::error::InputLocation::Span((s, e)) => Span::new(s, e),
    };
    let message = match &error.variant {
        pest::error::ErrorVariant::ParsingError {
            positives,
            negatives,
        } => {
            let mut words: Vec<String> = Vec::new();
            for rule in positives {
                let name = rule_name(rule);
                if !words.contains(&name) {
                    words.push(name);
                }
            }
            if words.is_empty() {
                let unexpected: Vec<String> = negatives.iter().map(rule_name).collect();
                format!("unexpected {}", unexpected.join(" or "))
            } else {
                let last = words.pop().unwrap_or_default();
                if words.is_empty() {
                    format!("expected {last}")
                } else {
                    format!("expected {} or {last}", words.join(", "))
                }
            }
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    Diagnostics(vec![Diagnostic::new(
        codes::SYNTAX,
        format!("syntax error: {message}"),
        span,
    )])
}

fn set<T>(
    slot: &mut Option<Clause<T>>,
    name: &str,
    value: T,
    span: Span,
) -> Result<(), Diagnostic> {
    if let Some(previous) = slot {
        return Err(Diagnostic::new(
            codes::DUPLICATE_CLAUSE,
            format!("duplicate `{name}:` clause"),
            span,
        )
        .with_label(previous.span, "first given here")
        .with_help("give each clause at most once"));
    }
    *slot = Some(Clause { value, span });
    Ok(())
}

fn add_clause(query: &mut Query, pair: Pair<'_, Rule>) -> Result<(), Diagnostic> {
    let span = Span::of(&pair);
    let rule = pair.as_rule();
    let mut inner = pair.into_inner();
    match rule {
        Rule::select_clause => {
            let first = inner.peek();
            let value = match first {
                Some(p) if p.as_rule() == Rule::star => SelectList::Star(Span::of(&p)),
                _ => SelectList::Items(inner.map(aliased).collect::<Result<_, _>>()?),
            };
            set(&mut query.select, "select", value, span)
        }
        Rule::from_clause => {
            let source = source(next(&mut inner, span)?)?;
            set(&mut query.from, "from", source, span)
        }
        Rule::filter_clause => set(
            &mut query.filter,
            "filter",
            expr(next(&mut inner, span)?)?,
            span,
        ),
        Rule::final_filter_clause => set(
            &mut query.final_filter,
            "final_filter",
            expr(next(&mut inner, span)?)?,
            span,
        ),
        Rule::trace_filter_clause => set(
            &mut query.trace_filter,
            "trace_filter",
            expr(next(&mut inner, span)?)?,
            span,
        ),
        Rule::span_filter_clause => set(
            &mut query.span_filter,
            "span_filter",
            expr(next(&mut inner, span)?)?,
            span,
        ),
        Rule::sort_clause => {
            let items = inner.map(sort_item).collect::<Result<_, _>>()?;
            set(&mut query.sort, "sort", items, span)
        }
        Rule::limit_clause => set(
            &mut query.limit,
            "limit",
            integer(next(&mut inner, span)?)?,
            span,
        ),
        Rule::preview_length_clause => set(
            &mut query.preview_length,
            "preview_length",
            integer(next(&mut inner, span)?)?,
            span,
        ),
        Rule::dimensions_clause => {
            let items = inner.map(aliased).collect::<Result<_, _>>()?;
            set(&mut query.dimensions, "dimensions", items, span)
        }
        Rule::measures_clause => {
            let items = inner.map(aliased).collect::<Result<_, _>>()?;
            set(&mut query.measures, "measures", items, span)
        }
        Rule::pivot_clause => {
            let items = inner.map(aliased).collect::<Result<_, _>>()?;
            set(&mut query.pivot, "pivot", items, span)
        }
        Rule::unpivot_clause => {
            let items = inner.map(unpivot_item).collect::<Result<_, _>>()?;
            set(&mut query.unpivot, "unpivot", items, span)
        }
        Rule::cursor_clause => {
            let text = string_value(next(&mut inner, span)?);
            set(&mut query.cursor, "cursor", text, span)
        }
        Rule::sample_clause => {
            let number = next(&mut inner, span)?;
            let number_span = Span::of(&number);
            let value: f64 = number.as_str().parse().map_err(|_| {
                Diagnostic::new(codes::NUMBER_RANGE, "invalid sample size", number_span)
            })?;
            let mut method = if number.as_rule() == Rule::integer {
                SampleMethod::Count(integer(number)?)
            } else {
                SampleMethod::Rate(value)
            };
            let mut seed = None;
            for p in inner {
                match p.as_rule() {
                    Rule::percent => method = SampleMethod::Rate(value / 100.0),
                    Rule::kw_seed => {}
                    _ => seed = Some(integer(p)?),
                }
            }
            set(&mut query.sample, "sample", Sample { method, seed }, span)
        }
        _ => Err(unexpected(rule, span)),
    }
}

fn next<'i>(inner: &mut Pairs<'i, Rule>, span: Span) -> Result<Pair<'i, Rule>, Diagnostic> {
    inner
        .next()
        .ok_or_else(|| Diagnostic::internal("missing child in parse tree", span))
}

fn unexpected(rule: Rule, span: Span) -> Diagnostic {
    Diagnostic::internal(format!("unexpected grammar rule `{rule:?}`"), span)
}

fn integer(pair: Pair<'_, Rule>) -> Result<i64, Diagnostic> {
    pair.as_str().parse::<i64>().map_err(|_| {
        Diagnostic::new(codes::NUMBER_RANGE, "integer out of range", Span::of(&pair))
            .with_help("integers are 64-bit signed")
    })
}

/// The content of a `string`, `dq_string` or `quoted_ident` pair, with
/// quote escapes decoded and other backslashes kept.
fn string_value(pair: Pair<'_, Rule>) -> String {
    let pair = match pair.as_rule() {
        Rule::quoted_ident | Rule::alias | Rule::source_arg => match pair.into_inner().next() {
            Some(p) => p,
            None => return String::new(),
        },
        _ => pair,
    };
    let raw = pair.as_str();
    let (quote, body) = match raw.chars().next() {
        Some(q @ ('\'' | '"')) if raw.len() >= 2 => (q, &raw[1..raw.len() - 1]),
        _ => return raw.to_string(),
    };
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if (c == '\\' || c == quote) && chars.peek() == Some(&quote) {
            out.push(quote);
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

fn name_value(pair: Pair<'_, Rule>) -> String {
    match pair.as_rule() {
        Rule::alias => match pair.into_inner().next() {
            Some(inner) => name_value(inner),
            None => String::new(),
        },
        Rule::ident | Rule::ident_any => pair.as_str().to_string(),
        _ => string_value(pair),
    }
}

fn aliased(pair: Pair<'_, Rule>) -> Result<AliasedExpr, Diagnostic> {
    let span = Span::of(&pair);
    let mut inner = pair.into_inner();
    let expr = expr(next(&mut inner, span)?)?;
    let alias = inner.find(|p| p.as_rule() == Rule::alias).map(|p| {
        let alias_span = Span::of(&p);
        (name_value(p), alias_span)
    });
    Ok(AliasedExpr { expr, alias, span })
}

fn sort_item(pair: Pair<'_, Rule>) -> Result<SortItem, Diagnostic> {
    let span = Span::of(&pair);
    let mut inner = pair.into_inner();
    let expr = expr(next(&mut inner, span)?)?;
    let descending = inner
        .next()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("desc"));
    Ok(SortItem {
        expr,
        descending,
        span,
    })
}

fn unpivot_item(pair: Pair<'_, Rule>) -> Result<UnpivotItem, Diagnostic> {
    let span = Span::of(&pair);
    let mut inner = pair.into_inner();
    let expr = expr(next(&mut inner, span)?)?;
    let names = inner
        .filter(|p| p.as_rule() == Rule::alias)
        .map(name_value)
        .collect();
    Ok(UnpivotItem { expr, names, span })
}

fn source(pair: Pair<'_, Rule>) -> Result<Source, Diagnostic> {
    let span = Span::of(&pair);
    let mut inner = pair.into_inner();
    let function = next(&mut inner, span)?.as_str().to_string();
    let mut args = Vec::new();
    let mut shape = Shape::Spans;
    for p in inner {
        match p.as_rule() {
            Rule::source_arg => args.push(string_value(p)),
            Rule::shape => {
                shape = match p.as_str().to_ascii_lowercase().as_str() {
                    "traces" => Shape::Traces,
                    "summary" => Shape::Summary,
                    _ => Shape::Spans,
                }
            }
            other => return Err(unexpected(other, span)),
        }
    }
    Ok(Source {
        function,
        args,
        shape,
        span,
    })
}

fn boxed(e: Expr) -> Box<Expr> {
    Box::new(e)
}

/// An expression and the depth of its tree (a leaf is 1), so that each new
/// node's depth is known without walking its children.
#[derive(Debug)]
struct Folded {
    expr: Expr,
    depth: usize,
}

impl Folded {
    fn leaf(kind: ExprKind, span: Span) -> Self {
        Folded {
            expr: Expr { kind, span },
            depth: 1,
        }
    }
}

/// A node over children of depth at most `children_depth`; too deep (over
/// [`MAX_EXPRESSION_DEPTH`]) is a diagnostic at `op_span`, the operator or
/// bracket that adds the level.
fn node(
    kind: ExprKind,
    span: Span,
    children_depth: usize,
    op_span: Span,
) -> Result<Folded, Diagnostic> {
    let depth = children_depth + 1;
    if depth > MAX_EXPRESSION_DEPTH {
        return Err(limits::too_deep(op_span));
    }
    Ok(Folded {
        expr: Expr { kind, span },
        depth,
    })
}

/// How an operator rule binds: prefix, postfix or infix, and its binding
/// power (higher binds tighter). Spec §1.5, loosest first: `?:` < `or` <
/// `and` < `not` < comparisons and predicates < `+ -` < `* / %` < unary `-`
/// < `.field` / `[index]`. Powers are multiples of 10 so that `power - 1`
/// (a prefix's operand, a right-associative right side) stays above the
/// next looser level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Affix {
    Prefix,
    Postfix,
    /// Whether it associates to the right.
    Infix {
        right: bool,
    },
}

fn affix(rule: Rule) -> Option<(Affix, u32)> {
    Some(match rule {
        Rule::ternary_op => (Affix::Infix { right: true }, 10),
        Rule::or_op => (Affix::Infix { right: false }, 20),
        Rule::and_op => (Affix::Infix { right: false }, 30),
        Rule::not_op => (Affix::Prefix, 40),
        Rule::cmp_op | Rule::text_op => (Affix::Infix { right: false }, 50),
        Rule::is_null_op | Rule::in_op => (Affix::Postfix, 50),
        Rule::add_op => (Affix::Infix { right: false }, 60),
        Rule::mul_op => (Affix::Infix { right: false }, 70),
        Rule::neg_op => (Affix::Prefix, 80),
        Rule::field_step | Rule::index_step => (Affix::Postfix, 90),
        _ => return None,
    })
}

/// An operator waiting for its right operand.
enum Pending<'i> {
    Prefix(Pair<'i, Rule>),
    Infix(Folded, Pair<'i, Rule>),
}

/// Folds the flat `expr` pair (`prefix* operand postfix* (infix …)*`) into
/// an expression by precedence, as a Pratt parser does but with its
/// recursion kept in an explicit stack: a chain of 5000 operators takes no
/// stack, and is refused at the operator where the tree would grow deeper
/// than [`MAX_EXPRESSION_DEPTH`]. Nested expressions (parentheses, arrays,
/// arguments, the middle of `? :`) recurse here, as deep as the brackets,
/// which [`limits::check_btql_nesting`] bounded before pest ran.
fn expr(pair: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
    folded_expr(pair).map(|folded| folded.expr)
}

fn folded_expr(pair: Pair<'_, Rule>) -> Result<Folded, Diagnostic> {
    let whole = Span::of(&pair);
    let mut pairs = pair.into_inner().peekable();
    // Each entry: the operator and the binding power of the expression it
    // interrupted (restored when its right side is done).
    let mut stack: Vec<(Pending<'_>, u32)> = Vec::new();
    // Operators that bind at most this tightly end the current operand.
    let mut min_power = 0u32;
    loop {
        // An operand, after any prefix operators.
        let mut lhs = loop {
            let p = pairs
                .next()
                .ok_or_else(|| Diagnostic::internal("an expression without an operand", whole))?;
            match affix(p.as_rule()) {
                Some((Affix::Prefix, power)) => {
                    if stack.len() >= MAX_EXPRESSION_DEPTH {
                        return Err(limits::too_deep(Span::of(&p)));
                    }
                    stack.push((Pending::Prefix(p), min_power));
                    min_power = power - 1;
                }
                None => break operand(p)?,
                Some(_) => return Err(unexpected(p.as_rule(), Span::of(&p))),
            }
        };
        // Postfix and infix operators, completing pending ones as their
        // right sides end.
        loop {
            let next = match pairs.peek() {
                None => None,
                Some(p) => {
                    Some(affix(p.as_rule()).ok_or_else(|| unexpected(p.as_rule(), Span::of(p)))?)
                }
            };
            match next {
                Some((affix, power)) if power > min_power => {
                    let op = pairs
                        .next()
                        .ok_or_else(|| Diagnostic::internal("a missing operator", whole))?;
                    match affix {
                        Affix::Postfix => lhs = postfix(lhs, op)?,
                        Affix::Infix { right } => {
                            if stack.len() >= MAX_EXPRESSION_DEPTH {
                                return Err(limits::too_deep(Span::of(&op)));
                            }
                            stack.push((Pending::Infix(lhs, op), min_power));
                            min_power = if right { power - 1 } else { power };
                            break;
                        }
                        Affix::Prefix => return Err(unexpected(op.as_rule(), Span::of(&op))),
                    }
                }
                _ => match stack.pop() {
                    None => return Ok(lhs),
                    Some((Pending::Prefix(op), saved)) => {
                        lhs = prefix(op, lhs)?;
                        min_power = saved;
                    }
                    Some((Pending::Infix(left, op), saved)) => {
                        lhs = infix(left, op, lhs)?;
                        min_power = saved;
                    }
                },
            }
        }
    }
}

fn prefix(op: Pair<'_, Rule>, rhs: Folded) -> Result<Folded, Diagnostic> {
    let op_span = Span::of(&op);
    let span = op_span.to(rhs.expr.span);
    let op = if op.as_rule() == Rule::not_op {
        UnaryOp::Not
    } else {
        UnaryOp::Neg
    };
    node(
        ExprKind::Unary {
            op,
            expr: boxed(rhs.expr),
        },
        span,
        rhs.depth,
        op_span,
    )
}

fn postfix(lhs: Folded, op: Pair<'_, Rule>) -> Result<Folded, Diagnostic> {
    let op_span = Span::of(&op);
    let span = lhs.expr.span.to(op_span);
    let input = op.get_input();
    match op.as_rule() {
        Rule::field_step => {
            let step_pair = op
                .into_inner()
                .next()
                .ok_or_else(|| unexpected(Rule::field_step, span))?;
            let key = if step_pair.as_rule() == Rule::dq_string {
                string_value(step_pair)
            } else {
                step_pair.as_str().to_string()
            };
            access(input, lhs, PathStep::Key(key), span, op_span)
        }
        Rule::index_step => {
            let index = op
                .into_inner()
                .next()
                .ok_or_else(|| unexpected(Rule::index_step, span))?;
            let step = match index.as_rule() {
                Rule::signed_integer => PathStep::Index(integer(index)?),
                _ => PathStep::Key(string_value(index)),
            };
            access(input, lhs, step, span, op_span)
        }
        Rule::is_null_op => {
            let negated = op.into_inner().any(|p| p.as_rule() == Rule::not_kw);
            node(
                ExprKind::IsNull {
                    expr: boxed(lhs.expr),
                    negated,
                },
                span,
                lhs.depth,
                op_span,
            )
        }
        Rule::in_op => {
            let mut negated = false;
            let mut list = Vec::new();
            let mut depth = lhs.depth;
            let mut push = |item: Pair<'_, Rule>| -> Result<(), Diagnostic> {
                let item = folded_expr(item)?;
                depth = depth.max(item.depth);
                list.push(item.expr);
                Ok(())
            };
            for p in op.into_inner() {
                match p.as_rule() {
                    Rule::not_kw => negated = true,
                    Rule::kw_in => {}
                    Rule::array => p.into_inner().try_for_each(&mut push)?,
                    _ => push(p)?,
                }
            }
            let in_list = node(
                ExprKind::InList {
                    expr: boxed(lhs.expr),
                    list,
                },
                span,
                depth,
                op_span,
            )?;
            negate_if(negated, in_list, op_span)
        }
        other => Err(unexpected(other, span)),
    }
}

fn infix(lhs: Folded, op: Pair<'_, Rule>, rhs: Folded) -> Result<Folded, Diagnostic> {
    let op_span = Span::of(&op);
    let span = lhs.expr.span.to(rhs.expr.span);
    let text = op.as_str().to_ascii_lowercase();
    let rule = op.as_rule();
    let depth = lhs.depth.max(rhs.depth);
    let binary = |op: BinaryOp, lhs: Folded, rhs: Folded| {
        node(
            ExprKind::Binary {
                op,
                left: boxed(lhs.expr),
                right: boxed(rhs.expr),
            },
            span,
            depth,
            op_span,
        )
    };
    match rule {
        Rule::ternary_op => {
            let middle = folded_expr(
                op.into_inner()
                    .next()
                    .ok_or_else(|| unexpected(rule, span))?,
            )?;
            node(
                ExprKind::Ternary {
                    cond: boxed(lhs.expr),
                    then: boxed(middle.expr),
                    otherwise: boxed(rhs.expr),
                },
                span,
                depth.max(middle.depth),
                op_span,
            )
        }
        Rule::or_op => binary(BinaryOp::Or, lhs, rhs),
        Rule::and_op => binary(BinaryOp::And, lhs, rhs),
        Rule::cmp_op => binary(
            match text.as_str() {
                "=" | "eq" => BinaryOp::Eq,
                "!=" | "<>" | "ne" => BinaryOp::NotEq,
                "<" | "lt" => BinaryOp::Lt,
                "<=" | "le" => BinaryOp::LtEq,
                ">" | "gt" => BinaryOp::Gt,
                ">=" | "ge" => BinaryOp::GtEq,
                "<=>" => BinaryOp::IsNotDistinctFrom,
                _ => BinaryOp::IsDistinctFrom,
            },
            lhs,
            rhs,
        ),
        Rule::text_op => {
            let mut negated = false;
            let mut word = String::new();
            for p in op.into_inner() {
                match p.as_rule() {
                    Rule::not_kw => negated = true,
                    _ => word = p.as_str().to_ascii_lowercase(),
                }
            }
            let op = match word.as_str() {
                "like" => BinaryOp::Like,
                "ilike" => BinaryOp::ILike,
                "match" => BinaryOp::Match,
                _ => BinaryOp::Includes,
            };
            negate_if(negated, binary(op, lhs, rhs)?, op_span)
        }
        Rule::add_op => binary(
            if text == "+" || text == "add" {
                BinaryOp::Add
            } else {
                BinaryOp::Sub
            },
            lhs,
            rhs,
        ),
        Rule::mul_op => binary(
            match text.as_str() {
                "*" | "mul" => BinaryOp::Mul,
                "/" | "div" => BinaryOp::Div,
                _ => BinaryOp::Mod,
            },
            lhs,
            rhs,
        ),
        other => Err(unexpected(other, span)),
    }
}

fn negate_if(negated: bool, folded: Folded, op_span: Span) -> Result<Folded, Diagnostic> {
    if negated {
        let span = folded.expr.span;
        node(
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr: boxed(folded.expr),
            },
            span,
            folded.depth,
            op_span,
        )
    } else {
        Ok(folded)
    }
}

/// `base.step`; a double-quoted string as the base of a path is a quoted
/// identifier (`"my field".x`), not a string literal (spec §1.4).
fn access(
    input: &str,
    base: Folded,
    step: PathStep,
    span: Span,
    op_span: Span,
) -> Result<Folded, Diagnostic> {
    let Folded { expr: base, depth } = base;
    let double_quoted = input
        .get(base.span.start..)
        .is_some_and(|rest| rest.starts_with('"'));
    let base = match base.kind {
        ExprKind::Literal(Literal::String(name)) if double_quoted => Expr {
            kind: ExprKind::Ident(name),
            span: base.span,
        },
        kind => Expr {
            kind,
            span: base.span,
        },
    };
    node(
        ExprKind::Access {
            base: boxed(base),
            step,
        },
        span,
        depth,
        op_span,
    )
}

fn operand(pair: Pair<'_, Rule>) -> Result<Folded, Diagnostic> {
    let span = Span::of(&pair);
    let kind = match pair.as_rule() {
        Rule::paren => return folded_expr(next(&mut pair.into_inner(), span)?),
        Rule::null => ExprKind::Literal(Literal::Null),
        Rule::boolean => {
            ExprKind::Literal(Literal::Bool(pair.as_str().eq_ignore_ascii_case("true")))
        }
        Rule::integer => ExprKind::Literal(Literal::Int(integer(pair)?)),
        Rule::float => {
            ExprKind::Literal(Literal::Float(pair.as_str().parse().map_err(|_| {
                Diagnostic::new(codes::NUMBER_RANGE, "invalid number", span)
            })?))
        }
        Rule::string => ExprKind::Literal(Literal::String(string_value(pair))),
        Rule::dq_string => ExprKind::Literal(Literal::String(string_value(pair))),
        Rule::ident => ExprKind::Ident(pair.as_str().to_string()),
        Rule::array => {
            let open = Span::new(span.start, span.start + 1);
            let mut depth = 0;
            let mut items = Vec::new();
            for item in pair.into_inner() {
                let item = folded_expr(item)?;
                depth = depth.max(item.depth);
                items.push(item.expr);
            }
            return node(ExprKind::Array(items), span, depth, open);
        }
        Rule::interval => {
            let mut inner = pair
                .into_inner()
                .filter(|p| p.as_rule() != Rule::kw_interval);
            let value = integer(
                inner
                    .next()
                    .ok_or_else(|| unexpected(Rule::interval, span))?,
            )?;
            let unit_pair = inner
                .next()
                .ok_or_else(|| unexpected(Rule::interval, span))?;
            let unit = IntervalUnit::parse(unit_pair.as_str()).ok_or_else(|| {
                Diagnostic::new(
                    codes::BAD_UNIT,
                    format!("unknown interval unit `{}`", unit_pair.as_str()),
                    Span::of(&unit_pair),
                )
                .with_help("use one of year, month, week, day, hour, minute, second, millisecond, microsecond")
            })?;
            ExprKind::Interval { value, unit }
        }
        Rule::function => {
            let mut inner = pair.into_inner();
            let name_pair = next(&mut inner, span)?;
            let name_span = Span::of(&name_pair);
            let name = name_pair.as_str().to_string();
            let mut depth = 0;
            let mut args = Vec::new();
            for arg in inner {
                if arg.as_rule() == Rule::star {
                    args.push(Expr {
                        kind: ExprKind::Star,
                        span: Span::of(&arg),
                    });
                    depth = depth.max(1);
                } else {
                    let arg = folded_expr(arg)?;
                    depth = depth.max(arg.depth);
                    args.push(arg.expr);
                }
            }
            // The `(` after the name adds the level.
            let open = Span::new(name_span.end, name_span.end + 1);
            return node(ExprKind::Function { name, args }, span, depth, open);
        }
        other => return Err(unexpected(other, span)),
    };
    Ok(Folded::leaf(kind, span))
}
#[cfg(test)]
mod tests {
    use super::*;

    fn filter(text: &str) -> Expr {
        parse_expr(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn show(text: &str) -> String {
        filter(text).to_string()
    }

    #[test]
    fn clauses_in_any_order_with_pipes_newlines_and_comments() {
        let q = parse_query(
            "-- top\nLIMIT: 10 | from: project_logs('p1', \"p2\") Traces\nselect: a, metadata.b as c -- note\nSort: created DESC, id",
        )
        .unwrap();
        assert_eq!(q.limit.as_ref().unwrap().value, 10);
        let source = q.source().unwrap();
        assert_eq!(source.function, "project_logs");
        assert_eq!(source.args, vec!["p1", "p2"]);
        assert_eq!(source.shape, Shape::Traces);
        let Some(Clause {
            value: SelectList::Items(items),
            ..
        }) = &q.select
        else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].alias.as_ref().unwrap().0, "c");
        let sort = &q.sort.as_ref().unwrap().value;
        assert!(sort[0].descending && !sort[1].descending);
    }

    #[test]
    fn select_star_and_other_clauses() {
        let q = parse_query(
            "select: * | from: project_logs('p') | dimensions: metadata.model as model | measures: count(1) as n, count(*) \
             | pivot: n | unpivot: scores as (score, value), tags as (tag) | cursor: 'abc' | sample: 25% seed 7 \
             | final_filter: n > 1 | trace_filter: is_root | span_filter: true | preview_length: -1",
        )
        .unwrap();
        assert!(matches!(
            q.select.as_ref().unwrap().value,
            SelectList::Star(_)
        ));
        assert_eq!(q.source().unwrap().shape, Shape::Spans);
        assert_eq!(q.measures.unwrap().value.len(), 2);
        assert_eq!(q.unpivot.unwrap().value[0].names, vec!["score", "value"]);
        assert_eq!(q.cursor.unwrap().value, "abc");
        let sample = q.sample.unwrap().value;
        assert_eq!(sample.method, SampleMethod::Rate(0.25));
        assert_eq!(sample.seed, Some(7));
        assert_eq!(q.preview_length.unwrap().value, -1);
        assert!(q.final_filter.is_some() && q.trace_filter.is_some() && q.span_filter.is_some());
        assert_eq!(
            parse_query("sample: 10")
                .unwrap()
                .sample
                .unwrap()
                .value
                .method,
            SampleMethod::Count(10)
        );
    }

    #[test]
    fn precedence() {
        assert_eq!(show("a or b and not c = 1"), "a or (b and (not (c = 1)))");
        assert_eq!(show("1 + 2 * 3 - -4 % 2"), "(1 + (2 * 3)) - ((-4) % 2)");
        assert_eq!(show("a + 1 > b * 2"), "(a + 1) > (b * 2)");
        assert_eq!(
            show("x > 1 ? 'a' : y ? 'b' : 'c'"),
            "(x > 1) ? 'a' : (y ? 'b' : 'c')"
        );
        assert_eq!(show("not a is null"), "not (a is null)");
        assert_eq!(show("a + 1 in [1, 2]"), "(a + 1) in [1, 2]");
        assert_eq!(show("-a.b"), "-a.b");
    }

    #[test]
    fn operators_and_aliases() {
        assert_eq!(
            show("a eq 1 and b ne 2 and c GT 3 and d le 4"),
            "(((a = 1) and (b != 2)) and (c > 3)) and (d <= 4)"
        );
        assert_eq!(show("a <> 1"), "a != 1");
        assert_eq!(show("a <=> null"), "a <=> null");
        assert_eq!(show("a <!=> 'x'"), "a <!=> 'x'");
        assert_eq!(show("a NOT LIKE 'x%'"), "not (a like 'x%')");
        assert_eq!(show("a ilike 'x'"), "a ilike 'x'");
        assert_eq!(show("a not match 'x'"), "not (a match 'x')");
        assert_eq!(show("tags contains 'x'"), "tags includes 'x'");
        assert_eq!(show("tags NOT INCLUDES 'x'"), "not (tags includes 'x')");
        assert_eq!(show("a not in (1, 2)"), "not (a in [1, 2])");
        assert_eq!(show("a IS NOT NULL"), "a is not null");
        assert_eq!(show("a add 1 mul 2"), "a + (1 * 2)");
    }

    #[test]
    fn literals_and_paths() {
        assert_eq!(show("metadata.\"a b\".c"), "metadata.\"a b\".c");
        assert_eq!(show("tags[0] = tags[-1]"), "tags[0] = tags[-1]");
        assert_eq!(show("metadata.models[0].name"), "metadata.models[0].name");
        assert_eq!(show("metadata['k']"), "metadata.k");
        assert_eq!(show("\"my field\".x"), "\"my field\".x");
        assert_eq!(
            filter("metadata.model = \"gpt-4\"").kind,
            ExprKind::Binary {
                op: BinaryOp::Eq,
                left: boxed(filter("metadata.model")),
                right: boxed(Expr {
                    kind: ExprKind::Literal(Literal::String("gpt-4".into())),
                    span: Span::new(17, 24)
                }),
            }
        );
        assert_eq!(
            show("1.5e3 + 2 + TRUE + null"),
            "((1500.0 + 2) + true) + null"
        );
        assert_eq!(show("'it''s' = 'it\\'s'"), "'it\\'s' = 'it\\'s'");
        assert_eq!(
            filter("'50\\% off'").kind,
            ExprKind::Literal(Literal::String("50\\% off".into()))
        );
        assert_eq!(show("now() - INTERVAL 7 days"), "now() - interval 7 day");
        assert_eq!(show("[1, 'a', [true]]"), "[1, 'a', [true]]");
        assert_eq!(show("count(*)"), "count(*)");
        assert_eq!(show("is_root and not_x"), "is_root and not_x");
        assert_eq!(show("contains(tags, 'a')"), "contains(tags, 'a')");
    }

    #[test]
    fn spans_point_at_source() {
        let e = filter("abc + metadata.x");
        assert_eq!(e.span, Span::new(0, 16));
        let ExprKind::Binary { left, right, .. } = e.kind else {
            panic!()
        };
        assert_eq!(left.span, Span::new(0, 3));
        assert_eq!(right.span, Span::new(6, 16));
        let q = parse_query("select: a | filter: x = 1").unwrap();
        assert_eq!(q.filter.unwrap().value.span, Span::new(20, 25));
    }

    #[test]
    fn syntax_errors() {
        let err = parse_query("select: a |\nfilter: x = ").unwrap_err();
        assert_eq!(err.0[0].code, codes::SYNTAX);
        assert_eq!(err.0[0].span.start, 24);
        assert!(
            err.0[0].message.contains("expected"),
            "{}",
            err.0[0].message
        );
        assert!(
            err.0[0].message.contains("an expression"),
            "{}",
            err.0[0].message
        );
        let err = parse_query("select: a\nfliter: b").unwrap_err();
        assert_eq!(err.0[0].span.start, 10);
        let err = parse_query("filter: a | filter: b").unwrap_err();
        assert_eq!(err.0[0].code, codes::DUPLICATE_CLAUSE);
        assert_eq!(err.0[0].span, Span::new(12, 21));
        assert_eq!(err.0[0].labels[0].0, Span::new(0, 9));
        let err = parse_query("limit: 99999999999999999999").unwrap_err();
        assert_eq!(err.0[0].code, codes::NUMBER_RANGE);
        let err = parse_query("filter: created > now() - interval 1 fortnight").unwrap_err();
        assert_eq!(err.0[0].code, codes::BAD_UNIT);
        assert_eq!(err.0[0].span, Span::new(37, 46));
    }
}

#[cfg(test)]
mod unknown_clause_tests {
    use super::*;

    #[test]
    fn misspelt_clause_is_named_with_a_suggestion() {
        let err = parse_query("selct: id | from: project_logs('p')").unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.message, "unknown clause `selct:`");
        assert_eq!(d.span, Span::new(0, 5));
        assert!(
            d.help
                .as_deref()
                .unwrap()
                .starts_with("did you mean `select:`?")
        );

        let text = "select: id\nfliter: id = 'x'";
        let err = parse_query(text).unwrap_err();
        assert_eq!(err.0[0].message, "unknown clause `fliter:`");
        assert_eq!(err.0[0].span.start, text.find("fliter").unwrap());
    }
}
