//! Braintrust's JSON AST (`ParsedQuery`, spec §1.9) → [`ast::Query`].
//!
//! The `/btql` endpoint accepts the query as this JSON object instead of
//! text; the SDKs send it. Field names are exact and objects are strict
//! (as in Braintrust's zod schema): an unknown field, an unknown `op`, a
//! missing or mistyped field is a `BTQL0001` diagnostic naming its JSON
//! path (`filter.left.op`). `loc` members are accepted and ignored.
//!
//! ```text
//!  JSON text ──serde_json──► Value ──JsonAstConverter──► ast::Query
//!                                       │ {"op":"btql"} snippets: parse_expr
//! ```
//!
//! JSON carries no useful source positions: every node's span is the whole
//! text, except inside a `btql` snippet whose text appears verbatim in the
//! JSON (no escapes), where spans point into the snippet.
//!
//! Op mapping: `eq ne lt le gt ge like ilike match` → the binary operator,
//! `is` → `<=>`, `in` (right side a literal array) → `InList`, `includes`
//! → `includes`, `and`/`or` (binary or n-ary `children`, folded left),
//! `if` → nested ternaries, `add sub mul div mod`, `neg`, `not`, `isnull`,
//! `isnotnull`, `btql` → [`parse_expr`], `singlespanfilter` → `any_span(…)`.
//! `inference_budget` and `infer` are accepted and ignored;
//! `comparison_key`, `weighted_scores` and `custom_columns` (experiments)
//! are refused with `BTQL0103`.

use serde_json::{Map, Value};

use crate::ast::{
    AliasedExpr, BinaryOp, Clause, Expr, ExprKind, IntervalUnit, Literal, PathStep, Query, Sample,
    SampleMethod, SelectList, Shape, SortItem, Source, UnaryOp, UnpivotItem,
};
use crate::error::{Diagnostic, Diagnostics, Span, codes};
use crate::limits::{self, MAX_EXPRESSION_DEPTH};
use crate::sql::map_expr_spans;
use crate::syntax::parse_expr_here;

/// Nesting limit of JSON expressions (deeper is a diagnostic, not a stack
/// overflow): the one every front end keeps to (`crate::limits`).
const MAX_DEPTH: usize = MAX_EXPRESSION_DEPTH;

/// Parses a JSON AST (spec §1.9) into a [`Query`].
///
/// `{` and `[` nested deeper than [`limits::MAX_JSON_DEPTH`] are refused before
/// serde_json reads the text, and expressions deeper than
/// [`MAX_EXPRESSION_DEPTH`] before the converter recurses into them.
///
/// Runs on the parser thread ([`limits::on_parser_stack`]).
pub fn parse_json_ast(text: &str) -> Result<Query, Diagnostics> {
    limits::on_parser_stack(|| parse_json_ast_here(text))
}

fn parse_json_ast_here(text: &str) -> Result<Query, Diagnostics> {
    limits::check_json_nesting(text)?;
    let value: Value = serde_json::from_str(text).map_err(|error| {
        let at = byte_offset(text, error.line(), error.column());
        Diagnostic::new(
            codes::SYNTAX,
            format!("invalid JSON: {error}"),
            Span::new(at, at),
        )
    })?;
    JsonAstConverter { text }.query(&value)
}

/// Byte offset of serde_json's 1-based line and column (clamped).
fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let line_start = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    let mut at = (line_start + column.saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[derive(Debug)]
struct JsonAstConverter<'t> {
    text: &'t str,
}

