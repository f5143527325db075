//! Output formats of `spanlake query`: each writes rows as they stream in,
//! except `table`, which must see every row to size its columns.
//!
//! Values keep their JSON types: a JSON column is written as the JSON value it
//! holds (an object stays an object), datetimes are RFC 3339 UTC ending in
//! `Z`, and integral floats print as integers (as JavaScript would, so `2.0`
//! is `2`).

use std::io::Write;

use anyhow::{Context, Result};
use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use spanlake_dsl::OutputColumn;
use spanlake_engine::query::QueryStream;
use spanlake_engine::query::rows::{
    format_timestamp_micros, string_value, timestamp_micros, write_json_value, write_row_object,
};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal (long values are cut).
    Table,
    /// One JSON array of row objects.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header; JSON values as JSON text.
    Csv,
    /// A Parquet file (zstd); needs `--output` or a redirected stdout.
    Parquet,
}

/// What [`write_rows`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Rows written.
    pub rows: u64,
    /// With paging, the cursor of the next page (none on the last page).
    pub next_cursor: Option<String>,
}

/// Write the rows of `query` to `out` in `format`. With paging, at most one
/// page is written, and with `json` it is wrapped as `{"data": [...],
/// "cursor": "..."}` (no `cursor` on the last page).
pub async fn write_rows(
    query: QueryStream,
    format: Format,
    out: &mut (dyn Write + Send),
) -> Result<Written> {
    if format == Format::Parquet {
        let rows = write_parquet(query, out).await?;
        return Ok(Written {
            rows,
            next_cursor: None,
        });
    }
    let QueryStream {
        columns,
        mut stream,
        page,
    } = query;
    let limit = page.as_ref().map_or(u64::MAX, |(size, _)| *size);
    let mut more = false;
    let mut rows = 0u64;
    let mut table = TableBuffer::new(&columns);
    let mut line = Vec::with_capacity(4096);
    match format {
        Format::Json if page.is_some() => out.write_all(b"{\"data\": [")?,
        Format::Json => out.write_all(b"[")?,
        Format::Csv => {
            let header: Vec<String> = columns.iter().map(|c| csv_field(&c.name)).collect();
            writeln!(out, "{}", header.join(","))?;
        }
        _ => {}
    }
    while let Some(batch) = stream.next().await {
        let batch = batch.context("query execution failed")?;
        let room = usize::try_from(limit - rows).unwrap_or(usize::MAX);
        if batch.num_rows() > room {
            more = true;
        }
        let batch = batch.slice(0, batch.num_rows().min(room));
        match format {
            Format::Json | Format::Jsonl => {
                for row in 0..batch.num_rows() {
                    line.clear();
                    if format == Format::Json {
                        line.extend_from_slice(if rows == 0 { b"\n" } else { b",\n" });
                    }
                    write_row_object(&mut line, &batch, &columns, row)?;
                    if format == Format::Jsonl {
                        line.push(b'\n');
                    }
                    out.write_all(&line)?;
                    rows += 1;
                }
            }
            Format::Csv => {
                for row in 0..batch.num_rows() {
                    let mut fields = Vec::with_capacity(columns.len());
                    for index in 0..columns.len() {
                        let text = cell_text(batch.column(index).as_ref(), row)?;
                        fields.push(text.map_or_else(String::new, |t| csv_field(&t)));
                    }
                    writeln!(out, "{}", fields.join(","))?;
                    rows += 1;
                }
            }
            Format::Table => {
                table.push(&batch)?;
                rows += batch.num_rows() as u64;
            }
            Format::Parquet => unreachable!("handled above"),
        }
    }
    let next_cursor = page.filter(|_| more).map(|(_, cursor)| cursor);
    match format {
        Format::Json if limit != u64::MAX => {
            out.write_all(if rows == 0 { b"]" } else { b"\n]" })?;
            if let Some(cursor) = &next_cursor {
                out.write_all(b", \"cursor\": ")?;
                serde_json::to_writer(&mut *out, cursor)?;
            }
            out.write_all(b"}\n")?;
        }
        Format::Json => out.write_all(if rows == 0 { b"]\n" } else { b"\n]\n" })?,
        Format::Table => table.print(out)?,
        _ => {}
    }
    out.flush()?;
    Ok(Written { rows, next_cursor })
}

/// Parquet (zstd 3) of the query's rows, JSON columns as strings.
async fn write_parquet(query: QueryStream, out: &mut (dyn Write + Send)) -> Result<u64> {
    let QueryStream {
        mut stream, page, ..
    } = query;
    if page.is_some() {
        anyhow::bail!(
            "paging is not available with --format parquet; export the whole result instead"
        );
    }
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(3)?,
        ))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(out, stream.schema(), Some(props))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.context("query execution failed")?;
        writer.write(&batch)?;
        rows += batch.num_rows() as u64;
    }
    writer.close()?;
    Ok(rows)
}

/// Plain text of a cell (no quotes around strings; JSON as JSON text), or
/// `None` for null.
fn cell_text(array: &dyn Array, row: usize) -> Result<Option<String>> {
    if array.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            string_value(array, row).to_string()
        }
        DataType::Timestamp(..) => {
            format_timestamp_micros(timestamp_micros(array, row).unwrap_or_default())
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let mut buf = Vec::new();
            write_json_value(&mut buf, array, row, false)?;
            String::from_utf8(buf)?
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            formatter.value(row).to_string()
        }
    }))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Cells of the `table` format, cut to a readable width.
#[derive(Debug)]
struct TableBuffer {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

const MAX_CELL_CHARS: usize = 48;

impl TableBuffer {
    fn new(columns: &[OutputColumn]) -> Self {
        Self {
            header: columns.iter().map(|c| c.name.clone()).collect(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        for row in 0..batch.num_rows() {
            let mut cells = Vec::with_capacity(self.header.len());
            for index in 0..self.header.len() {
                let text = cell_text(batch.column(index).as_ref(), row)?
                    .unwrap_or_else(|| "null".to_string());
                let text: String = text.replace(['\n', '\r', '\t'], " ");
                cells.push(if text.chars().count() > MAX_CELL_CHARS {
                    let cut: String = text.chars().take(MAX_CELL_CHARS - 1).collect();
                    format!("{cut}…")
                } else {
                    text
                });
            }
            self.rows.push(cells);
        }
        Ok(())
    }

    fn print(&self, out: &mut dyn Write) -> Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| {
                    let pad = width - cell.chars().count();
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect::<Vec<_>>()
                .join(" | ")
                .trim_end()
                .to_string()
        };
        writeln!(out, "{}", line(&self.header))?;
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        writeln!(out, "{}", rule.join("-+-"))?;
        for row in &self.rows {
            writeln!(out, "{}", line(row))?;
        }
        writeln!(
            out,
            "({} row{})",
            self.rows.len(),
            if self.rows.len() == 1 { "" } else { "s" }
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
