//! [`ast::Query`] → DataFusion [`LogicalPlan`] for the `spans` shape.
//!
//! ```text
//!  TableScan(spans) → Filter(filter:) → Sort(sort:) → Limit(limit:) → Projection(select:)
//! ```
//!
//! Names are resolved and types checked while lowering ([`expr`]): a JSON
//! value stays a deferred `(json text, path)` until its use decides how to
//! read it (string, number, boolean or JSON text), so no JSON is parsed
//! twice for one use and selected objects come out verbatim. Sort keys and
//! filters are computed on the scan's columns, before the projection, so
//! select aliases are substituted by their expressions. The plan is built
//! with `LogicalPlanBuilder` only (no SQL text), and the projection's
//! output names are exactly [`CompiledQuery::columns`], in order.
//!
//! Every user error is a [`Diagnostic`]; independent clause errors are all
//! reported. Only `project_logs` sources and the `spans` shape are planned
//! yet; other clauses are parsed and refused with `BTQL0103`.

mod expr;

use std::collections::HashSet;
use std::sync::Arc;

use datafusion_common::{Column, TableReference};
use datafusion_expr::{Expr, LogicalPlan, LogicalPlanBuilder, SortExpr};

use crate::ast::{self, PathStep, SelectList, Shape};
use crate::error::{Diagnostic, Diagnostics, Span, codes};
use crate::schema;

use expr::{Lowerer, Scope};

/// Where sources come from: the engine implements it over its store.
pub trait Catalog: std::fmt::Debug {
    /// Table source for `project_logs(args)`: rows with `schema::spans_schema()`. Err(message) becomes a diagnostic at the source span.
    fn project_logs(
        &self,
        args: &[String],
    ) -> Result<Arc<dyn datafusion_expr::TableSource>, String>;
}

/// Per-request planning inputs.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Caller's time zone offset in minutes, JavaScript sign (480 = UTC−8);
    /// used by time bucketing and `current_date()`.
    pub tz_offset_minutes: i32,
    /// The instant `now()` stands for (injected, so plans are deterministic).
    pub now: chrono::DateTime<chrono::Utc>,
}

/// A planned query.
#[derive(Debug)]
pub struct CompiledQuery {
    /// The logical plan; its output schema has exactly [`Self::columns`].
    pub plan: LogicalPlan,
    /// Output columns in order.
    pub columns: Vec<OutputColumn>,
}

/// One output column.
#[derive(Debug, Clone)]
pub struct OutputColumn {
    /// Output name.
    pub name: String,
    /// Whether the column holds JSON text (`Utf8`) to be emitted as JSON.
    pub json: bool,
}

/// Table qualifier of the scan.
const TABLE: &str = "spans";

pub(crate) fn column(name: &str) -> Expr {
    Expr::Column(Column::new(Some(TableReference::bare(TABLE)), name))
}

/// A select item after naming, before lowering.
#[derive(Debug)]
pub(crate) struct SelectItem<'q> {
    pub(crate) expr: &'q ast::Expr,
    pub(crate) name: String,
    /// Explicit `as` alias (else the name is implicit).
    pub(crate) explicit: bool,
    /// Whether the name may be used in filter/sort as a short name.
    pub(crate) referable: bool,
    pub(crate) span: Span,
}

