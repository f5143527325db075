//! Arbitrary UTF-8 through every front end (`parse_any` and each parser on
//! its own) and, when it parses, through the planner: nothing may panic.
#![no_main]

use std::sync::Arc;

use datafusion_expr::logical_plan::builder::LogicalTableSource;
use libfuzzer_sys::fuzz_target;
use spanlake_dsl::{
    Catalog, PlanOptions, parse_any, parse_json_ast, parse_query, parse_sql, plan_query, schema,
};

#[derive(Debug)]
struct FuzzCatalog;

impl Catalog for FuzzCatalog {
    fn project_logs(
        &self,
        args: &[String],
    ) -> Result<Arc<dyn datafusion_expr::TableSource>, String> {
        if args.first().is_some_and(|a| a == "missing") {
            return Err("no project named `missing`".to_string());
        }
        Ok(Arc::new(LogicalTableSource::new(schema::spans_schema())))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = PlanOptions {
        tz_offset_minutes: 0,
        now: chrono::DateTime::from_timestamp(1_731_153_600, 0).unwrap_or_default(),
    };
    let check_spans = |diagnostics: &spanlake_dsl::Diagnostics| {
        for d in &diagnostics.0 {
            assert!(
                d.span.start <= d.span.end && d.span.end <= text.len(),
                "span {:?} outside the text: {d}",
                d.span
            );
            assert!(
                text.is_char_boundary(d.span.start) && text.is_char_boundary(d.span.end),
                "span {:?} splits a character: {d}",
                d.span
            );
        }
    };
    for parsed in [parse_sql(text), parse_json_ast(text), parse_query(text)] {
        if let Err(e) = &parsed {
            check_spans(e);
        }
    }
    match parse_any(text) {
        Ok(query) => {
            if let Err(e) = plan_query(&query, &FuzzCatalog, &options) {
                check_spans(&e);
            }
        }
        Err(e) => check_spans(&e),
    }
});
