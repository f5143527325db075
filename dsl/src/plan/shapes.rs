//! The `traces` and `summary` shapes (spec §2): which traces match, which
//! of their spans are returned, and the summary row of a trace.
//!
//! ```text
//!  filter: a AND any_span(b) AND filter_spans(c)      trace_filter: d
//!           │        │               └──────────────────────┴─► narrow = c AND d
//!           │        └─► flags = Aggregate(group root_span_id: bool_or(b) as __any_span_0)
//!           ▼
//!  T = spans ⋈ flags → Filter(a AND coalesce(__any_span_0, false)) → Aggregate(group root_span_id)
//!  traces : spans ⋉ T (left semi join on root_span_id) → Filter(narrow)
//!  summary: (spans ⋉ T → Filter(narrow)) → Aggregate(group root_span_id: sums, counts, …)
//!           ⟕ root spans (left join on root_span_id) → Projection(summary columns)
//! ```
//!
//! The filter is evaluated per span; `any_span(e)` is per trace: its value is
//! the same for every span of a trace and true when some span has `e` true,
//! so several `any_span` terms may be satisfied by different spans, and
//! `NOT any_span(e)` selects traces without such a span. One level of
//! nesting is flattened (`any_span(a AND any_span(b))` = `any_span(a) AND
//! any_span(b)`); deeper nesting, or `any_span` inside `filter_spans`, is
//! refused (`BTQL0104`). Top-level `filter_spans(e)` conjuncts and
//! `trace_filter:` only narrow the spans of the chosen traces (returned on
//! `traces`, aggregated on `summary`); on the `spans` shape both
//! `any_span(e)` and `filter_spans(e)` are `e`. Everything is joins on
//! `root_span_id` and hash aggregates, so nothing is a Cartesian product
//! and DataFusion may spill.
//!
//! Summary row (§2.3), over the spans of the trace after narrowing:
//! `scores` per-key average ([`ScoresAvg`]); `metrics` sums of the token
//! and cost metrics, `total_tokens` = Σ per span of `metrics.tokens`, or
//! `prompt_tokens + completion_tokens` (either alone) when it is absent;
//! call and error counts by `span_attributes.type` (`llm`, `tool`);
//! `start` = min `metrics.start`, `end` = max `metrics.end`, `duration` =
//! `end - start`; `llm_duration` = Σ `end - start` of LLM spans;
//! `time_to_first_token` = average over LLM spans. `span_type_info`:
//! `cached` is true when there is at least one LLM span and every LLM span
//! has `metrics.cached` or `metadata.cached` true (a JSON `true`; other
//! values count as not cached); `has_error` when any span has a non-null
//! `error`; `name`, `type`, `purpose` from the root span's
//! `span_attributes`. NULL members are left out of these objects. The other
//! columns are the root span's (NULL when a trace has no root span); its
//! `input`, `output`, `expected`, `error` and `metadata` are full values in
//! the relation (so `dimensions: metadata.model` groups on the full value)
//! and cut to `preview_length:` only when output.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion_common::{Column, TableReference};
use datafusion_expr::{
    AggregateUDF, Expr, JoinType, LogicalPlanBuilder, Operator, binary_expr, lit, when,
};
use datafusion_functions_aggregate::expr_fn as agg;

use super::expr::{Lowerer, Scope, udf};
use super::udf::{JsonObjectBuild, ScoresAvg};
use super::{PlanContext, SelectItem, TABLE, column};
use crate::ast::{self, BinaryOp, ExprKind, PathStep};
use crate::error::{Diagnostic, Span, codes};
use crate::functions::{JsonGet, JsonKind};
use crate::schema;

/// Qualifier of the matched trace set.
const MATCHED: &str = "matched";
/// Name prefix of the per-trace `any_span` flags.
const ANY_SPAN_PREFIX: &str = "__any_span_";

/// The filter of a traces/summary query, taken apart.
#[derive(Debug, Default)]
pub(crate) struct ShapeFilter {
    /// Trace-selecting predicate with each `any_span(e)` replaced by a flag name.
    pub(crate) select: Option<ast::Expr>,
    /// The `e` of each flag `__any_span_i`.
    pub(crate) any_spans: Vec<ast::Expr>,
    /// Span-narrowing predicates (`filter_spans`, `trace_filter:`).
    pub(crate) narrow: Vec<ast::Expr>,
}

