//! Phase 2 of BTQL `pivot:` (spec §1.6.7): the planner stops at phase 1
//! (one row per row keys and pivot key, see [`PivotSpec`]) because the
//! output columns depend on the data; this finishes it.
//!
//! ```text
//!  phase 1 ─► Projection(key, key sort) ─► Distinct ─► Sort ─► collect: pivot values v₁…vₙ  (≤ MAX_PIVOT_VALUES)
//!  phase 1 ─► Aggregate(row keys + sort keys;
//!                       first_value(m) FILTER (WHERE key IS NOT DISTINCT FROM vᵢ) AS "<vᵢ>_<m>")
//!          ─► Sort ─► Limit ─► Projection(row keys, pivoted columns) ─► stream
//! ```
//!
//! Phase 1 has at most one row per (row keys, key), so each filtered
//! `first_value` is that row's measure, or NULL when the row keys have no
//! such pivot value. Phase 1 is computed twice (values, then rows); only
//! the distinct values are collected, the rows are streamed.
//!
//! Column names: `<v>_<m>` with `v` rendered as text (a JSON string
//! without quotes, other JSON as its JSON text, other values as Arrow
//! displays them, NULL as `null`); a name taken already (by a row key or
//! an earlier pivoted column) gets `#2`, `#3`, … appended.

use std::collections::HashSet;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::util::display::array_value_to_string;
use datafusion::common::{Column, ScalarValue};
use datafusion::functions_aggregate::expr_fn::first_value;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, Operator, binary_expr, lit,
};
use datafusion::prelude::SessionContext;
use spanlake_dsl::{OutputColumn, PivotSpec};

use crate::error::{Error, Result};
use crate::query::QueryStream;

/// At most this many distinct pivot values (each makes one column per
/// pivoted measure).
pub const MAX_PIVOT_VALUES: usize = 1000;

fn col(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

/// Runs phase 2 of a pivot over `plan` (phase 1, whose output columns are
/// `columns`) and streams the pivoted rows.
pub async fn pivot_stream(
    ctx: &SessionContext,
    plan: LogicalPlan,
    columns: Vec<OutputColumn>,
    spec: &PivotSpec,
) -> Result<QueryStream> {
    let json_of = |name: &str| -> Result<bool> {
        columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.json)
            .ok_or_else(|| Error::Internal(format!("pivot column `{name}` is not in phase 1")))
    };
    let key_json = json_of(&spec.key)?;

    // 1. The distinct pivot values, in order.
    let mut distinct_names: Vec<&String> = vec![&spec.key];
    for c in &spec.key_sort {
        if !distinct_names.contains(&c) {
            distinct_names.push(c);
        }
    }
    let distinct_cols: Vec<Expr> = distinct_names.into_iter().map(|c| col(c)).collect();
    let mut order: Vec<_> = spec
        .key_sort
        .iter()
        .map(|c| col(c).sort(true, false))
        .collect();
    order.push(col(&spec.key).sort(true, false));
    let distinct = LogicalPlanBuilder::from(plan.clone())
        .project(distinct_cols)?
        .distinct()?
        .sort(order)?
        .limit(0, Some(MAX_PIVOT_VALUES + 1))?
        .build()?;
    let batches = ctx.execute_logical_plan(distinct).await?.collect().await?;
    let mut values: Vec<(ScalarValue, String)> = Vec::new();
    for batch in &batches {
        let array = batch.column(0);
        for i in 0..batch.num_rows() {
            values.push((
                ScalarValue::try_from_array(array, i)?,
                render(array.as_ref(), i, key_json)?,
            ));
        }
    }
    if values.len() > MAX_PIVOT_VALUES {
        return Err(Error::InvalidArgument(format!(
            "pivot key `{}` has more than {MAX_PIVOT_VALUES} distinct values; filter the rows or pivot on a coarser key",
            spec.key
        )));
    }

    // 2. The pivoted plan.
    let mut out_columns: Vec<OutputColumn> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut projection: Vec<Expr> = Vec::new();
    for key in &spec.row_keys {
        out_columns.push(OutputColumn {
            name: key.clone(),
            json: json_of(key)?,
        });
        taken.insert(key.clone());
        projection.push(col(key));
    }
    let mut group: Vec<Expr> = Vec::new();
    let mut grouped: HashSet<&str> = HashSet::new();
    for name in spec
        .row_keys
        .iter()
        .chain(spec.sort.iter().map(|s| &s.column))
    {
        if grouped.insert(name) {
            taken.insert(name.clone());
            group.push(col(name));
        }
    }
    let mut aggregates: Vec<Expr> = Vec::new();
    for (value, text) in &values {
        let is_value = binary_expr(
            col(&spec.key),
            Operator::IsNotDistinctFrom,
            lit(value.clone()),
        );
        for measure in &spec.measures {
            let name = unique(&mut taken, format!("{text}_{measure}"));
            let cell = first_value(col(measure), Vec::new())
                .filter(is_value.clone())
                .build()?;
            aggregates.push(cell.alias(name.clone()));
            projection.push(col(&name));
            out_columns.push(OutputColumn {
                name,
                json: json_of(measure)?,
            });
        }
    }
    let builder = LogicalPlanBuilder::from(plan);
    let builder = if values.is_empty() {
        // No phase-1 rows: no output rows (an aggregate without keys would make one).
        builder.filter(lit(false))?
    } else {
        let sorts: Vec<_> = spec
            .sort
            .iter()
            .map(|s| col(&s.column).sort(!s.descending, s.descending))
            .collect();
        let mut b = builder.aggregate(group, aggregates)?;
        if !sorts.is_empty() {
            b = b.sort(sorts)?;
        }
        b
    };
    let builder = match spec.limit {
        Some(n) => builder.limit(0, Some(n))?,
        None => builder,
    };
    let plan = builder.project(projection)?.build()?;
    let stream = ctx
        .execute_logical_plan(plan)
        .await?
        .execute_stream()
        .await?;
    Ok(QueryStream {
        columns: out_columns,
        stream,
        page: None,
    })
}

