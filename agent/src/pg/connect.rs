//! Client connections. Each connection's driver task is spawned on the runtime.

use tokio_postgres::{Client, NoTls};

use super::{ConnInfo, PgError};

/// Connects with a plain libpq connection string (embedded clusters over Unix sockets).
pub async fn connect_plain(conninfo: &str, application_name: &str) -> Result<Client, PgError> {
    let mut config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| PgError::BadConnInfo(format!("bad connection string: {e}")))?;
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| PgError::Connect {
        target: redacted_target(conninfo),
        detail: super::describe(&e),
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection ended");
        }
    });
    Ok(client)
}

/// Connects to a source described by a [`ConnInfo`], with libpq's `sslmode` semantics: `disable`; `prefer` (the
/// default: TLS when the server offers it, unverified); `require` (TLS, unverified); `verify-ca` (the chain checked
/// against `sslrootcert`, or the system's roots); `verify-full` (and the host name). `sslcert`/`sslkey` give a
/// client certificate. Errors name the redacted target, never the password.
pub async fn connect_source(info: &ConnInfo, application_name: &str) -> Result<Client, PgError> {
    let mode = info.get("sslmode").unwrap_or("prefer").to_string();
    let mut client_info = info.clone();
    if matches!(mode.as_str(), "verify-ca" | "verify-full") {
        // tokio-postgres knows disable / prefer / require; verification is configured on the connector below.
        client_info.set("sslmode", "require");
    } else if !matches!(mode.as_str(), "disable" | "allow" | "prefer" | "require") {
        return Err(PgError::BadConnInfo(format!(
            "sslmode={mode} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        )));
    }
    if mode == "allow" {
        client_info.set("sslmode", "prefer");
    }
    let mut config: tokio_postgres::Config = client_info
        .for_client()
        .parse()
        .map_err(|e| PgError::BadConnInfo(format!("bad source connection string {}: {e}", info.redacted())))?;
    if info.get("application_name").is_none() {
        config.application_name(application_name);
    }
    let fail = |e: tokio_postgres::Error| PgError::Connect {
        target: format!("the source ({})", info.redacted()),
        detail: super::describe(&e),
    };
    let client = if mode == "disable" {
        let (client, connection) = config.connect(NoTls).await.map_err(fail)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "source connection ended");
            }
        });
        client
    } else {
        let connector = tls_connector(info, &mode)?;
        let (client, connection) = config.connect(connector).await.map_err(fail)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "source connection ended");
            }
        });
        client
    };
    Ok(client)
}

fn read_file(info: &ConnInfo, key: &str) -> Result<Option<Vec<u8>>, PgError> {
    match info.get(key) {
        None | Some("") => Ok(None),
        Some(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| PgError::BadConnInfo(format!("cannot read {key} file {path}: {e}"))),
    }
}

fn tls_connector(info: &ConnInfo, mode: &str) -> Result<postgres_native_tls::MakeTlsConnector, PgError> {
    let bad = |what: &str, e: native_tls::Error| PgError::BadConnInfo(format!("{what}: {e}"));
    let mut builder = native_tls::TlsConnector::builder();
    let verify = matches!(mode, "verify-ca" | "verify-full");
    builder.danger_accept_invalid_certs(!verify);
    builder.danger_accept_invalid_hostnames(mode != "verify-full");
    if let Some(pem) = read_file(info, "sslrootcert")? {
        let cert =
            native_tls::Certificate::from_pem(&pem).map_err(|e| bad("sslrootcert is not a PEM certificate", e))?;
        builder.add_root_certificate(cert);
    }
    if let (Some(cert), Some(key)) = (read_file(info, "sslcert")?, read_file(info, "sslkey")?) {
        let identity = native_tls::Identity::from_pkcs8(&cert, &key)
            .map_err(|e| bad("sslcert/sslkey are not a PEM certificate and PKCS#8 key", e))?;
        builder.identity(identity);
    }
    let connector = builder.build().map_err(|e| bad("setting up TLS", e))?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}

/// `host=… port=… dbname=…` of an embedded server's connection string, for messages (these carry no password, but
/// only the target is named anyway).
fn redacted_target(conninfo: &str) -> String {
    conninfo
        .split_whitespace()
        .filter(|kv| ["host=", "port=", "dbname="].iter().any(|k| kv.starts_with(k)))
        .collect::<Vec<_>>()
        .join(" ")
}
