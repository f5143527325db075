//! Lowering of BTQL expressions to DataFusion `Expr`s, with JSON typed at
//! use (spec §1.6).
//!
//! A value is either [`Val::Json`] (JSON text plus a path still to read) or
//! [`Val::Typed`] (a DataFusion expression of a known BTQL type). The
//! context of use picks the reader: a comparison with a string reads a
//! string (other JSON types give NULL), with a number reads an f64, with a
//! boolean a bool; arithmetic reads f64; a filter reads a bool; `select:`
//! keeps JSON text. Cross-type comparisons are NULL; `/` is real division
//! and `x / 0` is NULL.

use std::sync::Arc;

use arrow::datatypes::{DataType, IntervalMonthDayNano, SchemaRef};
use datafusion_common::ScalarValue;
use datafusion_expr::expr::Like;
use datafusion_expr::{Expr, Operator, ScalarUDF, binary_expr, cast, lit, try_cast, when};

use super::aggregate::Grouping;
use super::{PlanOptions, SelectItem, column};
use crate::ast::{self, BinaryOp, ExprKind, Literal, PathStep, UnaryOp};
use crate::error::{Diagnostic, Span, codes};
use crate::functions::{
    BucketUnit, Includes, JsonGet, JsonInList, JsonKind, JsonLength, Needle, TextMatch, TimeBucket,
};
use crate::schema;

/// BTQL types of typed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Null,
    Bool,
    Int,
    Float,
    String,
    Timestamp,
    Date,
    Interval,
    Other,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Bool => "boolean",
            Ty::Int => "integer",
            Ty::Float => "number",
            Ty::String => "string",
            Ty::Timestamp => "datetime",
            Ty::Date => "date",
            Ty::Interval => "interval",
            Ty::Other => "value",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float)
    }

    fn of(data_type: &DataType) -> Ty {
        match data_type {
            DataType::Null => Ty::Null,
            DataType::Boolean => Ty::Bool,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ty::String,
            DataType::Timestamp(..) => Ty::Timestamp,
            DataType::Date32 | DataType::Date64 => Ty::Date,
            DataType::Interval(_) => Ty::Interval,
            d if d.is_integer() => Ty::Int,
            d if d.is_floating() => Ty::Float,
            _ => Ty::Other,
        }
    }
}

/// A lowered value.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    /// JSON text (`Utf8`) and the path still to read in it.
    Json { text: Expr, path: Vec<PathStep> },
    /// A typed expression.
    Typed { expr: Expr, ty: Ty },
}

fn typed(expr: Expr, ty: Ty) -> Val {
    Val::Typed { expr, ty }
}

/// Where an expression appears: decides which select aliases it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Select,
    Filter,
    Sort,
}

/// Functions known to the planner (for "unknown function" help).
const FUNCTIONS: &[&str] = &[
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "date_trunc",
    "now",
    "current_timestamp",
    "current_date",
    "lower",
    "upper",
    "concat",
    "length",
    "len",
    "contains",
    "includes",
    "json_extract",
    "coalesce",
    "nullif",
    "least",
    "greatest",
    "round",
    "to_string",
    "to_boolean",
    "to_integer",
    "to_number",
    "to_datetime",
    "to_date",
    "estimated_cost",
    "search",
    "isnull",
    "isnotnull",
];

pub(crate) const AGGREGATES: &[&str] = &[
    "count",
    "count_distinct",
    "sum",
    "avg",
    "min",
    "max",
    "any_value",
    "percentile",
];

/// Fields `search()` looks in.
const SEARCH_FIELDS: &[&str] = &["input", "output", "expected", "metadata", "span_attributes"];

pub(crate) fn udf(inner: impl datafusion_expr::ScalarUDFImpl + 'static, args: Vec<Expr>) -> Expr {
    Arc::new(ScalarUDF::new_from_impl(inner)).call(args)
}

fn null_bool() -> Expr {
    lit(ScalarValue::Boolean(None))
}

fn mismatch(message: String, span: Span) -> Diagnostic {
    Diagnostic::new(codes::TYPE_MISMATCH, message, span)
}

/// Lowers expressions of one query.
#[derive(Debug)]
pub(crate) struct Lowerer<'a> {
    options: &'a PlanOptions,
    schema: &'a SchemaRef,
    items: &'a [SelectItem<'a>],
    /// Set after grouping: names must be dimensions, measures or inside aggregates.
    grouping: Option<&'a Grouping<'a>>,
    /// Whether `any_span(e)` / `filter_spans(e)` mean `e` (spans shape).
    transparent_span_wrappers: bool,
}

