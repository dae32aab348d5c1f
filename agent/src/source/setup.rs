//! What a DBA runs on the source before a sandbox follows it (`understudy source setup-sql`): a role that can log
//! in and replicate and nothing else, with a connection limit, read grants on what the sandbox replicates, and the
//! publication, made by a role PostgreSQL allows to make it. The script sets no password: it ends with psql's
//! `\password`, which asks for one, so that no secret is ever in a file or a process's arguments.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::pg::{QualifiedName, quote_ident};
use crate::source::SandboxName;

/// Connections beyond the copy workers: the replication connection that holds the slot's snapshot, `pg_dump`,
/// the follower's catalog reads and, once the copy ends, the subscription's walsender.
pub const EXTRA_CONNECTIONS: usize = 4;

/// What to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// These tables (`FOR TABLE`; their owner may create the publication).
    Tables(Vec<QualifiedName>),
    /// Every table of these schemas, today's and later ones (`FOR TABLES IN SCHEMA`; a superuser creates it).
    Schemas(Vec<String>),
}

/// The inputs of the script.
#[derive(Debug, Clone)]
pub struct SetupSql {
    pub sandbox: SandboxName,
    /// The role the sandbox connects as.
    pub role: String,
    /// The source database.
    pub database: String,
    pub published: Published,
    /// The copy workers the sandbox will use (`sandbox create --jobs`).
    pub jobs: usize,
}

/// Why the script cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupSqlError {
    #[error("{what} {value:?} is not a PostgreSQL name: use letters, digits, _ and $, starting with a letter or _")]
    BadName { what: &'static str, value: String },
    #[error("say what the sandbox replicates: --tables schema.table,... or --schema NAME")]
    NothingPublished,
    #[error("--jobs must be at least 1")]
    NoJobs,
}

impl crate::error::Classify for SetupSqlError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

fn plain_name(what: &'static str, value: &str) -> Result<(), SetupSqlError> {
    let mut chars = value.chars();
    let starts = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if starts && rest && value.len() <= 63 {
        Ok(())
    } else {
        Err(SetupSqlError::BadName {
            what,
            value: value.into(),
        })
    }
}

impl SetupSql {
    /// The connection limit of the role.
    pub fn connection_limit(&self) -> usize {
        self.jobs + EXTRA_CONNECTIONS
    }

    fn check(&self) -> Result<(), SetupSqlError> {
        plain_name("the role", &self.role)?;
        plain_name("the database", &self.database)?;
        if self.jobs == 0 {
            return Err(SetupSqlError::NoJobs);
        }
        match &self.published {
            Published::Tables(t) if t.is_empty() => Err(SetupSqlError::NothingPublished),
            Published::Schemas(s) if s.is_empty() => Err(SetupSqlError::NothingPublished),
            Published::Tables(tables) => tables.iter().try_for_each(|t| {
                plain_name("the schema", &t.schema)?;
                plain_name("the table", &t.name)
            }),
            Published::Schemas(schemas) => schemas.iter().try_for_each(|s| plain_name("the schema", s)),
        }
    }

    /// The script, for `psql -f`.
    pub fn render(&self) -> Result<String, SetupSqlError> {
        let mut sql = self.role_and_grants()?;
        let publication = quote_ident(&self.sandbox.publication());
        let role = quote_ident(&self.role);
        let mut line = |text: &str| {
            sql.push_str(text);
            sql.push('\n');
        };
        line("");
        self.publication(&publication, &mut line);
        line("");
        line("-- 4. Its password, asked for here (never written in a file):");
        line(&format!("\\password {role}"));
        let mut next = String::new();
        let _ = write!(
            next,
            "-- Then: understudy sandbox create {} --source 'host=... dbname={} user={}' --publication {} --jobs {}",
            self.sandbox,
            self.database,
            self.role,
            self.sandbox.publication(),
            self.jobs
        );
        line(&next);
        Ok(sql)
    }

