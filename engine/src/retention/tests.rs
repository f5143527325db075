use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use chrono::{DateTime, TimeDelta, Utc};

use crate::registry::Project;
use crate::store::Store;
use crate::store::schema::VersionOp;

use super::plan::*;
use super::rewrite::*;
use crate::ingest::{IngestOptions, ingest};
use crate::store::vacuum::{PinnedVersions, Vacuum, VacuumMetrics};

/// The pins of `store`'s state database.
fn pins(store: &Store) -> crate::state::StateDb {
    crate::state::StateDb::of(store).unwrap()
}

/// [`Retention`], its figures checked against its report.
async fn run_retention(
    store: &Store,
    project: &Project,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> crate::Result<(RetentionPlan, RetentionMetrics)> {
    let ((plan, done), figures) = Retention::new(store, project, cutoff)
        .dry_run(dry_run)
        .run()
        .await?;
    assert_eq!(figures.dry_run, dry_run);
    assert_eq!(figures.rows_deleted, plan.rows);
    assert_eq!(figures.files_written, done.files_added);
    Ok((plan, done))
}

/// [`Vacuum`], its figures checked against its report.
async fn vacuum(
    store: &Store,
    project: &Project,
    grace: std::time::Duration,
    dry_run: bool,
    pins: &dyn PinnedVersions,
) -> crate::Result<VacuumMetrics> {
    let (report, figures) = Vacuum::new(store, project, grace, pins)
        .dry_run(dry_run)
        .run()
        .await?;
    assert_eq!(figures.files_removed, report.files_deleted);
    assert_eq!(figures.bytes_removed, report.bytes);
    Ok(report)
}

fn day(d: i64, hour: u32) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + TimeDelta::days(d)
        + TimeDelta::hours(i64::from(hour))
}

fn event(id: &str, root: &str, created: DateTime<Utc>) -> String {
    serde_json::json!({
        "id": id,
        "span_id": id,
        "root_span_id": root,
        "created": created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "input": format!("input of {id} {}", "x".repeat(200)),
    })
    .to_string()
}

async fn ingest_lines(store: &Store, project: &Project, lines: &[String]) {
    let input = std::io::Cursor::new(lines.join("\n").into_bytes());
    ingest(
        store,
        project,
        Box::new(input),
        "test",
        &IngestOptions::default(),
    )
    .await
    .unwrap();
}

/// Ten days, one commit (file) per day, four traces of 5 spans a day;
/// then one commit spanning days 2..=9 (a file straddling the cutoff).
/// Returns every `created` ingested.
async fn fixture(store: &Store, project: &Project) -> Vec<DateTime<Utc>> {
    let mut all = Vec::new();
    for d in 0..10 {
        let mut lines = Vec::new();
        for t in 0..4 {
            for s in 0..5 {
                let created = day(d, t * 5 + s);
                lines.push(event(
                    &format!("d{d}t{t}s{s}"),
                    &format!("d{d}t{t}"),
                    created,
                ));
                all.push(created);
            }
        }
        ingest_lines(store, project, &lines).await;
    }
    let mut lines = Vec::new();
    for d in 2..10 {
        // One trace per day continues in the late commit.
        let created = day(d, 23);
        lines.push(event(&format!("late{d}"), &format!("d{d}t0"), created));
        all.push(created);
    }
    ingest_lines(store, project, &lines).await;
    all
}