impl<'a> Lowerer<'a> {
    pub(crate) fn new(
        options: &'a PlanOptions,
        schema: &'a SchemaRef,
        items: &'a [SelectItem<'a>],
    ) -> Self {
        Self {
            options,
            schema,
            items,
            grouping: None,
            transparent_span_wrappers: true,
        }
    }

    /// The same lowerer over grouped rows.
    pub(crate) fn grouped(mut self, grouping: &'a Grouping<'a>) -> Self {
        self.grouping = Some(grouping);
        self
    }

    /// Makes `any_span` / `filter_spans` an error here (they were taken out
    /// of the filter by the shape planner; anywhere else they mean nothing).
    pub(crate) fn refusing_span_wrappers(mut self) -> Self {
        self.transparent_span_wrappers = false;
        self
    }

    /// Reads a value as a number (for aggregates).
    pub(crate) fn number(&self, val: Val, span: Span) -> Result<Expr, Diagnostic> {
        self.as_f64(val, span)
    }

    /// A value as an expression: JSON as its JSON text.
    pub(crate) fn plain(val: Val) -> Expr {
        match val {
            Val::Json { text, path } => Self::json_text(text, path),
            Val::Typed { expr, .. } => expr,
        }
    }

    // ---- readers -----------------------------------------------------------

    pub(crate) fn json_get(kind: JsonKind, text: Expr, path: Vec<PathStep>) -> Expr {
        if path.is_empty() && kind == JsonKind::Json {
            text
        } else {
            udf(JsonGet::new(kind, path), vec![text])
        }
    }

    /// JSON text of a JSON value (NULL for JSON null and missing paths).
    fn json_text(text: Expr, path: Vec<PathStep>) -> Expr {
        Self::json_get(JsonKind::Json, text, path)
    }

    pub(crate) fn as_bool(&self, val: Val, span: Span) -> Result<Expr, Diagnostic> {
        match val {
            Val::Json { text, path } => Ok(Self::json_get(JsonKind::Bool, text, path)),
            Val::Typed { expr, ty: Ty::Bool } => Ok(expr),
            Val::Typed { ty: Ty::Null, .. } => Ok(null_bool()),
            Val::Typed { ty, .. } => Err(mismatch(
                format!("expected a boolean, found a {}", ty.name()),
                span,
            )
            .with_help("compare it, e.g. `x = 'value'` or `x IS NOT NULL`")),
        }
    }

    fn as_f64(&self, val: Val, span: Span) -> Result<Expr, Diagnostic> {
        match val {
            Val::Json { text, path } => Ok(Self::json_get(JsonKind::Number, text, path)),
            Val::Typed {
                expr,
                ty: Ty::Float,
            } => Ok(expr),
            Val::Typed {
                expr,
                ty: Ty::Int | Ty::Null,
            } => Ok(cast(expr, DataType::Float64)),
            Val::Typed { ty, .. } => Err(mismatch(
                format!("expected a number, found a {}", ty.name()),
                span,
            )),
        }
    }

    /// A string, or `None` when the value can never be a string.
    fn as_string(&self, val: Val) -> Option<Expr> {
        match val {
            Val::Json { text, path } => Some(Self::json_get(JsonKind::String, text, path)),
            Val::Typed {
                expr,
                ty: Ty::String,
            } => Some(expr),
            Val::Typed { expr, ty: Ty::Null } => Some(cast(expr, DataType::Utf8)),
            Val::Typed { .. } => None,
        }
    }

    /// Display text: strings as themselves, other values as JSON or cast text.
    fn as_text(&self, val: Val) -> Expr {
        match val {
            Val::Json { text, path } => Self::json_get(JsonKind::Text, text, path),
            Val::Typed {
                expr,
                ty: Ty::String,
            } => expr,
            Val::Typed { expr, .. } => cast(expr, DataType::Utf8),
        }
    }

    fn as_timestamp(&self, val: Val, span: Span) -> Result<Expr, Diagnostic> {
        match val {
            Val::Typed {
                expr,
                ty: Ty::Timestamp,
            } => Ok(expr),
            Val::Typed {
                expr: Expr::Literal(ScalarValue::Utf8(Some(s)), _),
                ty: Ty::String,
            } => Ok(lit(self.parse_datetime(&s, span)?)),
            Val::Typed {
                expr,
                ty: Ty::String | Ty::Date | Ty::Null,
            } => Ok(try_cast(expr, schema::timestamp_type())),
            Val::Json { text, path } => Ok(try_cast(
                Self::json_get(JsonKind::String, text, path),
                schema::timestamp_type(),
            )),
            Val::Typed { ty, .. } => Err(mismatch(
                format!("expected a datetime, found a {}", ty.name()),
                span,
            )),
        }
    }

    fn parse_datetime(&self, text: &str, span: Span) -> Result<ScalarValue, Diagnostic> {
        let nanos = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text.trim()).map_err(|_| {
            Diagnostic::new(codes::BAD_DATETIME, format!("invalid datetime `{text}`"), span)
                .with_help("write an ISO-8601 date or datetime, e.g. '2024-01-15' or '2024-01-15T10:30:00Z'")
        })?;
        Ok(ScalarValue::TimestampMicrosecond(
            Some(nanos.div_euclid(1000)),
            Some(Arc::from("UTC")),
        ))
    }

    /// The projection expression and whether it is JSON text.
    pub(crate) fn output(&self, val: Val, _span: Span) -> Result<(Expr, bool), Diagnostic> {
        Ok(match val {
            Val::Json { text, path } => (Self::json_text(text, path), true),
            Val::Typed { expr, .. } => (expr, false),
        })
    }

    /// Sort keys: a JSON value sorts numbers first (numerically), then
    /// strings; other values sort as themselves.
    pub(crate) fn sort_keys(&self, val: Val) -> Result<Vec<Expr>, Diagnostic> {
        Ok(match val {
            Val::Json { text, path } => vec![
                Self::json_get(JsonKind::Number, text.clone(), path.clone()),
                Self::json_get(JsonKind::String, text, path),
            ],
            Val::Typed { expr, .. } => vec![expr],
        })
    }

    // ---- names -------------------------------------------------------------

    fn resolve_name(&self, name: &str, span: Span, scope: Scope) -> Result<Val, Diagnostic> {
        let column_val = || {
            self.schema.field_with_name(name).ok().map(|field| {
                if schema::is_json_field(field) {
                    Val::Json {
                        text: column(name),
                        path: Vec::new(),
                    }
                } else {
                    typed(column(name), Ty::of(field.data_type()))
                }
            })
        };
        let explicit = || self.items.iter().find(|i| i.explicit && i.name == name);
        let implicit = || {
            self.items
                .iter()
                .find(|i| !i.explicit && i.referable && i.name == name)
        };
        let found = match scope {
            Scope::Select => column_val().map(Ok),
            Scope::Filter => column_val().map(Ok).or_else(|| {
                explicit()
                    .or_else(implicit)
                    .map(|i| self.lower(i.expr, Scope::Select))
            }),
            Scope::Sort => explicit()
                .map(|i| self.lower(i.expr, Scope::Select))
                .or_else(|| column_val().map(Ok))
                .or_else(|| implicit().map(|i| self.lower(i.expr, Scope::Select))),
        };
        found.unwrap_or_else(|| Err(self.unknown_field(name, span, scope)))
    }

    fn unknown_field(&self, name: &str, span: Span, scope: Scope) -> Diagnostic {
        let mut candidates: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        if scope != Scope::Select {
            candidates.extend(
                self.items
                    .iter()
                    .filter(|i| i.explicit || i.referable)
                    .map(|i| i.name.as_str()),
            );
        }
        let close = closest(name, &candidates);
        let help = if close.is_empty() {
            format!(
                "fields are {}",
                candidates
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "did you mean {}?",
                close
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        };
        Diagnostic::new(
            codes::UNKNOWN_FIELD,
            format!("unknown field `{name}`"),
            span,
        )
        .with_help(help)
    }

    // ---- expressions ---------------------------------------------------------

    /// Lowers an expression. It recurses once per tree level, and a debug
    /// build takes tens of kilobytes per level (a nested call overflowed a
    /// 2 MiB tokio worker's stack at 60 levels): `recursive` grows the
    /// stack on the heap when little is left, as DataFusion's planner does.
    #[recursive::recursive]
    pub(crate) fn lower(&self, e: &ast::Expr, scope: Scope) -> Result<Val, Diagnostic> {
        let span = e.span;
        if let Some(grouping) = self.grouping {
            if let Some(found) = grouping.lookup(e, self)? {
                return Ok(found);
            }
            if matches!(e.kind, ExprKind::Ident(_) | ExprKind::Access { .. }) {
                return Err(grouping.ungrouped(e));
            }
        }
        Ok(match &e.kind {
            ExprKind::Literal(l) => lower_literal(l),
            ExprKind::Interval { value, unit } => typed(lit(interval(*value, *unit)), Ty::Interval),
            ExprKind::Array(items) => {
                let mut parts = Vec::new();
                for item in items {
                    match &item.kind {
                        ExprKind::Literal(l) => parts.push(literal_json(l)),
                        _ => {
                            return Err(Diagnostic::new(
                                codes::LITERAL_REQUIRED,
                                "array elements must be literals",
                                item.span,
                            ));
                        }
                    }
                }
                Val::Json {
                    text: lit(format!("[{}]", parts.join(","))),
                    path: Vec::new(),
                }
            }
            ExprKind::Ident(name) => self.resolve_name(name, span, scope)?,
            ExprKind::Access { base, step } => match self.lower(base, scope)? {
                Val::Json { text, mut path } => {
                    path.push(step.clone());
                    Val::Json { text, path }
                }
                Val::Typed { ty, .. } => {
                    return Err(mismatch(
                        format!("`{base}` is a {}, not a JSON object or array", ty.name()),
                        base.span,
                    )
                    .with_label(span, "accessed here"));
                }
            },
            ExprKind::Star => {
                return Err(Diagnostic::new(
                    codes::SYNTAX,
                    "`*` is only allowed as `select: *`",
                    span,
                ));
            }
            ExprKind::Function { name, args } => self.function(name, args, span, scope)?,
            ExprKind::Unary {
                op: UnaryOp::Not,
                expr,
            } => {
                let inner = self.lower(expr, scope)?;
                typed(
                    Expr::Not(Box::new(self.as_bool(inner, expr.span)?)),
                    Ty::Bool,
                )
            }
            ExprKind::Unary {
                op: UnaryOp::Neg,
                expr,
            } => match self.lower(expr, scope)? {
                Val::Typed {
                    expr: Expr::Literal(ScalarValue::Int64(Some(v)), _),
                    ..
                } => typed(lit(v.wrapping_neg()), Ty::Int),
                Val::Typed {
                    expr: Expr::Literal(ScalarValue::Float64(Some(v)), _),
                    ..
                } => typed(lit(-v), Ty::Float),
                Val::Typed {
                    expr: inner,
                    ty: ty @ (Ty::Int | Ty::Float | Ty::Interval),
                } => typed(Expr::Negative(Box::new(inner)), ty),
                other => typed(
                    Expr::Negative(Box::new(self.as_f64(other, expr.span)?)),
                    Ty::Float,
                ),
            },
            ExprKind::Binary { op, left, right } => self.binary(*op, left, right, span, scope)?,
            ExprKind::InList { expr, list } => self.in_list(expr, list, scope)?,
            ExprKind::IsNull { expr, negated } => {
                let inner = match self.lower(expr, scope)? {
                    Val::Json { text, path } => Self::json_text(text, path),
                    Val::Typed { expr, .. } => expr,
                };
                typed(
                    if *negated {
                        inner.is_not_null()
                    } else {
                        inner.is_null()
                    },
                    Ty::Bool,
                )
            }
            ExprKind::Ternary {
                cond,
                then,
                otherwise,
            } => {
                let c = self.lower(cond, scope)?;
                let c = self.as_bool(c, cond.span)?;
                let values = vec![self.lower(then, scope)?, self.lower(otherwise, scope)?];
                let (mut exprs, ty) = self.unify(values, span)?;
                let otherwise = exprs.pop().unwrap_or_else(null_bool);
                let then = exprs.pop().unwrap_or_else(null_bool);
                let case = when(c, then)
                    .otherwise(otherwise)
                    .map_err(|err| Diagnostic::internal(err, span))?;
                wrap(case, ty)
            }
        })
    }

    /// Brings values to one type (for `? :`, `coalesce`, …). `None` as the
    /// type means JSON text.
    fn unify(&self, values: Vec<Val>, span: Span) -> Result<(Vec<Expr>, Option<Ty>), Diagnostic> {
        let typed_tys: Vec<Ty> = values
            .iter()
            .filter_map(|v| match v {
                Val::Typed { ty, .. } if *ty != Ty::Null => Some(*ty),
                _ => None,
            })
            .collect();
        let target = if typed_tys.is_empty() {
            None
        } else if typed_tys.iter().all(|t| t.is_numeric()) {
            Some(
                if typed_tys.contains(&Ty::Float)
                    || values.iter().any(|v| matches!(v, Val::Json { .. }))
                {
                    Ty::Float
                } else {
                    Ty::Int
                },
            )
        } else if typed_tys.iter().all(|t| *t == typed_tys[0]) {
            Some(typed_tys[0])
        } else {
            return Err(mismatch(
                format!(
                    "values of different types: {}",
                    typed_tys
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                span,
            )
            .with_help("convert them with `to_string()` or `to_number()`"));
        };
        let mut out = Vec::new();
        for v in values {
            out.push(match (target, v) {
                (None, Val::Json { text, path }) => Self::json_text(text, path),
                (None, Val::Typed { expr, .. }) => cast(expr, DataType::Utf8),
                (Some(ty), v) => self.coerce(v, ty, span)?,
            });
        }
        Ok((out, target))
    }

    /// Converts a value to `ty` (JSON read as that type; NULL when it is not).
    fn coerce(&self, val: Val, ty: Ty, span: Span) -> Result<Expr, Diagnostic> {
        Ok(match (ty, val) {
            (Ty::Float, v) => self.as_f64(v, span)?,
            (Ty::Bool, v) => self.as_bool(v, span)?,
            (Ty::Timestamp, v) => self.as_timestamp(v, span)?,
            (Ty::String, v) => self
                .as_string(v)
                .unwrap_or_else(|| lit(ScalarValue::Utf8(None))),
            (Ty::Int, Val::Json { text, path }) => try_cast(
                Self::json_get(JsonKind::Number, text, path),
                DataType::Int64,
            ),
            (_, Val::Typed { expr, ty: Ty::Null }) => expr,
            (_, Val::Typed { expr, ty: have }) if have == ty => expr,
            (_, v) => {
                return Err(mismatch(
                    format!("cannot use a {} here", describe(&v)),
                    span,
                ));
            }
        })
    }

    fn binary(
        &self,
        op: BinaryOp,
        left: &ast::Expr,
        right: &ast::Expr,
        span: Span,
        scope: Scope,
    ) -> Result<Val, Diagnostic> {
        let l = self.lower(left, scope)?;
        let r = self.lower(right, scope)?;
        match op {
            BinaryOp::And | BinaryOp::Or => {
                let (l, r) = (self.as_bool(l, left.span)?, self.as_bool(r, right.span)?);
                Ok(typed(
                    if op == BinaryOp::And {
                        l.and(r)
                    } else {
                        l.or(r)
                    },
                    Ty::Bool,
                ))
            }
            _ if op.is_comparison() => self.compare(op, l, r, span),
            BinaryOp::Like | BinaryOp::ILike => {
                let pattern = string_literal(right, "the pattern of `like`")?;
                let Some(value) = self.as_string(l) else {
                    return Ok(typed(null_bool(), Ty::Bool));
                };
                let like = Like::new(
                    false,
                    Box::new(value),
                    Box::new(lit(like_pattern(&pattern))),
                    Some('\\'),
                    op == BinaryOp::ILike,
                );
                Ok(typed(Expr::Like(like), Ty::Bool))
            }
            BinaryOp::Match => {
                let query = string_literal(right, "the query of `match`")?;
                self.text_match(l, &query)
            }
            BinaryOp::Includes => self.includes(l, r, right.span),
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => {
                self.arithmetic(op, l, r, left.span, right.span)
            }
            _ => Err(Diagnostic::internal(
                format!("unhandled operator `{}`", op.symbol()),
                span,
            )),
        }
    }

    fn text_match(&self, value: Val, query: &str) -> Result<Val, Diagnostic> {
        Ok(typed(
            match value {
                Val::Json { text, path } => udf(
                    TextMatch::new(query, true),
                    vec![Self::json_text(text, path)],
                ),
                Val::Typed {
                    expr,
                    ty: Ty::String,
                } => udf(TextMatch::new(query, false), vec![expr]),
                Val::Typed { .. } => null_bool(),
            },
            Ty::Bool,
        ))
    }

    fn includes(&self, haystack: Val, needle: Val, needle_span: Span) -> Result<Val, Diagnostic> {
        let (needle, needle_json) = match needle {
            Val::Json { text, path } => (Self::json_text(text, path), true),
            Val::Typed {
                expr,
                ty: Ty::String | Ty::Bool | Ty::Float | Ty::Null,
            } => (expr, false),
            Val::Typed { expr, ty: Ty::Int } => (cast(expr, DataType::Float64), false),
            Val::Typed { ty, .. } => {
                return Err(mismatch(
                    format!("cannot look for a {} with `includes`", ty.name()),
                    needle_span,
                ));
            }
        };
        Ok(typed(
            match haystack {
                Val::Json { text, path } => udf(
                    Includes::new(true, needle_json),
                    vec![Self::json_text(text, path), needle],
                ),
                Val::Typed {
                    expr,
                    ty: Ty::String,
                } => udf(Includes::new(false, needle_json), vec![expr, needle]),
                Val::Typed { .. } => lit(false),
            },
            Ty::Bool,
        ))
    }

    fn compare(&self, op: BinaryOp, l: Val, r: Val, span: Span) -> Result<Val, Diagnostic> {
        let operator = match op {
            BinaryOp::Eq => Operator::Eq,
            BinaryOp::NotEq => Operator::NotEq,
            BinaryOp::Lt => Operator::Lt,
            BinaryOp::LtEq => Operator::LtEq,
            BinaryOp::Gt => Operator::Gt,
            BinaryOp::GtEq => Operator::GtEq,
            BinaryOp::IsNotDistinctFrom => Operator::IsNotDistinctFrom,
            _ => Operator::IsDistinctFrom,
        };
        let (le, re) = match (l, r) {
            (Val::Json { text: lt, path: lp }, Val::Json { text: rt, path: rp }) => {
                (Self::json_text(lt, lp), Self::json_text(rt, rp))
            }
            (json @ Val::Json { .. }, Val::Typed { expr, ty }) => {
                (self.json_as(json, ty, span)?, cast_int(expr, ty))
            }
            (Val::Typed { expr, ty }, json @ Val::Json { .. }) => {
                (cast_int(expr, ty), self.json_as(json, ty, span)?)
            }
            (Val::Typed { expr: le, ty: lt }, Val::Typed { expr: re, ty: rt }) => {
                if lt == rt || lt == Ty::Null || rt == Ty::Null {
                    (le, re)
                } else if lt.is_numeric() && rt.is_numeric() {
                    (cast(le, DataType::Float64), cast(re, DataType::Float64))
                } else if lt == Ty::Timestamp || rt == Ty::Timestamp {
                    let other_ok = |t: Ty| matches!(t, Ty::String | Ty::Date | Ty::Timestamp);
                    if !(other_ok(lt) && other_ok(rt)) {
                        return Ok(cross_type(operator));
                    }
                    (
                        self.as_timestamp(typed(le, lt), span)?,
                        self.as_timestamp(typed(re, rt), span)?,
                    )
                } else {
                    return Ok(cross_type(operator));
                }
            }
        };
        Ok(typed(binary_expr(le, operator, re), Ty::Bool))
    }

    /// A JSON operand compared with a value of type `ty`.
    fn json_as(&self, json: Val, ty: Ty, span: Span) -> Result<Expr, Diagnostic> {
        let Val::Json { text, path } = json else {
            return Err(Diagnostic::internal("expected JSON", span));
        };
        Ok(match ty {
            Ty::String => Self::json_get(JsonKind::String, text, path),
            Ty::Int | Ty::Float => Self::json_get(JsonKind::Number, text, path),
            Ty::Bool => Self::json_get(JsonKind::Bool, text, path),
            Ty::Null => Self::json_text(text, path),
            Ty::Timestamp | Ty::Date => try_cast(
                Self::json_get(JsonKind::String, text, path),
                schema::timestamp_type(),
            ),
            Ty::Interval | Ty::Other => {
                return Err(mismatch(
                    format!("cannot compare JSON with a {}", ty.name()),
                    span,
                ));
            }
        })
    }

    fn arithmetic(
        &self,
        op: BinaryOp,
        l: Val,
        r: Val,
        lspan: Span,
        rspan: Span,
    ) -> Result<Val, Diagnostic> {
        let operator = match op {
            BinaryOp::Add => Operator::Plus,
            BinaryOp::Sub => Operator::Minus,
            BinaryOp::Mul => Operator::Multiply,
            BinaryOp::Div => Operator::Divide,
            _ => Operator::Modulo,
        };
        let ty_of = |v: &Val| match v {
            Val::Json { .. } => Ty::Float,
            Val::Typed { ty, .. } => *ty,
        };
        let (lt, rt) = (ty_of(&l), ty_of(&r));
        let temporal = |t: Ty| matches!(t, Ty::Timestamp | Ty::Date | Ty::Interval);
        if temporal(lt) || temporal(rt) {
            // datetime ± interval, interval + datetime, interval ± interval,
            // datetime − datetime; null stands for any of them.
            let point = |t: Ty| matches!(t, Ty::Timestamp | Ty::Date | Ty::Null);
            let span_ = |t: Ty| matches!(t, Ty::Interval | Ty::Null);
            let ok = match op {
                BinaryOp::Add => {
                    (point(lt) && span_(rt)) || (span_(lt) && (point(rt) || span_(rt)))
                }
                BinaryOp::Sub => {
                    (point(lt) && (span_(rt) || point(rt))) || (span_(lt) && span_(rt))
                }
                _ => false,
            };
            if !ok || matches!((&l, &r), (Val::Json { .. }, _) | (_, Val::Json { .. })) {
                return Err(mismatch(
                    format!(
                        "cannot apply `{}` to a {} and a {}",
                        op.symbol(),
                        lt.name(),
                        rt.name()
                    ),
                    lspan.to(rspan),
                )
                .with_help(
                    "add or subtract an interval to a datetime, e.g. `now() - interval 1 day`",
                ));
            }
            let (Val::Typed { expr: le, .. }, Val::Typed { expr: re, .. }) = (l, r) else {
                return Err(Diagnostic::internal("temporal JSON", lspan));
            };
            let ty = if lt == rt || (lt == Ty::Interval && rt == Ty::Interval) {
                // datetime − datetime and interval ± interval are intervals
                Ty::Interval
            } else if lt == Ty::Interval {
                rt
            } else {
                lt
            };
            return Ok(typed(binary_expr(le, operator, re), ty));
        }
        let int_result = lt == Ty::Int && rt == Ty::Int && op != BinaryOp::Div;
        let (le, re, ty) = if int_result {
            let (Val::Typed { expr: le, .. }, Val::Typed { expr: re, .. }) = (l, r) else {
                return Err(Diagnostic::internal("int JSON", lspan));
            };
            (le, re, Ty::Int)
        } else {
            (self.as_f64(l, lspan)?, self.as_f64(r, rspan)?, Ty::Float)
        };
        let re = if matches!(op, BinaryOp::Div | BinaryOp::Mod) {
            let zero = if ty == Ty::Int { lit(0i64) } else { lit(0f64) };
            datafusion_functions::core::nullif().call(vec![re, zero])
        } else {
            re
        };
        Ok(typed(binary_expr(le, operator, re), ty))
    }

    fn in_list(
        &self,
        expr: &ast::Expr,
        list: &[ast::Expr],
        scope: Scope,
    ) -> Result<Val, Diagnostic> {
        let value = self.lower(expr, scope)?;
        match value {
            Val::Json { text, path } => {
                let mut needles = Vec::new();
                for item in list {
                    match &item.kind {
                        ExprKind::Literal(Literal::String(s)) => {
                            needles.push(Needle::String(s.clone()))
                        }
                        ExprKind::Literal(Literal::Int(i)) => {
                            needles.push(Needle::Number(*i as f64))
                        }
                        ExprKind::Literal(Literal::Float(f)) => needles.push(Needle::Number(*f)),
                        ExprKind::Literal(Literal::Bool(b)) => needles.push(Needle::Bool(*b)),
                        ExprKind::Literal(Literal::Null) => {}
                        _ => {
                            return Err(Diagnostic::new(
                                codes::LITERAL_REQUIRED,
                                "`in` on a JSON field needs a list of literals",
                                item.span,
                            ));
                        }
                    }
                }
                Ok(typed(
                    udf(JsonInList::new(needles), vec![Self::json_text(text, path)]),
                    Ty::Bool,
                ))
            }
            Val::Typed { expr: value, ty } => {
                let mut items = Vec::new();
                for item in list {
                    let lowered = self.lower(item, scope)?;
                    let item_ty = match &lowered {
                        Val::Json { .. } => ty,
                        Val::Typed { ty, .. } => *ty,
                    };
                    if item_ty == ty
                        || item_ty == Ty::Null
                        || (ty.is_numeric() && item_ty.is_numeric())
                    {
                        items.push(self.coerce(
                            lowered,
                            if ty == Ty::Int { Ty::Float } else { ty },
                            item.span,
                        )?);
                    } else if ty == Ty::Timestamp && item_ty == Ty::String {
                        items.push(self.as_timestamp(lowered, item.span)?);
                    }
                }
                if items.is_empty() {
                    return Ok(typed(lit(false), Ty::Bool));
                }
                Ok(typed(cast_int(value, ty).in_list(items, false), Ty::Bool))
            }
        }
    }

    // ---- functions -----------------------------------------------------------

    fn function(
        &self,
        name: &str,
        args: &[ast::Expr],
        span: Span,
        scope: Scope,
    ) -> Result<Val, Diagnostic> {
        let lower_name = name.to_ascii_lowercase();
        let arity = |min: usize, max: usize| -> Result<(), Diagnostic> {
            if args.len() < min || args.len() > max {
                let expected = if min == max {
                    format!("{min}")
                } else {
                    format!("{min} to {max}")
                };
                return Err(Diagnostic::new(
                    codes::ARGUMENT_COUNT,
                    format!(
                        "`{lower_name}` takes {expected} argument(s), got {}",
                        args.len()
                    ),
                    span,
                ));
            }
            Ok(())
        };
        let arg = |i: usize| self.lower(&args[i], scope);
        if AGGREGATES.contains(&lower_name.as_str()) {
            if let Some(grouping) = self.grouping {
                return grouping.aggregate(&lower_name, args, span);
            }
            return Err(Diagnostic::new(
                codes::AGGREGATE_IN_SELECT,
                format!("aggregate `{lower_name}` is not allowed here"),
                span,
            )
            .with_help(
                "aggregate with `measures:` (and group with `dimensions:`, or none for one row)",
            ));
        }
        let bucket =
            |unit: BucketUnit, multiple: i64, ts_index: usize| -> Result<Val, Diagnostic> {
                let ts = self.as_timestamp(arg(ts_index)?, args[ts_index].span)?;
                Ok(typed(
                    udf(
                        TimeBucket::new(unit, multiple, self.options.tz_offset_minutes),
                        vec![ts],
                    ),
                    Ty::Timestamp,
                ))
            };
        Ok(match lower_name.as_str() {
            "second" | "minute" | "hour" | "day" | "week" | "month" | "year" => {
                arity(1, 1)?;
                let unit = BucketUnit::parse(&lower_name)
                    .ok_or_else(|| Diagnostic::internal("unit", span))?;
                bucket(unit, 1, 0)?
            }
            "date_trunc" => {
                arity(2, 2)?;
                let unit_text = string_literal(&args[0], "the unit of `date_trunc`")?;
                let (unit, multiple) = BucketUnit::parse_with_multiple(&unit_text).ok_or_else(|| {
                    Diagnostic::new(codes::BAD_UNIT, format!("invalid `date_trunc` unit `{unit_text}`"), args[0].span)
                        .with_help("use second, minute, hour, day, week, month or year, or a multiple such as '15 minutes' (not of week, month, year)")
                })?;
                bucket(unit, multiple, 1)?
            }
            "now" | "current_timestamp" => {
                arity(0, 0)?;
                typed(
                    lit(now_scalar(self.options.now.timestamp_micros())),
                    Ty::Timestamp,
                )
            }
            "current_date" => {
                arity(0, 0)?;
                let micros = self.options.now.timestamp_micros();
                let midnight = crate::functions::time_bucket_start(
                    micros,
                    BucketUnit::Day,
                    1,
                    self.options.tz_offset_minutes,
                )
                .unwrap_or(micros);
                typed(lit(now_scalar(midnight)), Ty::Timestamp)
            }
            "lower" | "upper" => {
                arity(1, 1)?;
                let value = arg(0)?;
                let Some(s) = self.as_string(value) else {
                    return Err(mismatch(
                        format!("`{lower_name}` needs a string"),
                        args[0].span,
                    ));
                };
                let f = if lower_name == "lower" {
                    datafusion_functions::string::lower()
                } else {
                    datafusion_functions::string::upper()
                };
                typed(f.call(vec![s]), Ty::String)
            }
            "concat" => {
                let mut parts = Vec::new();
                for i in 0..args.len() {
                    parts.push(self.as_text(arg(i)?));
                }
                if parts.is_empty() {
                    typed(lit(""), Ty::String)
                } else {
                    typed(
                        datafusion_functions::string::concat().call(parts),
                        Ty::String,
                    )
                }
            }
            "length" | "len" => {
                arity(1, 1)?;
                match arg(0)? {
                    Val::Json { text, path } => typed(
                        udf(JsonLength::default(), vec![Self::json_text(text, path)]),
                        Ty::Int,
                    ),
                    Val::Typed {
                        expr,
                        ty: Ty::String | Ty::Null,
                    } => typed(
                        cast(
                            datafusion_functions::unicode::character_length().call(vec![expr]),
                            DataType::Int64,
                        ),
                        Ty::Int,
                    ),
                    Val::Typed { ty, .. } => {
                        return Err(mismatch(
                            format!(
                                "`{lower_name}` needs a string or an array, found a {}",
                                ty.name()
                            ),
                            args[0].span,
                        ));
                    }
                }
            }
            "contains" | "includes" => {
                arity(2, 2)?;
                self.includes(arg(0)?, arg(1)?, args[1].span)?
            }
            "json_extract" => {
                arity(2, 2)?;
                let key = string_literal(&args[1], "the key of `json_extract`")?;
                let Some(text) = self.as_string(arg(0)?) else {
                    return Err(mismatch(
                        "`json_extract` needs a JSON-encoded string".to_string(),
                        args[0].span,
                    ));
                };
                Val::Json {
                    text,
                    path: vec![PathStep::Key(key)],
                }
            }
            "coalesce" | "least" | "greatest" => {
                if args.is_empty() {
                    arity(1, usize::MAX)?;
                }
                let values = (0..args.len()).map(arg).collect::<Result<Vec<_>, _>>()?;
                let (exprs, ty) = if lower_name == "coalesce" {
                    self.unify(values, span)?
                } else {
                    // Ordering JSON values needs a type: numbers.
                    let values = values
                        .into_iter()
                        .map(|v| match v {
                            Val::Json { text, path } => {
                                typed(Self::json_get(JsonKind::Number, text, path), Ty::Float)
                            }
                            v => v,
                        })
                        .collect();
                    self.unify(values, span)?
                };
                let f = match lower_name.as_str() {
                    "coalesce" => datafusion_functions::core::coalesce(),
                    "least" => datafusion_functions::core::least(),
                    _ => datafusion_functions::core::greatest(),
                };
                wrap(f.call(exprs), ty)
            }
            "nullif" => {
                arity(2, 2)?;
                let (exprs, ty) = self.unify(vec![arg(0)?, arg(1)?], span)?;
                wrap(datafusion_functions::core::nullif().call(exprs), ty)
            }
            "round" => {
                arity(1, 2)?;
                let x = self.as_f64(arg(0)?, args[0].span)?;
                let digits = match args.get(1) {
                    Some(d) => match &d.kind {
                        ExprKind::Literal(Literal::Int(n)) => *n,
                        _ => {
                            return Err(Diagnostic::new(
                                codes::LITERAL_REQUIRED,
                                "the digits of `round` must be an integer literal",
                                d.span,
                            ));
                        }
                    },
                    None => 0,
                };
                typed(
                    datafusion_functions::math::round().call(vec![x, lit(digits)]),
                    Ty::Float,
                )
            }
            "to_string" => {
                arity(1, 1)?;
                typed(self.as_text(arg(0)?), Ty::String)
            }
            "to_boolean" => {
                arity(1, 1)?;
                typed(
                    match arg(0)? {
                        Val::Json { text, path } => Self::json_get(JsonKind::Bool, text, path),
                        Val::Typed {
                            expr,
                            ty: Ty::Int | Ty::Float,
                        } => binary_expr(cast(expr, DataType::Float64), Operator::NotEq, lit(0f64)),
                        Val::Typed { expr, .. } => try_cast(expr, DataType::Boolean),
                    },
                    Ty::Bool,
                )
            }
            "to_integer" => {
                arity(1, 1)?;
                typed(
                    match arg(0)? {
                        Val::Json { text, path } => try_cast(
                            Self::json_get(JsonKind::Number, text, path),
                            DataType::Int64,
                        ),
                        Val::Typed {
                            expr,
                            ty: Ty::String,
                        } => try_cast(try_cast(expr, DataType::Float64), DataType::Int64),
                        Val::Typed { expr, .. } => try_cast(expr, DataType::Int64),
                    },
                    Ty::Int,
                )
            }
            "to_number" => {
                arity(1, 1)?;
                typed(
                    match arg(0)? {
                        Val::Json { text, path } => Self::json_get(JsonKind::Number, text, path),
                        Val::Typed { expr, .. } => try_cast(expr, DataType::Float64),
                    },
                    Ty::Float,
                )
            }
            "to_datetime" => {
                arity(1, 1)?;
                let value = arg(0)?;
                typed(
                    match value {
                        Val::Typed {
                            expr: Expr::Literal(ScalarValue::Utf8(Some(_)), _),
                            ..
                        } => self.as_timestamp(value, args[0].span)?,
                        Val::Typed {
                            expr,
                            ty: Ty::Int | Ty::Float | Ty::Bool | Ty::Interval | Ty::Other,
                        } => try_cast(expr, schema::timestamp_type()),
                        v => self.as_timestamp(v, args[0].span)?,
                    },
                    Ty::Timestamp,
                )
            }
            "to_date" => {
                arity(1, 1)?;
                let ts = self.as_timestamp(arg(0)?, args[0].span)?;
                typed(try_cast(ts, DataType::Date32), Ty::Date)
            }
            "estimated_cost" => {
                arity(0, 0)?;
                Val::Json {
                    text: column("metrics"),
                    path: vec![PathStep::Key("estimated_cost".to_string())],
                }
            }
            "search" => {
                arity(1, 1)?;
                let query = string_literal(&args[0], "the text of `search`")?;
                let mut terms = SEARCH_FIELDS
                    .iter()
                    .map(|f| udf(TextMatch::new(&query, true), vec![column(f)]));
                let first = terms
                    .next()
                    .ok_or_else(|| Diagnostic::internal("no search fields", span))?;
                typed(terms.fold(first, Expr::or), Ty::Bool)
            }
            "isnull" | "isnotnull" => {
                arity(1, 1)?;
                let inner = match arg(0)? {
                    Val::Json { text, path } => Self::json_text(text, path),
                    Val::Typed { expr, .. } => expr,
                };
                typed(
                    if lower_name == "isnull" {
                        inner.is_null()
                    } else {
                        inner.is_not_null()
                    },
                    Ty::Bool,
                )
            }
            "any_span" | "filter_spans" if self.transparent_span_wrappers => {
                arity(1, 1)?;
                typed(self.as_bool(arg(0)?, args[0].span)?, Ty::Bool)
            }
            "any_span" | "filter_spans" => {
                return Err(Diagnostic::new(
                    codes::SPAN_PREDICATE_PLACE,
                    format!("`{lower_name}` is not allowed here"),
                    span,
                )
                .with_help(if lower_name == "any_span" {
                    "use `any_span(expr)` in `filter:`, outside `filter_spans` and at most one level deep"
                } else {
                    "use `filter_spans(expr)` as a top-level `and` term of `filter:`, or the `trace_filter:` clause"
                }));
            }
            _ => {
                let close = closest(&lower_name, FUNCTIONS);
                let mut help = String::new();
                if !close.is_empty() {
                    help.push_str(&format!("did you mean `{}`? ", close.join("` or `")));
                }
                help.push_str(&format!("known functions: {}", FUNCTIONS.join(", ")));
                return Err(Diagnostic::new(
                    codes::UNKNOWN_FUNCTION,
                    format!("unknown function `{name}`"),
                    span,
                )
                .with_help(help));
            }
        })
    }
}

fn wrap(expr: Expr, ty: Option<Ty>) -> Val {
    match ty {
        Some(ty) => typed(expr, ty),
        None => Val::Json {
            text: expr,
            path: Vec::new(),
        },
    }
}

fn describe(v: &Val) -> &'static str {
    match v {
        Val::Json { .. } => "JSON value",
        Val::Typed { ty, .. } => ty.name(),
    }
}

