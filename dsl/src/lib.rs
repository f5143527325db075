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
pub mod diagnostics;
mod error;
pub mod functions;
mod json_ast;
mod limits;
mod object_type;
mod plan;
pub mod schema;
mod sql;
mod syntax;

pub use error::{Diagnostic, Diagnostics, Span};
pub use json_ast::parse_json_ast;
pub use limits::{MAX_EXPRESSION_DEPTH, MAX_JSON_DEPTH};
pub use object_type::{ObjectType, object_type_names};
pub use plan::codec;
pub use plan::{
    Catalog, CompiledQuery, OutputColumn, PivotSort, PivotSpec, PlanOptions, plan_query,
};
pub use sql::parse_sql;
pub use syntax::{parse_expr, parse_query};

/// Which front end a query text is for (spec §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryForm {
    /// `SELECT ...` / `WITH ...`: the SQL form ([`parse_sql`]).
    Sql,
    /// `{...}`: the JSON AST ([`parse_json_ast`]).
    JsonAst,
    /// `select: ... | from: ...`: the clause syntax ([`parse_query`]).
    Clauses,
}

/// Detects the form of a query text: after whitespace and comments (`--`
/// to end of line, `/* ... */`), a `{` is the JSON AST; the word `SELECT`
/// or `WITH` (any case) not followed by `:` is SQL; anything else is the
/// clause syntax, whose clauses read `select:`.
pub fn detect_form(text: &str) -> QueryForm {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    if rest.starts_with('{') {
        return QueryForm::JsonAst;
    }
    let word_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let word = &rest[..word_len];
    let sql_word = word.eq_ignore_ascii_case("select") || word.eq_ignore_ascii_case("with");
    if sql_word && !rest[word_len..].trim_start().starts_with(':') {
        QueryForm::Sql
    } else {
        QueryForm::Clauses
    }
}

/// Parses a query in any of its three forms (see [`detect_form`]) into the
/// one AST the planner takes.
pub fn parse_any(text: &str) -> Result<ast::Query, Diagnostics> {
    match detect_form(text) {
        QueryForm::Sql => parse_sql(text),
        QueryForm::JsonAst => parse_json_ast(text),
        QueryForm::Clauses => parse_query(text),
    }
}
