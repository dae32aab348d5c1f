//! Test-only builders of realistic reports and their pieces, shared by the unit tests of the verdict, the
//! findings, the blocked-write accounting and the renderers. Nothing here is compiled into the library.

use std::time::{Duration, Instant};

use super::{
    DryRunReport, FailureGroup, Finding, FindingCode, ForkSummary, Latency, LocksSummary, MigrationReport, Percentiles,
    ReadProbe, Severity, StatementReport, Thresholds, Windows, WritesReport, judge,
};
use crate::locks::{BlockEpisode, HeldLock, MigrationWait};
use crate::lsn::Lsn;
use crate::migrate::{MigrationOutcome, StatementOutcome};
use crate::replay::live::{WriteFailure, WriteKind, WriteRecord};
use crate::verify::preflight::{PreflightCode, PreflightFinding};
use crate::verify::schema::SchemaChange;
use crate::verify::twins::{NewColumn, Rollback, Verification};

/// The migration file every sample report is about.
pub(crate) const FILE: &str = "migrations/0042_orders_note.sql";

/// `base` plus `ms` milliseconds: synthetic instants for timelines.
pub(crate) fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

/// A statement that ran and succeeded (no instants: see [`StatementOutcome::started_at`]).
pub(crate) fn ok_statement(
    index: usize,
    line: usize,
    sql: &str,
    started_ms: f64,
    duration_ms: f64,
) -> StatementOutcome {
    StatementOutcome {
        index,
        line,
        sql: sql.to_string(),
        started_ms,
        duration_ms,
        ok: true,
        sqlstate: None,
        error: None,
        timed_out: false,
        started_at: None,
        ended_at: None,
    }
}

/// `s` as a failure with `sqlstate` and `error`.
pub(crate) fn failed(mut s: StatementOutcome, sqlstate: &str, error: &str, timed_out: bool) -> StatementOutcome {
    s.ok = false;
    s.sqlstate = Some(sqlstate.to_string());
    s.error = Some(error.to_string());
    s.timed_out = timed_out;
    s
}

/// `s` running from `base + from_ms` to `base + to_ms`.
pub(crate) fn spanning(mut s: StatementOutcome, base: Instant, from_ms: u64, to_ms: u64) -> StatementOutcome {
    s.started_at = Some(at(base, from_ms));
    s.ended_at = Some(at(base, to_ms));
    s
}

/// A statement's report with no locks, waits or blocked writes.
pub(crate) fn statement(outcome: StatementOutcome) -> StatementReport {
    StatementReport {
        outcome,
        locks: Vec::new(),
        waits: Vec::new(),
        blocked_writes: 0,
    }
}

pub(crate) fn held(relation: &str, mode: &str, granted_ms: f64, held_ms: f64, statement: usize) -> HeldLock {
    HeldLock {
        relation: relation.to_string(),
        mode: mode.to_string(),
        granted_ms,
        held_ms,
        statement: Some(statement),
    }
}

pub(crate) fn waited(relation: &str, mode: &str, waited_ms: f64, blockers: &[&str], statement: usize) -> MigrationWait {
    MigrationWait {
        relation: relation.to_string(),
        mode: mode.to_string(),
        waited_ms,
        blockers: blockers.iter().map(ToString::to_string).collect(),
        statement: Some(statement),
    }
}

/// The migration's outcome as `migrate::run` would give it for these statements.
pub(crate) fn outcome_of(statements: &[StatementReport], skipped: usize) -> MigrationOutcome {
    let outcomes: Vec<StatementOutcome> = statements.iter().map(|s| s.outcome.clone()).collect();
    MigrationOutcome {
        pid: 4100,
        ok: outcomes.iter().all(|s| s.ok),
        duration_ms: outcomes.iter().map(|s| s.duration_ms).sum(),
        statements: outcomes,
        skipped,
    }
}

pub(crate) fn percentiles(count: usize, p50_ms: f64, p99_ms: f64, max_ms: f64) -> Percentiles {
    Percentiles {
        count,
        p50_ms,
        p99_ms,
        max_ms,
    }
}