fn cast_int(expr: Expr, ty: Ty) -> Expr {
    if ty == Ty::Int {
        cast(expr, DataType::Float64)
    } else {
        expr
    }
}

/// Values of different types: never equal, never ordered.
fn cross_type(operator: Operator) -> Val {
    typed(
        match operator {
            Operator::IsNotDistinctFrom => lit(false),
            Operator::IsDistinctFrom => lit(true),
            _ => null_bool(),
        },
        Ty::Bool,
    )
}

fn now_scalar(micros: i64) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(micros), Some(Arc::from("UTC")))
}

fn lower_literal(l: &Literal) -> Val {
    match l {
        Literal::Null => typed(lit(ScalarValue::Null), Ty::Null),
        Literal::Bool(b) => typed(lit(*b), Ty::Bool),
        Literal::Int(i) => typed(lit(*i), Ty::Int),
        Literal::Float(f) => typed(lit(*f), Ty::Float),
        Literal::String(s) => typed(lit(s.clone()), Ty::String),
    }
}

fn literal_json(l: &Literal) -> String {
    match l {
        Literal::Null => "null".to_string(),
        Literal::Bool(b) => b.to_string(),
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => serde_json::Number::from_f64(*f)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "null".into()),
        Literal::String(s) => serde_json::Value::String(s.clone()).to_string(),
    }
}

