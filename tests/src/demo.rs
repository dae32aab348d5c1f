//! `understudy demo`: an embedded production with a steady writer, a sandbox created from it, then a live view of
//! the sandbox following it, including a schema change on production that the follower applies, and a final
//! checksum comparison of every table.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::source::SourceServer;
use crate::writer::Writer;
use anyhow::{Context, anyhow};
use understudy::pg::QualifiedName;
use understudy::progress::human_bytes;
use understudy::sandbox::{self, CreateOptions, StateDir, follow};
use understudy::source::{Replicate, SandboxName, objects};
use understudy::verify::checksum;

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub keep: bool,
    pub watch_seconds: u64,
    pub rows: i64,
    /// Where the dry-run reports go (kept after the clusters are removed).
    pub reports: Option<PathBuf>,
    /// Skip the dry-runs (only the sandbox part).
    pub sandbox_only: bool,
    /// Where to put the demo's clusters; a fresh temporary directory when `None`.
    pub state_dir: Option<PathBuf>,
}

/// What the demo established (asserted by its test).
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    pub tables_equal: usize,
    pub tables_total: usize,
    pub writes_during_follow: u64,
    pub ddl_applied: Vec<String>,
    /// Each curated migration's dry-run: (name, verdict, the number that matters).
    pub dry_runs: Vec<(String, understudy::report::Verdict, String)>,
    pub reports_dir: Option<PathBuf>,
}

/// Runs the demo, printing as it goes.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoOutcome> {
    let root = match &opts.state_dir {
        Some(dir) => dir.join("demo"),
        None => std::env::temp_dir().join(format!("understudy-demo-{}", std::process::id())),
    };
    if root.exists() {
        return Err(anyhow!(
            "{} exists (a kept demo?): remove it or pass another --state-dir",
            root.display()
        ));
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", root.display()))?;
    }
    let result = demo(&opts, &root).await;
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