/// `replayed` writes, none failed or blocked.
pub(crate) fn quiet_writes(replayed: usize) -> WritesReport {
    WritesReport {
        replayed,
        per_second: replayed as f64 / 14.0,
        failed: 0,
        blocked: 0,
        blocked_total_ms: 0.0,
        blocked_max_ms: 0.0,
        latency: Latency {
            before: percentiles(replayed / 3, 1.2, 4.8, 6.1),
            during: percentiles(replayed / 3, 1.4, 5.5, 7.9),
            after: percentiles(replayed / 3, 1.3, 5.2, 7.0),
        },
        lag: percentiles(replayed, 38.0, 95.0, 120.0),
        failures: Vec::new(),
        unapplied: 0,
    }
}

pub(crate) fn write_failure(table: &str, kind: WriteKind, sqlstate: &str, message: &str, sample: &str) -> WriteFailure {
    WriteFailure {
        table: table.to_string(),
        kind,
        sqlstate: sqlstate.to_string(),
        message: message.to_string(),
        sample: sample.to_string(),
    }
}

/// A replayed transaction of one change by worker `worker_pid`, handed over at `queued`, run from `start` to
/// `end`, that committed on production 5 ms before it began.
pub(crate) fn record(worker_pid: i32, queued: Instant, start: Instant, end: Instant) -> WriteRecord {
    WriteRecord {
        worker_pid,
        queued,
        start,
        end,
        lag: end.saturating_duration_since(start) + Duration::from_millis(5),
        changes: 1,
        end_lsn: Lsn(0),
        failure: None,
    }
}

/// A replay worker `pid` waiting on `public.orders` from `start` to `end`.
pub(crate) fn episode(pid: i32, start: Instant, end: Instant) -> BlockEpisode {
    BlockEpisode {
        pid,
        application_name: "understudy-replay".into(),
        relation: "public.orders".into(),
        mode: "RowExclusiveLock".into(),
        start,
        end,
        waited_ms: end.saturating_duration_since(start).as_secs_f64() * 1000.0,
    }
}

pub(crate) fn finding(code: FindingCode, severity: Severity, title: &str) -> Finding {
    Finding::new(code, severity, title.to_string(), String::new(), "")
}

fn column_added(name: &str, definition: &str) -> SchemaChange {
    SchemaChange {
        kind: "column".into(),
        name: name.into(),
        change: "added".into(),
        before: None,
        after: Some(definition.into()),
    }
}

const BLOCKER: &str = "pid 4242 (report): SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id";

/// The statements of a migration that backfills a new column and fails to make it NOT NULL: the index build
/// blocks writes, the SET NOT NULL times out waiting behind a long report.
pub(crate) fn failing_statements() -> Vec<StatementReport> {
    let mut add = statement(ok_statement(0, 1, "ALTER TABLE orders ADD COLUMN note text;", 0.0, 3.1));
    add.locks = vec![held("public.orders", "AccessExclusiveLock", 0.4, 20.0, 0)];
    let mut index = statement(ok_statement(
        1,
        2,
        "CREATE INDEX orders_customer_idx\n    ON orders (customer_id);",
        3.1,
        4210.4,
    ));
    index.locks = vec![held("public.orders", "ShareLock", 3.5, 4220.0, 1)];
    index.blocked_writes = 37;
    let mut backfill = statement(ok_statement(
        2,
        4,
        "UPDATE orders SET note = 'legacy ' || id WHERE created_at < now() - interval '1 year' AND note IS NULL;",
        4213.5,
        912.0,
    ));
    backfill.locks = vec![held("public.orders", "RowExclusiveLock", 4214.0, 920.0, 2)];
    let mut not_null = statement(failed(
        ok_statement(
            3,
            6,
            "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;",
            5125.5,
            2000.2,
        ),
        "57014",
        "canceling statement due to statement timeout",
        true,
    ));
    not_null.waits = vec![waited("public.orders", "AccessExclusiveLock", 1995.0, &[BLOCKER], 3)];
    vec![add, index, backfill, not_null]
}

