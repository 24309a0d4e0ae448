//! Serving: the listener, graceful shutdown, signals and logging.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use cluster_types::LogFormat;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;

use crate::error::GatewayError;
use crate::gateway::Gateway;

/// Binds `addr` (TCP, `SO_REUSEADDR` as Tokio sets it).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serves `gateway` on `listener` until `shutdown` completes, then stops
/// accepting connections, lets in-flight requests (streams included) finish
/// for at most `gateway.shutdown_grace`, and returns. `/readyz` answers 503
/// from the moment `shutdown` completes. Connections are HTTP/1.1 with
/// keep-alive and `TCP_NODELAY`; over TLS when `gateway.tls` is set (see
/// `tls.rs`).
///
/// Each connection must send its request head within
/// `gateway.header_read_timeout` (default 30 s; also the idle time of a
/// kept-alive connection), in at most `gateway.max_header_bytes` (default
/// 64 KiB, else 431); at most `gateway.max_connections` are open at once
/// (default 8192, else 503 and close — see `limits.rs`).
///
/// The cluster itself is not shut down here (the caller owns it).
///
/// # Errors
/// [`GatewayError::Config`] when the TLS files cannot be loaded.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let app = crate::routes::routes(&gateway);
    let settings = gateway.settings();
    let grace = settings.shutdown_grace;
    let acceptor = settings
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?
        .map(TlsAcceptor::from);
    let header_read_timeout = settings.header_read_timeout;
    let max_header_bytes = settings.max_header_bytes.max(8192);
    let limiter = Arc::clone(gateway.connections());
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limiter.try_acquire() else {
            tracing::debug!(
                max = limiter.max(),
                "connection refused: gateway.max_connections reached"
            );
            if acceptor.is_none() {
                limiter.refuse(stream);
            }
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(max_header_bytes);
        match &acceptor {
            None => {
                let connection =
                    connections.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "client connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = connections.watcher();
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    let _permit = permit;
                    let handshake =
                        tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            limiter.tls_failure();
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            limiter.tls_failure();
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let connection =
                        watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "client connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    gateway.begin_shutdown();
    tracing::info!(
        ?grace,
        "shutting down: no new connections, draining in-flight requests"
    );
    tokio::select! {
        () = connections.shutdown() => tracing::info!("every connection finished"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace expired with requests still in flight; closing them");
        }
    }
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = term => tracing::info!("received SIGTERM"),
    }
}

/// Installs the global tracing subscriber: human-readable lines or one JSON
/// object per line on stderr, filtered by `RUST_LOG` (default
/// `default_filter`, e.g. `"info"`). Does nothing if a subscriber is already
/// installed.
pub(crate) fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        _ => builder.try_init(),
    };
}
