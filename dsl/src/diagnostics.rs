//! Rendering of query diagnostics: line and column, the query line, a caret
//! under the mistake, and the help.
//!
//! ```text
//! error[BTQL0110]: unknown field `scroes`
//!  --> query:1:29
//!   |
//! 1 | select: id | filter: scroes.x > 1
//!   |                      ^^^^^^ not a column
//!   = help: did you mean `scores`?
//! ```
//!
//! Hand-written rather than with ariadne or miette: the format is this one
//! screen of code, stable for golden tests, and free of box-drawing glyphs
//! that break in logs.

use std::fmt::Write;

use crate::{Diagnostic, Span};

/// Line (1-based), column (1-based, in characters) and the text of the line
/// holding byte `offset`.
pub fn locate(text: &str, offset: usize) -> (usize, usize, &str) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..offset].chars().count() + 1;
    (
        line_no,
        column,
        text[line_start..line_end].trim_end_matches('\r'),
    )
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn underline(out: &mut String, text: &str, span: Span, gutter: usize, note: &str) {
    let (line_no, column, line) = locate(text, span.start);
    let end = span.end.max(span.start).min(text.len());
    let line_end_offset =
        floor_char_boundary(text, span.start.min(text.len())) - (column - 1) + line.len();
    let visible_end = end.min(line_end_offset);
    let width = text
        .get(
            floor_char_boundary(text, span.start.min(text.len()))
                ..floor_char_boundary(text, visible_end),
        )
        .map_or(0, |s| s.chars().count())
        .max(1);
    let _ = writeln!(out, "{line_no:>gutter$} | {line}");
    let _ = write!(
        out,
        "{:>gutter$} | {}{}",
        "",
        " ".repeat(column - 1),
        "^".repeat(width)
    );
    if note.is_empty() {
        out.push('\n');
    } else {
        let _ = writeln!(out, " {note}");
    }
}

/// Render one diagnostic about `text` (named `origin`, e.g. `query`).
pub fn render(diagnostic: &Diagnostic, text: &str, origin: &str) -> String {
    let mut out = String::new();
    let (line_no, column, _) = locate(text, diagnostic.span.start);
    let last_line = text.lines().count().max(1);
    let gutter = last_line.to_string().len();
    let _ = writeln!(out, "error[{}]: {}", diagnostic.code, diagnostic.message);
    let _ = writeln!(out, "{:>gutter$}--> {origin}:{line_no}:{column}", "");
    let _ = writeln!(out, "{:>gutter$} |", "");
    underline(&mut out, text, diagnostic.span, gutter, "");
    for (span, note) in &diagnostic.labels {
        underline(&mut out, text, *span, gutter, note);
    }
    if let Some(help) = &diagnostic.help {
        let _ = writeln!(out, "{:>gutter$} = help: {help}", "");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_under_the_span() {
        let text = "select: id\nfilter: scroes.x > 1";
        let start = text.find("scroes").unwrap();
        let d = Diagnostic::new(
            "BTQL0110",
            "unknown field `scroes`",
            Span::new(start, start + 6),
        )
        .with_help("did you mean `scores`?");
        let rendered = render(&d, text, "query");
        assert_eq!(
            rendered,
            "error[BTQL0110]: unknown field `scroes`\n --> query:2:9\n  |\n2 | filter: scroes.x > 1\n  |         ^^^^^^\n  = help: did you mean `scores`?\n"
        );
    }

    #[test]
    fn empty_span_at_end() {
        let text = "select: ";
        let d = Diagnostic::new("BTQL0001", "expected an expression", Span::new(8, 8));
        let rendered = render(&d, text, "query");
        assert!(
            rendered.contains("1 | select: \n  |         ^\n"),
            "{rendered}"
        );
    }
}
