//! `pivot:` (spec §1.6.7, SQL `PIVOT (... FOR key IN (ANY))` §1.7): rows
//! to columns. The output columns depend on the data, so planning stops at
//! phase 1 and the engine finishes (see [`PivotSpec`]).
//!
//! ```text
//!  phase 1 (this crate): rows ─► Aggregate(row keys, pivot key; measures) ─► Filter(final_filter:)
//!                          ─► Projection(row keys, pivot key, measures, hidden sort keys)
//!  phase 2 (engine):     distinct pivot values v₁…vₙ (sorted) of phase 1, then
//!                        phase 1 ─► Aggregate(row keys + sort keys;
//!                                     first_value(m) FILTER (key IS NOT DISTINCT FROM vᵢ) AS "<vᵢ>_<m>")
//!                          ─► Sort(sort:) ─► Limit(limit:) ─► Projection(row keys, pivoted columns)
//! ```
//!
//! Reading the clause:
//!
//! * every item names a measure alias (`pivot: total, n`): the pivot key is
//!   the **last** dimension, the other dimensions are row keys, and exactly
//!   the listed measures are pivoted (a measure left out is an error: it
//!   would have one value per pivot value with nowhere to go);
//! * otherwise the clause holds one pivot-key expression (`pivot:
//!   metadata.model`): the dimension written the same way (or whose output
//!   name the item is) is the key; an expression that is no dimension is
//!   added as the last group key (this is what SQL's `PIVOT (agg FOR key IN
//!   (ANY))` produces: the key is left out of `GROUP BY`). Every measure is
//!   pivoted.
//!
//! `final_filter:` filters phase-1 groups (cells, before pivoting);
//! `sort:` may only name row keys (by name, by expression or by position
//! among the output columns) and is completed with the remaining row keys
//! ascending, so the order is total; `limit:` counts output rows.
//! `select:` cannot be combined with `pivot:` (the output columns are the
//! row keys then the pivoted columns).

use datafusion_expr::{Expr, LogicalPlanBuilder};

use super::aggregate::{Grouping, contains_aggregate, position};
use super::expr::Lowerer;
use super::planner::item_name;
use super::{OutputColumn, PlanContext};
use crate::ast::{self, ExprKind};
use crate::error::{Diagnostic, codes};

/// Phase 2 of a pivot, carried by [`super::CompiledQuery::pivot`]: the
/// plan of the query is phase 1, one row per (row keys, pivot key) group,
/// with the columns named here; the caller pivots it.
///
/// Output of the pivot: the [`Self::row_keys`] columns as they are, then
/// for each distinct value `v` of [`Self::key`] (in the order of
/// [`Self::key_sort`]: ascending, NULL last) and each measure `m` of
/// [`Self::measures`], a column `<v>_<m>` holding that measure of the
/// phase-1 row with that key (NULL when there is none). `v` is rendered as
/// text: a JSON string without its quotes, other JSON values as their JSON
/// text, other values as Arrow displays them, NULL (SQL or JSON) as `null`.
/// A name taken already gets `#2`, `#3`, … appended. Its JSON flag is the
/// measure's.
#[derive(Debug, Clone, PartialEq)]
pub struct PivotSpec {
    /// Phase-1 columns that identify an output row, in output order.
    pub row_keys: Vec<String>,
    /// The phase-1 column holding the pivot key.
    pub key: String,
    /// Phase-1 columns to order the distinct pivot values by, ascending,
    /// NULL last (functions of [`Self::key`]).
    pub key_sort: Vec<String>,
    /// Phase-1 measure columns to pivot, in order; also the `<m>` of the
    /// output names.
    pub measures: Vec<String>,
    /// Output order: phase-1 columns (functions of the row keys), applied
    /// after pivoting; complete (ends with every row key).
    pub sort: Vec<PivotSort>,
    /// At most this many output rows (after sorting).
    pub limit: Option<usize>,
}

/// One sort key of a pivot's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PivotSort {
    /// A phase-1 column.
    pub column: String,
    /// Descending (NULL first) instead of ascending (NULL last).
    pub descending: bool,
}

/// Which dimension is the key and which measures pivot.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Index into `grouping.dimensions`.
    key: usize,
    /// Indices into `grouping.measures`, in output order.
    measures: Vec<usize>,
}

