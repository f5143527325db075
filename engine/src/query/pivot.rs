//! Phase 2 of BTQL `pivot:` (spec §1.6.7): the planner stops at phase 1
//! (one row per row keys and pivot key, see [`PivotSpec`]) because the
//! output columns depend on the data; this finishes it.
//!
//! ```text
//!  phase 1 ─► Projection(key, key sort) ─► Distinct ─► Sort ─► collect: pivot values v₁…vₙ  (≤ MAX_PIVOT_VALUES)
//!  phase 1 ─► Sort(sort keys, row keys) ─► PivotStream ─► stream of pivoted batches
//!                 PivotStream: each run of rows with equal row keys is one
//!                 output row; its row with key vᵢ gives the cells "<vᵢ>_<m>"
//! ```
//!
//! Phase 1 has at most one row per (row keys, key), so a run holds at most
//! one row per pivot value, and each cell is that row's measure or NULL.
//! Phase 1 is computed twice (values, then rows); only the distinct values
//! are collected, the rows are streamed.
//!
//! Memory: the sort spills within the query's memory pool, and the
//! [`PivotStream`] accounts what it holds (the sorted batches its pending
//! output rows point into, and their cell indices) in the same pool; an
//! output batch holds at most [`CELLS_PER_BATCH`] cells. (Phase 2 used to be
//! one aggregate of n×m filtered `first_value`s: 1000 pivot values on 20k
//! rows took 34 s and 2.9 GB before failing against a 256 MB pool, as the
//! aggregate's accumulators are allocated before they are accounted.)
//!
//! Column names: `<v>_<m>` with `v` rendered as text (a JSON string
//! without quotes, other JSON as its JSON text, other values as Arrow
//! displays them, NULL as `null`); a name taken already (by a row key or
//! an earlier pivoted column) gets `#2`, `#3`, … appended.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow::util::display::array_value_to_string;
use datafusion::common::{Column, DataFusionError};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, lit};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use spanlake_dsl::{OutputColumn, PivotSpec};

use crate::error::{Error, Result};
use crate::query::QueryStream;

/// At most this many distinct pivot values (each makes one column per
/// pivoted measure).
pub const MAX_PIVOT_VALUES: usize = 1000;

/// Cells (output rows × pivoted columns) per output batch, at most: with
/// many pivot values, batches have fewer rows.
pub const CELLS_PER_BATCH: usize = 1 << 16;

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
    pivot_stream_in_batches(ctx, plan, columns, spec, CELLS_PER_BATCH).await
}

