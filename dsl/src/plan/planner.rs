//! The clause pipeline: which relation the rows come from, then unpivot,
//! filter, sample, grouping, sort, limit and projection.
//!
//! ```text
//!  spans  : Scan ─► Unpivot* ─► Filter(filter: AND trace_filter:) ─► Sample(id)
//!  traces : Scan ⋉ limit/sample(roots ⋉ T) ─► Filter(narrow) ─► Unpivot*      (see shapes)
//!  summary: summary rows (see shapes) ─► Unpivot* ─► Sample(root_span_id)
//!    ─► [Aggregate ─► Filter(final_filter:)] ─► Sort ─► Limit ─► Projection
//! ```
//!
//! Every intermediate relation is re-qualified `spans`, and a [`SchemaRef`]
//! with the JSON flags of its columns goes with it, so the same expression
//! lowering serves spans, summary rows and unpivoted rows.
//!
//! `sample:` is deterministic: a row (a trace on `traces`) is kept when
//! `sample_hash(key, seed) < rate` (rate form), or the `N` rows with the
//! smallest hash are kept (count form); the seed defaults to 0. On
//! `traces`, `limit:` counts traces: the first `N` traces ordered by the
//! `sort:` keys evaluated on their root spans (then by `root_span_id`),
//! then all their spans are returned in `sort:` order. With `limit:` or
//! `sample:` a trace without a root span is never chosen.
//!
//! `unpivot: e as (k, v)` requires `e` to be a JSON object (one row per
//! member: `k` the key as a string, `v` the value as JSON); `e as (x)` a
//! JSON array (one row per element, as JSON). NULL, empty or mistyped
//! values emit no row. Several unpivots chain (cross product per row).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion_common::{Column, NullHandling, TableReference, UnnestOptions};
use datafusion_expr::{Expr, JoinType, LogicalPlanBuilder, SortExpr, lit};

use super::aggregate::{Grouping, contains_aggregate, position};
use super::expr::{Lowerer, Scope, Val, udf};
use super::pivot::{self, PivotSpec};
use super::shapes::{
    PREVIEW_COLUMNS, ShapeFilter, summary_rows, summary_schema, trace_set, trace_spans,
};
use super::udf::{JsonPreview, JsonUnpivot, SampleHash, UnpivotPart};
use super::{CompiledQuery, OutputColumn, PlanContext, SelectItem, TABLE, column};
use crate::ast::{self, ExprKind, PathStep, SampleMethod, Shape};
use crate::error::{Diagnostic, codes};
use crate::schema;

