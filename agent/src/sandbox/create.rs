//! `sandbox create`: preflight, then (with every source-side object recorded in the metadata *before* it is
//! created, so that an interrupted or failed create can always be undone) the sandbox cluster, the publication if
//! asked, the schema, the slot with its exported snapshot, the parallel copy, indexes, sequences and the
//! subscription that streams from the slot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::state::{self, InitialCopy, ResyncPolicy, SandboxMeta, SandboxState, StateDir};
use super::{SandboxError, closure, copy, delete, sandbox_cluster_config, schema, sequences, space};
use crate::lsn::Lsn;
use crate::mask::MaskConfig;
use crate::pg::cluster::Cluster;
use crate::pg::connect::connect_source;
use crate::pg::os_user::RunAs;
use crate::pg::tools::{ExportedSlot, Section};
use crate::pg::{ConnInfo, PgBinaries, PgError, QualifiedName, quote_ident, quote_literal};
use crate::progress::{Progress, human_bytes};
use crate::source::identity::{self, SourceMark};
use crate::source::{self, Replicate, SandboxName, Subset, SubsetState, catalog, objects};

/// What `sandbox create` needs.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub name: SandboxName,
    pub source: ConnInfo,
    pub replicate: Replicate,
    pub state_dir: StateDir,
    /// Parallel copy workers (and `pg_restore` jobs).
    pub jobs: usize,
    /// The most WAL our slot may keep on the source.
    pub wal_budget_bytes: u64,
    /// Draw progress on a terminal.
    pub progress: bool,
    /// What happens when the sandbox goes stale.
    pub resync: ResyncPolicy,
    /// The rows to hold, when not all (row filters of the publication Understudy creates).
    pub subset: Option<Subset>,
    /// Masking per column, applied as rows arrive.
    pub mask: Option<MaskConfig>,
}

/// Creates a sandbox. On failure everything created so far is removed (source objects first) and the error is
/// returned.
pub async fn create(opts: &CreateOptions, say: &(dyn Fn(&str) + Sync)) -> Result<SandboxMeta, SandboxError> {
    prepare(opts, say).await?.build(say).await
}

/// A create that passed its checks: nothing exists yet, on the source or here.
pub struct Prepared {
    opts: CreateOptions,
    bins: PgBinaries,
    run_as: RunAs,
    client: tokio_postgres::Client,
    checked: source::Preflight,
    database: String,
}

/// The checks of a create, before anything is made: the name is free, PostgreSQL's programs are here, the
/// source answers and passes preflight. Refusals are the caller's to fix (an API answers them with 400).
pub async fn prepare(opts: &CreateOptions, say: &(dyn Fn(&str) + Sync)) -> Result<Prepared, SandboxError> {
    let dir = opts.state_dir.sandbox_dir(&opts.name);
    if dir.exists() {
        return Err(SandboxError::Exists {
            name: opts.name.to_string(),
            dir,
        });
    }
    check(opts, say).await
}

/// The checks of [`prepare`] but the name's: a resync builds the next copy of a sandbox that exists.
pub(crate) async fn check(opts: &CreateOptions, say: &(dyn Fn(&str) + Sync)) -> Result<Prepared, SandboxError> {
    let bins = PgBinaries::locate()?;
    let run_as = RunAs::detect()?;
    let client = connect_source(&opts.source, "understudy")
        .await
        .map_err(SandboxError::SourceUnreachable)?;
    let checked = source::preflight::run(
        &client,
        &opts.replicate,
        &opts.name.slot(),
        &opts.name.publication(),
        bins.major(),
        opts.subset.as_ref(),
        opts.mask.as_ref(),
    )
    .await??;
    for warning in &checked.warnings {
        say(&format!("warning: {warning}"));
    }
    say(&format!(
        "preflight passed: {} table(s) to replicate as role {}",
        checked.tables.len(),
        checked.role
    ));
    let table_bytes = source_table_bytes(&client, &checked.tables).await?;
    space::check(opts.state_dir.root(), table_bytes)?;
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(PgError::sql("reading the source's database name"))?
        .get(0);
    Ok(Prepared {
        opts: opts.clone(),
        bins,
        run_as,
        client,
        checked,
        database,
    })
}

impl Prepared {
    /// Makes the sandbox: metadata first, then everything else (see the module's documentation). On failure
    /// everything made so far is removed, source objects first.
    pub async fn build(self, say: &(dyn Fn(&str) + Sync)) -> Result<SandboxMeta, SandboxError> {
        let dir = self.opts.state_dir.sandbox_dir(&self.opts.name);
        self.opts.state_dir.prepare()?;
        self.build_in(dir, 1, say).await
    }