/// [`pivot_stream`] with output batches of at most `cells_per_batch` cells
/// (at least one row).
async fn pivot_stream_in_batches(
    ctx: &SessionContext,
    plan: LogicalPlan,
    columns: Vec<OutputColumn>,
    spec: &PivotSpec,
    cells_per_batch: usize,
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
    let mut value_names: Vec<String> = Vec::new();
    let mut value_arrays: Vec<ArrayRef> = Vec::new();
    for batch in &batches {
        let array = batch.column(0);
        for i in 0..batch.num_rows() {
            value_names.push(render(array.as_ref(), i, key_json)?);
        }
        value_arrays.push(Arc::clone(array));
    }
    if value_names.len() > MAX_PIVOT_VALUES {
        return Err(Error::InvalidArgument(format!(
            "pivot key `{}` has more than {MAX_PIVOT_VALUES} distinct values; filter the rows or pivot on a coarser key",
            spec.key
        )));
    }

    // 2. The output columns.
    let mut out_columns: Vec<OutputColumn> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    for key in &spec.row_keys {
        out_columns.push(OutputColumn {
            name: key.clone(),
            json: json_of(key)?,
        });
        taken.insert(key.clone());
    }
    for name in spec.sort.iter().map(|s| &s.column) {
        taken.insert(name.clone());
    }
    let mut pivoted_names: Vec<String> = Vec::new();
    for text in &value_names {
        for measure in &spec.measures {
            let name = unique(&mut taken, format!("{text}_{measure}"));
            pivoted_names.push(name.clone());
            out_columns.push(OutputColumn {
                name,
                json: json_of(measure)?,
            });
        }
    }

    let builder = LogicalPlanBuilder::from(plan);
    if value_names.is_empty() {
        // No phase-1 rows: no output rows, only the row-key columns.
        let plan = builder
            .filter(lit(false))?
            .project(spec.row_keys.iter().map(|k| col(k)))?
            .build()?;
        let stream = ctx
            .execute_logical_plan(plan)
            .await?
            .execute_stream()
            .await?;
        return Ok(QueryStream {
            columns: out_columns,
            stream,
            page: None,
        });
    }

    // 3. Phase 1 in output order, so that the rows of one output row are
    // adjacent: the sort keys, then the row keys themselves (sort keys of
    // different row keys may be equal).
    let mut sorts: Vec<_> = spec
        .sort
        .iter()
        .map(|s| col(&s.column).sort(!s.descending, s.descending))
        .collect();
    sorts.extend(spec.row_keys.iter().map(|k| col(k).sort(true, false)));
    // Without row keys every row is the one output row's: no order needed.
    let sorted = if sorts.is_empty() {
        builder.build()?
    } else {
        builder.sort(sorts)?.build()?
    };
    let input = ctx
        .execute_logical_plan(sorted)
        .await?
        .execute_stream()
        .await?;

    let input_schema = input.schema();
    let index_of = |name: &str| -> Result<usize> {
        input_schema
            .index_of(name)
            .map_err(|_| Error::Internal(format!("pivot column `{name}` is not in phase 1")))
    };
    let row_keys: Vec<usize> = spec
        .row_keys
        .iter()
        .map(|k| index_of(k))
        .collect::<Result<_>>()?;
    let key = index_of(&spec.key)?;
    let measures: Vec<usize> = spec
        .measures
        .iter()
        .map(|m| index_of(m))
        .collect::<Result<_>>()?;
    let mut fields: Vec<Field> = row_keys
        .iter()
        .map(|&i| input_schema.field(i).clone().with_nullable(true))
        .collect();
    let mut names = pivoted_names.iter();
    for _ in &value_names {
        for &m in &measures {
            let name = names
                .next()
                .ok_or_else(|| Error::Internal("pivot column names".into()))?;
            fields.push(Field::new(
                name,
                input_schema.field(m).data_type().clone(),
                true,
            ));
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));

    let key_converter = RowConverter::new(vec![SortField::new(
        input_schema.field(key).data_type().clone(),
    )])?;
    let mut values: HashMap<Box<[u8]>, usize> = HashMap::with_capacity(value_names.len());
    let mut next_value = 0usize;
    for array in &value_arrays {
        let rows = key_converter.convert_columns(std::slice::from_ref(array))?;
        for row in rows.iter() {
            values.entry(row.as_ref().into()).or_insert(next_value);
            next_value += 1;
        }
    }
    let row_converter = if row_keys.is_empty() {
        None
    } else {
        Some(RowConverter::new(
            row_keys
                .iter()
                .map(|&i| SortField::new(input_schema.field(i).data_type().clone()))
                .collect(),
        )?)
    };
    let cells_per_row = value_names.len() * measures.len();
    let pivot = PivotStream {
        input,
        schema: Arc::clone(&schema),
        row_keys,
        key,
        measures,
        key_converter,
        row_converter,
        values,
        n_values: value_names.len(),
        max_rows: (cells_per_batch / cells_per_row.max(1)).clamp(1, 8192),
        limit: spec.limit,
        emitted: 0,
        sources: Vec::new(),
        current: None,
        keys_at: Vec::new(),
        cells: Vec::new(),
        ready: std::collections::VecDeque::new(),
        reservation: MemoryConsumer::new("pivot").register(&ctx.runtime_env().memory_pool),
        done: false,
    };
    let stream = futures::stream::unfold(pivot, |mut pivot| async move {
        pivot.next_batch().await.map(|batch| (batch, pivot))
    });
    Ok(QueryStream {
        columns: out_columns,
        stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        page: None,
    })
}

