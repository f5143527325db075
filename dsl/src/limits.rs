//! Bounds on the shape of a query, so that parsing, analysis and planning
//! take time linear in its length and a stack depth independent of it.
//!
//! Every front end checks nesting *before* it recurses, with a scan that
//! does not recurse:
//!
//! | form | checked before parsing | checked while building the AST |
//! |---|---|---|
//! | clauses (`btql.pest`) | `(`, `[` and `? :` nesting ([`check_btql_nesting`]) | operator depth |
//! | SQL | `(` and `[` nesting over sqlparser's tokens | converter depth |
//! | JSON AST | `{` and `[` nesting ([`check_json_nesting`]) | expression depth |
//!
//! and every AST they build is at most [`MAX_EXPRESSION_DEPTH`] deep, so the
//! planner, `Display` and `Drop`, which recurse over the tree, stay within
//! a small stack. A query over a limit is a `BTQL0004` diagnostic at the
//! bracket or operator that goes too deep.

use crate::error::{Diagnostic, Span, codes};

/// Deepest expression any front end builds and the planner accepts: levels
/// of brackets (`(`, `[`, function calls, `? :`) and of operators (a chain
/// `a or b or c` nests one level per operator).
pub const MAX_EXPRESSION_DEPTH: usize = 64;

/// Deepest nesting of `{` and `[` in a JSON AST: an expression takes one or
/// two JSON levels (`{"op": "not", "expr": {…}}`, `"args": [{…}]`), and
/// serde_json itself stops at 128.
pub const MAX_JSON_DEPTH: usize = 120;

/// Stack of the thread the front ends parse on: their walks recurse once
/// per level of a tree at most [`MAX_EXPRESSION_DEPTH`] deep (plus
/// sqlparser's own levels), and a debug build takes kilobytes per level,
/// more than a tokio worker's 2 MiB at the limit. Only touched pages are
/// committed.
const PARSER_STACK_BYTES: usize = 64 << 20;

/// Runs `parse` on a scoped thread with a [`PARSER_STACK_BYTES`] stack
/// (on the caller's thread if one cannot be spawned). Panics propagate.
pub(crate) fn on_parser_stack<T: Send>(parse: impl Fn() -> T + Sync) -> T {
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("spanlake-parser".to_string())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, &parse)
        {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => parse(),
        }
    })
}

/// The `BTQL0004` diagnostic for an expression deeper than
/// [`MAX_EXPRESSION_DEPTH`], at `span` (the bracket or operator that goes
/// too deep).
pub(crate) fn too_deep(span: Span) -> Diagnostic {
    Diagnostic::new(
        codes::TOO_DEEP,
        format!("expression nested more than {MAX_EXPRESSION_DEPTH} levels deep"),
        span,
    )
    .with_help(format!(
        "expressions may nest at most {MAX_EXPRESSION_DEPTH} levels of brackets and operators; \
         split the expression, or write a long chain of `or` as `in [...]`"
    ))
}

/// Refuses clause-syntax text whose `(`, `[` or `? :` nest more than
/// [`MAX_EXPRESSION_DEPTH`] levels, at the bracket that goes too deep.
///
/// These are the only places where `btql.pest` recurses (parentheses,
/// arrays, function calls, `in (...)` and the middle of a ternary), so
/// pest's recursion is bounded once this passes. Strings (`'…'`, `"…"`,
/// with `\` and doubled-quote escapes) and `--` comments are skipped; an
/// unterminated one ends the scan (pest reports it). A `:` closes the
/// innermost open `?`; a closing bracket closes any `?` left open inside it.
pub(crate) fn check_btql_nesting(text: &str) -> Result<(), Diagnostic> {
    let bytes = text.as_bytes();
    // Open brackets: `(`, `[` or `?`.
    let mut open: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Ok(()),
                        Some(b'\\') => i += 2,
                        Some(&c) if c == quote => {
                            if bytes.get(i + 1) == Some(&quote) {
                                i += 2;
                            } else {
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                match bytes[i..].iter().position(|&c| c == b'\n') {
                    Some(newline) => i += newline,
                    None => return Ok(()),
                }
            }
            bracket @ (b'(' | b'[' | b'?') => {
                if open.len() >= MAX_EXPRESSION_DEPTH {
                    return Err(too_deep(Span::new(i, i + 1)));
                }
                open.push(bracket);
            }
            b':' if open.last() == Some(&b'?') => {
                open.pop();
            }
            close @ (b')' | b']') => {
                let opening = if close == b')' { b'(' } else { b'[' };
                while let Some(top) = open.pop() {
                    if top == opening {
                        break;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Refuses JSON text whose `{` and `[` nest more than [`MAX_JSON_DEPTH`]
/// levels, at the bracket that goes too deep (strings skipped).
pub(crate) fn check_json_nesting(text: &str) -> Result<(), Diagnostic> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Ok(()),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'{' | b'[' => {
                if depth >= MAX_JSON_DEPTH {
                    return Err(Diagnostic::new(
                        codes::TOO_DEEP,
                        format!("JSON nested more than {MAX_JSON_DEPTH} levels deep"),
                        Span::new(i, i + 1),
                    )
                    .with_help(format!(
                        "a JSON AST may nest `{{` and `[` at most {MAX_JSON_DEPTH} levels, \
                         and its expressions at most {MAX_EXPRESSION_DEPTH}"
                    )));
                }
                depth += 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
