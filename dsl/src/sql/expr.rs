//! sqlparser `Expr` → [`ast::Expr`](crate::ast::Expr).
//!
//! | SQL | AST |
//! |---|---|
//! | `a.b."c d"`, `a[0]`, `a[-1]`, `a['k']` | `Ident` + `Access` steps |
//! | lone `"x"` | `Ident` if it names a top-level field, select alias or unpivot column, else a string literal (spec §1.4) |
//! | `INTERVAL 7 DAY`, `INTERVAL '7 days'` | `Interval` |
//! | `a IS [NOT] DISTINCT FROM b`, `a <=> b` | `<!=>` / `<=>` |
//! | `x IS [NOT] TRUE/FALSE` | `x <=> true` / `x <!=> true` … |
//! | `a [NOT] LIKE/ILIKE p [ESCAPE c]` | `like`/`ilike` (pattern rewritten to `\` escapes), `not` around |
//! | `a [NOT] MATCH 'x'`, `MATCH (a, b) AGAINST ('x')` | `match` (one per column, or-ed) |
//! | `a [NOT] IN (…)` | `InList`, `not` around |
//! | `a [NOT] BETWEEN l AND h` | `(a >= l) and (a <= h)`, `not` around |
//! | `CASE [x] WHEN c THEN v … [ELSE e] END` | nested ternaries (`x = c` with an operand; else `null`) |
//! | `CAST(x AS t)`, `x::t` | `to_string` / `to_integer` / `to_number` / `to_boolean` / `to_datetime` / `to_date` / `to_interval` |
//! | `DATE '…'`, `TIMESTAMP '…'` | `to_date('…')`, `to_datetime('…')` |
//! | `count(DISTINCT x)` | `count_distinct(x)` |
//! | `a \|\| b` | `concat(a, b)` |

use std::sync::LazyLock;

use sqlparser::ast as sql;

use super::dialect::{CONTAINS, INCLUDES, MATCH};
use super::{SqlConverter, unsupported};
use crate::ast::{BinaryOp, Expr, ExprKind, IntervalUnit, Literal, PathStep, UnaryOp};
use crate::error::{Diagnostic, Span, codes};
use crate::schema;

/// Deepest expression the converter builds: the planner and `Drop` recurse
/// over the tree, so depth is bounded here rather than by the stack.
pub(super) const MAX_EXPR_DEPTH: usize = crate::limits::MAX_EXPRESSION_DEPTH;

/// Aggregate function names (spec §1.6.6), as the planner knows them.
const AGGREGATES: &[&str] = &[
    "count",
    "count_distinct",
    "sum",
    "avg",
    "min",
    "max",
    "any_value",
    "percentile",
];

/// Top-level field names of the spans view.
static TOP_LEVEL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    schema::SCALAR_COLUMNS
        .iter()
        .chain(schema::JSON_COLUMNS)
        .copied()
        .collect()
});

/// Whether the expression calls an aggregate.
pub(super) fn has_aggregate(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Function { name, args } => {
            AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(name))
                || args.iter().any(has_aggregate)
        }
        ExprKind::Literal(_) | ExprKind::Interval { .. } | ExprKind::Ident(_) | ExprKind::Star => {
            false
        }
        ExprKind::Array(items) => items.iter().any(has_aggregate),
        ExprKind::Access { base, .. } => has_aggregate(base),
        ExprKind::Unary { expr, .. } | ExprKind::IsNull { expr, .. } => has_aggregate(expr),
        ExprKind::Binary { left, right, .. } => has_aggregate(left) || has_aggregate(right),
        ExprKind::InList { expr, list } => has_aggregate(expr) || list.iter().any(has_aggregate),
        ExprKind::Ternary {
            cond,
            then,
            otherwise,
        } => has_aggregate(cond) || has_aggregate(then) || has_aggregate(otherwise),
    }
}