/// Reads `pivot:` against the dimensions and measures already in
/// `grouping`; adds the key as a group key when it is no dimension.
pub(crate) fn resolve(
    ctx: &PlanContext<'_>,
    clause: &ast::Clause<Vec<ast::AliasedExpr>>,
    grouping: &mut Grouping<'_>,
    group_exprs: &mut Vec<Expr>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Resolved> {
    let query = ctx.query;
    if let Some(select) = &query.select {
        errors.push(
            Diagnostic::new(
                codes::NOT_SUPPORTED,
                "`select:` together with `pivot:`",
                select.span,
            )
            .with_help(
                "a pivot outputs its row keys (`dimensions:`) then one column per pivot value and measure; drop `select:`",
            ),
        );
        return None;
    }
    if grouping.measures.is_empty() {
        errors.push(
            Diagnostic::new(
                codes::NOT_AGGREGATE,
                "`pivot:` needs `measures:` to spread over the pivot values",
                clause.span,
            )
            .with_help("e.g. `dimensions: day(created) as day, metadata.model as model | measures: count(1) as n | pivot: n`"),
        );
        return None;
    }
    let measure_index = |e: &ast::Expr| match &e.kind {
        ExprKind::Ident(name) => grouping.measures.iter().position(|(m, _)| m == name),
        _ => None,
    };
    let named: Vec<Option<usize>> = clause
        .value
        .iter()
        .map(|i| measure_index(&i.expr))
        .collect();
    if named.iter().all(Option::is_some) {
        // Measure form: the key is the last dimension.
        let Some(key) = grouping.dimensions.len().checked_sub(1) else {
            errors.push(
                Diagnostic::new(
                    codes::NOT_GROUPED,
                    "`pivot:` names measures but there is no dimension to pivot on",
                    clause.span,
                )
                .with_help("the pivot key is the last dimension: add it to `dimensions:`, or write the key itself in `pivot:`"),
            );
            return None;
        };
        let mut measures: Vec<usize> = Vec::new();
        for i in named.into_iter().flatten() {
            if !measures.contains(&i) {
                measures.push(i);
            }
        }
        let mut ok = true;
        for (i, (name, expr)) in grouping.measures.iter().enumerate() {
            if !measures.contains(&i) {
                ok = false;
                errors.push(
                    Diagnostic::new(
                        codes::NOT_SUPPORTED,
                        format!("measure `{name}` is not pivoted"),
                        expr.span,
                    )
                    .with_help(format!(
                        "list it in `pivot:` too, or remove it; the pivot key is the last dimension `{}`",
                        grouping.dimensions[key].name
                    )),
                );
            }
        }
        return ok.then_some(Resolved { key, measures });
    }
    // Key form.
    if let [first, second, ..] = clause.value.as_slice() {
        let mixed = clause
            .value
            .iter()
            .any(|i| measure_index(&i.expr).is_some());
        errors.push(
            Diagnostic::new(
                codes::NOT_SUPPORTED,
                if mixed {
                    "`pivot:` mixes measure names and pivot keys".to_string()
                } else {
                    "`pivot:` on more than one key".to_string()
                },
                first.span.to(second.span),
            )
            .with_help("write either the measures to pivot (the key is the last dimension) or a single pivot key"),
        );
        return None;
    }
    let item = clause.value.first()?;
    if contains_aggregate(&item.expr) {
        errors.push(
            Diagnostic::new(
                codes::AGGREGATE_IN_SELECT,
                "a pivot key cannot be an aggregate",
                item.expr.span,
            )
            .with_help("pivot on a dimension; list aggregates in `measures:`"),
        );
        return None;
    }
    let text = item.expr.to_string();
    let found = grouping.dimensions.iter().position(|d| {
        d.text == text || matches!(&item.expr.kind, ExprKind::Ident(name) if &d.name == name)
    });
    let key = match found {
        Some(i) => i,
        None => {
            if let Some(i) = position(&item.expr) {
                errors.push(
                    Diagnostic::new(
                        codes::BAD_POSITION,
                        format!("`pivot:` does not take positions (`{i}`)"),
                        item.expr.span,
                    )
                    .with_help("write the pivot key expression or the measures to pivot"),
                );
                return None;
            }
            let name = item_name(item);
            if let Some(d) = grouping.dimensions.iter().find(|d| d.name == name) {
                errors.push(
                    Diagnostic::new(
                        codes::DUPLICATE_NAME,
                        format!(
                            "pivot key `{}` is named `{name}` like the dimension `{}`",
                            item.expr, d.text
                        ),
                        item.expr.span,
                    )
                    .with_help("name it otherwise with `as`, or pivot on that dimension"),
                );
                return None;
            }
            match grouping.add_dimension(name, &item.expr) {
                Ok(e) => group_exprs.push(e),
                Err(d) => {
                    errors.push(d);
                    return None;
                }
            }
            grouping.dimensions.len() - 1
        }
    };
    Some(Resolved {
        key,
        measures: (0..grouping.measures.len()).collect(),
    })
}

/// Phase 1: the grouped rows with the pivot columns, and the spec.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    ctx: &PlanContext<'_>,
    builder: LogicalPlanBuilder,
    group_exprs: Vec<Expr>,
    grouping: &Grouping<'_>,
    post: &Lowerer<'_>,
    outputs: Vec<(String, Expr, bool)>,
    having: Option<Expr>,
    resolved: Resolved,
    errors: &mut Vec<Diagnostic>,
) -> Result<Option<(LogicalPlanBuilder, Vec<OutputColumn>, PivotSpec)>, Diagnostic> {
    let internal = ctx.internal();
    let dims = &grouping.dimensions;
    let row_dims: Vec<usize> = (0..dims.len()).filter(|&i| i != resolved.key).collect();
    let row_names = || {
        row_dims
            .iter()
            .map(|&i| format!("`{}`", dims[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    };

    // Sort: row keys only, then the rest of them ascending.
    let mut order: Vec<(usize, bool)> = Vec::new();
    for item in ctx.query.sort.iter().flat_map(|c| &c.value) {
        let found = match position(&item.expr) {
            Some(k) => match usize::try_from(k)
                .ok()
                .and_then(|k| k.checked_sub(1))
                .and_then(|i| row_dims.get(i))
            {
                Some(&i) => Some(i),
                None => {
                    errors.push(
                        Diagnostic::new(
                            codes::BAD_POSITION,
                            format!("`sort:` position {k} names no row key of the pivot"),
                            item.expr.span,
                        )
                        .with_help(if row_dims.is_empty() {
                            "this pivot has no row keys (one output row)".to_string()
                        } else {
                            format!("positions count row keys from 1 to {}", row_dims.len())
                        }),
                    );
                    continue;
                }
            },
            None => {
                let text = item.expr.to_string();
                row_dims.iter().copied().find(|&i| {
                    dims[i].text == text
                        || matches!(&item.expr.kind, ExprKind::Ident(n) if n == &dims[i].name)
                })
            }
        };
        match found {
            Some(i) => {
                if !order.iter().any(|(j, _)| *j == i) {
                    order.push((i, item.descending));
                }
            }
            None => errors.push(
                Diagnostic::new(
                    codes::NOT_GROUPED,
                    format!("`{}` is not a row key of the pivot", item.expr),
                    item.expr.span,
                )
                .with_help(if row_dims.is_empty() {
                    "this pivot has one output row; drop `sort:`".to_string()
                } else {
                    format!("pivoted rows sort by their row keys only: {}", row_names())
                }),
            ),
        }
    }
    for &i in &row_dims {
        if !order.iter().any(|(j, _)| *j == i) {
            order.push((i, false));
        }
    }
    if !errors.is_empty() {
        return Ok(None);
    }

    let mut projection = Vec::new();
    let mut columns = Vec::new();
    for (name, expr, json) in outputs {
        projection.push(expr.alias(name.clone()));
        columns.push(OutputColumn { name, json });
    }
    let mut hidden = |prefix: &str, keys: Vec<Expr>| -> Vec<String> {
        keys.into_iter()
            .map(|k| {
                let name = format!("__pivot_{prefix}_{}", columns.len());
                projection.push(k.alias(name.clone()));
                columns.push(OutputColumn {
                    name: name.clone(),
                    json: false,
                });
                name
            })
            .collect()
    };
    let mut sort = Vec::new();
    for (i, descending) in order {
        for column in hidden("sort", post.sort_keys(dims[i].val.clone())?) {
            sort.push(PivotSort { column, descending });
        }
    }
    let key_sort = hidden("key", post.sort_keys(dims[resolved.key].val.clone())?);

    let mut builder = builder
        .aggregate(group_exprs, grouping.take_aggregates())
        .map_err(&internal)?;
    if let Some(p) = having {
        builder = builder.filter(p).map_err(&internal)?;
    }
    let builder = builder.project(projection).map_err(internal)?;
    let spec = PivotSpec {
        row_keys: row_dims.iter().map(|&i| dims[i].name.clone()).collect(),
        key: dims[resolved.key].name.clone(),
        key_sort,
        measures: resolved
            .measures
            .iter()
            .map(|&i| grouping.measures[i].0.clone())
            .collect(),
        sort,
        limit: ctx.limit,
    };
    Ok(Some((builder, columns, spec)))
}