fn conjuncts(e: &ast::Expr, out: &mut Vec<ast::Expr>) {
    match &e.kind {
        ExprKind::Binary {
            op: BinaryOp::And,
            left,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        _ => out.push(e.clone()),
    }
}

fn and_all(mut parts: Vec<ast::Expr>) -> Option<ast::Expr> {
    let first = if parts.is_empty() {
        return None;
    } else {
        parts.remove(0)
    };
    Some(parts.into_iter().fold(first, |acc, next| ast::Expr {
        span: acc.span.to(next.span),
        kind: ExprKind::Binary {
            op: BinaryOp::And,
            left: Box::new(acc),
            right: Box::new(next),
        },
    }))
}

fn call_of<'e>(e: &'e ast::Expr, wanted: &str) -> Option<&'e [ast::Expr]> {
    match &e.kind {
        ExprKind::Function { name, args } if name.eq_ignore_ascii_case(wanted) => Some(args),
        _ => None,
    }
}

fn contains_call(e: &ast::Expr, wanted: &str) -> bool {
    if call_of(e, wanted).is_some() {
        return true;
    }
    match &e.kind {
        ExprKind::Function { args, .. } | ExprKind::Array(args) => {
            args.iter().any(|a| contains_call(a, wanted))
        }
        ExprKind::Access { base, .. } => contains_call(base, wanted),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => contains_call(expr, wanted),
        ExprKind::Binary { left, right, .. } => {
            contains_call(left, wanted) || contains_call(right, wanted)
        }
        ExprKind::InList { expr, list } => {
            contains_call(expr, wanted) || list.iter().any(|a| contains_call(a, wanted))
        }
        ExprKind::Ternary {
            cond,
            then,
            otherwise,
        } => {
            contains_call(cond, wanted)
                || contains_call(then, wanted)
                || contains_call(otherwise, wanted)
        }
        _ => false,
    }
}

fn one_arg<'e>(args: &'e [ast::Expr], name: &str, span: Span) -> Result<&'e ast::Expr, Diagnostic> {
    match args {
        [only] => Ok(only),
        _ => Err(Diagnostic::new(
            codes::ARGUMENT_COUNT,
            format!("`{name}` takes 1 argument(s), got {}", args.len()),
            span,
        )),
    }
}

fn too_deep(span: Span) -> Diagnostic {
    Diagnostic::new(
        codes::SPAN_PREDICATE_PLACE,
        "`any_span` is nested too deeply",
        span,
    )
    .with_help(
        "only `any_span(a AND any_span(b))` is flattened; write `any_span(a) AND any_span(b)`",
    )
}

impl ShapeFilter {
    /// Splits `filter:` and `trace_filter:`.
    pub(crate) fn split(
        filter: Option<&ast::Expr>,
        trace_filter: Option<&ast::Expr>,
    ) -> Result<Self, Diagnostic> {
        let mut out = ShapeFilter::default();
        let mut kept = Vec::new();
        if let Some(filter) = filter {
            let mut parts = Vec::new();
            conjuncts(filter, &mut parts);
            for part in parts {
                if let Some(args) = call_of(&part, "filter_spans") {
                    let inner = one_arg(args, "filter_spans", part.span)?;
                    if contains_call(inner, "any_span") || contains_call(inner, "filter_spans") {
                        return Err(Diagnostic::new(
                            codes::SPAN_PREDICATE_PLACE,
                            "`filter_spans` takes a per-span predicate",
                            inner.span,
                        )
                        .with_help("write `any_span(...)` as a separate `and` term of `filter:`"));
                    }
                    out.narrow.push(inner.clone());
                } else {
                    kept.push(out.rewrite(&part)?);
                }
            }
        }
        if let Some(trace_filter) = trace_filter {
            out.narrow.push(trace_filter.clone());
        }
        out.select = and_all(kept);
        Ok(out)
    }

    fn flag(&mut self, e: ast::Expr, span: Span) -> ast::Expr {
        let name = format!("{ANY_SPAN_PREFIX}{}", self.any_spans.len());
        self.any_spans.push(e);
        ast::Expr {
            kind: ExprKind::Ident(name),
            span,
        }
    }

