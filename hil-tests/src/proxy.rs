//! A TCP fault proxy for the link between a gateway and the hub. It sits on loopback, forwards to
//! an upstream address that can be changed while it runs (a restarted hub), and injects the faults
//! that break sync in the field: the link down, delay, connections reset, and the response lost
//! after the hub already committed the request.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the link does to new and open connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Bytes flow both ways.
    Up,
    /// The WAN is down: connections are accepted and closed at once, open ones are cut.
    Down,
    /// Every chunk is held this long before it is forwarded.
    Delay(Duration),
}

#[derive(Debug)]
struct Shared {
    upstream: Mutex<SocketAddr>,
    mode: watch::Sender<(LinkMode, u64)>,
    lose_responses: AtomicU64,
    /// Only responses to requests whose first bytes start with this are lost (empty: any).
    lose_filter: Mutex<Vec<u8>>,
    lost: AtomicU64,
    connections: AtomicU64,
}

/// A running fault proxy. Dropping it stops accepting; call [`FaultProxy::shutdown`] to also cut
/// open connections.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel((LinkMode::Up, 0));
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            mode,
            lose_responses: AtomicU64::new(0),
            lose_filter: Mutex::new(Vec::new()),
            lost: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(client, s.clone()));
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            accept,
        })
    }

    /// The address gateways should use as the hub.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Points the proxy at a new upstream (a hub restarted on another port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        if let Ok(mut u) = self.shared.upstream.lock() {
            *u = upstream;
        }
    }

    /// Changes the link; open connections are cut whenever the mode changes, as a real outage or
    /// route flap would.
    pub fn set_mode(&self, mode: LinkMode) {
        self.shared.mode.send_modify(|(m, generation)| {
            *m = mode;
            *generation += 1;
        });
    }

    pub fn link_down(&self) {
        self.set_mode(LinkMode::Down);
    }

    pub fn link_up(&self) {
        self.set_mode(LinkMode::Up);
    }

    /// Cuts every open connection without changing the mode.
    pub fn reset_connections(&self) {
        let mode = self.shared.mode.borrow().0;
        self.set_mode(mode);
    }

    /// The next `n` responses are swallowed after the upstream has produced them (so the hub has
    /// committed) and the client's connection is closed instead.
    pub fn lose_next_responses(&self, n: u64) {
        self.lose_next_responses_to(b"", n);
    }

    /// Like [`FaultProxy::lose_next_responses`], only for requests starting with `request_prefix`
    /// (for example `b"POST /v1/sync/events"`).
    pub fn lose_next_responses_to(&self, request_prefix: &[u8], n: u64) {
        if let Ok(mut f) = self.shared.lose_filter.lock() {
            *f = request_prefix.to_vec();
        }
        self.shared.lose_responses.store(n, Ordering::SeqCst);
    }

    /// How many responses were swallowed so far.
    pub fn responses_lost(&self) -> u64 {
        self.shared.lost.load(Ordering::SeqCst)
    }

    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    pub fn shutdown(self) {
        self.link_down();
        self.accept.abort();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve_connection(client: TcpStream, shared: Arc<Shared>) {
    let mut mode_rx = shared.mode.subscribe();
    let (mode, generation) = *mode_rx.borrow_and_update();
    if mode == LinkMode::Down {
        return; // dropping the stream closes it: the gateway sees a refused/reset link
    }
    let upstream = match shared.upstream.lock() {
        Ok(u) => *u,
        Err(_) => return,
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let delay = match mode {
        LinkMode::Delay(d) => Some(d),
        _ => None,
    };

    // The start of the request most recently sent on this connection (HTTP/1.1 keep-alive sends
    // one request at a time), so lost responses can be aimed at one kind of request.
    let last_request = Mutex::new(Vec::<u8>::new());
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if starts_like_request(&buf[..n])
                && let Ok(mut last) = last_request.lock()
            {
                *last = buf[..n.min(64)].to_vec();
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Lose this response: the upstream has answered, so it has committed; the client
            // never hears of it and its connection is closed.
            let aimed_here = match (shared.lose_filter.lock(), last_request.lock()) {
                (Ok(filter), Ok(last)) => last.starts_with(&filter),
                _ => false,
            };
            let lose = aimed_here
                && shared
                    .lose_responses
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                    .is_ok();
            if lose {
                shared.lost.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let cut = async {
        loop {
            if mode_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if mode_rx.borrow().1 != generation {
                break;
            }
        }
    };
    // Whichever side ends first ends the connection: a lost response must close the client's
    // connection at once, as a dropped link or a crashed middlebox would.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut => {}
    }
}

/// Does this chunk begin an HTTP request (`GET /...`, `POST /...`)?
fn starts_like_request(chunk: &[u8]) -> bool {
    let method_len = chunk.iter().take_while(|b| b.is_ascii_uppercase()).count();
    (3..=7).contains(&method_len) && chunk.get(method_len) == Some(&b' ')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_then_cuts_then_loses_one_response() {
        let echo = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        assert_eq!(roundtrip(proxy.addr()).await.as_deref(), Some(&b"ping"[..]));
        proxy.link_down();
        assert_eq!(roundtrip(proxy.addr()).await, None);
        proxy.link_up();
        proxy.lose_next_responses(1);
        assert_eq!(roundtrip(proxy.addr()).await, None);
        assert_eq!(proxy.responses_lost(), 1);
        assert_eq!(roundtrip(proxy.addr()).await.as_deref(), Some(&b"ping"[..]));
    }

    #[tokio::test]
    async fn mode_change_cuts_open_connections() {
        let echo = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        proxy.reset_connections();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(n.is_err() || rest.is_empty(), "connection should be closed");
    }
}
