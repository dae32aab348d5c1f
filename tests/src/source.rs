//! An embedded source ("production") for demos, tests and benchmarks: a cluster on a loopback TCP port with
//! password authentication, a least-privilege replication role, and sample tables.

use std::path::{Path, PathBuf};

use understudy::pg::cluster::{Cluster, ClusterConfig, free_port};
use understudy::pg::os_user::RunAs;
use understudy::pg::{ConnInfo, PgBinaries, PgError, quote_ident, quote_literal};
use understudy::source::SandboxName;
use understudy::source::setup::{Published, SetupSql};

/// The least-privilege role the demo and tests replicate with.
pub const REPLICATOR: &str = "understudy_replicator";
pub const REPLICATOR_PASSWORD: &str = "replicator-secret-0f9a";

/// The copy workers the fixtures' role is sized for: its connection limit is this and setup-sql's extra four,
/// room for a test's few sandboxes on one source.
pub const FIXTURE_JOBS: usize = 12;

/// A running source cluster with its database.
pub struct SourceServer {
    pub cluster: Cluster,
    pub database: String,
    root: PathBuf,
    keep: bool,
}

impl SourceServer {
    /// Initialises and starts a source under `root` with extra settings (for example `wal_level = replica` for
    /// refusal tests), creates database `database` and the replication role.
    pub async fn start(root: &Path, database: &str, settings: &[(&str, &str)]) -> Result<Self, PgError> {
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        std::fs::create_dir_all(root).map_err(|e| PgError::io(format!("creating {}", root.display()), e))?;
        let config = ClusterConfig {
            data_dir: root.join("pgdata"),
            socket_dir: root.join("run"),
            port: free_port()?,
            listen_addresses: "127.0.0.1".into(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let cluster = Cluster::init(bins, run_as, config).await?;
        let hba = "local all postgres trust\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n";
        let hba_path = cluster.data_dir().join("pg_hba.conf");
        std::fs::write(&hba_path, hba).map_err(|e| PgError::io("writing pg_hba.conf", e))?;
        cluster.start().await?;
        // From here the server runs: owning it in the struct means its Drop stops it if a step below fails.
        let server = SourceServer {
            cluster,
            database: database.to_string(),
            root: root.to_path_buf(),
            keep: false,
        };
        let admin = server.cluster.connect("postgres").await?;
        if database != "postgres" {
            admin
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
                .await
                .map_err(PgError::sql("creating the source database"))?;
        }
        // The replication role is made as a DBA makes it: by `understudy source setup-sql`'s statements (a LOGIN
        // REPLICATION role with a connection limit and read grants on `public`, today's tables and later ones).
        let setup = SetupSql {
            sandbox: SandboxName::parse("fixture").map_err(|e| PgError::Config(e.to_string()))?,
            role: REPLICATOR.into(),
            database: database.into(),
            published: Published::Schemas(vec!["public".into()]),
            jobs: FIXTURE_JOBS,
        };
        let script = setup.role_and_grants().map_err(|e| PgError::Config(e.to_string()))?;
        let db = server.admin().await?;
        db.batch_execute(&script)
            .await
            .map_err(PgError::sql("creating the replication role (setup-sql)"))?;
        db.batch_execute(&format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(REPLICATOR),
            quote_literal(REPLICATOR_PASSWORD)
        ))
        .await
        .map_err(PgError::sql("setting the replication role's password"))?;
        Ok(server)
    }

    /// A superuser connection to the source database (the "application" and the DBA).
    pub async fn admin(&self) -> Result<tokio_postgres::Client, PgError> {
        self.cluster.connect(&self.database).await
    }

    /// The connection string a sandbox uses: TCP, the replication role, its password.
    pub fn replicator_conninfo(&self) -> ConnInfo {
        self.conninfo_as(REPLICATOR, REPLICATOR_PASSWORD)
    }

    /// A TCP connection string for another role.
    pub fn conninfo_as(&self, role: &str, password: &str) -> ConnInfo {
        let mut info = ConnInfo::empty();
        info.set("host", "127.0.0.1");
        info.set("port", &self.cluster.port().to_string());
        info.set("dbname", &self.database);
        info.set("user", role);
        info.set("password", password);
        info
    }

    /// Grants the replication role read access to every table and sequence of `public`.
    pub async fn grant_read(&self) -> Result<(), PgError> {
        self.admin()
            .await?
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA public TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}; \
                 GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {r};",
                r = quote_ident(REPLICATOR)
            ))
            .await
            .map_err(PgError::sql("granting read access"))
    }

    /// Loads the sample schema with `rows` orders (customers and events scale with it) and publishes it as
    /// `publication`.
    pub async fn load_sample(&self, rows: i64, publication: &str) -> Result<(), PgError> {
        let admin = self.admin().await?;
        admin
            .batch_execute(SAMPLE_SCHEMA)
            .await
            .map_err(PgError::sql("creating the sample schema"))?;
        admin
            .execute(
                "INSERT INTO customers (email, name, created_at) \
                 SELECT CASE WHEN g % 50 = 0 THEN NULL \
                             WHEN g % 97 = 0 THEN 'User' || (g - 1) || '@Example.com' \
                             ELSE 'user' || g || '@example.com' END, \
                        'Customer ' || g, now() - (g || ' minutes')::interval \
                 FROM generate_series(1, greatest($1::bigint / 10, 10)) g",
                &[&rows],
            )
            .await
            .map_err(PgError::sql("loading customers"))?;
        admin
            .execute(
                "INSERT INTO orders (customer_id, status, total_cents, note, created_at) \
                 SELECT 1 + (g * 7919) % greatest($1::bigint / 10, 10), \
                        (ARRAY['new','paid','shipped','delivered'])[1 + g % 4], (g * 31) % 100000, \
                        CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('x', (20 + g % 40)::int) END, \
                        now() - (g || ' seconds')::interval \
                 FROM generate_series(1, $1::bigint) g",
                &[&rows],
            )
            .await
            .map_err(PgError::sql("loading orders"))?;
        admin
            .execute(
                "INSERT INTO events (kind, payload) SELECT 'seed', jsonb_build_object('n', g) \
                 FROM generate_series(1, greatest($1::bigint / 10, 10)) g",
                &[&rows],
            )
            .await
            .map_err(PgError::sql("loading events"))?;
        admin
            .batch_execute(&format!(
                "ANALYZE; CREATE PUBLICATION {} FOR TABLE customers, orders, events",
                quote_ident(publication)
            ))
            .await
            .map_err(PgError::sql("publishing the sample"))?;
        self.grant_read().await
    }

    /// Keep the cluster when dropped (demo `--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Stops the server and removes its directory.
    pub async fn destroy(mut self) -> Result<(), PgError> {
        self.keep = true;
        self.cluster.destroy().await?;
        let _ = std::fs::remove_dir_all(&self.root);
        Ok(())
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some(pid) = self.cluster.postmaster_pid() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.cluster.config().socket_dir);
    }
}

/// The sample schema: the shapes real production has (NULLs in old rows, mixed-case duplicate e-mails, a table
/// without a primary key published with REPLICA IDENTITY FULL, a hot table).
pub const SAMPLE_SCHEMA: &str = "
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    email text,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    status text NOT NULL DEFAULT 'new',
    total_cents bigint NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
CREATE TABLE events (
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    payload jsonb
);
ALTER TABLE events REPLICA IDENTITY FULL;
";