fn interval(value: i64, unit: ast::IntervalUnit) -> ScalarValue {
    use ast::IntervalUnit as U;
    let v = value;
    let (months, days, nanos) = match unit {
        U::Year => (v * 12, 0, 0),
        U::Month => (v, 0, 0),
        U::Week => (0, v * 7, 0),
        U::Day => (0, v, 0),
        U::Hour => (0, 0, v * 3_600_000_000_000),
        U::Minute => (0, 0, v * 60_000_000_000),
        U::Second => (0, 0, v * 1_000_000_000),
        U::Millisecond => (0, 0, v * 1_000_000),
        U::Microsecond => (0, 0, v * 1_000),
    };
    ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
        months as i32,
        days as i32,
        nanos,
    )))
}

fn string_literal(e: &ast::Expr, what: &str) -> Result<String, Diagnostic> {
    match &e.kind {
        ExprKind::Literal(Literal::String(s)) => Ok(s.clone()),
        _ => Err(Diagnostic::new(
            codes::LITERAL_REQUIRED,
            format!("{what} must be a string literal"),
            e.span,
        )),
    }
}

/// BTQL LIKE pattern → DataFusion LIKE pattern with `\` as escape: `%` is
/// the only wildcard, `\x` is a literal `x`, and `_` is literal.
pub(crate) fn like_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('%' | '_' | '\\')) => {
                    out.push('\\');
                    out.push(n);
                }
                Some(n) => out.push(n),
                None => out.push_str("\\\\"),
            },
            '_' => out.push_str("\\_"),
            c => out.push(c),
        }
    }
    out
}

/// Up to three candidates close to `name` (Jaro-Winkler ≥ 0.8), best first.
fn closest<'c>(name: &str, candidates: &[&'c str]) -> Vec<&'c str> {
    let mut scored: Vec<(f64, &str)> = candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&name.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}