async fn demo(opts: &DemoOptions, root: &std::path::Path) -> anyhow::Result<DemoOutcome> {
    let started = Instant::now();
    println!("== Understudy demo: a sandbox that follows production ==");
    println!(
        "[1/5] starting an embedded \"production\" and loading {} orders ...",
        opts.rows
    );
    let mut source = SourceServer::start(&root.join("production"), "shop", &[]).await?;
    source.load_sample(opts.rows, "shop_pub").await?;
    let admin = source.admin().await?;
    admin
        .batch_execute(&format!(
            "{}\nALTER PUBLICATION shop_pub ADD TABLE orgs, accounts, users;\n\
             GRANT SELECT ON orgs, accounts, users TO {};",
            crate::migrations::SEED,
            understudy::pg::quote_ident(crate::source::REPLICATOR)
        ))
        .await
        .map_err(understudy::pg::PgError::sql("loading the production shapes"))?;
    println!(
        "      production listens on 127.0.0.1:{} (database shop)",
        source.cluster.port()
    );

    println!("[2/5] starting the application's steady writer (~200 transactions/s)");
    let writer = Writer::start(source.admin().await?, 200);

    let state = StateDir::at(root.join("state"));
    let name = SandboxName::parse("shop")?;
    println!(
        "[3/5] understudy sandbox create shop --publication shop_pub (as least-privilege role understudy_replicator)"
    );
    let create = CreateOptions {
        name: name.clone(),
        source: source.replicator_conninfo(),
        replicate: Replicate::Publication("shop_pub".into()),
        state_dir: state.clone(),
        jobs: 2,
        wal_budget_bytes: 1 << 30,
        progress: true,
        resync: Default::default(),
        subset: None,
        mask: None,
    };
    let say = |line: &str| println!("      {line}");
    let mut result = follow_and_check(opts, &source, &admin, writer, &state, &name, &create, &say, started).await;
    if let Ok(outcome) = &mut result
        && !opts.sandbox_only
    {
        let reports = opts
            .reports
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("understudy-demo-reports-{}", std::process::id())));
        match dry_runs(&source, &state, &name, &reports).await {
            Ok(runs) => {
                outcome.dry_runs = runs;
                outcome.reports_dir = Some(reports);
            }
            Err(e) => result = Err(e),
        }
        if let Ok(outcome) = &result {
            print_summary(outcome, started);
        }
    }
    if opts.keep {
        source.keep();
        println!();
        println!("kept for exploring:");
        println!("  production: psql \"{}\"", source.cluster.conninfo("shop"));
        if let Ok(meta) = sandbox::SandboxMeta::load(&state.sandbox_dir(&name)) {
            println!(
                "  sandbox:    psql \"host={} port={} user=postgres dbname=shop\"",
                meta.cluster.socket_dir.display(),
                meta.cluster.port
            );
        }
        println!(
            "  status:     understudy --state-dir {} sandbox status shop",
            state.root().display()
        );
        println!(
            "  clean up:   understudy --state-dir {} sandbox delete shop, then stop production with pg_ctl -D {} stop",
            state.root().display(),
            source.cluster.data_dir().display()
        );
    } else {
        let _ = sandbox::delete(&state, &name, None, true).await;
        let left = objects::slots_like(&admin, "understudy\\_%")
            .await
            .map(|s| s.len())
            .unwrap_or(0);
        source.destroy().await?;
        println!("cleaned up: sandbox deleted, {left} Understudy slot(s) left on production, production stopped");
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn follow_and_check(
    opts: &DemoOptions,
    source: &SourceServer,
    admin: &tokio_postgres::Client,
    writer: Writer,
    state: &StateDir,
    name: &SandboxName,
    create: &CreateOptions,
    say: &(dyn Fn(&str) + Sync),
    started: Instant,
) -> anyhow::Result<DemoOutcome> {
    let meta = sandbox::create(create, say).await?;
    let sandbox_cluster = sandbox::cluster_of(&meta)?;
    let sandbox_db = sandbox_cluster.connect(&meta.database).await?;
    println!(
        "[4/5] following production for {} s; at the midpoint production runs ALTER TABLE orders ADD COLUMN coupon text",
        opts.watch_seconds
    );
    println!(
        "      {:>5}  {:>12}  {:>12}  {:>10}  {:>10}",
        "t", "prod orders", "sandbox", "lag", "writes"
    );
    let before = writer.transactions();
    let mut ddl_applied = Vec::new();
    let mut altered = false;
    for second in 1..=opts.watch_seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !altered && second >= opts.watch_seconds / 2 {
            admin
                .batch_execute("ALTER TABLE orders ADD COLUMN coupon text")
                .await
                .map_err(understudy::pg::PgError::sql("altering production"))?;
            writer.state.write_coupon.store(true, Ordering::Relaxed);
            altered = true;
            println!("      production: ALTER TABLE orders ADD COLUMN coupon text (the writer now fills it)");
        }
        let report = follow::follow_once(state, name).await?;
        for line in &report.applied {
            println!("      follower applied to the sandbox: {line}");
            ddl_applied.push(line.clone());
        }
        let prod: i64 = count(admin, "orders").await?;
        let sand: i64 = count(&sandbox_db, "orders").await?;
        let lag = objects::slot_info(admin, &meta.slot)
            .await?
            .map(|s| s.lag_bytes)
            .unwrap_or(0);
        println!(
            "      {:>4}s  {:>12}  {:>12}  {:>10}  {:>10}",
            second,
            prod,
            sand,
            human_bytes(lag),
            writer.transactions() - before
        );
    }
    let writes = writer.transactions() - before;
    writer.stop().await?;
    // Let the follower apply anything left, then wait for the sandbox to confirm production's last position.
    follow::follow_once(state, name).await?;
    let target: String = admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(understudy::pg::PgError::sql("reading the WAL position"))?
        .get(0);
    let target = target
        .parse()
        .map_err(|e: understudy::lsn::ParseLsnError| anyhow!(e.to_string()))?;
    sandbox::create::wait_caught_up(&sandbox_db, &meta.subscription, target, Duration::from_secs(60)).await?;

    println!("[5/5] writer stopped; comparing every table at production's position {target}");
    let tables = [
        QualifiedName::new("public", "customers"),
        QualifiedName::new("public", "orders"),
        QualifiedName::new("public", "events"),
    ];
    let mut equal = 0;
    for table in &tables {
        let a = checksum::table_checksum(admin, table, &[]).await?;
        let b = checksum::table_checksum(&sandbox_db, table, &[]).await?;
        let same = a == b;
        equal += usize::from(same);
        println!(
            "      {:<20} production {:>8} rows {}  sandbox {:>8} rows {}  {}",
            table.to_string(),
            a.rows,
            &a.md5[..8],
            b.rows,
            &b.md5[..8],
            if same { "equal" } else { "DIFFERENT" }
        );
    }
    let st = sandbox::status(state, name).await?;
    println!(
        "sandbox status: {:?}, lag {} bytes, our slot keeps {} of WAL on production",
        st.state,
        st.lag_bytes.unwrap_or(0),
        human_bytes(st.retained_wal_bytes.unwrap_or(0))
    );
    println!(
        "summary: {equal}/{} tables equal after {writes} concurrent writes and 1 schema change, in {:.0}s",
        tables.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = source;
    Ok(DemoOutcome {
        dry_runs: Vec::new(),
        reports_dir: None,
        tables_equal: equal,
        tables_total: tables.len(),
        writes_during_follow: writes,
        ddl_applied,
    })
}

async fn count(client: &tokio_postgres::Client, table: &str) -> anyhow::Result<i64> {
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(understudy::pg::PgError::sql("counting rows"))?
        .get(0))
}

