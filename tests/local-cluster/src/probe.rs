//! Minimal HTTP/1.1 `GET`, for the probes and for tests (no HTTP client in the dependencies).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `GET http://ADDR/PATH` (plain HTTP, `Connection: close`): the status code and the body, within `timeout`.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    tokio::time::timeout(timeout, get(addr, path))
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within {timeout:?}"))?
}

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: understudy-local-cluster\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("GET http://{addr}{path}: a truncated answer ({} bytes)", answer.len());
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("GET http://{addr}{path}: no status in {head:?}"))?;
    // Chunked bodies stay chunked: callers only look for words in them.
    Ok((code, body.to_string()))
}

/// Whether a TCP connection to `addr` opens within `timeout` (the `tcpSocket` probe).
pub async fn tcp_open(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)))
}
