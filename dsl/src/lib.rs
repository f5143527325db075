//! BTQL, Braintrust's query language for logs: parse (pest) to an AST with
//! source spans, analyze, and plan to a DataFusion `LogicalPlan`. This crate
//! knows nothing about storage and can never execute a plan.
//!
//! ```text
//!  text ──syntax::parse_query──► ast::Query ──plan_query──► CompiledQuery
//!                                               │ (names, JSON typing at use,
//!                                               │  UDFs from `functions`)
//!                                               ▼
//!                                  LogicalPlan + output column list
//! ```

pub mod ast;
mod error;
pub mod functions;
mod plan;
pub mod schema;
mod syntax;

pub use error::{Diagnostic, Diagnostics, Span};
pub use plan::{Catalog, CompiledQuery, OutputColumn, PlanOptions, plan_query};
pub use syntax::{parse_expr, parse_query};