/// Phase 1, sorted so that the rows of an output row are adjacent, into
/// pivoted batches.
struct PivotStream {
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    /// Input columns of the row keys, the pivot key and the measures.
    row_keys: Vec<usize>,
    key: usize,
    measures: Vec<usize>,
    key_converter: RowConverter,
    /// `None` without row keys: every input row is one output row's.
    row_converter: Option<RowConverter>,
    /// Pivot key (in `key_converter`'s row format) → its value's index.
    values: HashMap<Box<[u8]>, usize>,
    n_values: usize,
    /// Output rows per batch, at most.
    max_rows: usize,
    limit: Option<usize>,
    /// Output rows emitted so far.
    emitted: usize,
    /// Input batches the pending output rows point into: source `s` of a
    /// cell is `sources[s - 1]`; source 0 is a NULL.
    sources: Vec<RecordBatch>,
    /// Row keys of the last pending output row.
    current: Option<OwnedRow>,
    /// Per pending output row: where its row keys are.
    keys_at: Vec<(usize, usize)>,
    /// Per pending output row, per pivot value: where its measures are
    /// (`(0, 0)`: none).
    cells: Vec<(usize, usize)>,
    ready: std::collections::VecDeque<RecordBatch>,
    reservation: MemoryReservation,
    done: bool,
}

impl std::fmt::Debug for PivotStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PivotStream")
            .field("n_values", &self.n_values)
            .field("max_rows", &self.max_rows)
            .finish_non_exhaustive()
    }
}