/// Dry-runs every curated migration under the steady writer and returns (name, verdict, the number that matters).
async fn dry_runs(
    source: &SourceServer,
    state: &StateDir,
    sandbox: &SandboxName,
    reports: &std::path::Path,
) -> anyhow::Result<Vec<(String, understudy::report::Verdict, String)>> {
    use tokio_util::sync::CancellationToken;
    use understudy::dryrun::progress::Silent;
    use understudy::dryrun::{self, DryRunRequest, SimulatedReader, SqlText};
    use understudy::report::Thresholds;
    use understudy::units;
    std::fs::create_dir_all(reports).with_context(|| format!("creating {}", reports.display()))?;
    println!();
    println!("== Dry-runs: each migration on a fork, under production's replayed writes, against a control twin ==");
    let writer = Writer::start(source.admin().await?, 200);
    let mut out = Vec::new();
    for (i, m) in crate::migrations::CURATED.iter().enumerate() {
        println!(
            "[{}/{}] {} — {}",
            i + 1,
            crate::migrations::CURATED.len(),
            m.name,
            m.pattern
        );
        let write = |suffix: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = reports.join(format!("{:02}-{}.{suffix}", i + 1, m.name));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        write("up.sql", m.up)?;
        let sql = |name: &str, text: &str| SqlText {
            name: Some(format!("{:02}-{}.{name}", i + 1, m.name)),
            sql: text.to_string(),
        };
        let mut request = DryRunRequest::new(sandbox.as_str(), sql("up.sql", m.up));
        if let Some(d) = m.down {
            write("down.sql", d)?;
            request.down = Some(sql("down.sql", d));
        }
        if let Some(c) = m.checks {
            write("checks.sql", c)?;
            request.checks = Some(sql("checks.sql", c));
        }
        request.warmup = Some(units::Duration::from_millis(1500));
        request.after = Some(units::Duration::from_millis(1000));
        request.workers = Some(2);
        request.statement_timeout = Some(units::Duration::from_secs(60));
        request.deadline = Some(units::Duration::from_secs(120));
        request.simulate_readers = m
            .long_reader
            .map(|(t, s)| {
                vec![SimulatedReader {
                    table: t.to_string(),
                    hold: units::Duration::from_secs(s),
                }]
            })
            .unwrap_or_default();
        let (mut opts, schedule) = request.validate(&Thresholds::default())?;
        opts.fork_name = SandboxName::parse(&format!("demo-{}", m.name))?;
        let report = dryrun::execute(state, &opts, &schedule, &Silent, &CancellationToken::new())
            .await
            .with_context(|| format!("dry-run {}", m.name))?;
        let json = serde_json::to_string_pretty(&report)?;
        write("json", &json)?;
        write("md", &report.markdown())?;
        let number = key_number(&report);
        println!("      {:?}: {number}", report.verdict.result);
        out.push((m.name.to_string(), report.verdict.result, number));
    }
    writer.stop().await?;
    Ok(out)
}

/// The one number that matters for a report.
fn key_number(r: &understudy::report::DryRunReport) -> String {
    if let Some(l) = r.rollback.lossy_columns.first() {
        return format!(
            "{} values of {}.{} not restored by the down-migration",
            l.values_not_restored, l.table, l.column
        );
    }
    let preflight: Vec<String> = r.preflight.iter().map(|p| p.message.clone()).collect();
    if !preflight.is_empty() {
        return preflight.join("; ");
    }
    if r.writes.failed > 0 {
        return format!("{} replayed writes failed on the new schema", r.writes.failed);
    }
    if r.writes.blocked > 0 {
        // The longest-held lock on a relation others can see: a relation the migration is creating (an index
        // being built) shows as a bare OID, holds its lock exactly as long, and blocks nobody.
        let lock = r
            .migration
            .statements
            .iter()
            .flat_map(|s| s.locks.iter())
            .filter(|l| l.relation.parse::<u32>().is_err())
            .max_by(|a, b| a.held_ms.total_cmp(&b.held_ms));
        return format!(
            "{} writes blocked, up to {:.2} s each{}",
            r.writes.blocked,
            r.writes.blocked_max_ms / 1000.0,
            lock.map(|l| format!(" ({} on {} held {:.0} ms)", l.mode, l.relation, l.held_ms))
                .unwrap_or_default()
        );
    }
    if !r.migration.ok {
        return r.verdict.reasons.first().cloned().unwrap_or_default();
    }
    format!(
        "{} writes replayed, 0 blocked, 0 failed{}",
        r.writes.replayed,
        if r.findings
            .iter()
            .any(|f| f.code == understudy::report::FindingCode::RollbackProven)
        {
            ", rollback proven"
        } else {
            ""
        }
    )
}

fn print_summary(outcome: &DemoOutcome, started: Instant) {
    println!();
    println!("== Summary ({:.0} s) ==", started.elapsed().as_secs_f64());
    println!(
        "  sandbox: {}/{} tables equal to production after {} concurrent writes and 1 schema change",
        outcome.tables_equal, outcome.tables_total, outcome.writes_during_follow
    );
    for (name, verdict, number) in &outcome.dry_runs {
        let v = match verdict {
            understudy::report::Verdict::Pass => "PASS",
            understudy::report::Verdict::Warn => "WARN",
            understudy::report::Verdict::Fail => "FAIL",
        };
        println!("  {v:<4}  {name:<17} {number}");
    }
    if let Some(dir) = &outcome.reports_dir {
        println!("  full reports (Markdown and JSON): {}", dir.display());
    }
}