/// Structural equality ignoring spans (function names case-insensitively).
pub(super) fn same(a: &Expr, b: &Expr) -> bool {
    let all =
        |x: &[Expr], y: &[Expr]| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q));
    match (&a.kind, &b.kind) {
        (ExprKind::Literal(x), ExprKind::Literal(y)) => x == y,
        (
            ExprKind::Interval { value, unit },
            ExprKind::Interval {
                value: value2,
                unit: unit2,
            },
        ) => value == value2 && unit == unit2,
        (ExprKind::Array(x), ExprKind::Array(y)) => all(x, y),
        (ExprKind::Ident(x), ExprKind::Ident(y)) => x == y,
        (
            ExprKind::Access { base, step },
            ExprKind::Access {
                base: base2,
                step: step2,
            },
        ) => step == step2 && same(base, base2),
        (ExprKind::Star, ExprKind::Star) => true,
        (
            ExprKind::Function { name, args },
            ExprKind::Function {
                name: name2,
                args: args2,
            },
        ) => name.eq_ignore_ascii_case(name2) && all(args, args2),
        (
            ExprKind::Unary { op, expr },
            ExprKind::Unary {
                op: op2,
                expr: expr2,
            },
        ) => op == op2 && same(expr, expr2),
        (
            ExprKind::Binary { op, left, right },
            ExprKind::Binary {
                op: op2,
                left: left2,
                right: right2,
            },
        ) => op == op2 && same(left, left2) && same(right, right2),
        (
            ExprKind::InList { expr, list },
            ExprKind::InList {
                expr: expr2,
                list: list2,
            },
        ) => same(expr, expr2) && all(list, list2),
        (
            ExprKind::IsNull { expr, negated },
            ExprKind::IsNull {
                expr: expr2,
                negated: negated2,
            },
        ) => negated == negated2 && same(expr, expr2),
        (
            ExprKind::Ternary {
                cond,
                then,
                otherwise,
            },
            ExprKind::Ternary {
                cond: cond2,
                then: then2,
                otherwise: otherwise2,
            },
        ) => same(cond, cond2) && same(then, then2) && same(otherwise, otherwise2),
        _ => false,
    }
}

fn boxed(e: Expr) -> Box<Expr> {
    Box::new(e)
}

fn binary(op: BinaryOp, left: Expr, right: Expr, span: Span) -> Expr {
    Expr {
        kind: ExprKind::Binary {
            op,
            left: boxed(left),
            right: boxed(right),
        },
        span,
    }
}

fn not(e: Expr) -> Expr {
    let span = e.span;
    Expr {
        kind: ExprKind::Unary {
            op: UnaryOp::Not,
            expr: boxed(e),
        },
        span,
    }
}

fn not_if(negated: bool, e: Expr) -> Expr {
    if negated { not(e) } else { e }
}

fn literal(l: Literal, span: Span) -> Expr {
    Expr {
        kind: ExprKind::Literal(l),
        span,
    }
}

fn function(name: &str, args: Vec<Expr>, span: Span) -> Expr {
    Expr {
        kind: ExprKind::Function {
            name: name.to_string(),
            args,
        },
        span,
    }
}

fn interval_unit(field: &sql::DateTimeField) -> Option<IntervalUnit> {
    use sql::DateTimeField as F;
    Some(match field {
        F::Year | F::Years => IntervalUnit::Year,
        F::Month | F::Months => IntervalUnit::Month,
        F::Week(_) | F::Weeks => IntervalUnit::Week,
        F::Day | F::Days => IntervalUnit::Day,
        F::Hour | F::Hours => IntervalUnit::Hour,
        F::Minute | F::Minutes => IntervalUnit::Minute,
        F::Second | F::Seconds => IntervalUnit::Second,
        F::Millisecond | F::Milliseconds => IntervalUnit::Millisecond,
        F::Microsecond | F::Microseconds => IntervalUnit::Microsecond,
        _ => return None,
    })
}

/// BTQL cast function for a SQL type.
fn cast_function(data_type: &sql::DataType) -> Option<&'static str> {
    use sql::DataType as T;
    Some(match data_type {
        T::Character(_)
        | T::Char(_)
        | T::CharacterVarying(_)
        | T::CharVarying(_)
        | T::Varchar(_)
        | T::Nvarchar(_)
        | T::Text
        | T::String(_)
        | T::JSON => "to_string",
        T::TinyInt(_)
        | T::SmallInt(_)
        | T::MediumInt(_)
        | T::Int(_)
        | T::Integer(_)
        | T::BigInt(_)
        | T::Int8(_)
        | T::Int16
        | T::Int32
        | T::Int64
        | T::Signed
        | T::SignedInteger => "to_integer",
        T::Float(_)
        | T::Float4
        | T::Float8
        | T::Float32
        | T::Float64
        | T::Real
        | T::Double(_)
        | T::DoublePrecision
        | T::Decimal(_)
        | T::Numeric(_)
        | T::Dec(_) => "to_number",
        T::Bool | T::Boolean => "to_boolean",
        T::Timestamp(..) | T::Datetime(_) | T::TimestampNtz(_) => "to_datetime",
        T::Date => "to_date",
        T::Interval { .. } => "to_interval",
        _ => return None,
    })
}