fn failing_writes() -> WritesReport {
    let mut w = quiet_writes(1840);
    w.per_second = 129.6;
    w.failed = 14;
    w.blocked = 37;
    w.blocked_total_ms = 61234.5;
    w.blocked_max_ms = 4180.2;
    w.latency.during = percentiles(620, 3.5, 4100.0, 4180.2);
    w.lag = percentiles(1840, 40.0, 4300.0, 4410.0);
    let not_null = "null value in column \"note\" of relation \"orders\" violates not-null constraint";
    let failures: Vec<WriteFailure> = std::iter::repeat_n(
        write_failure(
            "public.orders",
            WriteKind::Insert,
            "23502",
            not_null,
            "INSERT INTO \"public\".\"orders\" (\"id\", \"customer_id\", \"total\") VALUES ('9001', '17', '12.50')",
        ),
        12,
    )
    .chain(std::iter::repeat_n(
        write_failure(
            "public.orders",
            WriteKind::Update,
            "23502",
            not_null,
            "UPDATE \"public\".\"orders\" SET \"note\" = NULL WHERE \"id\" = '9002'",
        ),
        2,
    ))
    .collect();
    w.failures = FailureGroup::group(&failures);
    w
}

fn failing_findings() -> Vec<Finding> {
    vec![
        Finding::new(
            FindingCode::Preflight(PreflightCode::NotNullViolations),
            Severity::Fail,
            "1200 row(s) of public.orders have NULL in note: SET NOT NULL will fail".into(),
            "samples: id=3, id=8, id=21".into(),
            "backfill note for every row before SET NOT NULL",
        )
        .at(FILE, 6),
        Finding::new(
            FindingCode::Lint("require-concurrent-index-creation".into()),
            Severity::Warn,
            "During normal index creation, table updates are blocked, but reads are still allowed.".into(),
            "measured: ran 4.2 s, held ShareLock on public.orders 4.2 s, 37 write(s) blocked".into(),
            "Use `concurrently` to avoid blocking writes.",
        )
        .at(FILE, 2),
        Finding::new(
            FindingCode::RollbackUntested,
            Severity::Warn,
            "rollback untested: no down-migration given".into(),
            String::new(),
            "pass --down DOWN.sql; if the migration cannot be reversed, say so in the pull request",
        ),
        Finding::new(
            FindingCode::CheckChanged,
            Severity::Warn,
            "check \"legacy notes\" (line 1) changed".into(),
            "migrated: [[Some(\"0 | 1200\")]]; control: [[Some(\"0 | 0\")]]".into(),
            "confirm the new output is what the migration intends",
        ),
        finding(
            FindingCode::SchemaChange,
            Severity::Info,
            "column public.orders.note added: text",
        ),
    ]
}

fn fork() -> ForkSummary {
    ForkSummary {
        name: "shop-dryrun-20250115-100000".into(),
        strategy: "reflink".into(),
        fork_point: "0/1A2B3C4D".into(),
        pause_ms: 12,
        ready_ms: 850,
        kept: false,
        sandbox_generation: 1,
        sandbox_lag_bytes: Some(0),
        sandbox_lag_seconds: Some(0.4),
    }
}

/// A report around `statements`, `writes` and `findings`, its verdict judged with the default thresholds.
pub(crate) fn report(
    statements: Vec<StatementReport>,
    skipped: usize,
    writes: WritesReport,
    findings: Vec<Finding>,
) -> DryRunReport {
    let outcome = outcome_of(&statements, skipped);
    let verdict = judge(&outcome, &statements, &writes, &Thresholds::default(), &findings);
    DryRunReport {
        schema_version: super::SCHEMA_VERSION,
        understudy_version: "0.0.0-test".into(),
        sandbox: "shop".into(),
        started_at: "2025-01-15T10:00:00Z".into(),
        trace_id: None,
        fork: fork(),
        recording: None,
        subset: None,
        windows: Windows {
            warmup_ms: 5000.0,
            migration_ms: outcome.duration_ms,
            after_ms: 3000.0,
        },
        migration: MigrationReport {
            file: FILE.into(),
            ok: outcome.ok,
            duration_ms: outcome.duration_ms,
            skipped,
            statements,
        },
        writes,
        locks: LocksSummary {
            sample_interval_ms: 20.0,
            samples: 812,
            longest_queue: 0,
            longest_queue_relation: None,
            blocked_sessions: Vec::new(),
        },
        reads: Vec::new(),
        preflight: Vec::new(),
        verification: Some(Verification {
            compared_at: "0/1A2F0000".into(),
            ..Verification::default()
        }),
        rollback: Rollback::default(),
        findings,
        verdict,
    }
}