    /// Replaces `any_span(e)` by flags, flattening one level.
    fn rewrite(&mut self, e: &ast::Expr) -> Result<ast::Expr, Diagnostic> {
        if let Some(args) = call_of(e, "any_span") {
            let inner = one_arg(args, "any_span", e.span)?;
            let mut parts = Vec::new();
            conjuncts(inner, &mut parts);
            let mut plain = Vec::new();
            let mut flags = Vec::new();
            for part in parts {
                if let Some(nested) = call_of(&part, "any_span") {
                    let nested_inner = one_arg(nested, "any_span", part.span)?;
                    if contains_call(nested_inner, "any_span") {
                        return Err(too_deep(part.span));
                    }
                    flags.push(self.flag(nested_inner.clone(), part.span));
                } else if contains_call(&part, "any_span") {
                    return Err(too_deep(part.span));
                } else {
                    plain.push(part);
                }
            }
            if let Some(plain) = and_all(plain) {
                flags.insert(0, self.flag(plain, e.span));
            }
            return and_all(flags).ok_or_else(|| Diagnostic::internal("empty any_span", e.span));
        }
        let boxed = |x: &ast::Expr, me: &mut Self| me.rewrite(x).map(Box::new);
        let kind = match &e.kind {
            ExprKind::Unary { op, expr } => ExprKind::Unary {
                op: *op,
                expr: boxed(expr, self)?,
            },
            ExprKind::Binary { op, left, right } => ExprKind::Binary {
                op: *op,
                left: boxed(left, self)?,
                right: boxed(right, self)?,
            },
            ExprKind::Ternary {
                cond,
                then,
                otherwise,
            } => ExprKind::Ternary {
                cond: boxed(cond, self)?,
                then: boxed(then, self)?,
                otherwise: boxed(otherwise, self)?,
            },
            ExprKind::IsNull { expr, negated } => ExprKind::IsNull {
                expr: boxed(expr, self)?,
                negated: *negated,
            },
            ExprKind::Function { name, args } => ExprKind::Function {
                name: name.clone(),
                args: args
                    .iter()
                    .map(|a| self.rewrite(a))
                    .collect::<Result<_, _>>()?,
            },
            other => other.clone(),
        };
        Ok(ast::Expr { kind, span: e.span })
    }
}

fn qualified(table: &str, name: &str) -> Expr {
    Expr::Column(Column::new(Some(TableReference::bare(table)), name))
}

fn lower_bool(lowerer: &Lowerer<'_>, e: &ast::Expr) -> Result<Expr, Diagnostic> {
    lowerer
        .lower(e, Scope::Filter)
        .and_then(|v| lowerer.as_bool(v, e.span))
}

