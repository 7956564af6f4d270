//! The HTTP/1.1 server both listeners run: hyper driven directly (not
//! `axum::serve`), so that a client has a bounded time to send a request's
//! head, a bounded head size, and a bounded number of connections from its
//! address. Graceful shutdown is `axum::serve`'s: stop accepting, let every
//! connection finish the request it is in, then return.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use futures::FutureExt;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;

use crate::config::HttpSettings;

/// What a client may hold of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// To send a request's whole head; also how long a connection may sit
    /// idle between requests.
    pub header_read_timeout: Duration,
    /// Connections open at once from one address; 0: no limit.
    pub max_connections_per_ip: usize,
    /// The largest request head, in bytes.
    pub max_header_bytes: usize,
}

impl Limits {
    pub fn from_settings(http: &HttpSettings) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            max_connections_per_ip: http.max_connections_per_ip,
            max_header_bytes: http.max_header_bytes,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then waits for the open
/// connections to finish their requests. Each request carries the peer's
/// address as `ConnectInfo<SocketAddr>` (the access log's IP unless
/// `api.client_ip_header` names a proxy's header).
pub async fn serve(
    mut listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let open = Arc::new(PerAddress::new(limits.max_connections_per_ip));
    // Every connection task holds a receiver; when all are gone, all
    // connections have closed.
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
    loop {
        // `axum::serve`'s accept: connection errors are skipped, others
        // (no file descriptors left) logged and retried after a second.
        let (stream, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let Some(slot) = open.take(peer.ip().to_canonical()) else {
            refuse(&stream);
            continue;
        };
        let service = TowerToHyperService::new(
            axum::Extension(ConnectInfo::<SocketAddr>(peer)).layer(router.clone()),
        );
        let shutdown = shutdown.clone();
        let closed_rx = closed_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(limits.max_header_bytes);
            let mut connection = pin!(
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
            );
            let mut stopping = pin!(shutdown.cancelled().fuse());
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = &mut stopping => connection.as_mut().graceful_shutdown(),
                }
            }
            drop(slot);
            drop(closed_rx);
        });
    }
    drop(closed_rx);
    drop(listener);
    closed_tx.closed().await;
    Ok(())
}

/// The answer to a connection over its address's limit, written without
/// waiting: whatever the socket takes now, then the connection closes. A
/// client whose request was already on its way may see a reset instead.
static TOO_MANY_CONNECTIONS: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let problem = kiln_api::Problem::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        "too many connections from your address at once; close some and try again",
    );
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
});

fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(&TOO_MANY_CONNECTIONS);
}

/// Open connections per peer address.
struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, Count>>,
}

#[derive(Default)]
struct Count {
    open: usize,
    /// Whether reaching the limit was logged since the address was last
    /// below it: one line per burst, not one per refused connection.
    warned: bool,
}

/// One open connection of an address; closing it frees the place.
struct Slot {
    owner: Option<(Arc<PerAddress>, IpAddr)>,
}

impl PerAddress {
    fn new(max: usize) -> PerAddress {
        PerAddress {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if self.max == 0 {
            return Some(Slot { owner: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if count.open >= self.max {
            if !count.warned {
                count.warned = true;
                // No address: logs are not where personal data is kept.
                tracing::warn!(
                    limit = self.max,
                    "a client address reached http.max_connections_per_ip; its further connections are refused until some close"
                );
            }
            return None;
        }
        count.open += 1;
        Some(Slot {
            owner: Some((self.clone(), ip)),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((owner, ip)) = self.owner.take() else {
            return;
        };
        let mut open = owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            count.open = count.open.saturating_sub(1);
            count.warned = false;
            if count.open == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_problem() {
        let text = std::str::from_utf8(&TOO_MANY_CONNECTIONS).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_default();
        assert_eq!(length, body.len(), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(problem["status"], 429);
        assert_eq!(problem["code"], "too_many_connections");
    }

    #[test]
    fn an_address_gets_its_places_back_as_connections_close() {
        let open = Arc::new(PerAddress::new(2));
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = open.take(a);
        let second = open.take(a);
        assert!(first.is_some() && second.is_some());
        assert!(open.take(a).is_none(), "a third from one address");
        assert!(open.take(b).is_some(), "another address has its own");
        drop(first);
        assert!(open.take(a).is_some(), "a place freed by a close");
        let unlimited = Arc::new(PerAddress::new(0));
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.take(a)).collect();
        assert_eq!(held.len(), 1000);
    }
}
