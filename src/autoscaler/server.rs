//! Transport of the externalgrpc server: a TCP listener, TLS handshakes in their own tasks with
//! a timeout (a slow client must not hold up the others), tonic with the `CloudProvider` and
//! the standard gRPC health service, and graceful shutdown. Plaintext only when explicitly
//! asked for (then callers are not scoped to a cluster).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::proto::externalgrpc::cloud_provider_server::CloudProviderServer;
use super::service::CloudProviderService;

/// Time a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `shutdown` is cancelled. With `tls`, every connection
/// must complete an mTLS handshake (client certificates required by the config).
///
/// # Errors
/// When the gRPC server fails.
pub async fn serve(
    listener: TcpListener,
    service: CloudProviderService,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CloudProviderServer<CloudProviderService>>()
        .await;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .timeout(Duration::from_secs(30))
        .add_service(health)
        .add_service(CloudProviderServer::new(service));
    match tls {
        None => {
            tracing::warn!(address = %addr, "externalgrpc server listening WITHOUT TLS; callers see every cluster");
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.cancelled_owned(),
                )
                .await?;
        }
        Some(config) => {
            tracing::info!(address = %addr, "externalgrpc server listening (mTLS)");
            let acceptor = TlsAcceptor::from(config);
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let accept_shutdown = shutdown.clone();
            let accept = tokio::spawn(async move {
                loop {
                    let (tcp, peer) = tokio::select! {
                        () = accept_shutdown.cancelled() => break,
                        conn = listener.accept() => match conn {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(error = %e, "Accepting a connection failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    // gRPC sends small HTTP/2 frames: without TCP_NODELAY, Nagle's algorithm
                    // and delayed ACKs add ~40 ms to every RPC (measured by benches/ca_loop).
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "Cannot set TCP_NODELAY");
                    }
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake refused")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            });
            router
                .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown.cancelled_owned())
                .await?;
            accept.abort();
        }
    }
    Ok(())
}

/// Binds `addr` (callers pass a loopback address in tests and demos).
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(addr).await?)
}