/// Plans a parsed query against `catalog`.
pub fn plan_query(
    query: &ast::Query,
    catalog: &dyn Catalog,
    options: &PlanOptions,
) -> Result<CompiledQuery, Diagnostics> {
    let mut errors = Vec::new();
    refuse_unsupported(query, &mut errors);

    let source = match &query.from {
        None => {
            errors.push(
                Diagnostic::new(codes::MISSING_FROM, "missing `from:` clause", query.span)
                    .with_help("add `from: project_logs('<project id or name>')`"),
            );
            None
        }
        Some(clause) => plan_source(&clause.value, catalog, &mut errors),
    };

    let schema = schema::spans_schema();
    let items = name_select_items(query, &mut errors);
    let lowerer = Lowerer::new(options, &schema, items.as_deref().unwrap_or(&[]));

    let filter = query.filter.as_ref().and_then(|clause| {
        let lowered = lowerer
            .lower(&clause.value, Scope::Filter)
            .and_then(|v| lowerer.as_bool(v, clause.value.span));
        lowered.map_err(|d| errors.push(d)).ok()
    });

    let mut sorts: Vec<SortExpr> = Vec::new();
    for item in query.sort.iter().flat_map(|c| &c.value) {
        match lowerer
            .lower(&item.expr, Scope::Sort)
            .and_then(|v| lowerer.sort_keys(v))
        {
            Ok(keys) => sorts.extend(
                keys.into_iter()
                    .map(|k| k.sort(!item.descending, item.descending)),
            ),
            Err(d) => errors.push(d),
        }
    }

    let limit = query
        .limit
        .as_ref()
        .and_then(|clause| match usize::try_from(clause.value) {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(Diagnostic::new(
                    codes::NUMBER_RANGE,
                    "`limit:` must not be negative",
                    clause.span,
                ));
                None
            }
        });

    let mut projection = Vec::new();
    let mut columns = Vec::new();
    match &items {
        None => {
            for field in schema.fields() {
                projection.push(column(field.name()));
                columns.push(OutputColumn {
                    name: field.name().clone(),
                    json: schema::is_json_field(field),
                });
            }
        }
        Some(items) => {
            for item in items {
                match lowerer
                    .lower(item.expr, Scope::Select)
                    .and_then(|v| lowerer.output(v, item.expr.span))
                {
                    Ok((expr, json)) => {
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

    let Some(source) = source else {
        return Err(Diagnostics(errors));
    };
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    build_plan(source, filter, sorts, limit, projection, query.span)
        .map(|plan| CompiledQuery { plan, columns })
        .map_err(Diagnostics::from)
}

fn build_plan(
    source: Arc<dyn datafusion_expr::TableSource>,
    filter: Option<Expr>,
    sorts: Vec<SortExpr>,
    limit: Option<usize>,
    projection: Vec<Expr>,
    span: Span,
) -> Result<LogicalPlan, Diagnostic> {
    let internal = |e: datafusion_common::DataFusionError| Diagnostic::internal(e, span);
    let mut builder = LogicalPlanBuilder::scan(TABLE, source, None).map_err(internal)?;
    if let Some(predicate) = filter {
        builder = builder.filter(predicate).map_err(internal)?;
    }
    if !sorts.is_empty() {
        builder = builder.sort(sorts).map_err(internal)?;
    }
    if let Some(n) = limit {
        builder = builder.limit(0, Some(n)).map_err(internal)?;
    }
    builder
        .project(projection)
        .map_err(internal)?
        .build()
        .map_err(internal)
}

fn plan_source(
    source: &ast::Source,
    catalog: &dyn Catalog,
    errors: &mut Vec<Diagnostic>,
) -> Option<Arc<dyn datafusion_expr::TableSource>> {
    if !source.function.eq_ignore_ascii_case("project_logs") {
        errors.push(
            Diagnostic::new(
                codes::UNKNOWN_SOURCE,
                format!("unsupported source `{}`", source.function),
                source.span,
            )
            .with_help("spanlake queries `project_logs('<project id or name>')`"),
        );
        return None;
    }
    if source.shape != Shape::Spans {
        errors.push(
            Diagnostic::new(
                codes::NOT_SUPPORTED,
                format!("the `{}` shape is not supported yet", source.shape),
                source.span,
            )
            .with_help("use the `spans` shape"),
        );
    }
    match catalog.project_logs(&source.args) {
        Ok(table) => Some(table),
        Err(message) => {
            errors.push(Diagnostic::new(codes::SOURCE_ERROR, message, source.span));
            None
        }
    }
}

fn refuse_unsupported(query: &ast::Query, errors: &mut Vec<Diagnostic>) {
    let mut refuse = |name: &str, span: Option<Span>, help: &str| {
        if let Some(span) = span {
            let mut d = Diagnostic::new(
                codes::NOT_SUPPORTED,
                format!("`{name}:` is not supported yet"),
                span,
            );
            if !help.is_empty() {
                d = d.with_help(help.to_string());
            }
            errors.push(d);
        }
    };
    let aggregate_help =
        "grouping and aggregates (`dimensions:`, `measures:`) come in a later version";
    refuse(
        "dimensions",
        query.dimensions.as_ref().map(|c| c.span),
        aggregate_help,
    );
    refuse(
        "measures",
        query.measures.as_ref().map(|c| c.span),
        aggregate_help,
    );
    refuse("pivot", query.pivot.as_ref().map(|c| c.span), "");
    refuse("unpivot", query.unpivot.as_ref().map(|c| c.span), "");
    refuse(
        "cursor",
        query.cursor.as_ref().map(|c| c.span),
        "paginate with a `filter:` on the sort key",
    );
    refuse("sample", query.sample.as_ref().map(|c| c.span), "");
    refuse(
        "final_filter",
        query.final_filter.as_ref().map(|c| c.span),
        aggregate_help,
    );
    refuse(
        "trace_filter",
        query.trace_filter.as_ref().map(|c| c.span),
        "",
    );
    refuse(
        "span_filter",
        query.span_filter.as_ref().map(|c| c.span),
        "",
    );
    refuse(
        "preview_length",
        query.preview_length.as_ref().map(|c| c.span),
        "",
    );
}

/// Output names of the select list (spec §1.6.9); `None` for `*` or no
/// `select:`. Duplicate names are reported.
fn name_select_items<'q>(
    query: &'q ast::Query,
    errors: &mut Vec<Diagnostic>,
) -> Option<Vec<SelectItem<'q>>> {
    let Some(clause) = &query.select else {
        return None;
    };
    let SelectList::Items(items) = &clause.value else {
        return None;
    };
    let mut named: Vec<SelectItem<'q>> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for item in items {
        let (name, explicit, referable, span) = match &item.alias {
            Some((alias, span)) => (alias.clone(), true, true, *span),
            None => match item.expr.as_path() {
                Some(path) => match path.last() {
                    Some(PathStep::Key(key)) => {
                        (key.clone(), false, path.len() > 1, item.expr.span)
                    }
                    _ => (item.expr.to_string(), false, false, item.expr.span),
                },
                None => (item.expr.to_string(), false, false, item.expr.span),
            },
        };
        if !seen.insert(name.clone()) {
            let first = named
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.span)
                .unwrap_or(span);
            errors.push(
                Diagnostic::new(
                    codes::DUPLICATE_NAME,
                    format!("duplicate output column `{name}`"),
                    span,
                )
                .with_label(first, "first named here")
                .with_help("give one of them another name with `as`"),
            );
            continue;
        }
        named.push(SelectItem {
            expr: &item.expr,
            name,
            explicit,
            referable,
            span,
        });
    }
    Some(named)
}

#[cfg(test)]
mod tests;
