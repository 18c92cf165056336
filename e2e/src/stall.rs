//! A loopback TCP relay whose connections can be frozen: [`StallRelay::stall_existing`] stops
//! forwarding on every connection open at that moment while keeping the sockets open (what a
//! half-open connection looks like to its client: no error, no bytes), and relays connections
//! opened afterwards normally. Used to show that capow recovers from a stalled API-server
//! connection by itself (bounded reads and watches, `capow::kubeapi`). TLS passes through
//! untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running relay; stops accepting when dropped.
pub struct StallRelay {
    /// Local port (on 127.0.0.1).
    pub port: u16,
    stalled: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallRelay {
    /// Relays 127.0.0.1:<free port> to `target` (e.g. `127.0.0.1:16443`).
    ///
    /// # Panics
    /// When no loopback port can be bound (test harness).
    pub async fn start(target: &str) -> StallRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stalled = Arc::new(AtomicBool::new(false));
        let target = target.to_owned();
        let flag = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Connections opened after the stall are never frozen.
                let freeze = (!flag.load(Ordering::SeqCst)).then(|| flag.clone());
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(&target).await {
                        let (cr, cw) = client.into_split();
                        let (ur, uw) = upstream.into_split();
                        tokio::select! {
                            () = copy(cr, uw, freeze.clone()) => {}
                            () = copy(ur, cw, freeze) => {}
                        }
                    }
                });
            }
        });
        StallRelay {
            port,
            stalled,
            task,
        }
    }

    /// Freezes every connection open now: no byte moves on them any more, in either direction,
    /// but they stay open.
    pub fn stall_existing(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for StallRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either side closes; holds both (forwarding nothing) once
/// `freeze` is set.
async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    freeze: Option<Arc<AtomicBool>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if freeze.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
