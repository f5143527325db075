//! [`ast::Query`] → DataFusion [`LogicalPlan`]: every shape (`spans`,
//! `traces`, `summary`; see [`shapes`]), grouping ([`aggregate`]),
//! `unpivot:` and `sample:` ([`planner`]), `pivot:` ([`pivot`]).
//!
//! ```text
//!  rows(shape) → Unpivot* → Filter(filter:) → Sample → [Aggregate → Filter(final_filter:)]
//!              → Sort(sort:) → Limit(limit:) → Projection(select: | dimensions+measures)
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
//! reported. `project_logs`, `experiment` and `dataset` sources are
//! planned (the `traces` and `summary` shapes not on datasets); `cursor:` and
//! `span_filter:` are parsed and refused with `BTQL0103`. `pivot:` is
//! planned up to its data-independent phase ([`pivot`], [`PivotSpec`]).

mod aggregate;
pub mod codec;
mod expr;
mod pivot;
mod planner;
mod shapes;
mod udf;

use std::collections::HashSet;
use std::sync::Arc;

use datafusion_common::{Column, TableReference};
use datafusion_expr::{Expr, LogicalPlan, LogicalPlanBuilder};

use crate::ast::{self, PathStep, SelectList, Shape};
use crate::error::{Diagnostic, Diagnostics, Span, codes};
use crate::limits::MAX_EXPRESSION_DEPTH;
use crate::object_type::ObjectType;
#[cfg(test)]
use crate::schema;

/// Where sources come from: the engine implements it over its store.
pub trait Catalog: std::fmt::Debug {
    /// Table source for `project_logs(args)`, `experiment(args)` or
    /// `dataset(args)` (by `object_type`): rows with
    /// `schema::spans_schema()`. Err(message) becomes a diagnostic at the
    /// source span.
    fn source(
        &self,
        object_type: ObjectType,
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

pub use pivot::{PivotSort, PivotSpec};

/// A planned query.
#[derive(Debug)]
pub struct CompiledQuery {
    /// The logical plan; its output schema has exactly [`Self::columns`].
    pub plan: LogicalPlan,
    /// Output columns in order.
    pub columns: Vec<OutputColumn>,
    /// With `pivot:`: `plan` and `columns` are only phase 1 (one row per
    /// row keys and pivot key); the caller runs phase 2 as the spec says
    /// (the output columns depend on the data).
    pub pivot: Option<PivotSpec>,
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
    // The planner recurses once per level: refuse absurd nesting up front
    // rather than overflow the stack. The parsers refuse it already (see
    // `crate::limits`); an AST built by hand may not have been parsed.
    if let Some(deep) = query
        .expressions()
        .into_iter()
        .find(|e| e.depth() > MAX_EXPRESSION_DEPTH)
    {
        return Err(crate::limits::too_deep(deep.span).into());
    }
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
    let shape = query.source().map_or(Shape::Spans, |s| s.shape);
    let items = name_select_items(query, &mut errors);
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
    let preview_length = match &query.preview_length {
        None => Some(DEFAULT_PREVIEW_LENGTH),
        Some(clause) if clause.value == -1 => None,
        Some(clause) => match usize::try_from(clause.value) {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(
                    Diagnostic::new(
                        codes::NUMBER_RANGE,
                        "`preview_length:` must be -1 or at least 0",
                        clause.span,
                    )
                    .with_help("-1 turns truncation off"),
                );
                None
            }
        },
    };
    let Some(source) = source else {
        return Err(Diagnostics(errors));
    };
    let ctx = PlanContext {
        query,
        options,
        source,
        items: items.as_deref(),
        shape,
        limit,
        preview_length,
    };
    let planned = planner::plan(&ctx, &mut errors);
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    match planned {
        Some(Ok(compiled)) => Ok(compiled),
        Some(Err(d)) => Err(Diagnostics::from(d)),
        None => Err(Diagnostics::from(Diagnostic::internal(
            "planning failed without a diagnostic",
            query.span,
        ))),
    }
}

/// Default `preview_length:` of the summary shape (spec §1.2).
const DEFAULT_PREVIEW_LENGTH: usize = 124;

/// What every planning step reads.
pub(crate) struct PlanContext<'q> {
    pub(crate) query: &'q ast::Query,
    pub(crate) options: &'q PlanOptions,
    pub(crate) source: Arc<dyn datafusion_expr::TableSource>,
    pub(crate) items: Option<&'q [SelectItem<'q>]>,
    pub(crate) shape: Shape,
    pub(crate) limit: Option<usize>,
    /// `None`: no truncation.
    pub(crate) preview_length: Option<usize>,
}

impl std::fmt::Debug for PlanContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanContext")
            .field("shape", &self.shape)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl PlanContext<'_> {
    /// A fresh scan of the spans view, qualified `spans`.
    pub(crate) fn scan(&self) -> Result<LogicalPlanBuilder, Diagnostic> {
        LogicalPlanBuilder::scan(TABLE, Arc::clone(&self.source), None)
            .map_err(|e| Diagnostic::internal(e, self.query.span))
    }

    pub(crate) fn internal(&self) -> impl Fn(datafusion_common::DataFusionError) -> Diagnostic {
        let span = self.query.span;
        move |e| Diagnostic::internal(e, span)
    }
}

fn plan_source(
    source: &ast::Source,
    catalog: &dyn Catalog,
    errors: &mut Vec<Diagnostic>,
) -> Option<Arc<dyn datafusion_expr::TableSource>> {
    let Some(object_type) = ObjectType::parse(&source.function) else {
        errors.push(
            Diagnostic::new(
                codes::UNKNOWN_SOURCE,
                format!("unsupported source `{}`", source.function),
                source.span,
            )
            .with_help(
                "spanlake queries `project_logs('<project id or name>')`, `experiment('<experiment id>')` or `dataset('<dataset id>')`",
            ),
        );
        return None;
    };
    if !object_type.has_traces() && source.shape != Shape::Spans {
        errors.push(
            Diagnostic::new(
                codes::NOT_SUPPORTED,
                format!(
                    "the `{}` shape does not apply to `{object_type}`: its rows are records, not spans of traces",
                    source.shape
                ),
                source.span,
            )
            .with_help(format!("write `from: {object_type}('<id>')` (one row per record)")),
        );
        return None;
    }
    match catalog.source(object_type, &source.args) {
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
    refuse(
        "cursor",
        query.cursor.as_ref().map(|c| c.span),
        "paginate with a `filter:` on the sort key",
    );
    refuse(
        "span_filter",
        query.span_filter.as_ref().map(|c| c.span),
        "it is undocumented; narrow spans with `trace_filter:` or `filter_spans(expr)`",
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