    /// Builds generation `generation` in `dir` (the sandbox's directory, or a resync's beside it), its metadata
    /// saved there. On failure everything made is removed: the whole sandbox for a first generation, and for a
    /// later one only what this build made (its server, directory and slot), never the publication.
    pub(crate) async fn build_in(
        self,
        dir: PathBuf,
        generation: u32,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<SandboxMeta, SandboxError> {
        let Prepared {
            opts,
            bins,
            run_as,
            client,
            checked,
            database,
        } = self;
        let opts = &opts;
        std::fs::create_dir(&dir).map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
        state::set_mode(&dir, 0o755)?;
        let mut meta = SandboxMeta {
            name: opts.name.clone(),
            created_at: jiff::Timestamp::now(),
            phase: SandboxState::InitialSync,
            source: opts.source.redacted(),
            replicate: opts.replicate.clone(),
            database: database.clone(),
            publication: checked.publication.clone(),
            publication_owned: checked.create_publication.is_some(),
            slot: opts.name.slot(),
            subscription: opts.name.subscription(),
            subscription_oid: None,
            consistent_point: None,
            cluster: sandbox_cluster_config(&dir),
            wal_budget_bytes: opts.wal_budget_bytes,
            initial_copy: None,
            last_error: None,
            pending_drift: Vec::new(),
            warnings: checked.warnings.clone(),
            generation,
            source_mark: None,
            log_checked_to: 0,
            stale_reason: None,
            resync: opts.resync,
            resync_status: None,
            source_unreachable_since: None,
            last_outage: None,
            subset: None,
            masking: opts.mask.clone(),
        };
        let saved = state::save_source(&dir, &opts.source).and_then(|()| meta.save(&dir));
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(out_of_space(e, opts));
        }
        let result = make(opts, &bins, run_as, &client, &checked, &mut meta, &dir, say).await;
        match result {
            Ok(()) => Ok(meta),
            Err(err) => {
                let err = out_of_space(err, opts);
                say(&format!("sandbox create failed; removing what it created: {err}"));
                let cleanup = if generation == 1 {
                    delete::delete(&opts.state_dir, &opts.name, None, false).await.map(drop)
                } else {
                    delete::discard_generation(&meta, &dir, &opts.source).await
                };
                if let Err(cleanup) = cleanup {
                    say(&format!("cleanup also failed: {cleanup}"));
                }
                Err(err)
            }
        }
    }
}

/// `err` as the state directory running out of space, when it is that.
fn out_of_space(err: SandboxError, opts: &CreateOptions) -> SandboxError {
    match space::explain(&err.to_string(), opts.state_dir.root()) {
        Some(full) => SandboxError::NoSpace(full),
        None => err,
    }
}

/// What the tables to copy take on the source, with their indexes and TOAST (tables a publication made by the
/// create will add later count as 0 here).
async fn source_table_bytes(client: &tokio_postgres::Client, tables: &[QualifiedName]) -> Result<u64, SandboxError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let bytes: i64 = client
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE (n.nspname::text, c.relname::text) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            &[&schemas, &names],
        )
        .await
        .map_err(PgError::sql("reading the published tables' sizes"))?
        .get(0);
    Ok(u64::try_from(bytes).unwrap_or(0))
}