/// Top-level members of `ParsedQuery`.
const QUERY_FIELDS: &[&str] = &[
    "select",
    "from",
    "filter",
    "dimensions",
    "measures",
    "pivot",
    "unpivot",
    "sort",
    "limit",
    "cursor",
    "preview_length",
    "inference_budget",
    "sample",
    "span_filter",
    "trace_filter",
    "final_filter",
    "comparison_key",
    "weighted_scores",
    "custom_columns",
    "infer",
];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl JsonAstConverter<'_> {
    fn whole(&self) -> Span {
        Span::new(0, self.text.len())
    }

    /// `BTQL0004` for an expression at `path` nesting deeper than
    /// [`MAX_DEPTH`].
    fn too_deep(&self, path: &str) -> Diagnostic {
        let at = if path.is_empty() {
            "the top level"
        } else {
            path
        };
        Diagnostic {
            message: format!("expression at `{at}` nested more than {MAX_DEPTH} levels deep"),
            ..limits::too_deep(self.whole())
        }
    }

    fn error(&self, path: &str, problem: impl std::fmt::Display) -> Diagnostic {
        let at = if path.is_empty() {
            "the top level"
        } else {
            path
        };
        Diagnostic::new(
            codes::SYNTAX,
            format!("invalid JSON query at `{at}`: {problem}"),
            self.whole(),
        )
        .with_help("see the `ParsedQuery` JSON AST in the BTQL reference (spec §1.9)")
    }

    fn object<'v>(
        &self,
        value: &'v Value,
        path: &str,
    ) -> Result<&'v Map<String, Value>, Diagnostic> {
        value
            .as_object()
            .ok_or_else(|| self.error(path, format!("expected an object, got {}", describe(value))))
    }

    fn array<'v>(&self, value: &'v Value, path: &str) -> Result<&'v [Value], Diagnostic> {
        value
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| self.error(path, format!("expected an array, got {}", describe(value))))
    }

    fn string<'v>(&self, value: &'v Value, path: &str) -> Result<&'v str, Diagnostic> {
        value
            .as_str()
            .ok_or_else(|| self.error(path, format!("expected a string, got {}", describe(value))))
    }

    fn integer(&self, value: &Value, path: &str) -> Result<i64, Diagnostic> {
        value
            .as_i64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| {
                self.error(
                    path,
                    format!("expected a 64-bit integer, got {}", describe(value)),
                )
            })
    }

    /// A member that must be present (and not null).
    fn field<'v>(
        &self,
        object: &'v Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<&'v Value, Diagnostic> {
        match object.get(key) {
            Some(Value::Null) | None => Err(self.error(path, format!("missing field `{key}`"))),
            Some(v) => Ok(v),
        }
    }

    /// Refuses members not in `allowed` (and not `loc`).
    fn only(
        &self,
        object: &Map<String, Value>,
        allowed: &[&str],
        path: &str,
    ) -> Result<(), Diagnostic> {
        match object
            .keys()
            .find(|k| k.as_str() != "loc" && !allowed.contains(&k.as_str()))
        {
            Some(key) => Err(self.error(&join(path, key), "unknown field")),
            None => Ok(()),
        }
    }

    fn clause<T>(&self, value: T) -> Option<Clause<T>> {
        Some(Clause {
            value,
            span: self.whole(),
        })
    }

    fn query(&self, value: &Value) -> Result<Query, Diagnostics> {
        let object = self.object(value, "")?;
        let mut query = Query {
            span: self.whole(),
            ..Query::default()
        };
        let mut errors = Vec::new();
        if let Some(key) = object.keys().find(|k| !QUERY_FIELDS.contains(&k.as_str())) {
            errors.push(self.error(key, "unknown field").with_help(format!(
                    "query members are {}",
                    QUERY_FIELDS
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
        }
        for (key, value) in object {
            if value.is_null() {
                continue;
            }
            let key = key.as_str();
            let result: Result<(), Diagnostic> = (|| {
                match key {
                    "select" => query.select = self.clause(self.select(value, key)?),
                    "from" => query.from = self.clause(self.source(value, key)?),
                    "filter" => query.filter = self.clause(self.expr(value, key, 0)?),
                    "final_filter" => query.final_filter = self.clause(self.expr(value, key, 0)?),
                    "trace_filter" => query.trace_filter = self.clause(self.expr(value, key, 0)?),
                    "span_filter" => query.span_filter = self.clause(self.expr(value, key, 0)?),
                    "dimensions" => query.dimensions = self.clause(self.aliased_list(value, key)?),
                    "measures" => query.measures = self.clause(self.aliased_list(value, key)?),
                    "pivot" => query.pivot = self.clause(self.aliased_list(value, key)?),
                    "unpivot" => query.unpivot = self.clause(self.unpivot(value, key)?),
                    "sort" => query.sort = self.clause(self.sort(value, key)?),
                    "limit" => query.limit = self.clause(self.integer(value, key)?),
                    "preview_length" => {
                        query.preview_length = self.clause(self.integer(value, key)?);
                    }
                    "cursor" => query.cursor = self.clause(self.string(value, key)?.to_string()),
                    "sample" => query.sample = self.clause(self.sample(value, key)?),
                    // Accepted and ignored (spec §1.2).
                    "inference_budget" => {
                        self.integer(value, key)?;
                    }
                    "infer" => {
                        self.array(value, key)?;
                    }
                    "comparison_key" | "weighted_scores" | "custom_columns" => {
                        return Err(Diagnostic::new(
                            codes::NOT_SUPPORTED,
                            format!("`{key}` is not supported"),
                            self.whole(),
                        )
                        .with_help("it applies to experiments; spanlake queries `project_logs`"));
                    }
                    _ => {}
                }
                Ok(())
            })();
            if let Err(d) = result {
                errors.push(d);
            }
        }
        if errors.is_empty() {
            Ok(query)
        } else {
            Err(Diagnostics(errors))
        }
    }

    fn select(&self, value: &Value, path: &str) -> Result<SelectList, Diagnostic> {
        let items = self.array(value, path)?;
        let is_star = |v: &Value| v.get("op").and_then(Value::as_str) == Some("star");
        if let [only] = items
            && is_star(only)
        {
            let object = self.object(only, &format!("{path}[0]"))?;
            self.only(object, &["op"], &format!("{path}[0]"))?;
            return Ok(SelectList::Star(self.whole()));
        }
        if let Some(i) = items.iter().position(is_star) {
            return Err(self.error(
                &format!("{path}[{i}]"),
                "`star` must be the only select item",
            ));
        }
        Ok(SelectList::Items(self.aliased_list(value, path)?))
    }

    fn aliased_list(&self, value: &Value, path: &str) -> Result<Vec<AliasedExpr>, Diagnostic> {
        self.array(value, path)?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{path}[{i}]");
                let object = self.object(item, &path)?;
                self.only(object, &["expr", "alias"], &path)?;
                let expr =
                    self.expr(self.field(object, "expr", &path)?, &join(&path, "expr"), 0)?;
                let alias = match object.get("alias") {
                    None | Some(Value::Null) => None,
                    Some(alias) => Some((
                        self.string(alias, &join(&path, "alias"))?.to_string(),
                        self.whole(),
                    )),
                };
                Ok(AliasedExpr {
                    expr,
                    alias,
                    span: self.whole(),
                })
            })
            .collect()
    }

    fn unpivot(&self, value: &Value, path: &str) -> Result<Vec<UnpivotItem>, Diagnostic> {
        self.array(value, path)?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{path}[{i}]");
                let object = self.object(item, &path)?;
                self.only(object, &["expr", "alias"], &path)?;
                let expr =
                    self.expr(self.field(object, "expr", &path)?, &join(&path, "expr"), 0)?;
                let alias_path = join(&path, "alias");
                let names = match self.field(object, "alias", &path)? {
                    Value::String(name) => vec![name.clone()],
                    Value::Array(names) if names.len() == 2 => names
                        .iter()
                        .enumerate()
                        .map(|(j, n)| {
                            Ok(self.string(n, &format!("{alias_path}[{j}]"))?.to_string())
                        })
                        .collect::<Result<_, Diagnostic>>()?,
                    other => {
                        return Err(self.error(
                            &alias_path,
                            format!(
                                "expected a name or a `[key, value]` pair of names, got {}",
                                describe(other)
                            ),
                        ));
                    }
                };
                Ok(UnpivotItem {
                    expr,
                    names,
                    span: self.whole(),
                })
            })
            .collect()
    }

    fn sort(&self, value: &Value, path: &str) -> Result<Vec<SortItem>, Diagnostic> {
        self.array(value, path)?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{path}[{i}]");
                let object = self.object(item, &path)?;
                self.only(object, &["expr", "dir"], &path)?;
                let expr =
                    self.expr(self.field(object, "expr", &path)?, &join(&path, "expr"), 0)?;
                let descending = match object.get("dir") {
                    None | Some(Value::Null) => false,
                    Some(dir) => match self.string(dir, &join(&path, "dir"))? {
                        "asc" => false,
                        "desc" => true,
                        other => {
                            return Err(self.error(
                                &join(&path, "dir"),
                                format!("expected `asc` or `desc`, got `{other}`"),
                            ));
                        }
                    },
                };
                Ok(SortItem {
                    expr,
                    descending,
                    span: self.whole(),
                })
            })
            .collect()
    }

    fn sample(&self, value: &Value, path: &str) -> Result<Sample, Diagnostic> {
        let object = self.object(value, path)?;
        self.only(object, &["method", "seed"], path)?;
        let method_path = join(path, "method");
        let method = self.object(self.field(object, "method", path)?, &method_path)?;
        self.only(method, &["type", "value"], &method_path)?;
        let value_path = join(&method_path, "value");
        let amount = self.field(method, "value", &method_path)?;
        let method = match self.string(
            self.field(method, "type", &method_path)?,
            &join(&method_path, "type"),
        )? {
            "rate" => {
                let rate = amount
                    .as_f64()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| self.error(&value_path, "expected a rate between 0 and 1"))?;
                SampleMethod::Rate(rate)
            }
            "count" => {
                let count = self.integer(amount, &value_path)?;
                if count < 1 {
                    return Err(self.error(&value_path, "expected a count of at least 1"));
                }
                SampleMethod::Count(count)
            }
            other => {
                return Err(self.error(
                    &join(&method_path, "type"),
                    format!("expected `rate` or `count`, got `{other}`"),
                ));
            }
        };
        let seed = match object.get("seed") {
            None | Some(Value::Null) => None,
            Some(seed) => Some(self.integer(seed, &join(path, "seed"))?),
        };
        Ok(Sample { method, seed })
    }

    fn source(&self, value: &Value, path: &str) -> Result<Source, Diagnostic> {
        let object = self.object(value, path)?;
        let op = self.string(self.field(object, "op", path)?, &join(path, "op"))?;
        let mut source = Source {
            function: String::new(),
            args: Vec::new(),
            shape: Shape::Spans,
            span: self.whole(),
        };
        match op {
            "ident" => {
                self.only(object, &["op", "name"], path)?;
                source.function = self.function_name(object, path)?;
            }
            "function" => {
                self.only(object, &["op", "name", "args", "shape"], path)?;
                let name_path = join(path, "name");
                let name = self.object(self.field(object, "name", path)?, &name_path)?;
                source.function = self.function_name(name, &name_path)?;
                let args_path = join(path, "args");
                for (i, arg) in self
                    .array(self.field(object, "args", path)?, &args_path)?
                    .iter()
                    .enumerate()
                {
                    let arg_path = format!("{args_path}[{i}]");
                    let expr = self.expr(arg, &arg_path, 0)?;
                    match expr.kind {
                        ExprKind::Literal(Literal::String(s)) => source.args.push(s),
                        _ => {
                            return Err(
                                self.error(&arg_path, "source arguments must be string literals")
                            );
                        }
                    }
                }
                source.shape = match object.get("shape") {
                    None | Some(Value::Null) => Shape::Spans,
                    Some(shape) => match self.string(shape, &join(path, "shape"))? {
                        "spans" => Shape::Spans,
                        "traces" => Shape::Traces,
                        "summary" => Shape::Summary,
                        other => {
                            return Err(self.error(
                                &join(path, "shape"),
                                format!("expected `spans`, `traces` or `summary`, got `{other}`"),
                            ));
                        }
                    },
                };
            }
            other => {
                return Err(self.error(
                    &join(path, "op"),
                    format!("a source is an `ident` or a `function`, got `{other}`"),
                ));
            }
        }
        Ok(source)
    }

    /// The single-piece `name` of an `ident` object.
    fn function_name(&self, ident: &Map<String, Value>, path: &str) -> Result<String, Diagnostic> {
        let name_path = join(path, "name");
        match self.array(self.field(ident, "name", path)?, &name_path)? {
            [Value::String(name)] => Ok(name.clone()),
            _ => Err(self.error(
                &name_path,
                "expected a single name such as `[\"project_logs\"]`",
            )),
        }
    }

    fn literal(&self, value: &Value, path: &str) -> Result<Expr, Diagnostic> {
        let kind = match value {
            Value::Null => ExprKind::Literal(Literal::Null),
            Value::Bool(b) => ExprKind::Literal(Literal::Bool(*b)),
            Value::Number(n) => ExprKind::Literal(match n.as_i64() {
                Some(i) => Literal::Int(i),
                None if n.is_u64() => {
                    return Err(Diagnostic::new(
                        codes::NUMBER_RANGE,
                        format!("integer out of range at `{path}`"),
                        self.whole(),
                    )
                    .with_help("integers are 64-bit signed"));
                }
                None => Literal::Float(
                    n.as_f64()
                        .ok_or_else(|| self.error(path, "invalid number"))?,
                ),
            }),
            Value::String(s) => ExprKind::Literal(Literal::String(s.clone())),
            Value::Array(items) => ExprKind::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.literal(item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(_) => {
                return Err(Diagnostic::new(
                    codes::NOT_SUPPORTED,
                    format!("object literals are not supported (at `{path}`)"),
                    self.whole(),
                )
                .with_help("compare fields one by one: `metadata.a = 1 and metadata.b = 2`"));
            }
        };
        Ok(Expr {
            kind,
            span: self.whole(),
        })
    }

    fn node(&self, kind: ExprKind) -> Expr {
        Expr {
            kind,
            span: self.whole(),
        }
    }

    fn binary(&self, op: BinaryOp, left: Expr, right: Expr) -> Expr {
        self.node(ExprKind::Binary {
            op,
            left: Box::new(left),
            right: Box::new(right),
        })
    }

    /// Converts an expression object at `path`.
    fn expr(&self, value: &Value, path: &str, depth: usize) -> Result<Expr, Diagnostic> {
        if depth > MAX_DEPTH {
            return Err(self.too_deep(path));
        }
        let depth = depth + 1;
        let object = self.object(value, path)?;
        let sub = |key: &str| -> Result<Expr, Diagnostic> {
            self.expr(self.field(object, key, path)?, &join(path, key), depth)
        };
        let op = match object.get("op") {
            Some(Value::Null) | None if object.contains_key("btql") => "btql",
            Some(op) => self.string(op, &join(path, "op"))?,
            None => return Err(self.error(path, "missing field `op`")),
        };
        let only = |allowed: &[&str]| self.only(object, allowed, path);
        Ok(match op {
            "literal" => {
                only(&["op", "value"])?;
                match object.get("value") {
                    Some(value) => self.literal(value, &join(path, "value"))?,
                    None => return Err(self.error(path, "missing field `value`")),
                }
            }
            "interval" => {
                only(&["op", "value", "unit"])?;
                let value =
                    self.integer(self.field(object, "value", path)?, &join(path, "value"))?;
                let unit_path = join(path, "unit");
                let unit_text = self.string(self.field(object, "unit", path)?, &unit_path)?;
                let unit = IntervalUnit::parse(unit_text).ok_or_else(|| {
                    Diagnostic::new(
                        codes::BAD_UNIT,
                        format!("unknown interval unit `{unit_text}` at `{unit_path}`"),
                        self.whole(),
                    )
                    .with_help("use one of year, month, day, hour, minute, second, millisecond, microsecond")
                })?;
                self.node(ExprKind::Interval { value, unit })
            }
            "ident" => {
                only(&["op", "name"])?;
                let name_path = join(path, "name");
                let pieces = self.array(self.field(object, "name", path)?, &name_path)?;
                let Some((Value::String(first), rest)) = pieces.split_first() else {
                    return Err(self.error(
                        &name_path,
                        "expected a list of names starting with a string",
                    ));
                };
                // Each step nests one level deeper.
                if depth + rest.len() > MAX_DEPTH {
                    return Err(self.too_deep(&name_path));
                }
                let mut e = self.node(ExprKind::Ident(first.clone()));
                for (i, piece) in rest.iter().enumerate() {
                    let step = match piece {
                        Value::String(key) => PathStep::Key(key.clone()),
                        Value::Number(n) => PathStep::Index(n.as_i64().ok_or_else(|| {
                            self.error(
                                &format!("{name_path}[{}]", i + 1),
                                "expected an integer index",
                            )
                        })?),
                        other => {
                            return Err(self.error(
                                &format!("{name_path}[{}]", i + 1),
                                format!("expected a string or an integer, got {}", describe(other)),
                            ));
                        }
                    };
                    e = self.node(ExprKind::Access {
                        base: Box::new(e),
                        step,
                    });
                }
                e
            }
            "star" => {
                if object.get("replace").is_some_and(|r| !r.is_null()) {
                    return Err(Diagnostic::new(
                        codes::NOT_SUPPORTED,
                        format!("`star` with `replace` is not supported (at `{path}`)"),
                        self.whole(),
                    )
                    .with_help("select the fields by name"));
                }
                only(&["op", "replace"])?;
                self.node(ExprKind::Star)
            }
            "function" => {
                only(&["op", "name", "args"])?;
                let name_path = join(path, "name");
                let name_object = self.object(self.field(object, "name", path)?, &name_path)?;
                let name = self.function_name(name_object, &name_path)?;
                let args_path = join(path, "args");
                let args = match object.get("args") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(args) => self
                        .array(args, &args_path)?
                        .iter()
                        .enumerate()
                        .map(|(i, arg)| {
                            let arg_path = format!("{args_path}[{i}]");
                            if arg.get("op").is_none() && arg.get("expr").is_some() {
                                return Err(Diagnostic::new(
                                    codes::NOT_SUPPORTED,
                                    format!("aliased function arguments are not supported (at `{arg_path}`)"),
                                    self.whole(),
                                )
                                .with_help("pass the expression without an alias"));
                            }
                            self.expr(arg, &arg_path, depth)
                        })
                        .collect::<Result<_, _>>()?,
                };
                self.node(ExprKind::Function { name, args })
            }
            "eq" | "is" | "ne" | "lt" | "le" | "gt" | "ge" | "like" | "ilike" | "match" => {
                only(&["op", "left", "right"])?;
                let op = match op {
                    "eq" => BinaryOp::Eq,
                    "is" => BinaryOp::IsNotDistinctFrom,
                    "ne" => BinaryOp::NotEq,
                    "lt" => BinaryOp::Lt,
                    "le" => BinaryOp::LtEq,
                    "gt" => BinaryOp::Gt,
                    "ge" => BinaryOp::GtEq,
                    "like" => BinaryOp::Like,
                    "ilike" => BinaryOp::ILike,
                    _ => BinaryOp::Match,
                };
                self.binary(op, sub("left")?, sub("right")?)
            }
            "in" => {
                only(&["op", "left", "right"])?;
                let left = sub("left")?;
                let right = sub("right")?;
                let ExprKind::Array(list) = right.kind else {
                    return Err(self.error(
                        &join(path, "right"),
                        "the right side of `in` must be a literal array",
                    ));
                };
                self.node(ExprKind::InList {
                    expr: Box::new(left),
                    list,
                })
            }
            "includes" => {
                only(&["op", "haystack", "needle"])?;
                self.binary(BinaryOp::Includes, sub("haystack")?, sub("needle")?)
            }
            "and" | "or" => {
                only(&["op", "left", "right", "children"])?;
                let op = if op == "and" {
                    BinaryOp::And
                } else {
                    BinaryOp::Or
                };
                let mut operands = Vec::new();
                if object.get("left").is_some_and(|v| !v.is_null()) {
                    operands.push(sub("left")?);
                }
                if object.get("right").is_some_and(|v| !v.is_null()) {
                    operands.push(sub("right")?);
                }
                if let Some(children) = object.get("children").filter(|v| !v.is_null()) {
                    let children_path = join(path, "children");
                    for (i, child) in self.array(children, &children_path)?.iter().enumerate() {
                        operands.push(self.expr(child, &format!("{children_path}[{i}]"), depth)?);
                    }
                }
                // Folded left: each operand nests one level deeper.
                if depth + operands.len() > MAX_DEPTH {
                    return Err(self.too_deep(path));
                }
                let mut operands = operands.into_iter();
                // An empty conjunction is true, an empty disjunction false.
                let first = operands.next().unwrap_or_else(|| {
                    self.node(ExprKind::Literal(Literal::Bool(op == BinaryOp::And)))
                });
                operands.fold(first, |acc, next| self.binary(op, acc, next))
            }
            "if" => {
                only(&["op", "conds", "else"])?;
                let conds_path = join(path, "conds");
                let conds = self.array(self.field(object, "conds", path)?, &conds_path)?;
                if depth + conds.len() > MAX_DEPTH {
                    return Err(self.too_deep(path));
                }
                let mut acc = match object.get("else") {
                    None | Some(Value::Null) => self.node(ExprKind::Literal(Literal::Null)),
                    Some(e) => self.expr(e, &join(path, "else"), depth)?,
                };
                for (i, cond) in conds.iter().enumerate().rev() {
                    let cond_path = format!("{conds_path}[{i}]");
                    let cond_object = self.object(cond, &cond_path)?;
                    self.only(cond_object, &["cond", "then"], &cond_path)?;
                    let c = self.expr(
                        self.field(cond_object, "cond", &cond_path)?,
                        &join(&cond_path, "cond"),
                        depth,
                    )?;
                    let t = self.expr(
                        self.field(cond_object, "then", &cond_path)?,
                        &join(&cond_path, "then"),
                        depth,
                    )?;
                    acc = self.node(ExprKind::Ternary {
                        cond: Box::new(c),
                        then: Box::new(t),
                        otherwise: Box::new(acc),
                    });
                }
                acc
            }
            "add" | "sub" | "mul" | "div" | "mod" => {
                only(&["op", "left", "right"])?;
                let op = match op {
                    "add" => BinaryOp::Add,
                    "sub" => BinaryOp::Sub,
                    "mul" => BinaryOp::Mul,
                    "div" => BinaryOp::Div,
                    _ => BinaryOp::Mod,
                };
                self.binary(op, sub("left")?, sub("right")?)
            }
            "neg" | "not" => {
                only(&["op", "expr"])?;
                let op = if op == "neg" {
                    UnaryOp::Neg
                } else {
                    UnaryOp::Not
                };
                self.node(ExprKind::Unary {
                    op,
                    expr: Box::new(sub("expr")?),
                })
            }
            "isnull" | "isnotnull" => {
                only(&["op", "expr"])?;
                self.node(ExprKind::IsNull {
                    expr: Box::new(sub("expr")?),
                    negated: op == "isnotnull",
                })
            }
            "singlespanfilter" => {
                only(&["op", "expr"])?;
                self.node(ExprKind::Function {
                    name: "any_span".to_string(),
                    args: vec![sub("expr")?],
                })
            }
            "btql" => {
                only(&["op", "btql"])?;
                let snippet_path = join(path, "btql");
                let snippet = self.string(self.field(object, "btql", path)?, &snippet_path)?;
                self.snippet(snippet, &snippet_path)?
            }
            other => {
                return Err(self.error(&join(path, "op"), format!("unknown op `{other}`")));
            }
        })
    }

    /// A `btql` snippet: parsed as a clause-syntax expression; spans point
    /// into the JSON text when the snippet appears there verbatim.
    fn snippet(&self, snippet: &str, path: &str) -> Result<Expr, Diagnostic> {
        let encoded = serde_json::to_string(snippet).unwrap_or_default();
        let offset = (encoded.len() == snippet.len() + 2)
            .then(|| self.text.find(&encoded))
            .flatten()
            .map(|at| at + 1);
        let whole = self.whole();
        let place = |span: Span| match offset {
            Some(at) => Span::new(span.start + at, span.end + at),
            None => whole,
        };
        match parse_expr_here(snippet) {
            Ok(mut e) => {
                map_expr_spans(&mut e, &place);
                Ok(e)
            }
            Err(Diagnostics(mut ds)) => {
                let mut d = ds.remove(0);
                d.span = place(d.span);
                d.labels = d.labels.into_iter().map(|(s, l)| (place(s), l)).collect();
                let note = format!("in the `btql` snippet at `{path}`");
                d.help = Some(match d.help {
                    Some(help) => format!("{note}; {help}"),
                    None => note,
                });
                Err(d)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::tests::without_spans;
    use crate::{QueryForm, detect_form, parse_any};

    #[track_caller]
    fn assert_same(json: &str, btql: &str) {
        assert_eq!(detect_form(json), QueryForm::JsonAst);
        let from_json = parse_any(json).unwrap_or_else(|e| panic!("{json}\n{e}"));
        let from_btql = parse_any(btql).unwrap_or_else(|e| panic!("{btql}\n{e}"));
        assert_eq!(
            without_spans(from_json),
            without_spans(from_btql),
            "\nJSON: {json}\nBTQL: {btql}"
        );
    }

    fn error(json: &str) -> Diagnostic {
        match parse_json_ast(json) {
            Ok(q) => panic!("{json}: expected an error, got {q:?}"),
            Err(Diagnostics(mut ds)) => ds.remove(0),
        }
    }

    const FROM: &str = r#""from":{"op":"function","name":{"op":"ident","name":["project_logs"]},"args":[{"op":"literal","value":"P"}]"#;

    #[test]
    fn queries_match_the_clause_syntax() {
        assert_same(
            &format!(
                r#"{{"select":[{{"op":"star"}}],{FROM},"shape":"traces"}},
                "filter":{{"op":"and","left":{{"op":"gt","left":{{"op":"ident","name":["scores","Factuality"]}},"right":{{"op":"literal","value":0.8}}}},
                           "right":{{"op":"eq","left":{{"op":"ident","name":["metadata","model"]}},"right":{{"op":"literal","value":"gpt-4"}}}}}},
                "sort":[{{"expr":{{"op":"ident","name":["created"]}},"dir":"desc"}}],"limit":100,"cursor":"abc","preview_length":-1,
                "sample":{{"method":{{"type":"rate","value":0.25}},"seed":1}},"inference_budget":0,"span_filter":null}}"#
            ),
            "select: * | from: project_logs('P') traces | filter: scores.Factuality > 0.8 and metadata.model = 'gpt-4' \
             | sort: created desc | limit: 100 | cursor: 'abc' | preview_length: -1 | sample: 25% seed 1",
        );
        assert_same(
            &format!(
                r#"{{{FROM}}},
                "dimensions":[{{"expr":{{"op":"ident","name":["metadata","model"]}},"alias":"model"}}],
                "measures":[{{"expr":{{"op":"function","name":{{"op":"ident","name":["count"]}},"args":[{{"op":"literal","value":1}}]}},"alias":"n"}},
                            {{"expr":{{"op":"function","name":{{"op":"ident","name":["count"]}},"args":[{{"op":"star"}}]}},"alias":"m"}}],
                "final_filter":{{"op":"gt","left":{{"op":"ident","name":["n"]}},"right":{{"op":"literal","value":1}}}},
                "unpivot":[{{"expr":{{"op":"ident","name":["scores"]}},"alias":["score","value"]}},{{"expr":{{"op":"ident","name":["tags"]}},"alias":"tag"}}],
                "pivot":[{{"expr":{{"op":"ident","name":["score"]}},"alias":"s"}}]}}"#
            ),
            "from: project_logs('P') | dimensions: metadata.model as model | measures: count(1) as n, count(*) as m \
             | final_filter: n > 1 | unpivot: scores as (score, value), tags as (tag) | pivot: score as s",
        );
    }

    #[test]
    fn expression_ops() {
        let cases = [
            (
                r#"{"op":"or","children":[{"op":"ident","name":["a"]},{"op":"ident","name":["b"]},{"op":"ident","name":["c"]}]}"#,
                "a or b or c",
            ),
            (r#"{"op":"and","children":[]}"#, "true"),
            (
                r#"{"op":"is","left":{"op":"ident","name":["a"]},"right":{"op":"literal","value":null}}"#,
                "a <=> null",
            ),
            (
                r#"{"op":"in","left":{"op":"ident","name":["a"]},"right":{"op":"literal","value":[1,"x"]}}"#,
                "a in [1, 'x']",
            ),
            (
                r#"{"op":"includes","haystack":{"op":"ident","name":["tags"]},"needle":{"op":"literal","value":"x"}}"#,
                "tags includes 'x'",
            ),
            (
                r#"{"op":"not","expr":{"op":"like","left":{"op":"ident","name":["input"]},"right":{"op":"literal","value":"%a%"}}}"#,
                "not (input like '%a%')",
            ),
            (
                r#"{"op":"match","left":{"op":"ident","name":["input"]},"right":{"op":"literal","value":"a"}}"#,
                "input match 'a'",
            ),
            (
                r#"{"op":"ge","left":{"op":"ident","name":["created"]},"right":{"op":"sub","left":{"op":"function","name":{"op":"ident","name":["now"]},"args":[]},"right":{"op":"interval","value":7,"unit":"day"}}}"#,
                "created >= now() - interval 7 day",
            ),
            (
                r#"{"op":"eq","left":{"op":"if","conds":[{"cond":{"op":"ident","name":["a"]},"then":{"op":"literal","value":1}},{"cond":{"op":"ident","name":["b"]},"then":{"op":"literal","value":2}}],"else":{"op":"literal","value":3}},"right":{"op":"neg","expr":{"op":"literal","value":1}}}"#,
                "(a ? 1 : (b ? 2 : 3)) = -1",
            ),
            (
                r#"{"op":"isnotnull","expr":{"op":"ident","name":["tags",0]}}"#,
                "tags[0] is not null",
            ),
            (
                r#"{"op":"isnull","expr":{"op":"ident","name":["metadata","a b",-1]}}"#,
                "metadata.\"a b\"[-1] is null",
            ),
            (
                r#"{"op":"singlespanfilter","expr":{"op":"ident","name":["is_root"]}}"#,
                "any_span(is_root)",
            ),
            (
                r#"{"op":"and","left":{"btql":"metrics.tokens * 2 > 10"},"right":{"op":"btql","btql":"error is null"}}"#,
                "metrics.tokens * 2 > 10 and error is null",
            ),
            (
                r#"{"op":"eq","left":{"op":"mod","left":{"op":"ident","name":["a"]},"right":{"op":"literal","value":2}},"right":{"op":"div","left":{"op":"literal","value":1.5},"right":{"op":"mul","left":{"op":"literal","value":true},"right":{"op":"add","left":{"op":"literal","value":1},"right":{"op":"literal","value":2}}}}}"#,
                "a % 2 = 1.5 / (true * (1 + 2))",
            ),
        ];
        for (json, btql) in cases {
            assert_same(
                &format!(r#"{{"select":[{{"op":"star"}}],{FROM}}},"filter":{json}}}"#),
                &format!("select: * | from: project_logs('P') | filter: {btql}"),
            );
        }
    }

    #[test]
    fn errors_name_the_json_path() {
        let d = error(
            r#"{"filter":{"op":"eq","left":{"op":"frob"},"right":{"op":"literal","value":1}}}"#,
        );
        assert_eq!(
            d.message,
            "invalid JSON query at `filter.left.op`: unknown op `frob`"
        );
        assert_eq!(d.code, codes::SYNTAX);
        let d = error(r#"{"filter":{"op":"eq","left":{"op":"ident","name":["a"]}}}"#);
        assert_eq!(
            d.message,
            "invalid JSON query at `filter`: missing field `right`"
        );
        let d = error(r#"{"sort":[{"expr":{"op":"ident","name":["a"]},"dir":"up"}]}"#);
        assert_eq!(
            d.message,
            "invalid JSON query at `sort[0].dir`: expected `asc` or `desc`, got `up`"
        );
        let d = error(r#"{"selcet":[]}"#);
        assert_eq!(d.message, "invalid JSON query at `selcet`: unknown field");
        let d = error(r#"{"filter":{"op":"ident","name":["a"],"extra":1}}"#);
        assert_eq!(
            d.message,
            "invalid JSON query at `filter.extra`: unknown field"
        );
        let d = error(r#"{"comparison_key":{"op":"ident","name":["a"]}}"#);
        assert_eq!(d.code, codes::NOT_SUPPORTED);
        let text = "{\n  \"filter\": ,\n}";
        let d = error(text);
        assert!(d.message.starts_with("invalid JSON: "), "{}", d.message);
        assert_eq!(d.span.start, text.find(',').unwrap());
        let text = r#"{"filter":{"op":"btql","btql":"a = = 1"}}"#;
        let d = error(text);
        assert_eq!(d.span.start, text.find("= 1").unwrap());
        assert!(d.help.as_deref().unwrap().contains("`filter.btql`"));
        // A snippet's spans point into the JSON text.
        let text = r#"{"filter":{"btql":"metrics.tokens > 1"}}"#;
        let filter = parse_json_ast(text).unwrap().filter.unwrap().value;
        assert_eq!(
            &text[filter.span.start..filter.span.end],
            "metrics.tokens > 1"
        );
    }
    /// The queries of `tests/btql/json_ast.test` give the AST of the BTQL
    /// query whose output the golden file expects, in file order.
    #[test]
    fn golden_queries_match_their_btql() {
        let golden = include_str!("../../tests/btql/json_ast.test");
        let queries: Vec<&str> = golden
            .split("\nquery: ")
            .skip(1)
            .map(|case| {
                let body = case.split_once('\n').map_or("", |(_, b)| b);
                body.split_once("\n----\n").map_or("", |(q, _)| q)
            })
            .collect();
        let from = "from: project_logs('fixture')";
        let btql = [
            format!(
                "select: id as id, tags[0] as first | {from} | filter: tags includes 'prod' | sort: id desc"
            ),
            format!(
                "select: id as id | {from} | filter: metrics.tokens * 1 >= 300 | sort: metrics.tokens desc, id asc | limit: 2"
            ),
            format!(
                "select: id as id | {from} | filter: is_root and scores.Factuality is not null and (scores.Factuality > 0.5 ? true : false) | sort: id asc"
            ),
        ];
        assert_eq!(queries.len(), btql.len());
        for (json, btql) in queries.iter().zip(&btql) {
            assert_same(json, btql);
        }
    }
}
