//! Sequences are not replicated by logical replication: their values are copied from the source (a read of
//! `pg_sequences`) after the initial copy, periodically by `watch`, and before a fork is used.

use tokio_postgres::Client;

use crate::pg::{PgError, QualifiedName};

/// What a sequence sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SequenceSync {
    pub synced: usize,
    /// Sequences the source role may not read (their values stay as they were).
    pub unreadable: Vec<QualifiedName>,
}

/// Sets every sandbox sequence that exists on the source to the source's current value.
pub async fn sync(source: &Client, sandbox: &Client) -> Result<SequenceSync, PgError> {
    let local = sandbox
        .query("SELECT schemaname::text, sequencename::text FROM pg_sequences", &[])
        .await
        .map_err(PgError::sql("listing the sandbox's sequences"))?;
    let local: Vec<QualifiedName> = local
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let remote = source
        .query(
            "SELECT schemaname::text, sequencename::text, \
                    has_sequence_privilege(quote_ident(schemaname) || '.' || quote_ident(sequencename), 'SELECT'), \
                    CASE WHEN has_sequence_privilege(quote_ident(schemaname) || '.' || quote_ident(sequencename), \
                         'SELECT') THEN last_value END \
             FROM pg_sequences",
            &[],
        )
        .await
        .map_err(PgError::sql("reading the source's sequences"))?;
    let mut outcome = SequenceSync::default();
    for row in remote {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        if !local.contains(&name) {
            continue;
        }
        let readable: bool = row.get(2);
        let value: Option<i64> = row.get(3);
        match (readable, value) {
            (false, _) => outcome.unreadable.push(name),
            (true, None) => {}
            (true, Some(v)) => {
                sandbox
                    .query(
                        "SELECT setval($1::text::regclass, $2::bigint, true)",
                        &[&name.sql(), &v],
                    )
                    .await
                    .map_err(PgError::sql(format!("setting sequence {name}")))?;
                outcome.synced += 1;
            }
        }
    }
    Ok(outcome)
}
