//! Grouping: `dimensions:`, `measures:`, `final_filter:` (spec §1.2, §1.6.6).
//!
//! ```text
//!  rows ──Aggregate(group: __dim_i, aggr: __agg_j)──► Filter(final_filter:) ──► Sort ──► Limit ──► Projection
//! ```
//!
//! Every expression after the grouping (measures, `final_filter:`, `sort:`,
//! a `select:` used with positional `dimensions: 1, 2`) is lowered by a
//! [`Lowerer`] in grouped mode: an expression whose normalised text is a
//! dimension's, or a name that is a dimension's output name, reads that
//! group key (`__dim_i`); a measure's alias stands for the measure's
//! expression; an aggregate call lowers its arguments against the rows
//! (pre-grouping) and is collected as `__agg_j`; any other field is an
//! error (`BTQL0113`). Aggregates therefore combine freely
//! (`count(error) / count(1)`), and the same lowering serves HAVING.
//!
//! Aggregates (all ignore NULLs): `count(*)`/`count(1)` rows, `count(e)`
//! non-NULL values (JSON: non-null JSON values), `count_distinct(e)` (JSON
//! compared as JSON text), `sum`/`avg` of numbers (JSON read as f64),
//! `min`/`max` (JSON read as f64; typed values as themselves),
//! `any_value(e)` (first non-NULL value seen), `percentile(e, p)`: exact
//! `percentile_cont` (linear interpolation between the closest ranks).
//! A group key holding JSON is grouped on its JSON text, and comes out as
//! JSON.

use std::cell::RefCell;

use datafusion_common::Column;
use datafusion_expr::{Expr, lit};
use datafusion_functions_aggregate::expr_fn as agg;

use super::expr::{Lowerer, Scope, Ty, Val};
use crate::ast::{self, ExprKind, Literal};
use crate::error::{Diagnostic, Span, codes};

/// One group key.
#[derive(Debug)]
pub(crate) struct Dimension {
    /// Output name.
    pub(crate) name: String,
    /// Normalised source text (matches the same expression written again).
    pub(crate) text: String,
    /// The value after grouping (a column of the aggregate).
    pub(crate) val: Val,
}

/// The grouping of one query: its keys, measure aliases and the aggregates
/// collected while lowering.
#[derive(Debug)]
pub(crate) struct Grouping<'a> {
    /// Lowers aggregate arguments against the rows.
    pub(crate) rows: &'a Lowerer<'a>,
    pub(crate) dimensions: Vec<Dimension>,
    /// `(alias, expression)` of measures (and of aggregated select items).
    pub(crate) measures: Vec<(String, &'a ast::Expr)>,
    aggregates: RefCell<Vec<Expr>>,
    expanding: RefCell<Vec<String>>,
}

