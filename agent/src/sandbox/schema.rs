//! The sandbox's schema, from `pg_dump --schema-only` of the source: pre-data (types, functions, sequences,
//! tables) before the copy, post-data (indexes, constraints, triggers) after it, because building indexes once
//! after the load is much faster than loading into indexed tables.

use std::path::Path;

use crate::pg::tools::{self, Section};
use crate::pg::{ConnInfo, PgBinaries, PgError, QualifiedName};

/// A schema archive and the restore list that drops what must not reach the sandbox.
pub struct SchemaArchive {
    pub archive: std::path::PathBuf,
    pub list: std::path::PathBuf,
}

/// Dumps the source's schema, leaving out `exclude` relations, and writes a restore list without foreign keys
/// named in `drop_constraints` (constraints that point at tables the sandbox does not have).
pub async fn dump(
    bins: &PgBinaries,
    source: &ConnInfo,
    exclude: &[QualifiedName],
    drop_constraints: &[(QualifiedName, String)],
    work: &Path,
) -> Result<SchemaArchive, PgError> {
    let archive = work.join("schema.dump");
    tools::dump_schema(bins, source, tools::DumpScope::AllExcept(exclude), &archive).await?;
    let toc = tools::archive_toc(bins, &archive).await?;
    let list = work.join("schema.list");
    std::fs::write(&list, filter_toc(&toc, drop_constraints))
        .map_err(|e| PgError::io(format!("writing {}", list.display()), e))?;
    Ok(SchemaArchive { archive, list })
}

/// Comments out TOC entries of the named foreign keys (`FK CONSTRAINT schema table name`).
pub fn filter_toc(toc: &str, drop_constraints: &[(QualifiedName, String)]) -> String {
    toc.lines()
        .map(|line| {
            let dropped = line.contains(" FK CONSTRAINT ")
                && drop_constraints.iter().any(|(table, name)| {
                    let entry = format!(" FK CONSTRAINT {} {} {name}", table.schema, table.name);
                    line.contains(&format!("{entry} ")) || line.ends_with(&entry)
                });
            if dropped { format!(";{line}") } else { line.to_string() }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Restores one section into the sandbox database.
pub async fn restore(
    bins: &PgBinaries,
    schema: &SchemaArchive,
    target: &str,
    section: Section,
    jobs: usize,
) -> Result<(), PgError> {
    tools::restore(bins, &schema.archive, target, section, Some(&schema.list), jobs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_out_named_foreign_keys_only() {
        let toc = "; Archive\n3263; 2606 16400 FK CONSTRAINT public orders orders_user_fk postgres\n\
                   3264; 2606 16401 FK CONSTRAINT public orders orders_item_fk postgres\n\
                   215; 1259 16385 TABLE public orders postgres";
        let out = filter_toc(
            toc,
            &[(QualifiedName::new("public", "orders"), "orders_user_fk".into())],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].starts_with(';'), "{out}");
        assert!(!lines[2].starts_with(';'), "{out}");
        assert!(!lines[3].starts_with(';'), "{out}");
    }
}