/// `name`, or `name#2`, `name#3`, … if taken; marks the result taken.
fn unique(taken: &mut HashSet<String>, name: String) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{name}#{n}");
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// A pivot value as the text of column names.
fn render(array: &dyn Array, i: usize, json: bool) -> Result<String> {
    if array.is_null(i) {
        return Ok("null".to_string());
    }
    if json {
        let text = match array.data_type() {
            DataType::Utf8 => array.as_string::<i32>().value(i).to_string(),
            DataType::LargeUtf8 => array.as_string::<i64>().value(i).to_string(),
            DataType::Utf8View => array.as_string_view().value(i).to_string(),
            other => {
                return Err(Error::Internal(format!("JSON pivot key of type {other}")));
            }
        };
        return Ok(match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::String(s)) => s,
            _ => text,
        });
    }
    Ok(array_value_to_string(array, i)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use futures::TryStreamExt;
    use spanlake_dsl::PivotSort;

    use super::*;

    fn out(name: &str, json: bool) -> OutputColumn {
        OutputColumn {
            name: name.to_string(),
            json,
        }
    }

    async fn run(
        rows: Vec<(Option<&str>, Option<&str>, Option<f64>)>,
        spec: PivotSpec,
    ) -> (Vec<String>, Vec<String>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Utf8, true),
            Field::new("model", DataType::Utf8, true),
            Field::new("n", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        let plan = ctx
            .read_table(Arc::new(table))
            .unwrap()
            .into_unoptimized_plan();
        let columns = vec![out("day", false), out("model", true), out("n", false)];
        let q = pivot_stream(&ctx, plan, columns, &spec).await.unwrap();
        let names = q.columns.iter().map(|c| c.name.clone()).collect();
        let batches: Vec<RecordBatch> = q.stream.try_collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        (names, text.lines().map(str::to_string).collect())
    }

    fn spec(limit: Option<usize>, descending: bool) -> PivotSpec {
        PivotSpec {
            row_keys: vec!["day".into()],
            key: "model".into(),
            key_sort: vec!["model".into()],
            measures: vec!["n".into()],
            sort: vec![PivotSort {
                column: "day".into(),
                descending,
            }],
            limit,
        }
    }

    #[tokio::test]
    async fn pivots_json_keys_with_null_last() {
        let (names, lines) = run(
            vec![
                (Some("d1"), Some("\"b\""), Some(1.0)),
                (Some("d1"), Some("\"a\""), Some(2.0)),
                (Some("d2"), None, Some(3.0)),
                (Some("d2"), Some("\"a\""), Some(4.0)),
            ],
            spec(None, false),
        )
        .await;
        assert_eq!(names, vec!["day", "a_n", "b_n", "null_n"]);
        assert_eq!(
            lines[3..5],
            [
                "| d1  | 2.0 | 1.0 |        |".to_string(),
                "| d2  | 4.0 |     | 3.0    |".to_string()
            ],
            "{lines:#?}"
        );
    }

    #[tokio::test]
    async fn sorts_descending_and_limits() {
        let (names, lines) = run(
            vec![
                (Some("d1"), Some("\"x\""), Some(1.0)),
                (Some("d2"), Some("\"x\""), Some(2.0)),
                (Some("d3"), Some("\"day\""), Some(3.0)),
                (Some("d3"), None, Some(5.0)),
            ],
            PivotSpec {
                measures: vec!["n".into()],
                ..spec(Some(2), true)
            },
        )
        .await;
        assert_eq!(names, vec!["day", "day_n", "x_n", "null_n"]);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines[3].starts_with("| d3 "), "{lines:#?}");
        assert!(lines[4].starts_with("| d2 "), "{lines:#?}");
    }

    #[tokio::test]
    async fn empty_input_gives_only_row_keys() {
        let (names, lines) = run(Vec::new(), spec(None, false)).await;
        assert_eq!(names, vec!["day"]);
        assert!(lines.iter().all(|l| l.starts_with('+')), "{lines:#?}");
    }

    #[test]
    fn unique_names() {
        let mut taken = HashSet::from(["a_n".to_string()]);
        assert_eq!(unique(&mut taken, "a_n".into()), "a_n#2");
        assert_eq!(unique(&mut taken, "a_n".into()), "a_n#3");
        assert_eq!(unique(&mut taken, "b_n".into()), "b_n");
    }
}
