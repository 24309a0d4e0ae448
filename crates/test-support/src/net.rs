//! Loopback ports and serving an axum app on one.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago (bound, then released).
/// Prefer binding port 0 and passing the listener where the code allows it.
#[must_use]
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A port on 127.0.0.1 that nothing listens on: connecting to it is
/// refused (bound and released; the kernel does not hand it out again at
/// once).
#[must_use]
pub fn closed_port() -> u16 {
    free_port()
}

/// `http://127.0.0.1:PORT` of a [`closed_port`].
#[must_use]
pub fn closed_url() -> String {
    format!("http://127.0.0.1:{}", closed_port())
}

/// Serves `app` on a fresh 127.0.0.1 port on a spawned task (until the
/// runtime ends); its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