/// The column an aggregate or a group key is read from after grouping.
pub(crate) fn grouped_column(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

/// Whether an expression calls an aggregate function.
pub(crate) fn contains_aggregate(e: &ast::Expr) -> bool {
    match &e.kind {
        ExprKind::Function { name, args } => {
            super::expr::AGGREGATES.contains(&name.to_ascii_lowercase().as_str())
                || args.iter().any(contains_aggregate)
        }
        ExprKind::Access { base, .. } => contains_aggregate(base),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => contains_aggregate(expr),
        ExprKind::Binary { left, right, .. } => {
            contains_aggregate(left) || contains_aggregate(right)
        }
        ExprKind::InList { expr, list } => {
            contains_aggregate(expr) || list.iter().any(contains_aggregate)
        }
        ExprKind::Ternary {
            cond,
            then,
            otherwise,
        } => contains_aggregate(cond) || contains_aggregate(then) || contains_aggregate(otherwise),
        ExprKind::Array(items) => items.iter().any(contains_aggregate),
        _ => false,
    }
}

impl<'a> Grouping<'a> {
    pub(crate) fn new(rows: &'a Lowerer<'a>) -> Self {
        Self {
            rows,
            dimensions: Vec::new(),
            measures: Vec::new(),
            aggregates: RefCell::new(Vec::new()),
            expanding: RefCell::new(Vec::new()),
        }
    }

    /// Adds a group key; returns its pre-grouping expression, aliased.
    pub(crate) fn add_dimension(
        &mut self,
        name: String,
        expr: &ast::Expr,
    ) -> Result<Expr, Diagnostic> {
        let lowered = self.rows.lower(expr, Scope::Select)?;
        let alias = format!("__dim_{}", self.dimensions.len());
        let (key, val) = match lowered {
            Val::Json { .. } => (
                Lowerer::plain(lowered),
                Val::Json {
                    text: grouped_column(&alias),
                    path: Vec::new(),
                },
            ),
            Val::Typed { expr, ty } => (
                expr,
                Val::Typed {
                    expr: grouped_column(&alias),
                    ty,
                },
            ),
        };
        self.dimensions.push(Dimension {
            name,
            text: expr.to_string(),
            val,
        });
        Ok(key.alias(alias))
    }

    /// The aggregates collected so far, each aliased `__agg_j`.
    pub(crate) fn take_aggregates(&self) -> Vec<Expr> {
        self.aggregates.borrow_mut().drain(..).collect()
    }

    /// A grouped value for `e`, if it is a dimension or a measure alias.
    pub(crate) fn lookup(
        &self,
        e: &ast::Expr,
        grouped: &Lowerer<'_>,
    ) -> Result<Option<Val>, Diagnostic> {
        let text = e.to_string();
        if let Some(d) = self.dimensions.iter().find(|d| d.text == text) {
            return Ok(Some(d.val.clone()));
        }
        let ExprKind::Ident(name) = &e.kind else {
            return Ok(None);
        };
        if let Some(d) = self.dimensions.iter().find(|d| &d.name == name) {
            return Ok(Some(d.val.clone()));
        }
        if self.expanding.borrow().contains(name) {
            return Ok(None);
        }
        if let Some((_, expr)) = self.measures.iter().find(|(alias, _)| alias == name) {
            self.expanding.borrow_mut().push(name.clone());
            let lowered = grouped.lower(expr, Scope::Select);
            self.expanding.borrow_mut().pop();
            return lowered.map(Some);
        }
        Ok(None)
    }

    /// The error for a field used after grouping outside an aggregate.
    pub(crate) fn ungrouped(&self, e: &ast::Expr) -> Diagnostic {
        let names: Vec<String> = self
            .dimensions
            .iter()
            .map(|d| format!("`{}`", d.name))
            .chain(self.measures.iter().map(|(n, _)| format!("`{n}`")))
            .collect();
        let mut help = format!("aggregate it (e.g. `any_value({e})`) or add it to `dimensions:`");
        if !names.is_empty() {
            help.push_str(&format!("; grouped names are {}", names.join(", ")));
        }
        Diagnostic::new(
            codes::NOT_GROUPED,
            format!("`{e}` is neither a dimension nor inside an aggregate"),
            e.span,
        )
        .with_help(help)
    }

    /// Lowers an aggregate call: collects it and returns its column.
    pub(crate) fn aggregate(
        &self,
        name: &str,
        args: &[ast::Expr],
        span: Span,
    ) -> Result<Val, Diagnostic> {
        let arity = |n: usize, usage: &str| -> Result<(), Diagnostic> {
            if args.len() != n {
                return Err(Diagnostic::new(
                    codes::ARGUMENT_COUNT,
                    format!("`{name}` takes {n} argument(s), got {}", args.len()),
                    span,
                )
                .with_help(format!("write `{usage}`")));
            }
            Ok(())
        };
        let rows = self.rows;
        let lower_arg = |i: usize| rows.lower(&args[i], Scope::Select);
        let (expr, ty) = match name {
            "count" => {
                arity(1, "count(1)` (rows) or `count(expr)` (non-null values")?;
                let e = match &args[0].kind {
                    ExprKind::Star => agg::count(lit(1i64)),
                    _ => agg::count(Lowerer::plain(lower_arg(0)?)),
                };
                (e, Some(Ty::Int))
            }
            "count_distinct" => {
                arity(1, "count_distinct(expr)")?;
                (
                    agg::count_distinct(Lowerer::plain(lower_arg(0)?)),
                    Some(Ty::Int),
                )
            }
            "sum" | "avg" => {
                arity(1, &format!("{name}(expr)"))?;
                let x = rows.number(lower_arg(0)?, args[0].span)?;
                (
                    if name == "sum" {
                        agg::sum(x)
                    } else {
                        agg::avg(x)
                    },
                    Some(Ty::Float),
                )
            }
            "min" | "max" => {
                arity(1, &format!("{name}(expr)"))?;
                let (x, ty) = match lower_arg(0)? {
                    json @ Val::Json { .. } => (rows.number(json, args[0].span)?, Ty::Float),
                    Val::Typed { expr, ty } => (expr, ty),
                };
                (
                    if name == "min" {
                        agg::min(x)
                    } else {
                        agg::max(x)
                    },
                    Some(ty),
                )
            }
            "any_value" => {
                arity(1, "any_value(expr)")?;
                match lower_arg(0)? {
                    json @ Val::Json { .. } => {
                        let x = Lowerer::plain(json);
                        (first_non_null(x), None)
                    }
                    Val::Typed { expr, ty } => (first_non_null(expr), Some(ty)),
                }
            }
            "percentile" => {
                arity(2, "percentile(expr, 0.95)")?;
                let p = match &args[1].kind {
                    ExprKind::Literal(Literal::Float(p)) => Some(*p),
                    ExprKind::Literal(Literal::Int(p)) => Some(*p as f64),
                    _ => None,
                }
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| {
                    Diagnostic::new(
                        codes::LITERAL_REQUIRED,
                        "the fraction of `percentile` must be a number literal between 0 and 1",
                        args[1].span,
                    )
                    .with_help("e.g. `percentile(metrics.latency, 0.95)`")
                })?;
                let x = rows.number(lower_arg(0)?, args[0].span)?;
                (
                    agg::percentile_cont(x.sort(true, false), lit(p)),
                    Some(Ty::Float),
                )
            }
            _ => {
                return Err(Diagnostic::internal(
                    format!("unhandled aggregate `{name}`"),
                    span,
                ));
            }
        };
        let mut aggregates = self.aggregates.borrow_mut();
        let alias = format!("__agg_{}", aggregates.len());
        aggregates.push(expr.alias(alias.clone()));
        let column = grouped_column(&alias);
        Ok(match ty {
            Some(ty) => Val::Typed { expr: column, ty },
            None => Val::Json {
                text: column,
                path: Vec::new(),
            },
        })
    }
}

/// `first_value(x) FILTER (WHERE x IS NOT NULL)`: an arbitrary non-NULL value.
fn first_non_null(x: Expr) -> Expr {
    use datafusion_expr::ExprFunctionExt;
    let filtered = agg::first_value(x.clone(), Vec::new())
        .filter(x.clone().is_not_null())
        .build();
    filtered.unwrap_or_else(|_| agg::first_value(x, Vec::new()))
}

/// A positional reference (`dimensions: 1`, `sort: 2`): the 1-based index.
pub(crate) fn position(e: &ast::Expr) -> Option<i64> {
    match e.kind {
        ExprKind::Literal(Literal::Int(i)) => Some(i),
        _ => None,
    }
}