/// `pattern` with escape character `escape` rewritten to BTQL's backslash
/// escapes (`c%` → `\%`, a literal `\` → `\\`).
fn rewrite_escape(pattern: &str, escape: char) -> String {
    if escape == '\\' {
        return pattern.to_string();
    }
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            match chars.next() {
                Some('\\') => out.push_str("\\\\"),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push(c),
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

impl SqlConverter<'_> {
    /// A short quote of the source at `span`, for messages.
    fn quote(&self, span: Span) -> String {
        let text = self.text.get(span.start..span.end).unwrap_or("").trim();
        let mut quoted: String = text.chars().take(40).collect();
        if quoted.len() < text.len() {
            quoted.push('…');
        }
        quoted
    }

    fn number(&self, text: &str, span: Span) -> Result<Literal, Diagnostic> {
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse::<i64>().map(Literal::Int).map_err(|_| {
                Diagnostic::new(codes::NUMBER_RANGE, "integer out of range", span)
                    .with_help("integers are 64-bit signed")
            });
        }
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Literal::Float)
            .ok_or_else(|| Diagnostic::new(codes::NUMBER_RANGE, "invalid number", span))
    }

    fn value(&self, value: &sql::ValueWithSpan, span: Span) -> Result<Expr, Diagnostic> {
        let l = match &value.value {
            sql::Value::Number(text, _) => self.number(text, span)?,
            sql::Value::SingleQuotedString(s)
            | sql::Value::DoubleQuotedString(s)
            | sql::Value::EscapedStringLiteral(s)
            | sql::Value::UnicodeStringLiteral(s)
            | sql::Value::NationalStringLiteral(s)
            | sql::Value::TripleSingleQuotedString(s)
            | sql::Value::TripleDoubleQuotedString(s) => Literal::String(s.clone()),
            sql::Value::Boolean(b) => Literal::Bool(*b),
            sql::Value::Null => Literal::Null,
            sql::Value::Placeholder(p) => {
                return Err(unsupported(
                    &format!("the parameter `{p}`"),
                    span,
                    "write the value into the query",
                ));
            }
            _ => {
                return Err(unsupported(
                    &format!("the literal `{}`", self.quote(span)),
                    span,
                    "write a number, a 'string', true, false or null",
                ));
            }
        };
        Ok(literal(l, span))
    }

    /// An identifier in expression position.
    fn ident(&self, ident: &sql::Ident) -> Expr {
        let span = self.raw(ident.span).unwrap_or_else(|| self.whole());
        let kind = if ident.quote_style == Some('"')
            && !TOP_LEVEL.contains(&ident.value.as_str())
            && !self.names.contains(&ident.value)
        {
            ExprKind::Literal(Literal::String(ident.value.clone()))
        } else {
            ExprKind::Ident(ident.value.clone())
        };
        Expr { kind, span }
    }

    fn access(base: Expr, step: PathStep, end: Span) -> Expr {
        let span = base.span.to(end);
        Expr {
            kind: ExprKind::Access {
                base: boxed(base),
                step,
            },
            span,
        }
    }

    fn path(&self, idents: &[sql::Ident]) -> Result<Expr, Diagnostic> {
        let (first, rest) = idents
            .split_first()
            .ok_or_else(|| Diagnostic::internal("empty compound identifier", self.whole()))?;
        let first_span = self.raw(first.span).unwrap_or_else(|| self.whole());
        self.check_steps(rest.len(), || first_span)?;
        let mut e = Expr {
            kind: ExprKind::Ident(first.value.clone()),
            span: first_span,
        };
        for ident in rest {
            let span = self.raw(ident.span).unwrap_or(e.span);
            e = Self::access(e, PathStep::Key(ident.value.clone()), span);
        }
        Ok(e)
    }

    /// Refuses a path of `steps` steps that would nest the expression
    /// deeper than [`MAX_EXPR_DEPTH`] (each step is one level).
    fn check_steps(&self, steps: usize, span: impl Fn() -> Span) -> Result<(), Diagnostic> {
        if self.depth.get() + steps > MAX_EXPR_DEPTH {
            return Err(crate::limits::too_deep(span()));
        }
        Ok(())
    }

    fn subscript(&self, base: Expr, subscript: &sql::Subscript) -> Result<Expr, Diagnostic> {
        let sql::Subscript::Index { index } = subscript else {
            return Err(unsupported(
                "array slices",
                base.span,
                "index one element: `tags[0]`, `tags[-1]`",
            ));
        };
        let index = self.expr(index)?;
        let end = self.through_bracket(index.span);
        let step = match &index.kind {
            ExprKind::Literal(Literal::Int(n)) => PathStep::Index(*n),
            ExprKind::Literal(Literal::String(key)) => PathStep::Key(key.clone()),
            _ => match super::int_value(&index) {
                Some(n) => PathStep::Index(n),
                None => {
                    return Err(unsupported(
                        "a computed subscript",
                        index.span,
                        "index with an integer or a 'key' literal: `tags[0]`, `metadata['k']`",
                    ));
                }
            },
        };
        Ok(Self::access(base, step, end))
    }

    /// `span` widened to a `]` that follows it.
    fn through_bracket(&self, span: Span) -> Span {
        let rest = self.text.get(span.end..).unwrap_or("");
        let trimmed = rest.trim_start();
        if trimmed.starts_with(']') {
            Span::new(span.start, span.end + (rest.len() - trimmed.len()) + 1)
        } else {
            span
        }
    }

    /// Converts an expression, at most [`MAX_EXPR_DEPTH`] levels deep.
    pub(super) fn expr(&self, e: &sql::Expr) -> Result<Expr, Diagnostic> {
        let depth = self.depth.get();
        if depth >= MAX_EXPR_DEPTH {
            return Err(crate::limits::too_deep(
                self.span_of(e).unwrap_or_else(|| self.whole()),
            )
            .with_help(format!(
                "expressions may nest at most {MAX_EXPR_DEPTH} levels of brackets and operators; split long `AND`/`OR` chains with `IN (...)` lists"
            )));
        }
        self.depth.set(depth + 1);
        let result = self.expr_at_depth(e);
        self.depth.set(depth);
        result
    }

    fn expr_at_depth(&self, e: &sql::Expr) -> Result<Expr, Diagnostic> {
        let own = self.span_of(e);
        let span = own.unwrap_or_else(|| self.whole());
        Ok(match e {
            sql::Expr::Identifier(ident) => self.ident(ident),
            sql::Expr::CompoundIdentifier(idents) => self.path(idents)?,
            sql::Expr::CompoundFieldAccess { root, access_chain } => {
                let steps = access_chain
                    .iter()
                    .map(|access| match access {
                        sql::AccessExpr::Dot(sql::Expr::CompoundIdentifier(idents)) => idents.len(),
                        _ => 1,
                    })
                    .sum();
                self.check_steps(steps, || span)?;
                let mut base = match root.as_ref() {
                    // `"my field".x`: a quoted identifier, never a string.
                    sql::Expr::Identifier(ident) => self.path(std::slice::from_ref(ident))?,
                    other => self.expr(other)?,
                };
                for access in access_chain {
                    base = match access {
                        sql::AccessExpr::Dot(sql::Expr::Identifier(ident)) => {
                            let end = self.raw(ident.span).unwrap_or(base.span);
                            Self::access(base, PathStep::Key(ident.value.clone()), end)
                        }
                        sql::AccessExpr::Dot(sql::Expr::CompoundIdentifier(idents)) => {
                            let mut acc = base;
                            for ident in idents {
                                let end = self.raw(ident.span).unwrap_or(acc.span);
                                acc = Self::access(acc, PathStep::Key(ident.value.clone()), end);
                            }
                            acc
                        }
                        sql::AccessExpr::Dot(other) => {
                            return Err(unsupported(
                                "this field access",
                                self.span_of(other).unwrap_or(span),
                                "access fields by name: `metadata.model`, `metadata.\"a b\"`",
                            ));
                        }
                        sql::AccessExpr::Subscript(subscript) => self.subscript(base, subscript)?,
                    };
                }
                base
            }
            sql::Expr::Value(value) => self.value(value, span)?,
            sql::Expr::Nested(inner) => {
                // Include the parentheses, which sqlparser leaves out.
                let mut e = self.expr(inner)?;
                let before = self.text.get(..e.span.start).unwrap_or("").trim_end();
                let start = before.strip_suffix('(').map_or(e.span.start, str::len);
                e.span = Span::new(start, self.through_paren(e.span).end);
                e
            }
            sql::Expr::UnaryOp { op, expr } => {
                let operand = self.expr(expr)?;
                // sqlparser's span of a unary op is its operand's: start
                // at the operator when the text has it just before.
                let op_span = |word: &str| {
                    Span::new(self.back_over(operand.span.start, word), operand.span.end)
                };
                match op {
                    sql::UnaryOperator::Not => Expr {
                        span: op_span("NOT"),
                        kind: ExprKind::Unary {
                            op: UnaryOp::Not,
                            expr: boxed(operand),
                        },
                    },
                    sql::UnaryOperator::Minus => Expr {
                        span: op_span("-"),
                        kind: ExprKind::Unary {
                            op: UnaryOp::Neg,
                            expr: boxed(operand),
                        },
                    },
                    sql::UnaryOperator::Plus => operand,
                    other => {
                        return Err(unsupported(
                            &format!("the operator `{other}`"),
                            operand.span,
                            "use `NOT` or `-`",
                        ));
                    }
                }
            }
            sql::Expr::BinaryOp { left, op, right } => {
                let l = self.expr(left)?;
                let r = self.expr(right)?;
                let span = l.span.to(r.span);
                let op = match op {
                    sql::BinaryOperator::Plus => BinaryOp::Add,
                    sql::BinaryOperator::Minus => BinaryOp::Sub,
                    sql::BinaryOperator::Multiply => BinaryOp::Mul,
                    sql::BinaryOperator::Divide => BinaryOp::Div,
                    sql::BinaryOperator::Modulo => BinaryOp::Mod,
                    sql::BinaryOperator::Gt => BinaryOp::Gt,
                    sql::BinaryOperator::Lt => BinaryOp::Lt,
                    sql::BinaryOperator::GtEq => BinaryOp::GtEq,
                    sql::BinaryOperator::LtEq => BinaryOp::LtEq,
                    sql::BinaryOperator::Eq => BinaryOp::Eq,
                    sql::BinaryOperator::NotEq => BinaryOp::NotEq,
                    sql::BinaryOperator::And => BinaryOp::And,
                    sql::BinaryOperator::Or => BinaryOp::Or,
                    sql::BinaryOperator::Spaceship => BinaryOp::IsNotDistinctFrom,
                    sql::BinaryOperator::StringConcat => {
                        return Ok(function("concat", vec![l, r], span));
                    }
                    sql::BinaryOperator::Custom(word) if word == MATCH => BinaryOp::Match,
                    sql::BinaryOperator::Custom(word) if word == INCLUDES || word == CONTAINS => {
                        return Err(Diagnostic::new(
                            codes::NOT_SUPPORTED,
                            format!("`{word}` is not supported in SQL queries"),
                            span,
                        )
                        .with_help(format!(
                            "test array membership with `IN`: `{l} IN ({r})`; `{}` works in the BTQL clause syntax",
                            word.to_ascii_lowercase()
                        )));
                    }
                    other => {
                        return Err(unsupported(
                            &format!("the operator `{other}`"),
                            span,
                            "use comparisons, `AND`/`OR`/`NOT`, `+ - * / %`, `LIKE`, `MATCH`, `IN`",
                        ));
                    }
                };
                binary(op, l, r, span)
            }
            sql::Expr::IsNull(inner) | sql::Expr::IsNotNull(inner) => {
                let operand = self.expr(inner)?;
                Expr {
                    span: self.through_keyword(operand.span, "NULL"),
                    kind: ExprKind::IsNull {
                        expr: boxed(operand),
                        negated: matches!(e, sql::Expr::IsNotNull(_)),
                    },
                }
            }
            sql::Expr::IsTrue(inner)
            | sql::Expr::IsNotTrue(inner)
            | sql::Expr::IsFalse(inner)
            | sql::Expr::IsNotFalse(inner) => {
                let operand = self.expr(inner)?;
                let (value, negated) = match e {
                    sql::Expr::IsTrue(_) => (true, false),
                    sql::Expr::IsNotTrue(_) => (true, true),
                    sql::Expr::IsFalse(_) => (false, false),
                    _ => (false, true),
                };
                let keyword = if value { "TRUE" } else { "FALSE" };
                let span = self.through_keyword(operand.span, keyword);
                let op = if negated {
                    BinaryOp::IsDistinctFrom
                } else {
                    BinaryOp::IsNotDistinctFrom
                };
                binary(op, operand, literal(Literal::Bool(value), span), span)
            }
            sql::Expr::IsDistinctFrom(l, r) | sql::Expr::IsNotDistinctFrom(l, r) => {
                let l = self.expr(l)?;
                let r = self.expr(r)?;
                let span = l.span.to(r.span);
                let op = if matches!(e, sql::Expr::IsDistinctFrom(..)) {
                    BinaryOp::IsDistinctFrom
                } else {
                    BinaryOp::IsNotDistinctFrom
                };
                binary(op, l, r, span)
            }
            sql::Expr::InList {
                expr,
                list,
                negated,
            } => {
                let tested = self.expr(expr)?;
                let list = list
                    .iter()
                    .map(|item| self.expr(item))
                    .collect::<Result<Vec<_>, _>>()?;
                let end = list.last().map_or(tested.span, |l| l.span);
                let span = self.through_paren(tested.span.to(end));
                not_if(
                    *negated,
                    Expr {
                        kind: ExprKind::InList {
                            expr: boxed(tested),
                            list,
                        },
                        span,
                    },
                )
            }
            sql::Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let tested = self.expr(expr)?;
                let low = self.expr(low)?;
                let high = self.expr(high)?;
                let span = tested.span.to(high.span);
                let lower = binary(BinaryOp::GtEq, tested.clone(), low, span);
                let upper = binary(BinaryOp::LtEq, tested, high, span);
                not_if(*negated, binary(BinaryOp::And, lower, upper, span))
            }
            sql::Expr::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | sql::Expr::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                let op = if matches!(e, sql::Expr::Like { .. }) {
                    BinaryOp::Like
                } else {
                    BinaryOp::ILike
                };
                if *any {
                    return Err(unsupported(
                        "`LIKE ANY`",
                        span,
                        "or several `LIKE` tests together",
                    ));
                }
                let l = self.expr(expr)?;
                let mut r = self.expr(pattern)?;
                let mut end = r.span;
                if let Some(escape) = escape_char {
                    let escape_span = self.span_of(escape).unwrap_or(span);
                    end = escape_span;
                    let escape_text = match &escape.value {
                        sql::Value::SingleQuotedString(s) => Some(s.as_str()),
                        _ => None,
                    };
                    // `ESCAPE '\\'` (one backslash, written twice or not).
                    let escape_char = match escape_text {
                        Some("\\\\") => Some('\\'),
                        Some(s) if s.chars().count() == 1 => s.chars().next(),
                        _ => None,
                    };
                    match (&mut r.kind, escape_char) {
                        (ExprKind::Literal(Literal::String(p)), Some(c)) => {
                            *p = rewrite_escape(p, c);
                        }
                        _ => {
                            return Err(unsupported(
                                "this `ESCAPE`",
                                escape_span,
                                "give a string pattern and a one-character escape: `LIKE '50!%%' ESCAPE '!'`",
                            ));
                        }
                    }
                }
                let span = l.span.to(end);
                not_if(*negated, binary(op, l, r, span))
            }
            sql::Expr::MatchAgainst {
                columns,
                match_value,
                opt_search_modifier,
            } => {
                if opt_search_modifier.is_some() {
                    return Err(unsupported(
                        "`MATCH ... AGAINST` search modifiers",
                        span,
                        "write `col MATCH 'words'`",
                    ));
                }
                let value_span = self.span_of(match_value).unwrap_or(span);
                let needle = self.value(match_value, value_span)?;
                let mut result: Option<Expr> = None;
                for column in columns {
                    let idents = column
                        .0
                        .iter()
                        .map(|part| match part {
                            sql::ObjectNamePart::Identifier(ident) => Ok(ident.clone()),
                            sql::ObjectNamePart::Function(_) => Err(unsupported(
                                "a function in `MATCH (...)`",
                                span,
                                "name fields: `MATCH (input) AGAINST ('x')`",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let haystack = self.path(&idents)?;
                    let test_span = haystack.span.to(value_span);
                    let test = binary(BinaryOp::Match, haystack, needle.clone(), test_span);
                    result = Some(match result {
                        None => test,
                        Some(prev) => {
                            let span = prev.span.to(test.span);
                            binary(BinaryOp::Or, prev, test, span)
                        }
                    });
                }
                result.ok_or_else(|| Diagnostic::internal("`MATCH` without columns", span))?
            }
            sql::Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                // Each WHEN nests one ternary deeper.
                if self.depth.get() + conditions.len() >= MAX_EXPR_DEPTH {
                    return Err(crate::limits::too_deep(span).with_help(format!(
                        "a `CASE` may have at most {MAX_EXPR_DEPTH} `WHEN` branches, fewer inside other expressions"
                    )));
                }
                let operand = operand.as_deref().map(|o| self.expr(o)).transpose()?;
                let mut acc = match else_result {
                    Some(e) => self.expr(e)?,
                    None => literal(Literal::Null, span),
                };
                for when in conditions.iter().rev() {
                    let mut cond = self.expr(&when.condition)?;
                    if let Some(operand) = &operand {
                        let cond_span = cond.span;
                        cond = binary(BinaryOp::Eq, operand.clone(), cond, cond_span);
                    }
                    let then = self.expr(&when.result)?;
                    acc = Expr {
                        kind: ExprKind::Ternary {
                            cond: boxed(cond),
                            then: boxed(then),
                            otherwise: boxed(acc),
                        },
                        span,
                    };
                }
                acc
            }
            sql::Expr::Cast {
                expr,
                data_type,
                array,
                format,
                ..
            } => {
                let operand = self.expr(expr)?;
                let name = cast_function(data_type).filter(|_| !*array && format.is_none());
                let Some(name) = name else {
                    return Err(unsupported(
                        &format!("a cast to `{data_type}`"),
                        span,
                        "cast to VARCHAR, INTEGER, DOUBLE, BOOLEAN, TIMESTAMP, DATE or INTERVAL",
                    ));
                };
                function(
                    name,
                    vec![operand],
                    self.through_paren(span.to(own.unwrap_or(span))),
                )
            }
            sql::Expr::TypedString(typed) => {
                let name = match typed.data_type {
                    sql::DataType::Date => "to_date",
                    sql::DataType::Timestamp(..) | sql::DataType::Datetime(_) => "to_datetime",
                    _ => {
                        return Err(unsupported(
                            &format!("a `{}` literal", typed.data_type),
                            span,
                            "write DATE '2024-01-01', TIMESTAMP '2024-01-01T00:00:00Z', or just the string",
                        ));
                    }
                };
                let value_span = self.span_of(&typed.value).unwrap_or(span);
                let value = self.value(&typed.value, value_span)?;
                function(name, vec![value], span)
            }
            sql::Expr::Interval(interval) => self.interval(interval, span)?,
            sql::Expr::Array(array) => {
                let items = array
                    .elem
                    .iter()
                    .map(|item| self.expr(item))
                    .collect::<Result<Vec<_>, _>>()?;
                Expr {
                    kind: ExprKind::Array(items),
                    span,
                }
            }
            sql::Expr::Function(f) => self.function(f, span)?,
            sql::Expr::Ceil { expr, field } | sql::Expr::Floor { expr, field } => {
                let name = if matches!(e, sql::Expr::Ceil { .. }) {
                    "ceil"
                } else {
                    "floor"
                };
                if !matches!(
                    field,
                    sql::CeilFloorKind::DateTimeField(sql::DateTimeField::NoDateTime)
                ) {
                    return Err(unsupported(
                        &format!("`{}` with a unit or scale", name.to_ascii_uppercase()),
                        span,
                        "round with `round(x, digits)`; bucket times with `date_trunc`",
                    ));
                }
                let operand = self.expr(expr)?;
                function(name, vec![operand], self.through_paren(span))
            }
            sql::Expr::Subquery(_) | sql::Expr::InSubquery { .. } | sql::Expr::Exists { .. } => {
                return Err(unsupported(
                    "a subquery",
                    span,
                    "relate spans of a trace with `any_span(...)` or `shape => 'traces'`",
                ));
            }
            sql::Expr::Tuple(_) => {
                return Err(unsupported(
                    "a row value `(a, b)`",
                    span,
                    "compare one value at a time; lists belong after `IN`",
                ));
            }
            sql::Expr::Extract { .. } => {
                return Err(unsupported(
                    "`EXTRACT`",
                    span,
                    "bucket times with `hour(created)`, `day(created)` or `date_trunc('hour', created)`",
                ));
            }
            sql::Expr::Wildcard(_) => Expr {
                kind: ExprKind::Star,
                span,
            },
            _ => {
                return Err(unsupported(
                    &format!("`{}`", self.quote(span)),
                    span,
                    "see the SQL subset in the BTQL reference (spec §1.7)",
                ));
            }
        })
    }

    /// Start of `word` written before `start` (over whitespace and `(`),
    /// else `start`.
    fn back_over(&self, start: usize, word: &str) -> usize {
        let before = self
            .text
            .get(..start)
            .unwrap_or("")
            .trim_end_matches(|c: char| c.is_whitespace() || c == '(');
        match before.len().checked_sub(word.len()) {
            Some(at)
                if before
                    .get(at..)
                    .is_some_and(|w| w.eq_ignore_ascii_case(word)) =>
            {
                at
            }
            _ => start,
        }
    }

    /// `span` widened over `IS [NOT] <keyword>` that follows it.
    fn through_keyword(&self, span: Span, keyword: &str) -> Span {
        let rest = self.text.get(span.end..).unwrap_or("");
        let upper = rest.to_ascii_uppercase();
        upper
            .find(keyword)
            .filter(|at| {
                upper[..*at]
                    .split_whitespace()
                    .all(|w| w == "IS" || w == "NOT")
            })
            .map_or(span, |at| {
                Span::new(span.start, span.end + at + keyword.len())
            })
    }

    fn interval(&self, interval: &sql::Interval, span: Span) -> Result<Expr, Diagnostic> {
        let help = "write `INTERVAL 7 DAY` (units: year, month, week, day, hour, minute, second, millisecond, microsecond)";
        if interval.last_field.is_some()
            || interval.leading_precision.is_some()
            || interval.fractional_seconds_precision.is_some()
        {
            return Err(unsupported("this interval form", span, help));
        }
        let count = self.expr(&interval.value)?;
        let (value, unit) = match (&count.kind, &interval.leading_field) {
            (_, Some(field)) => {
                let value = match &count.kind {
                    ExprKind::Literal(Literal::String(s)) => s.trim().parse::<i64>().ok(),
                    _ => super::int_value(&count),
                };
                let unit = interval_unit(field);
                (value, unit)
            }
            // `INTERVAL '7 days'`.
            (ExprKind::Literal(Literal::String(s)), None) => {
                let mut words = s.split_whitespace();
                let value = words.next().and_then(|w| w.parse::<i64>().ok());
                let unit = words.next().and_then(IntervalUnit::parse);
                let unit = if words.next().is_some() { None } else { unit };
                (value, unit)
            }
            _ => (None, None),
        };
        let Some(value) = value else {
            return Err(Diagnostic::new(
                codes::BAD_UNIT,
                "an interval needs an integer count",
                count.span,
            )
            .with_help(help));
        };
        let Some(unit) = unit else {
            return Err(
                Diagnostic::new(codes::BAD_UNIT, "unknown interval unit", span).with_help(help),
            );
        };
        Ok(Expr {
            kind: ExprKind::Interval { value, unit },
            span,
        })
    }

    fn function(&self, f: &sql::Function, span: Span) -> Result<Expr, Diagnostic> {
        let name = match f.name.0.as_slice() {
            [sql::ObjectNamePart::Identifier(ident)] => ident.value.clone(),
            _ => {
                return Err(unsupported(
                    "a qualified function name",
                    span,
                    "call functions by their plain name",
                ));
            }
        };
        // sqlparser leaves the name unspanned inside `PIVOT (...)`: find it
        // before the `(` that precedes the expression's own span.
        let name_span = self.span_of(&f.name).unwrap_or_else(|| {
            let before = self.text.get(..span.start).unwrap_or("").trim_end();
            let before = before.strip_suffix('(').unwrap_or(before).trim_end();
            match before.len().checked_sub(name.len()) {
                Some(at)
                    if before
                        .get(at..)
                        .is_some_and(|w| w.eq_ignore_ascii_case(&name)) =>
                {
                    Span::new(at, before.len())
                }
                _ => span,
            }
        });
        if f.over.is_some() {
            return Err(unsupported(
                "window functions (`OVER`)",
                span,
                "aggregate with `GROUP BY` instead",
            ));
        }
        if f.filter.is_some() || f.null_treatment.is_some() || !f.within_group.is_empty() {
            return Err(unsupported(
                &format!("`{name}` with `FILTER`, `WITHIN GROUP` or null treatment"),
                span,
                "filter rows with `WHERE`, or aggregate a ternary: `sum(x > 1 ? 1 : 0)`",
            ));
        }
        if !matches!(f.parameters, sql::FunctionArguments::None) {
            return Err(unsupported(
                "parametric functions `f(a)(b)`",
                span,
                "call functions with one argument list",
            ));
        }
        let mut name = name;
        let mut args = Vec::new();
        match &f.args {
            sql::FunctionArguments::None => {}
            sql::FunctionArguments::Subquery(_) => {
                return Err(unsupported(
                    "a subquery",
                    span,
                    "relate spans of a trace with `any_span(...)` or `shape => 'traces'`",
                ));
            }
            sql::FunctionArguments::List(list) => {
                if !list.clauses.is_empty() {
                    return Err(unsupported(
                        &format!("clauses inside `{name}(...)`"),
                        span,
                        "pass plain arguments",
                    ));
                }
                match list.duplicate_treatment {
                    None | Some(sql::DuplicateTreatment::All) => {}
                    Some(sql::DuplicateTreatment::Distinct)
                        if name.eq_ignore_ascii_case("count") =>
                    {
                        name = "count_distinct".to_string();
                    }
                    Some(sql::DuplicateTreatment::Distinct) => {
                        return Err(unsupported(
                            &format!("`{name}(DISTINCT ...)`"),
                            span,
                            "only `count(DISTINCT x)` (= `count_distinct(x)`) takes `DISTINCT`",
                        ));
                    }
                }
                for arg in &list.args {
                    let arg = match arg {
                        sql::FunctionArg::Unnamed(arg) => arg,
                        _ => {
                            return Err(unsupported(
                                "named function arguments",
                                span,
                                "pass arguments by position",
                            ));
                        }
                    };
                    args.push(match arg {
                        sql::FunctionArgExpr::Expr(e) => self.expr(e)?,
                        sql::FunctionArgExpr::Wildcard => {
                            // sqlparser keeps no span for a bare `*`.
                            let star = self
                                .text
                                .get(name_span.end..)
                                .and_then(|rest| rest.find('*'))
                                .map_or(span, |at| {
                                    Span::new(name_span.end + at, name_span.end + at + 1)
                                });
                            Expr {
                                kind: ExprKind::Star,
                                span: star,
                            }
                        }
                        _ => {
                            return Err(unsupported(
                                "a qualified `*` argument",
                                span,
                                "write `count(*)` or `count(1)`",
                            ));
                        }
                    });
                }
            }
        }
        let end = args.iter().map(|a| a.span).fold(name_span, Span::to);
        let span = if matches!(f.args, sql::FunctionArguments::None) {
            name_span
        } else {
            self.through_paren(end)
        };
        Ok(function(&name, args, span))
    }
}