/// A run that fails every way at once: a statement timed out behind a blocker, writes failed and waited, a
/// pre-flight count, lint and rollback warnings, reads blocked.
pub(crate) fn failing_report() -> DryRunReport {
    let mut r = report(failing_statements(), 1, failing_writes(), failing_findings());
    r.trace_id = crate::telemetry::TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736");
    let base = Instant::now();
    let mut writer = episode(5101, at(base, 3), at(base, 4183));
    writer.waited_ms = 4180.2;
    r.locks.longest_queue = 9;
    r.locks.longest_queue_relation = Some("public.orders".into());
    r.locks.blocked_sessions = vec![writer];
    r.reads = vec![
        ReadProbe {
            table: "public.orders".into(),
            probes: 310,
            max_ms: 4150.0,
            blocked_ms: 4020.5,
        },
        ReadProbe {
            table: "public.customers".into(),
            probes: 300,
            max_ms: 3.0,
            blocked_ms: 0.0,
        },
    ];
    r.preflight = vec![PreflightFinding {
        code: PreflightCode::NotNullViolations,
        line: 6,
        table: "public.orders".into(),
        count: 1200,
        samples: vec!["id=3".into(), "id=8".into(), "id=21".into()],
        message: "1200 row(s) of public.orders have NULL in note: SET NOT NULL will fail".into(),
        remedy: "backfill note for every row before SET NOT NULL".into(),
    }];
    if let Some(v) = &mut r.verification {
        v.schema_changes = vec![column_added("public.orders.note", "text")];
        v.new_columns = vec![NewColumn {
            table: "public.orders".into(),
            column: "note".into(),
            definition: "text".into(),
            nulls: 1200,
            rows: 48000,
        }];
    }
    r
}

/// A clean run: a concurrent index and a NOT VALID foreign key, a proven rollback.
pub(crate) fn passing_report() -> DryRunReport {
    let mut index = statement(ok_statement(
        0,
        1,
        "CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer_id);",
        0.0,
        5230.0,
    ));
    index.locks = vec![held("public.orders", "ShareUpdateExclusiveLock", 0.6, 5240.0, 0)];
    let mut fk = statement(ok_statement(
        1,
        2,
        "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;",
        5230.0,
        4.2,
    ));
    fk.locks = vec![
        held("public.orders", "ShareRowExclusiveLock", 5230.5, 20.0, 1),
        held("public.customers", "ShareRowExclusiveLock", 5230.8, 20.0, 1),
    ];
    let findings = vec![
        finding(
            FindingCode::SchemaChange,
            Severity::Info,
            "index public.orders_customer_idx added: CREATE INDEX orders_customer_idx ON public.orders USING btree \
             (customer_id)",
        ),
        finding(
            FindingCode::RollbackProven,
            Severity::Info,
            "the down-migration restores the control twin's schema and data (4 tables compared)",
        ),
    ];
    let mut r = report(vec![index, fk], 0, quiet_writes(1806), findings);
    r.reads = vec![ReadProbe {
        table: "public.orders".into(),
        probes: 512,
        max_ms: 8.5,
        blocked_ms: 0.0,
    }];
    r.rollback = Rollback {
        tested: true,
        file: Some("migrations/0042_orders_note.down.sql".into()),
        ok: true,
        tables_compared: 4,
        ..Rollback::default()
    };
    r
}