impl PivotStream {
    async fn next_batch(&mut self) -> Option<datafusion::error::Result<RecordBatch>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Some(Ok(batch));
            }
            if self.done {
                self.reservation.free();
                return None;
            }
            let step = match self.input.next().await {
                Some(Ok(batch)) => self.push(batch),
                Some(Err(e)) => Err(e),
                None => {
                    self.done = true;
                    self.finish_batch()
                }
            };
            if let Err(e) = step {
                self.done = true;
                self.ready.clear();
                self.sources.clear();
                self.reservation.free();
                return Some(Err(e));
            }
        }
    }

    /// Adds the rows of `batch` to the pending output rows (emitting full
    /// batches on the way).
    fn push(&mut self, batch: RecordBatch) -> datafusion::error::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = self
            .key_converter
            .convert_columns(&[Arc::clone(batch.column(self.key))])?;
        let row_keys = match &self.row_converter {
            Some(converter) => Some(
                converter.convert_columns(
                    &self
                        .row_keys
                        .iter()
                        .map(|&i| Arc::clone(batch.column(i)))
                        .collect::<Vec<_>>(),
                )?,
            ),
            None => None,
        };
        self.sources.push(batch);
        let rows = self.sources[self.sources.len() - 1].num_rows();
        for row in 0..rows {
            let same = match (&row_keys, &self.current) {
                (Some(row_keys), Some(current)) => current.row() == row_keys.row(row),
                (None, _) => !self.keys_at.is_empty() || self.emitted > 0,
                (Some(_), None) => false,
            };
            if !same {
                if self
                    .limit
                    .is_some_and(|n| self.emitted + self.keys_at.len() >= n)
                {
                    self.done = true;
                    return self.finish_batch();
                }
                if self.keys_at.len() >= self.max_rows {
                    // The new row starts in the last source: keep only it.
                    let last = self.sources.len();
                    self.finish_batch()?;
                    let kept = self.sources.split_off(last - 1);
                    self.sources = kept;
                }
                self.keys_at.push((self.sources.len(), row));
                self.cells
                    .extend(std::iter::repeat_n((0, 0), self.n_values));
                self.current = row_keys.as_ref().map(|r| r.row(row).owned());
            }
            let value = *self.values.get(keys.row(row).as_ref()).ok_or_else(|| {
                DataFusionError::Internal(
                    "a pivot value of phase 1 is not among its distinct values".into(),
                )
            })?;
            let cell = &mut self.cells[(self.keys_at.len() - 1) * self.n_values + value];
            if *cell == (0, 0) {
                *cell = (self.sources.len(), row);
            }
        }
        let held: usize = self
            .sources
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            + self.cells.capacity() * std::mem::size_of::<(usize, usize)>();
        self.reservation.try_resize(held)?;
        Ok(())
    }

    /// The pending output rows as one batch (into `ready`); they then
    /// point into nothing.
    fn finish_batch(&mut self) -> datafusion::error::Result<()> {
        if self.keys_at.is_empty() {
            return Ok(());
        }
        let arrays_of = |column: usize| -> Vec<ArrayRef> {
            let data_type = self.sources[0].schema().field(column).data_type().clone();
            std::iter::once(new_null_array(&data_type, 1))
                .chain(self.sources.iter().map(|b| Arc::clone(b.column(column))))
                .collect()
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for &k in &self.row_keys {
            let arrays = arrays_of(k);
            let refs: Vec<&dyn Array> = arrays.iter().map(AsRef::as_ref).collect();
            columns.push(interleave(&refs, &self.keys_at)?);
        }
        let measure_arrays: Vec<Vec<ArrayRef>> =
            self.measures.iter().map(|&m| arrays_of(m)).collect();
        let rows = self.keys_at.len();
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(rows);
        for value in 0..self.n_values {
            indices.clear();
            indices.extend((0..rows).map(|r| self.cells[r * self.n_values + value]));
            for arrays in &measure_arrays {
                let refs: Vec<&dyn Array> = arrays.iter().map(AsRef::as_ref).collect();
                columns.push(interleave(&refs, &indices)?);
            }
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.emitted += rows;
        self.keys_at.clear();
        self.cells.clear();
        self.ready.push_back(batch);
        Ok(())
    }
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
        run_in(SessionContext::new(), rows, spec, CELLS_PER_BATCH).await
    }

    async fn run_in(
        ctx: SessionContext,
        rows: Vec<(Option<&str>, Option<&str>, Option<f64>)>,
        spec: PivotSpec,
        cells_per_batch: usize,
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
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        let plan = ctx
            .read_table(Arc::new(table))
            .unwrap()
            .into_unoptimized_plan();
        let columns = vec![out("day", false), out("model", true), out("n", false)];
        let q = pivot_stream_in_batches(&ctx, plan, columns, &spec, cells_per_batch)
            .await
            .unwrap();
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

    #[tokio::test]
    async fn output_rows_straddling_input_batches_and_small_output_batches() {
        // 7 days × up to 3 models, read 2 phase-1 rows per batch, and one
        // output row per batch: the same table as in one batch.
        let models = [Some("\"a\""), Some("\"b\""), None];
        let days = ["d1", "d2", "d3", "d4", "d5", "d6", "d7"];
        let mut rows = Vec::new();
        for (d, day) in days.iter().enumerate() {
            for (m, model) in models.iter().enumerate() {
                if (d + m) % 4 != 3 {
                    rows.push((Some(*day), *model, Some((d * 10 + m) as f64)));
                }
            }
        }
        let (names, whole) = run(rows.clone(), spec(Some(6), true)).await;
        let small = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_batch_size(2),
        );
        let (small_names, batched) = run_in(small, rows, spec(Some(6), true), 1).await;
        assert_eq!(names, vec!["day", "a_n", "b_n", "null_n"]);
        assert_eq!(small_names, names);
        assert_eq!(batched, whole);
        assert_eq!(whole.len(), 4 + 6, "{whole:#?}");
        assert_eq!(whole[3], "| d7  | 60.0 |      | 62.0   |", "{whole:#?}");
        assert_eq!(whole[8], "| d2  | 10.0 | 11.0 |        |", "{whole:#?}");
    }

    #[test]
    fn unique_names() {
        let mut taken = HashSet::from(["a_n".to_string()]);
        assert_eq!(unique(&mut taken, "a_n".into()), "a_n#2");
        assert_eq!(unique(&mut taken, "a_n".into()), "a_n#3");
        assert_eq!(unique(&mut taken, "b_n".into()), "b_n");
    }
}