#[allow(clippy::too_many_arguments)]
async fn make(
    opts: &CreateOptions,
    bins: &PgBinaries,
    run_as: RunAs,
    client: &tokio_postgres::Client,
    checked: &source::Preflight,
    meta: &mut SandboxMeta,
    dir: &std::path::Path,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), SandboxError> {
    let started = Instant::now();
    if let Some((tables, whole_schema)) = &checked.create_publication {
        objects::create_publication(
            client,
            &meta.publication,
            tables,
            whole_schema.as_deref(),
            &checked.filters,
            &checked.columns,
        )
        .await?;
        say(&format!("created publication {} on the source", meta.publication));
    }
    let tables = catalog::published_tables(client, &meta.publication).await?;
    let table_names: Vec<_> = tables.iter().map(|t| t.name.clone()).collect();
    meta.subset = SubsetState::of(&tables, opts.subset.as_ref().and_then(|s| s.key.clone()));

    // On btrfs the data directory is a subvolume, so that forks can snapshot it in constant time.
    if crate::cow::make_subvolume_if_btrfs(&meta.cluster.data_dir) {
        run_as.own(&meta.cluster.data_dir)?;
        say("the sandbox's data directory is a btrfs subvolume (forks will be snapshots)");
    }
    // The initial load runs with wal_level = minimal: tables truncated and loaded in one transaction, and
    // indexes built in pg_restore's, then skip WAL. The server restarts with logical replication settings
    // before the subscription exists.
    let mut load_config = meta.cluster.clone();
    load_config.settings.extend([
        ("wal_level".to_string(), "minimal".to_string()),
        ("max_wal_senders".to_string(), "0".to_string()),
        ("checkpoint_timeout".to_string(), "15min".to_string()),
        // Nothing is flushed while the data loads: the kernel writes it back while the indexes build, and the
        // file system is flushed once, before the server restarts with fsync on (below).
        ("fsync".to_string(), "off".to_string()),
    ]);
    let cache = Some(opts.state_dir.root().join(".cache"));
    let work: PathBuf = dir.join("work");
    std::fs::create_dir_all(&work).map_err(|e| SandboxError::io(format!("creating {}", work.display()), e))?;
    // Three independent steps at once: the sandbox's server starting, the schema dumped from the source, and the
    // slot created there with its exported snapshot (recorded as ours before it exists: the metadata already
    // names it; every copy worker imports the snapshot).
    let database = meta.database.clone();
    let start_cluster = async {
        let cluster = Cluster::init_with(bins.clone(), run_as, load_config, cache).await?;
        cluster.start().await?;
        let admin = cluster.connect(super::admin_database(&database)).await?;
        // A source database called `postgres` (a managed service's default) is loaded into the sandbox's own.
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .await
            .map_err(PgError::sql("looking for the sandbox database"))?
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&database)))
                .await
                .map_err(PgError::sql("creating the sandbox database"))?;
        }
        Ok::<_, SandboxError>(cluster)
    };
    let dump_schema = async {
        let exclude = catalog::relations_outside(client, &table_names).await?;
        let leaving: Vec<_> = catalog::foreign_keys_leaving(client, &table_names)
            .await?
            .into_iter()
            .map(|(t, c, _)| (t, c))
            .collect();
        Ok::<_, SandboxError>(schema::dump(bins, &opts.source, &exclude, &leaving, &work).await?)
    };
    let create_slot = async { Ok::<_, SandboxError>(ExportedSlot::create(bins, &opts.source, &meta.slot).await?) };
    let (mut cluster, archive, slot) = tokio::try_join!(start_cluster, dump_schema, create_slot)?;
    meta.consistent_point = Some(slot.consistent_point);
    meta.source_mark = Some(SourceMark::first(&identity::observe(client, &meta.slot).await?));
    meta.save(dir)?;
    say(&format!(
        "sandbox cluster initialised at {}",
        meta.cluster.data_dir.display()
    ));
    say(&format!(
        "created slot {} at {} on the source",
        meta.slot, slot.consistent_point
    ));
    let target = cluster.conninfo(&meta.database);
    schema::restore(bins, &archive, &target, Section::PreData, 1).await?;
    if let Some(config) = &opts.mask {
        // Before any row arrives: the copy's sessions and the apply worker both fire the masking triggers.
        let key = state::mask_key(&opts.state_dir.sandbox_dir(&opts.name))?;
        let db = crate::pg::connect::connect_plain(&target, "understudy-mask").await?;
        crate::mask::install::install(&db, client, &key, config).await?;
        say("masking installed on the sandbox: rows are masked as they arrive");
    }
    let schema_seconds = started.elapsed().as_secs_f64();
    say(&format!(
        "sandbox cluster started and schema restored (pre-data) in {schema_seconds:.1}s"
    ));

    let copy_started = Instant::now();
    let text_only = copy::text_only_tables(client, &tables).await?;
    let total_bytes: i64 = tables.iter().map(|t| t.bytes).sum();
    // Whole tables (no block ranges): each is then loaded without WAL; splitting the largest table showed no
    // gain on two cores (docs/benchmarks.md), while skipping WAL does.
    let chunks = copy::plan(&tables, &text_only, copy::WHOLE_TABLES);
    let progress = Progress::start(
        "initial copy",
        chunks.len() as u64,
        total_bytes.max(0) as u64,
        opts.progress,
    );
    let copied = copy::run(
        &opts.source,
        &slot.snapshot,
        &target,
        chunks,
        opts.jobs,
        Arc::clone(&progress),
    )
    .await;
    progress.finish();
    let copied = copied?;
    let closure = if meta.subset.is_some() {
        let keys = catalog::foreign_keys_among(client, &table_names).await?;
        let sandbox = crate::pg::connect::connect_plain(&target, "understudy-closure").await?;
        closure::complete(&opts.source, &slot.snapshot, &sandbox, &tables, &text_only, &keys).await?
    } else {
        closure::Closure::default()
    };
    if closure.rows() > 0 {
        say(&format!(
            "added {} parent row(s) the subset's rows reference, in {} round(s)",
            closure.rows(),
            closure.rounds
        ));
    }
    slot.release().await?;
    let copy_seconds = copy_started.elapsed().as_secs_f64();
    say(&format!(
        "copied {} rows ({}) of {} table(s) in {copy_seconds:.1}s",
        copied.rows,
        human_bytes(copied.bytes),
        tables.len()
    ));

    let index_started = Instant::now();
    let data_dir = meta.cluster.data_dir.clone();
    let early_flush = tokio::task::spawn_blocking(move || sync_tree(&data_dir));
    schema::restore(bins, &archive, &target, Section::PostData, opts.jobs).await?;
    cluster.reconfigure(meta.cluster.clone())?;
    cluster.stop(crate::pg::StopMode::Fast).await?;
    // The load ran with fsync off: everything it wrote reaches the disk before the server runs with fsync on.
    let _ = early_flush.await;
    let data_dir = meta.cluster.data_dir.clone();
    tokio::task::spawn_blocking(move || sync_tree(&data_dir))
        .await
        .map_err(|e| SandboxError::Failed(format!("flushing the sandbox's data to disk: {e}")))?
        .map_err(|e| SandboxError::io(format!("flushing {} to disk", meta.cluster.data_dir.display()), e))?;
    cluster.start().await?;
    let indexes_seconds = index_started.elapsed().as_secs_f64();
    say(&format!("indexes and constraints built in {indexes_seconds:.1}s"));
    let _ = std::fs::remove_dir_all(&work);

    let sandbox = cluster.connect(&meta.database).await?;
    let seqs = sequences::sync(client, &sandbox).await?;
    if !seqs.unreadable.is_empty() {
        let names: Vec<String> = seqs.unreadable.iter().map(ToString::to_string).collect();
        meta.warnings.push(format!(
            "sequences not synced (no SELECT on the source): {}; GRANT SELECT ON SEQUENCE ... TO the source role",
            names.join(", ")
        ));
    }
    sandbox
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false, create_slot = false, \
             slot_name = {}, streaming = on, enabled = true)",
            quote_ident(&meta.subscription),
            quote_literal(&opts.source.to_secret_string()),
            quote_ident(&meta.publication),
            quote_literal(&meta.slot),
        ))
        .await
        .map_err(|e| SandboxError::Failed(format!("creating the subscription: {}", crate::pg::describe(&e))))?;
    let oid: u32 = sandbox
        .query_one(
            "SELECT oid FROM pg_subscription WHERE subname = $1",
            &[&meta.subscription],
        )
        .await
        .map_err(PgError::sql("reading the subscription"))?
        .get(0);
    meta.subscription_oid = Some(oid);
    meta.phase = SandboxState::Ready;
    meta.initial_copy = Some(InitialCopy {
        tables: tables.len(),
        chunks: copied.chunks,
        bytes: copied.bytes,
        rows: copied.rows + closure.rows(),
        closure_rows: closure.rows(),
        schema_seconds,
        copy_seconds,
        indexes_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    });
    meta.save(dir)?;
    Ok(())
}

/// Flushes every file and directory under `dir` to disk (what `initdb --sync-only` does).
fn sync_tree(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Waits until the sandbox has applied everything the source wrote up to `lsn` (tests, demos, forks).
pub async fn wait_caught_up(
    sandbox: &tokio_postgres::Client,
    subscription: &str,
    lsn: Lsn,
    timeout: std::time::Duration,
) -> Result<(), SandboxError> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = sandbox
            .query_opt(
                "SELECT latest_end_lsn::text FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL",
                &[&subscription],
            )
            .await
            .map_err(PgError::sql("reading pg_stat_subscription"))?;
        let applied: Option<Lsn> = row
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| t.parse().ok());
        if applied.is_some_and(|a| a >= lsn) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Failed(format!(
                "the sandbox did not reach {lsn} within {timeout:?} (applied: {})",
                applied.map(|a| a.to_string()).unwrap_or_else(|| "nothing".into())
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
