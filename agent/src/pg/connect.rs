//! Client connections. Each connection's driver task is spawned on the runtime.

use tokio_postgres::{Client, NoTls};

use super::{ConnInfo, PgError};

/// Connects with a plain libpq connection string (embedded clusters over Unix sockets).
pub async fn connect_plain(conninfo: &str, application_name: &str) -> Result<Client, PgError> {
    let mut config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| PgError::Config(format!("bad connection string: {e}")))?;
    config.application_name(application_name);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| PgError::Config(format!("connecting: {}", super::describe(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection ended");
        }
    });
    Ok(client)
}

/// Connects to a source described by a [`ConnInfo`]. Errors name the redacted target, never the password.
pub async fn connect_source(info: &ConnInfo, application_name: &str) -> Result<Client, PgError> {
    if let Some(mode) = info.get("sslmode")
        && matches!(mode, "require" | "verify-ca" | "verify-full")
    {
        return Err(PgError::Config(format!(
            "sslmode={mode}: TLS connections to the source are not supported by this build yet; connect over a \
             trusted network or a TLS-terminating proxy with sslmode=disable or prefer"
        )));
    }
    let mut config: tokio_postgres::Config = info
        .for_client()
        .parse()
        .map_err(|e| PgError::Config(format!("bad source connection string {}: {e}", info.redacted())))?;
    if info.get("application_name").is_none() {
        config.application_name(application_name);
    }
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        PgError::Config(format!(
            "cannot connect to the source ({}): {}",
            info.redacted(),
            super::describe(&e)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "source connection ended");
        }
    });
    Ok(client)
}