    /// Steps 1 and 2 of the script: the role and its read grants (the test fixtures' replication role is made by
    /// these statements).
    pub fn role_and_grants(&self) -> Result<String, SetupSqlError> {
        self.check()?;
        let role = quote_ident(&self.role);
        let schemas: BTreeSet<&str> = match &self.published {
            Published::Tables(t) => t.iter().map(|t| t.schema.as_str()).collect(),
            Published::Schemas(s) => s.iter().map(String::as_str).collect(),
        };
        let mut sql = String::new();
        let mut line = |text: &str| {
            sql.push_str(text);
            sql.push('\n');
        };
        line(&format!(
            "-- Understudy on the source database {db}, for sandbox {sbx}: run with psql as a superuser, connected to {db}.",
            db = quote_ident(&self.database),
            sbx = self.sandbox
        ));
        line("-- Everything Understudy does here is this publication, one replication slot and reads.");
        line("");
        line(&format!(
            "-- 1. A role that logs in and replicates, nothing else. At most {} connections: {} copy workers, the \
             slot's snapshot, pg_dump, the follower and the subscription.",
            self.connection_limit(),
            self.jobs
        ));
        line(&format!(
            "CREATE ROLE {role} LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT CONNECTION LIMIT {};",
            self.connection_limit()
        ));
        line("");
        line("-- 2. Reads: the initial copy, the follower's catalog reads, sequence values. No other privilege.");
        line(&format!(
            "GRANT CONNECT ON DATABASE {} TO {role};",
            quote_ident(&self.database)
        ));
        for schema in &schemas {
            line(&format!("GRANT USAGE ON SCHEMA {} TO {role};", quote_ident(schema)));
        }
        self.grants(&role, &schemas, &mut line);
        Ok(sql)
    }

    fn grants(&self, role: &str, schemas: &BTreeSet<&str>, line: &mut impl FnMut(&str)) {
        match &self.published {
            Published::Tables(tables) => {
                let list: Vec<String> = tables.iter().map(QualifiedName::sql).collect();
                line(&format!("GRANT SELECT ON TABLE {} TO {role};", list.join(", ")));
            }
            Published::Schemas(_) => {
                for schema in schemas {
                    let s = quote_ident(schema);
                    line(&format!("GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {role};"));
                    line(&format!(
                        "-- Tables created later (by the role running this script) are read too:\n\
                         ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {role};"
                    ));
                }
            }
        }
        for schema in schemas {
            line(&format!(
                "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {role};",
                quote_ident(schema)
            ));
            if matches!(self.published, Published::Schemas(_)) {
                // The follower syncs the values of sequences created later too.
                line(&format!(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON SEQUENCES TO {role};",
                    quote_ident(schema)
                ));
            }
        }
    }

    fn publication(&self, publication: &str, line: &mut impl FnMut(&str)) {
        match &self.published {
            Published::Tables(tables) => {
                let list: Vec<String> = tables.iter().map(QualifiedName::sql).collect();
                line("-- 3. The publication (its tables' owner may make it too):");
                line(&format!(
                    "CREATE PUBLICATION {publication} FOR TABLE {};",
                    list.join(", ")
                ));
            }
            Published::Schemas(schemas) => {
                let list: Vec<String> = schemas.iter().map(|s| quote_ident(s)).collect();
                line("-- 3. The publication (FOR TABLES IN SCHEMA needs a superuser; tables created later join it):");
                line(&format!(
                    "CREATE PUBLICATION {publication} FOR TABLES IN SCHEMA {};",
                    list.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(published: Published) -> SetupSql {
        SetupSql {
            sandbox: SandboxName::parse("shop").expect("name"),
            role: "understudy".into(),
            database: "shop".into(),
            published,
            jobs: 4,
        }
    }

    #[test]
    fn the_script_for_a_schema() {
        let sql = setup(Published::Schemas(vec!["public".into()])).render().expect("sql");
        insta::assert_snapshot!(sql);
    }

    #[test]
    fn the_script_for_tables() {
        let tables = vec![
            QualifiedName::parse("public.orders"),
            QualifiedName::parse("billing.invoices"),
        ];
        let sql = setup(Published::Tables(tables)).render().expect("sql");
        insta::assert_snapshot!(sql);
    }

    #[test]
    fn bad_inputs_are_refused_naming_the_fix() {
        let mut s = setup(Published::Schemas(vec!["public".into()]));
        s.role = "under study; DROP".into();
        assert!(matches!(
            s.render(),
            Err(SetupSqlError::BadName { what: "the role", .. })
        ));
        let s = setup(Published::Tables(Vec::new()));
        assert_eq!(s.render(), Err(SetupSqlError::NothingPublished));
        let mut s = setup(Published::Schemas(vec!["public".into()]));
        s.jobs = 0;
        assert_eq!(s.render(), Err(SetupSqlError::NoJobs));
    }
}
