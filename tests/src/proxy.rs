//! A loopback TCP proxy for network faults: put between the sandbox (and the agent) and the source, it can cut
//! the network (every connection through it reset, new ones refused) and restore it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running proxy from `127.0.0.1:port` to a target port on the loopback.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    /// Cancelled on each cut: every connection made before it ends.
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    refused: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target_port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let down = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (d, e, r, s) = (
            Arc::clone(&down),
            Arc::clone(&epoch),
            Arc::clone(&refused),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                if d.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let token = e.lock().map(|t| t.clone()).unwrap_or_default();
                tokio::spawn(forward(client, target_port, token));
            }
        });
        Ok(Proxy {
            port,
            down,
            epoch,
            refused,
            stop,
        })
    }

    /// Cuts the network: open connections are closed, new ones refused until [`Proxy::restore`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        if let Ok(mut token) = self.epoch.lock() {
            token.cancel();
            *token = CancellationToken::new();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// Connections refused while the network was cut.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn forward(mut client: TcpStream, target_port: u16, cut: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.cancelled() => {
            // A reset rather than a clean close: what a broken network leaves on both ends.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
    }
}