/// Plans `ctx`; user errors go to `errors` (then the result is `None` or
/// an error already pushed).
pub(crate) fn plan(
    ctx: &PlanContext<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Result<CompiledQuery, Diagnostic>> {
    match plan_inner(ctx, errors) {
        Ok(Some(compiled)) => Some(Ok(compiled)),
        Ok(None) => None,
        Err(d) => {
            errors.push(d);
            None
        }
    }
}

fn is_grouped(ctx: &PlanContext<'_>) -> bool {
    ctx.query.dimensions.is_some() || ctx.query.measures.is_some()
}

fn plan_inner(
    ctx: &PlanContext<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Result<Option<CompiledQuery>, Diagnostic> {
    let query = ctx.query;
    let internal = ctx.internal();
    let items: &[SelectItem<'_>] = ctx.items.unwrap_or(&[]);
    let grouped = is_grouped(ctx);
    let spans_schema = schema::spans_schema();

    // 1. The rows.
    let (mut builder, mut schema, mut limit_done) = match ctx.shape {
        Shape::Spans => (ctx.scan()?, Arc::clone(&spans_schema), false),
        Shape::Traces | Shape::Summary => {
            let filter = ShapeFilter::split(
                query.filter.as_ref().map(|c| &c.value),
                query.trace_filter.as_ref().map(|c| &c.value),
            )?;
            let item_scope = if ctx.shape == Shape::Traces {
                items
            } else {
                &[]
            };
            let mut matched = trace_set(ctx, &filter, item_scope)?;
            let mut limit_done = false;
            if ctx.shape == Shape::Traces
                && !grouped
                && (ctx.limit.is_some() || query.sample.is_some())
            {
                matched = Some(choose_traces(ctx, matched, items)?);
                limit_done = true;
            }
            let spans = trace_spans(ctx, matched, &filter, item_scope)?;
            if ctx.shape == Shape::Traces {
                (spans, Arc::clone(&spans_schema), limit_done)
            } else {
                (summary_rows(ctx, spans)?, summary_schema(), false)
            }
        }
    };

    // 2. Unpivot.
    for item in query.unpivot.iter().flat_map(|c| &c.value) {
        match unpivot(ctx, builder.clone(), &schema, item) {
            Ok((next, next_schema)) => {
                builder = next;
                schema = next_schema;
            }
            Err(d) => errors.push(d),
        }
    }

    // 3. Filter (spans shape; the other shapes used it to choose traces).
    let row_items: &[SelectItem<'_>] = if grouped { &[] } else { items };
    let rows = Lowerer::new(ctx.options, &schema, row_items);
    if ctx.shape == Shape::Spans {
        let mut predicates = Vec::new();
        for clause in [&query.filter, &query.trace_filter].into_iter().flatten() {
            match rows
                .lower(&clause.value, Scope::Filter)
                .and_then(|v| rows.as_bool(v, clause.value.span))
            {
                Ok(p) => predicates.push(p),
                Err(d) => errors.push(d),
            }
        }
        if let Some(p) = predicates.into_iter().reduce(Expr::and) {
            builder = builder.filter(p).map_err(&internal)?;
        }
    }

    // 4. Sample (traces: done on the trace set unless grouping).
    if let Some(sample) = query
        .sample
        .as_ref()
        .filter(|_| ctx.shape != Shape::Traces || grouped)
    {
        {
            let key = if ctx.shape == Shape::Summary {
                "root_span_id"
            } else {
                "id"
            };
            builder = sample_rows(builder, column(key), &sample.value).map_err(&internal)?;
        }
    }

    // 5. Grouping or not.
    let mut pivot = None;
    let (builder, columns) = if grouped {
        match grouped_plan(ctx, builder, &schema, errors)? {
            Some((builder, columns, spec)) => {
                pivot = spec;
                (builder, columns)
            }
            None => return Ok(None),
        }
    } else {
        if let Some(clause) = &query.pivot {
            errors.push(
                Diagnostic::new(
                    codes::NOT_AGGREGATE,
                    "`pivot:` needs `measures:` to spread over the pivot values",
                    clause.span,
                )
                .with_help("e.g. `dimensions: day(created) as day | measures: count(1) as n | pivot: metadata.model`"),
            );
        }
        if let Some(clause) = &query.final_filter {
            errors.push(
                Diagnostic::new(
                    codes::NOT_SUPPORTED,
                    "`final_filter:` needs grouping",
                    clause.span,
                )
                .with_help("add `dimensions:` or `measures:`, or use `filter:`"),
            );
        }
        let mut sorts: Vec<SortExpr> = Vec::new();
        for item in query.sort.iter().flat_map(|c| &c.value) {
            match rows
                .lower(&item.expr, Scope::Sort)
                .and_then(|v| rows.sort_keys(v))
            {
                Ok(keys) => sorts.extend(keys.into_iter().map(|k| sort_expr(k, item.descending))),
                Err(d) => errors.push(d),
            }
        }
        let mut projection = Vec::new();
        let mut columns = Vec::new();
        let preview = |name: &str, expr: Expr| match ctx.preview_length {
            Some(n) if ctx.shape == Shape::Summary && PREVIEW_COLUMNS.contains(&name) => {
                udf(JsonPreview::new(n), vec![expr])
            }
            _ => expr,
        };
        match ctx.items {
            None => {
                for field in schema.fields() {
                    projection
                        .push(preview(field.name(), column(field.name())).alias(field.name()));
                    columns.push(OutputColumn {
                        name: field.name().clone(),
                        json: schema::is_json_field(field),
                    });
                }
            }
            Some(items) => {
                let select = Lowerer::new(ctx.options, &schema, items);
                for item in items {
                    match select
                        .lower(item.expr, Scope::Select)
                        .and_then(|v| select.output(v, item.expr.span))
                    {
                        Ok((expr, json)) => {
                            let expr = match &item.expr.kind {
                                ExprKind::Ident(name) => preview(name, expr),
                                _ => expr,
                            };
                            projection.push(expr.alias(item.name.clone()));
                            columns.push(OutputColumn {
                                name: item.name.clone(),
                                json,
                            });
                        }
                        Err(d) => errors.push(d),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Ok(None);
        }
        let mut builder = builder;
        if !sorts.is_empty() {
            builder = builder.sort(sorts).map_err(&internal)?;
        }
        if let (Some(n), false) = (ctx.limit, limit_done) {
            builder = builder.limit(0, Some(n)).map_err(&internal)?;
        }
        limit_done = true;
        (builder.project(projection).map_err(&internal)?, columns)
    };
    let _ = limit_done;
    if !errors.is_empty() {
        return Ok(None);
    }
    let plan = builder.build().map_err(internal)?;
    Ok(Some(CompiledQuery {
        plan,
        columns,
        pivot,
    }))
}

/// Keeps the rows whose hash passes the sample.
fn sample_rows(
    builder: LogicalPlanBuilder,
    key: Expr,
    sample: &ast::Sample,
) -> datafusion_common::Result<LogicalPlanBuilder> {
    let hash = udf(SampleHash::new(sample.seed.unwrap_or(0)), vec![key]);
    match sample.method {
        SampleMethod::Rate(rate) => builder.filter(hash.lt(lit(rate))),
        SampleMethod::Count(n) => builder
            .sort(vec![hash.sort(true, false)])?
            .limit(0, Some(usize::try_from(n).unwrap_or(0))),
    }
}

/// The traces `limit:`/`sample:` keep, as a `matched` trace set.
fn choose_traces(
    ctx: &PlanContext<'_>,
    matched: Option<LogicalPlanBuilder>,
    items: &[SelectItem<'_>],
) -> Result<LogicalPlanBuilder, Diagnostic> {
    let internal = ctx.internal();
    let mut roots = ctx
        .scan()?
        .filter(column("is_root").is_true())
        .map_err(&internal)?;
    if let Some(matched) = matched {
        roots = roots
            .join(
                matched.build().map_err(&internal)?,
                JoinType::LeftSemi,
                (
                    vec![Column::new(
                        Some(TableReference::bare(TABLE)),
                        "root_span_id",
                    )],
                    vec![Column::new(
                        Some(TableReference::bare("matched")),
                        "root_span_id",
                    )],
                ),
                None,
            )
            .map_err(&internal)?;
    }
    if let Some(sample) = &ctx.query.sample {
        roots = sample_rows(roots, column("root_span_id"), &sample.value).map_err(&internal)?;
    }
    if let Some(n) = ctx.limit {
        let schema = schema::spans_schema();
        let lowerer = Lowerer::new(ctx.options, &schema, items).refusing_span_wrappers();
        let mut sorts = Vec::new();
        for item in ctx.query.sort.iter().flat_map(|c| &c.value) {
            let keys = lowerer
                .lower(&item.expr, Scope::Sort)
                .and_then(|v| lowerer.sort_keys(v))?;
            sorts.extend(keys.into_iter().map(|k| sort_expr(k, item.descending)));
        }
        sorts.push(column("root_span_id").sort(true, false));
        roots = roots
            .sort(sorts)
            .and_then(|b| b.limit(0, Some(n)))
            .map_err(&internal)?;
    }
    roots
        .project(vec![column("root_span_id")])
        .and_then(|b| b.alias("matched"))
        .map_err(internal)
}

/// One unpivot step: the new relation and its schema.
fn unpivot(
    ctx: &PlanContext<'_>,
    builder: LogicalPlanBuilder,
    schema: &SchemaRef,
    item: &ast::UnpivotItem,
) -> Result<(LogicalPlanBuilder, SchemaRef), Diagnostic> {
    let internal = ctx.internal();
    let lowerer = Lowerer::new(ctx.options, schema, &[]);
    let value = lowerer.lower(&item.expr, Scope::Select)?;
    let Val::Json { .. } = value else {
        return Err(Diagnostic::new(
            codes::UNPIVOT_TYPE,
            format!(
                "`unpivot:` needs a JSON object or array, `{}` is not one",
                item.expr
            ),
            item.expr.span,
        )
        .with_help(
            "unpivot an object (`scores as (score, value)`) or an array (`tags as (tag)`)",
        ));
    };
    let text = Lowerer::plain(value);
    let lists: Vec<(String, UnpivotPart)> = match item.names.as_slice() {
        [key, value] => vec![
            (key.clone(), UnpivotPart::Keys),
            (value.clone(), UnpivotPart::Values),
        ],
        [element] => vec![(element.clone(), UnpivotPart::Elements)],
        _ => {
            return Err(Diagnostic::new(
                codes::SYNTAX,
                "`unpivot:` names one column (array) or two (key, value)",
                item.span,
            ));
        }
    };
    let kept: Vec<Field> = schema
        .fields()
        .iter()
        .filter(|f| !lists.iter().any(|(n, _)| n == f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    let mut projection: Vec<Expr> = kept
        .iter()
        .map(|f| column(f.name()).alias(f.name()))
        .collect();
    let mut unnest = Vec::new();
    for (i, (_, part)) in lists.iter().enumerate() {
        let list = format!("__unpivot_{i}");
        projection.push(udf(JsonUnpivot::new(*part), vec![text.clone()]).alias(list.clone()));
        unnest.push(Column::from_name(list));
    }
    let options = UnnestOptions {
        null_handling: NullHandling::Drop,
        recursions: Vec::new(),
    };
    let mut after: Vec<Expr> = kept
        .iter()
        .map(|f| Expr::Column(Column::from_name(f.name())).alias(f.name()))
        .collect();
    let mut fields = kept.clone();
    for (i, (name, part)) in lists.iter().enumerate() {
        after.push(Expr::Column(Column::from_name(format!("__unpivot_{i}"))).alias(name.clone()));
        fields.push(match part {
            UnpivotPart::Keys => Field::new(name, DataType::Utf8, true),
            _ => schema::json_field(name),
        });
    }
    let builder = builder
        .project(projection)
        .and_then(|b| b.unnest_columns_with_options(unnest, options))
        .and_then(|b| b.project(after))
        .and_then(|b| b.alias(TABLE))
        .map_err(internal)?;
    Ok((builder, Arc::new(Schema::new(fields))))
}

/// Output name of a dimension or measure item (spec §1.6.9).
pub(super) fn item_name(item: &ast::AliasedExpr) -> String {
    if let Some((alias, _)) = &item.alias {
        return alias.clone();
    }
    match item
        .expr
        .as_path()
        .as_deref()
        .and_then(|p| p.last().cloned())
    {
        Some(PathStep::Key(key)) => key,
        _ => item.expr.to_string(),
    }
}

type Planned = (LogicalPlanBuilder, Vec<OutputColumn>, Option<PivotSpec>);

/// `dimensions:` / `measures:` / `final_filter:` over `builder`.
fn grouped_plan(
    ctx: &PlanContext<'_>,
    builder: LogicalPlanBuilder,
    schema: &SchemaRef,
    errors: &mut Vec<Diagnostic>,
) -> Result<Option<Planned>, Diagnostic> {
    let query = ctx.query;
    let internal = ctx.internal();
    let items: &[SelectItem<'_>] = ctx.items.unwrap_or(&[]);
    let rows = Lowerer::new(ctx.options, schema, &[]);
    let mut grouping = Grouping::new(&rows);
    let mut group_exprs = Vec::new();
    let mut positional = false;
    for dim in query.dimensions.iter().flat_map(|c| &c.value) {
        let (name, expr) = match position(&dim.expr) {
            Some(k) => {
                positional = true;
                match usize::try_from(k)
                    .ok()
                    .and_then(|k| k.checked_sub(1))
                    .and_then(|i| items.get(i))
                {
                    Some(item) => (item.name.clone(), item.expr),
                    None => {
                        errors.push(
                            Diagnostic::new(
                                codes::BAD_POSITION,
                                format!("`dimensions:` position {k} names no `select:` item"),
                                dim.expr.span,
                            )
                            .with_help(format!(
                                "positions count `select:` items from 1 to {}",
                                items.len()
                            )),
                        );
                        continue;
                    }
                }
            }
            None => (item_name(dim), &dim.expr),
        };
        if contains_aggregate(expr) {
            errors.push(
                Diagnostic::new(
                    codes::AGGREGATE_IN_SELECT,
                    "a dimension cannot be an aggregate",
                    dim.expr.span,
                )
                .with_help("move it to `measures:`"),
            );
            continue;
        }
        match grouping.add_dimension(name, expr) {
            Ok(e) => group_exprs.push(e),
            Err(d) => errors.push(d),
        }
    }
    for measure in query.measures.iter().flat_map(|c| &c.value) {
        if !contains_aggregate(&measure.expr) {
            errors.push(
                Diagnostic::new(
                    codes::NOT_AGGREGATE,
                    format!("measure `{}` is not an aggregate", measure.expr),
                    measure.expr.span,
                )
                .with_help("aggregate it, e.g. `count(1)`, `avg(x)`, `any_value(x)`, or move it to `dimensions:`"),
            );
            continue;
        }
        grouping.measures.push((item_name(measure), &measure.expr));
    }
    if !errors.is_empty() {
        return Ok(None);
    }
    let pivot = match &query.pivot {
        Some(clause) => {
            match pivot::resolve(ctx, clause, &mut grouping, &mut group_exprs, errors) {
                Some(resolved) => Some(resolved),
                None => return Ok(None),
            }
        }
        None => None,
    };
    let grouping = grouping;
    let post = Lowerer::new(ctx.options, schema, &[]).grouped(&grouping);

    // Output columns: the select list (positional form or any select), else dimensions then measures.
    let mut outputs: Vec<(String, Expr, bool)> = Vec::new();
    let mut lower_output = |name: String, e: &ast::Expr, errors: &mut Vec<Diagnostic>| match post
        .lower(e, Scope::Select)
        .and_then(|v| post.output(v, e.span))
    {
        Ok((expr, json)) => outputs.push((name, expr, json)),
        Err(d) => errors.push(d),
    };
    if ctx.items.is_some() && (positional || query.measures.is_none()) {
        for item in items {
            lower_output(item.name.clone(), item.expr, errors);
        }
    } else {
        if let Some(clause) = query
            .select
            .as_ref()
            .filter(|_| ctx.items.is_some() && !positional)
        {
            {
                errors.push(
                    Diagnostic::new(
                        codes::NOT_SUPPORTED,
                        "`select:` together with `measures:` is ambiguous",
                        clause.span,
                    )
                    .with_help("list outputs in `dimensions:` and `measures:`, or use `select:` with positional `dimensions: 1, 2`"),
                );
            }
        }
        for (i, dim) in grouping.dimensions.iter().enumerate() {
            let expr = query
                .dimensions
                .as_ref()
                .and_then(|c| c.value.get(i))
                .map(|d| &d.expr)
                .or_else(|| {
                    // A pivot key that is no dimension was added last.
                    pivot.as_ref()?;
                    query.pivot.as_ref()?.value.first().map(|p| &p.expr)
                });
            if let Some(e) = expr {
                lower_output(dim.name.clone(), e, errors);
            }
        }
        for (name, e) in &grouping.measures {
            lower_output(name.clone(), e, errors);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (name, _, _) in &outputs {
        if !seen.insert(name.clone()) {
            errors.push(
                Diagnostic::new(
                    codes::DUPLICATE_NAME,
                    format!("duplicate output column `{name}`"),
                    query
                        .dimensions
                        .as_ref()
                        .or(query.measures.as_ref())
                        .map_or(query.span, |c| c.span),
                )
                .with_help("give one of them another name with `as`"),
            );
        }
    }

    let having = query.final_filter.as_ref().and_then(|clause| {
        post.lower(&clause.value, Scope::Filter)
            .and_then(|v| post.as_bool(v, clause.value.span))
            .map_err(|d| errors.push(d))
            .ok()
    });
    if let Some(resolved) = pivot {
        if !errors.is_empty() {
            return Ok(None);
        }
        return Ok(pivot::finish(
            ctx,
            builder,
            group_exprs,
            &grouping,
            &post,
            outputs,
            having,
            resolved,
            errors,
        )?
        .map(|(builder, columns, spec)| (builder, columns, Some(spec))));
    }
    let mut sorts: Vec<SortExpr> = Vec::new();
    for item in query.sort.iter().flat_map(|c| &c.value) {
        let keys = match position(&item.expr) {
            Some(k) => match usize::try_from(k)
                .ok()
                .and_then(|k| k.checked_sub(1))
                .and_then(|i| outputs.get(i))
            {
                Some((_, expr, _)) => Ok(vec![expr.clone()]),
                None => Err(Diagnostic::new(
                    codes::BAD_POSITION,
                    format!("`sort:` position {k} names no output column"),
                    item.expr.span,
                )
                .with_help(format!(
                    "positions count output columns from 1 to {}",
                    outputs.len()
                ))),
            },
            None => post
                .lower(&item.expr, Scope::Sort)
                .and_then(|v| post.sort_keys(v)),
        };
        match keys {
            Ok(keys) => sorts.extend(keys.into_iter().map(|k| sort_expr(k, item.descending))),
            Err(d) => errors.push(d),
        }
    }
    if !errors.is_empty() {
        return Ok(None);
    }
    let aggregates = grouping.take_aggregates();
    let mut builder = builder
        .aggregate(group_exprs, aggregates)
        .map_err(&internal)?;
    if let Some(p) = having {
        builder = builder.filter(p).map_err(&internal)?;
    }
    if !sorts.is_empty() {
        builder = builder.sort(sorts).map_err(&internal)?;
    }
    if let Some(n) = ctx.limit {
        builder = builder.limit(0, Some(n)).map_err(&internal)?;
    }
    let mut columns = Vec::new();
    let projection: Vec<Expr> = outputs
        .into_iter()
        .map(|(name, expr, json)| {
            columns.push(OutputColumn {
                name: name.clone(),
                json,
            });
            expr.alias(name)
        })
        .collect();
    let builder = builder.project(projection).map_err(internal)?;
    Ok(Some((builder, columns, None)))
}

/// `key` in `sort:` order: ascending with nulls last, or descending with
/// nulls first. A negation sorts as its operand the other way (`-x asc` is
/// `x desc`): the same order, the right one for the smallest integer (whose
/// negation wraps), and a sort DataFusion can check. Its physical sanity
/// check derives the ordering of `-f(x)` through `NegativeExpr`, which
/// fails for a function without bounds (DataFusion's default) and refused
/// `sort: -model` over a JSON dimension (issue 14).
fn sort_expr(mut key: Expr, descending: bool) -> SortExpr {
    let mut ascending = !descending;
    while let Expr::Negative(operand) = key {
        key = *operand;
        ascending = !ascending;
    }
    key.sort(ascending, descending)
}