/// The spans schema plus the `any_span` flags.
fn flagged_schema(flags: usize) -> SchemaRef {
    let base = schema::spans_schema();
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    for i in 0..flags {
        fields.push(Field::new(
            format!("{ANY_SPAN_PREFIX}{i}"),
            DataType::Boolean,
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// The set `T` of matching traces: one column `root_span_id` qualified
/// `matched`; `None` when every trace matches.
pub(crate) fn trace_set(
    ctx: &PlanContext<'_>,
    filter: &ShapeFilter,
    items: &[SelectItem<'_>],
) -> Result<Option<LogicalPlanBuilder>, Diagnostic> {
    let Some(select) = &filter.select else {
        return Ok(None);
    };
    let internal = ctx.internal();
    let spans = schema::spans_schema();
    let plain = Lowerer::new(ctx.options, &spans, items).refusing_span_wrappers();
    let mut base = ctx.scan()?;
    if !filter.any_spans.is_empty() {
        let mut flags = Vec::new();
        for (i, e) in filter.any_spans.iter().enumerate() {
            flags.push(agg::bool_or(lower_bool(&plain, e)?).alias(format!("{ANY_SPAN_PREFIX}{i}")));
        }
        let flag_plan = ctx
            .scan()?
            .aggregate(vec![column("root_span_id")], flags)
            .and_then(|b| b.alias("flags"))
            .and_then(|b| b.build())
            .map_err(&internal)?;
        let mut projection: Vec<Expr> = spans.fields().iter().map(|f| column(f.name())).collect();
        for i in 0..filter.any_spans.len() {
            let name = format!("{ANY_SPAN_PREFIX}{i}");
            projection.push(
                datafusion_functions::core::coalesce()
                    .call(vec![qualified("flags", &name), lit(false)])
                    .alias(name),
            );
        }
        base = base
            .join(
                flag_plan,
                JoinType::Inner,
                (
                    vec![Column::new(
                        Some(TableReference::bare(TABLE)),
                        "root_span_id",
                    )],
                    vec![Column::new(
                        Some(TableReference::bare("flags")),
                        "root_span_id",
                    )],
                ),
                None,
            )
            .and_then(|b| b.project(projection))
            .and_then(|b| b.alias(TABLE))
            .map_err(&internal)?;
    }
    let flagged = flagged_schema(filter.any_spans.len());
    let lowerer = Lowerer::new(ctx.options, &flagged, items).refusing_span_wrappers();
    let predicate = lower_bool(&lowerer, select)?;
    base.filter(predicate)
        .and_then(|b| b.aggregate(vec![column("root_span_id")], Vec::<Expr>::new()))
        .and_then(|b| b.alias(MATCHED))
        .map(Some)
        .map_err(internal)
}

/// Spans of the traces in `matched` (all spans when `None`), narrowed.
pub(crate) fn trace_spans(
    ctx: &PlanContext<'_>,
    matched: Option<LogicalPlanBuilder>,
    filter: &ShapeFilter,
    items: &[SelectItem<'_>],
) -> Result<LogicalPlanBuilder, Diagnostic> {
    let internal = ctx.internal();
    let mut spans = ctx.scan()?;
    if let Some(matched) = matched {
        let right = matched.build().map_err(&internal)?;
        spans = spans
            .join(
                right,
                JoinType::LeftSemi,
                (
                    vec![Column::new(
                        Some(TableReference::bare(TABLE)),
                        "root_span_id",
                    )],
                    vec![Column::new(
                        Some(TableReference::bare(MATCHED)),
                        "root_span_id",
                    )],
                ),
                None,
            )
            .map_err(&internal)?;
    }
    let schema = schema::spans_schema();
    let lowerer = Lowerer::new(ctx.options, &schema, items).refusing_span_wrappers();
    let mut narrow = Vec::new();
    for e in &filter.narrow {
        narrow.push(lower_bool(&lowerer, e)?);
    }
    if let Some(predicate) = narrow.into_iter().reduce(Expr::and) {
        spans = spans.filter(predicate).map_err(&internal)?;
    }
    Ok(spans)
}

/// Preview columns of the summary row.
pub(crate) const PREVIEW_COLUMNS: &[&str] = &["input", "output", "expected", "error", "metadata"];

/// JSON columns of the summary row, after the scalar columns of the spans view.
const SUMMARY_JSON_COLUMNS: &[&str] = &[
    "span_attributes",
    "input",
    "output",
    "expected",
    "error",
    "scores",
    "metadata",
    "metrics",
    "tags",
    "origin",
    "span_type_info",
];

/// Schema of summary rows (JSON columns marked).
pub(crate) fn summary_schema() -> SchemaRef {
    let spans = schema::spans_schema();
    let mut fields: Vec<Field> = schema::SCALAR_COLUMNS
        .iter()
        .filter_map(|name| {
            spans
                .field_with_name(name)
                .ok()
                .map(|f| f.clone().with_nullable(true))
        })
        .collect();
    fields.extend(
        SUMMARY_JSON_COLUMNS
            .iter()
            .map(|name| schema::json_field(name)),
    );
    Arc::new(Schema::new(fields))
}

fn json_read(kind: JsonKind, base: Expr, path: &[&str]) -> Expr {
    udf(
        JsonGet::new(
            kind,
            path.iter()
                .map(|k| PathStep::Key((*k).to_string()))
                .collect(),
        ),
        vec![base],
    )
}

/// One summary row per trace of `spans` (already narrowed), qualified `spans`,
/// with the columns of [`summary_schema`].
pub(crate) fn summary_rows(
    ctx: &PlanContext<'_>,
    spans: LogicalPlanBuilder,
) -> Result<LogicalPlanBuilder, Diagnostic> {
    let internal = ctx.internal();
    let metric = |key: &str| json_read(JsonKind::Number, column("metrics"), &[key]);
    let span_type = json_read(JsonKind::String, column("span_attributes"), &["type"]);
    let is_llm = span_type.clone().eq(lit("llm"));
    let is_tool = span_type.eq(lit("tool"));
    let has_error = column("error").is_not_null();
    let one_when = |cond: Expr| when(cond, lit(1i64)).end().map_err(&internal);
    let case = |cond: Expr, value: Expr| when(cond, value).end().map_err(&internal);
    let duration = binary_expr(metric("end"), Operator::Minus, metric("start"));
    let cached = datafusion_functions::core::coalesce().call(vec![
        json_read(JsonKind::Bool, column("metrics"), &["cached"]),
        json_read(JsonKind::Bool, column("metadata"), &["cached"]),
        lit(false),
    ]);
    let total_tokens = datafusion_functions::core::coalesce().call(vec![
        metric("tokens"),
        binary_expr(
            metric("prompt_tokens"),
            Operator::Plus,
            metric("completion_tokens"),
        ),
        metric("prompt_tokens"),
        metric("completion_tokens"),
    ]);
    let scores_avg = Arc::new(AggregateUDF::new_from_impl(ScoresAvg::default()));
    let aggregates = vec![
        scores_avg.call(vec![column("scores")]).alias("scores"),
        agg::sum(metric("prompt_tokens")).alias("prompt_tokens"),
        agg::sum(metric("completion_tokens")).alias("completion_tokens"),
        agg::sum(metric("prompt_cached_tokens")).alias("prompt_cached_tokens"),
        agg::sum(metric("prompt_cache_creation_tokens")).alias("prompt_cache_creation_tokens"),
        agg::sum(total_tokens).alias("total_tokens"),
        agg::sum(metric("estimated_cost")).alias("estimated_cost"),
        agg::count(one_when(is_llm.clone())?).alias("llm_calls"),
        agg::count(one_when(is_tool.clone())?).alias("tool_calls"),
        agg::count(one_when(is_llm.clone().and(has_error.clone()))?).alias("llm_errors"),
        agg::count(one_when(is_tool.and(has_error.clone()))?).alias("tool_errors"),
        agg::min(metric("start")).alias("start"),
        agg::max(metric("end")).alias("end"),
        agg::sum(case(is_llm.clone(), duration)?).alias("llm_duration"),
        agg::avg(case(is_llm.clone(), metric("time_to_first_token"))?).alias("time_to_first_token"),
        agg::bool_and(case(is_llm.clone(), cached)?).alias("cached"),
        agg::count(one_when(is_llm)?).alias("llm_spans"),
        agg::bool_or(has_error).alias("has_error"),
    ];
    let aggregated = spans
        .aggregate(vec![column("root_span_id")], aggregates)
        .and_then(|b| b.alias("agg"))
        .map_err(&internal)?;
    let roots = ctx
        .scan()?
        .filter(column("is_root").is_true())
        .and_then(|b| b.alias("root"))
        .and_then(|b| b.build())
        .map_err(&internal)?;
    let joined = aggregated
        .join(
            roots,
            JoinType::Left,
            (
                vec![Column::new(
                    Some(TableReference::bare("agg")),
                    "root_span_id",
                )],
                vec![Column::new(
                    Some(TableReference::bare("root")),
                    "root_span_id",
                )],
            ),
            None,
        )
        .map_err(&internal)?;

    let a = |name: &str| qualified("agg", name);
    let r = |name: &str| qualified("root", name);
    let metric_keys = [
        "prompt_tokens",
        "completion_tokens",
        "prompt_cached_tokens",
        "prompt_cache_creation_tokens",
        "total_tokens",
        "estimated_cost",
        "llm_calls",
        "tool_calls",
        "errors",
        "llm_errors",
        "tool_errors",
        "start",
        "end",
        "duration",
        "llm_duration",
        "time_to_first_token",
    ];
    let metric_values: Vec<Expr> = metric_keys
        .iter()
        .map(|key| match *key {
            "errors" => binary_expr(a("llm_errors"), Operator::Plus, a("tool_errors")),
            "duration" => binary_expr(a("end"), Operator::Minus, a("start")),
            other => a(other),
        })
        .collect();
    let metrics = udf(
        JsonObjectBuild::new(
            metric_keys.iter().map(|k| (*k).to_string()).collect(),
            vec![false; metric_keys.len()],
        ),
        metric_values,
    );
    let cached = when(
        a("llm_spans").gt(lit(0i64)),
        datafusion_functions::core::coalesce().call(vec![a("cached"), lit(false)]),
    )
    .otherwise(lit(false))
    .map_err(&internal)?;
    let attribute = |key: &str| json_read(JsonKind::Json, r("span_attributes"), &[key]);
    let span_type_info = udf(
        JsonObjectBuild::new(
            ["cached", "has_error", "name", "type", "purpose"]
                .iter()
                .map(|k| (*k).to_string())
                .collect(),
            vec![false, false, true, true, true],
        ),
        vec![
            cached,
            datafusion_functions::core::coalesce().call(vec![a("has_error"), lit(false)]),
            attribute("name"),
            attribute("type"),
            attribute("purpose"),
        ],
    );
    let computed: HashMap<&str, Expr> = HashMap::from([
        ("root_span_id", a("root_span_id")),
        ("scores", a("scores")),
        ("metrics", metrics),
        ("span_type_info", span_type_info),
    ]);
    let projection: Vec<Expr> = summary_schema()
        .fields()
        .iter()
        .map(|f| {
            let name = f.name().as_str();
            computed
                .get(name)
                .cloned()
                .unwrap_or_else(|| r(name))
                .alias(name)
        })
        .collect();
    joined
        .project(projection)
        .and_then(|b| b.alias(TABLE))
        .map_err(internal)
}
