//! `understudy source`: what the source needs from its DBA.

use std::process::ExitCode;

use clap::Subcommand;
use understudy::pg::QualifiedName;
use understudy::source::SandboxName;
use understudy::source::setup::{Published, SetupSql};

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Print the SQL a DBA runs on the source for a sandbox: a least-privilege role (LOGIN REPLICATION, a
    /// connection limit), its read grants, and the publication (then `psql -f` it as a superuser)
    SetupSql {
        /// The sandbox that will follow the source (names the publication understudy_<sandbox>)
        #[arg(long)]
        sandbox: String,
        /// The role the sandbox connects as
        #[arg(long, default_value = "understudy")]
        role: String,
        /// The source database
        #[arg(long)]
        database: String,
        /// Publish these tables (schema.table, comma-separated)
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "schema",
            required_unless_present = "schema"
        )]
        tables: Vec<String>,
        /// Publish every table of these schemas, today's and later ones (comma-separated)
        #[arg(long, value_delimiter = ',')]
        schema: Vec<String>,
        /// The copy workers `sandbox create --jobs` will use (sets the role's connection limit)
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
}

pub fn run(cmd: SourceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SourceCommand::SetupSql {
            sandbox,
            role,
            database,
            tables,
            schema,
            jobs,
        } => {
            let published = if schema.is_empty() {
                Published::Tables(tables.iter().map(|t| QualifiedName::parse(t)).collect())
            } else {
                Published::Schemas(schema)
            };
            let setup = SetupSql {
                sandbox: SandboxName::parse(&sandbox)?,
                role,
                database,
                published,
                jobs,
            };
            print!("{}", setup.render()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