async fn resolved_count(store: &Store, project: &Project) -> usize {
    let logs = store.logs(project).await.unwrap();
    let ctx = crate::session::session(&crate::session::SessionOptions::default()).unwrap();
    let batches = logs
        .resolved_view(&ctx)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn cutoff_refuses_zero_days_unless_forced() {
    let now = day(10, 0);
    let err = cutoff_for(now, 0, false).unwrap_err();
    assert!(err.to_string().contains("retention_days is 0"), "{err}");
    assert_eq!(cutoff_for(now, 0, true).unwrap(), now);
    assert_eq!(cutoff_for(now, 3, false).unwrap(), day(7, 0));
    assert!(cutoff_for(now, u32::MAX, false).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_run_and_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, time) = crate::clock::Clock::manual(Utc::now());
    let store = Store::open(dir.path()).unwrap().with_clock(clock);
    let project = store.registry().unwrap().resolve_or_create("p").unwrap();
    let created = fixture(&store, &project).await;
    let cutoff = cutoff_for(day(10, 12), 5, false).unwrap(); // day 5, 12:00
    let expected_rows = created.iter().filter(|c| **c < cutoff).count() as u64;
    assert_eq!(resolved_count(&store, &project).await, created.len());

    // Dry run: the plan, nothing changes.
    let before = store.logs(&project).await.unwrap().version();
    let (preview, metrics) = run_retention(&store, &project, cutoff, true).await.unwrap();
    assert!(metrics.dry_run);
    assert_eq!(metrics.version, None);
    assert_eq!(store.logs(&project).await.unwrap().version(), before);
    assert_eq!(resolved_count(&store, &project).await, created.len());

    assert_eq!(preview.cutoff, cutoff);
    assert_eq!(preview.rows, expected_rows);
    // Days 0..=4 whole (20 traces), day 5 traces 0 and 1 (hours 0..=9 < 12),
    // trace 2 (hours 10..=14) partly; the late rows of days 2..=4 join
    // traces already counted.
    assert_eq!(preview.traces, Some(20 + 3));
    // Days 0..=4 are dropped; day 5 and the late file straddle.
    assert_eq!(preview.files_to_drop.len(), 5);
    assert_eq!(preview.files_to_rewrite.len(), 2);
    assert!(
        preview
            .files_to_drop
            .iter()
            .all(|f| f.rows == 20 && f.expired_rows == 20)
    );
    assert!(preview.bytes_to_reclaim > 0);

    // The run applies exactly the plan, in one commit.
    let (plan, metrics) = run_retention(&store, &project, cutoff, false)
        .await
        .unwrap();
    assert_eq!(plan.figures(), preview.figures());
    assert_eq!(plan.files_to_drop, preview.files_to_drop);
    assert_eq!(plan.files_to_rewrite, preview.files_to_rewrite);
    assert_eq!(
        plan.traces, None,
        "a run does not read dropped files to count traces"
    );
    assert!(!metrics.dry_run);
    assert_eq!(metrics.version, before.map(|v| v + 1));
    assert_eq!(metrics.rows_deleted, plan.rows);
    assert_eq!(
        metrics.files_removed,
        (plan.files_to_drop.len() + plan.files_to_rewrite.len()) as u64
    );
    assert_eq!(metrics.files_dropped, 5);
    assert_eq!(metrics.files_rewritten, 2);
    let live = created.iter().filter(|c| **c >= cutoff).count();
    assert_eq!(resolved_count(&store, &project).await, live);
    assert_eq!(
        metrics.rows_copied,
        plan.files_to_rewrite
            .iter()
            .map(|f| f.rows - f.expired_rows)
            .sum::<u64>()
    );

    // A second run has nothing to do.
    let (again, metrics) = run_retention(&store, &project, cutoff, false)
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(metrics.version, None);

    // Vacuum: with the default grace nothing is old enough yet.
    let table_dir = dir.path().join("projects").join(&project.id).join("logs");
    let kept = vacuum(
        &store,
        &project,
        std::time::Duration::from_secs(86_400),
        false,
        &pins(&store),
    )
    .await
    .unwrap();
    assert_eq!(kept.files_deleted, 0);
    // With grace 0 (a moment later), the 7 removed files go: a second
    // after now by the store's clock (vacuum compares with the times the
    // table's commits were written).
    time.set(Utc::now() + TimeDelta::seconds(1));
    let preview = vacuum(
        &store,
        &project,
        std::time::Duration::ZERO,
        true,
        &pins(&store),
    )
    .await
    .unwrap();
    assert_eq!(preview.files_deleted, 7);
    let bytes_before = dir_bytes(&table_dir);
    let done = vacuum(
        &store,
        &project,
        std::time::Duration::ZERO,
        false,
        &pins(&store),
    )
    .await
    .unwrap();
    assert_eq!(done.files_deleted, 7);
    assert_eq!(done.bytes, preview.bytes);
    assert!(done.bytes > 0);
    let bytes_after = dir_bytes(&table_dir);
    assert!(
        bytes_after < bytes_before,
        "{bytes_after} >= {bytes_before}"
    );
    assert!(bytes_before - bytes_after + 4096 >= done.bytes);
    // Reads are unaffected.
    assert_eq!(resolved_count(&store, &project).await, live);
}

/// `(id, created, output)` of every resolved row, by id.
async fn resolved_rows(
    store: &Store,
    project: &Project,
) -> Vec<(String, Option<i64>, Option<String>)> {
    let logs = store.logs(project).await.unwrap();
    let ctx = crate::session::session(&crate::session::SessionOptions::default()).unwrap();
    let batches = logs
        .resolved_view(&ctx)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for batch in &batches {
        let batch = arrow::compute::cast(
            &arrow::array::StructArray::from(batch.clone()) as &dyn Array,
            &DataType::Struct(
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| match f.data_type() {
                        DataType::Utf8View => {
                            Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8))
                        }
                        _ => Arc::clone(f),
                    })
                    .collect(),
            ),
        )
        .unwrap();
        let batch = RecordBatch::from(batch.as_struct());
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let created = batch
            .column_by_name("created")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let output = batch.column_by_name("output").unwrap().as_string::<i32>();
        for i in 0..batch.num_rows() {
            rows.push((
                ids.value(i).to_string(),
                created.is_valid(i).then(|| created.value(i)),
                output.is_valid(i).then(|| output.value(i).to_string()),
            ));
        }
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_an_expired_row_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let project = store.registry().unwrap().resolve_or_create("p").unwrap();
    let old = day(0, 0);
    let new = day(9, 0);
    let cutoff = day(5, 0);
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let line = |v: serde_json::Value| v.to_string();
    // Commit 1 (old and new rows, first versions only).
    ingest_lines(
        &store,
        &project,
        &[
            event("a", "a", old),
            event("b", "b", old),
            event("c", "c", new),
            event("f", "f", old),
        ],
    )
    .await;
    // Commit 2: a clean file of new rows only (never read unless needed).
    ingest_lines(
        &store,
        &project,
        &[event("g", "g", new), event("e", "e", new)],
    )
    .await;
    // Commit 3: later versions.
    ingest_lines(
        &store,
        &project,
        &[
            // Merges keep the row's `created`: null here.
            line(serde_json::json!({"id": "a", "_is_merge": true, "output": "a2"})),
            // A replace starts the row again, with a new `created`.
            line(serde_json::json!({"id": "b", "created": at(new), "output": "b2"})),
            // A merge's own `created` is ignored: c stays, merged.
            line(serde_json::json!({"id": "c", "_is_merge": true, "created": at(old), "output": "c2"})),
            line(serde_json::json!({"id": "g", "_is_merge": true, "created": at(old), "output": "g2"})),
            // A merge onto no row starts it, with its own `created`.
            line(serde_json::json!({"id": "d", "_is_merge": true, "created": at(old), "output": "d1"})),
            line(serde_json::json!({"id": "e", "_object_delete": true})),
            line(serde_json::json!({"id": "f", "_object_delete": true})),
        ],
    )
    .await;
    let before = resolved_rows(&store, &project).await;
    let ids = |rows: &[(String, Option<i64>, Option<String>)]| {
        rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ["a", "b", "c", "d", "g"]);

    let (preview, _) = run_retention(&store, &project, cutoff, true).await.unwrap();
    // a: 2 versions; b: its old replace; d: 1; f: 2 (old row, then its delete).
    assert_eq!(preview.rows, 2 + 1 + 1 + 2, "{preview:?}");
    assert!(preview.files_read_for_versions > 0);
    let (plan, metrics) = run_retention(&store, &project, cutoff, false)
        .await
        .unwrap();
    assert_eq!(plan.figures(), preview.figures());
    assert_eq!(metrics.rows_deleted, 6);

    let after = resolved_rows(&store, &project).await;
    let new_micros = Some(new.timestamp_micros());
    assert_eq!(
        after,
        vec![
            ("b".to_string(), new_micros, Some("\"b2\"".to_string())),
            ("c".to_string(), new_micros, Some("\"c2\"".to_string())),
            ("g".to_string(), new_micros, Some("\"g2\"".to_string())),
        ],
        "no half rows: `a` and `d` went whole, `c` and `g` kept their merges"
    );
    // Row versions left: b 1, c 2, g 2, e 2 (a new row, then its delete).
    let logs = store.logs(&project).await.unwrap();
    let stored: i64 = logs
        .table()
        .unwrap()
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.num_records().unwrap() as i64)
        .sum();
    assert_eq!(stored, 7);
    // Nothing left to do.
    let (again, _) = run_retention(&store, &project, cutoff, false)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn fate_of_an_ids_versions() {
    let cut = 1_000;
    let v = |op: VersionOp, created: Option<i64>| Version {
        xact: 0,
        seq: 0,
        op: op as i32,
        created,
        file: 0,
    };
    use VersionOp::{Delete, Merge, NewReplace, Replace};
    let (old, new) = (Some(10), Some(2_000));
    // An expired row goes with its merges (no half row).
    assert_eq!(
        decide(&[v(NewReplace, old), v(Merge, None)], cut, false),
        Fate::All
    );
    // A merge's own `created` does not expire a live row.
    assert_eq!(
        decide(&[v(NewReplace, new), v(Merge, old)], cut, false),
        Fate::Keep
    );
    // Superseded by a newer replace: the old incarnation goes alone.
    assert_eq!(
        decide(&[v(NewReplace, old), v(Replace, new)], cut, false),
        Fate::Prefix(1)
    );
    // The row queries see expired: everything goes, the newer
    // incarnation before it too (it must not come back).
    assert_eq!(
        decide(&[v(NewReplace, new), v(Replace, old)], cut, false),
        Fate::All
    );
    // Deleted then started again by a merge: the deleted one goes.
    assert_eq!(
        decide(
            &[v(NewReplace, old), v(Delete, None), v(Merge, None)],
            cut,
            false
        ),
        Fate::Prefix(2)
    );
    assert_eq!(
        decide(&[v(NewReplace, old), v(Delete, None)], cut, false),
        Fate::All
    );
    // A null `created` is kept.
    assert_eq!(
        decide(&[v(NewReplace, None), v(Merge, old)], cut, false),
        Fate::Keep
    );
    // Without its first version, the fate waits for a look at the files
    // not read yet.
    assert_eq!(decide(&[v(Merge, old)], cut, false), Fate::NeedFirst);
    assert_eq!(decide(&[v(Merge, old)], cut, true), Fate::All);
    assert_eq!(
        decide(&[v(Merge, None), v(Merge, old)], cut, false),
        Fate::Keep
    );
}

#[tokio::test]
async fn empty_project_plans_nothing_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let project = store.registry().unwrap().resolve_or_create("p").unwrap();
    let (plan, metrics) = run_retention(&store, &project, day(0, 0), false)
        .await
        .unwrap();
    assert!(plan.is_empty());
    assert_eq!(metrics, RetentionMetrics::default());
    assert!(store.logs(&project).await.unwrap().table().is_none());
    let v = vacuum(
        &store,
        &project,
        std::time::Duration::ZERO,
        false,
        &pins(&store),
    )
    .await
    .unwrap();
    assert_eq!(v.files_deleted, 0);
}
