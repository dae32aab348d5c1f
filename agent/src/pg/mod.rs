//! Everything that talks to a PostgreSQL server or runs its programs: finding the binaries, launching embedded
//! clusters, connection strings, client connections and the command-line tools (`pg_dump`, `pg_restore`, `psql`).

pub mod bindir;
pub mod cluster;
pub mod connect;
pub mod conninfo;
pub mod ident;
pub mod os_user;
pub mod tools;

pub use bindir::PgBinaries;
pub use cluster::{Cluster, ClusterConfig, ClusterStatus, StopMode};
pub use conninfo::ConnInfo;
pub use ident::{QualifiedName, quote_ident, quote_literal};

/// Errors from launching and talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "PostgreSQL server binaries not found ({detail}). Install them (Debian/Ubuntu: `apt-get install -y \
         postgresql-15`) or set PG_BINDIR to the directory that holds initdb, pg_ctl and postgres"
    )]
    BinariesMissing { detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Tool {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run PostgreSQL as OS user {user:?}: {detail}")]
    OsUser { user: String, detail: String },
    #[error("{0}")]
    Config(String),
    /// A connection string or TLS setting that cannot be used (the user's to fix).
    #[error("{0}")]
    BadConnInfo(String),
    /// A server that does not answer: `target` is redacted (no password).
    #[error("cannot connect to {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error("{context}: {}", describe(source))]
    Sql {
        context: String,
        source: tokio_postgres::Error,
    },
}

impl PgError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        PgError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| PgError::Sql { context, source }
    }

    /// The SQLSTATE of a server error, when this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Sql { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

impl crate::error::Classify for PgError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            PgError::BadConnInfo(_) => ErrorKind::Invalid,
            PgError::Connect { .. } => ErrorKind::Unavailable,
            PgError::BinariesMissing { .. }
            | PgError::Io { .. }
            | PgError::Tool { .. }
            | PgError::OsUser { .. }
            | PgError::Config(_)
            | PgError::Sql { .. } => ErrorKind::Internal,
        }
    }
}

/// Renders a `tokio_postgres::Error` with the server's message, detail and hint when it has them: the plain
/// `Display` of tokio-postgres says only "db error".
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" (hint: {hint})"));
            }
            text
        }
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        }
    }
}
