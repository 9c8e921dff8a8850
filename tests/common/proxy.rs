//! A TCP proxy the test controls, in front of a dedicated Elasticsearch node (never the shared
//! one): the agents list the proxy as their only Elasticsearch host, so the test can take the
//! cluster away from them mid-operation and bring it back. It can
//!
//! * cut every open connection ([`Proxy::cut`]),
//! * refuse new ones ([`Proxy::refuse`]: the listening socket is closed, so a connect fails
//!   with ECONNREFUSED as against a node that is down; [`Proxy::accept`] listens again on the
//!   same port),
//! * hold the next N requests whose request line contains a pattern (`_restore`) for a while
//!   ([`Proxy::hold`]) — as a network that delays packets does: if the client gives up during
//!   the hold (its connection closed, as the leader's deadline closes it), the held bytes are
//!   dropped with the connection, as TCP drops a reset connection's late segments; if the client
//!   still waits, they are forwarded when the hold ends.
//!
//! Every held request is recorded with what became of it ([`Proxy::held`]), and every request
//! matching a watched pattern with the time it was forwarded ([`Proxy::forwarded`]), so a test can
//! prove the hold really happened and when each restore reached Elasticsearch.
//!
//! Plain threads (one per direction per connection): the agents' traffic is a few requests a
//! second.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What became of one held request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldFate {
    /// Still held.
    Holding,
    /// The client closed its connection during the hold: never forwarded.
    Dropped,
    /// Forwarded to Elasticsearch after the hold.
    Forwarded,
}

/// One held request: its request line, when the hold began and ended, and its fate.
#[derive(Debug, Clone)]
pub struct Held {
    pub request_line: String,
    pub since: Instant,
    pub until: Option<Instant>,
    pub fate: HeldFate,
}

struct Hold {
    pattern: String,
    duration: Duration,
    left: usize,
}

#[derive(Default)]
struct Shared {
    refusing: AtomicBool,
    stopped: AtomicBool,
    next_conn: AtomicU64,
    /// Both ends of every open connection (to cut them).
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    hold: Mutex<Option<Hold>>,
    held: Mutex<Vec<Held>>,
    /// Patterns whose forwarded requests are recorded, and the records (pattern, line, when).
    watched: Mutex<Vec<String>>,
    forwarded: Mutex<Vec<(String, String, Instant)>>,
}

/// A running proxy; dropping it stops accepting and cuts every connection.
pub struct Proxy {
    port: u16,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 forwarding to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("proxy upstream {upstream}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(listener, port, upstream, s));
        Proxy {
            port,
            upstream,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The URL the agents list (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every open connection (both ends).
    pub fn cut(&self) {
        let conns = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        for (_, c, u) in conns {
            let _ = c.shutdown(Shutdown::Both);
            let _ = u.shutdown(Shutdown::Both);
        }
    }

    /// Stops listening: new connections are refused until [`Proxy::accept`].
    pub fn refuse(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        // The acceptor closes the listening socket within its poll period.
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Listens again (on the same port).
    pub fn accept(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Holds the next `count` requests whose request line contains `pattern` for `duration` each.
    pub fn hold(&self, pattern: &str, count: usize, duration: Duration) {
        self.watch(pattern);
        *self.shared.hold.lock().unwrap() = Some(Hold {
            pattern: pattern.into(),
            duration,
            left: count,
        });
    }

    /// Records every request whose request line contains `pattern` when it is forwarded.
    pub fn watch(&self, pattern: &str) {
        let mut w = self.shared.watched.lock().unwrap();
        if !w.iter().any(|p| p == pattern) {
            w.push(pattern.into());
        }
    }

    /// The requests held so far, in order.
    pub fn held(&self) -> Vec<Held> {
        self.shared.held.lock().unwrap().clone()
    }

    /// The watched requests forwarded so far: (request line, when it was forwarded).
    pub fn forwarded(&self, pattern: &str) -> Vec<(String, Instant)> {
        self.shared
            .forwarded
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == pattern)
            .map(|(_, l, t)| (l.clone(), *t))
            .collect()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(listener: TcpListener, port: u16, upstream: SocketAddr, shared: Arc<Shared>) {
    listener.set_nonblocking(true).unwrap();
    let mut listener = Some(listener);
    while !shared.stopped.load(Ordering::SeqCst) {
        if shared.refusing.load(Ordering::SeqCst) {
            listener = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(("127.0.0.1", port)) {
                // std sets SO_REUSEADDR: the port is ours again at once.
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener.insert(l)
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        match l.accept() {
            Ok((client, _)) => {
                let s = shared.clone();
                std::thread::spawn(move || connection(client, upstream, s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn connection(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return;
    };
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    shared.conns.lock().unwrap().push((id, c2, u2));
    // Elasticsearch → client.
    let (Ok(mut up_r), Ok(mut client_w)) = (up.try_clone(), client.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    forward_requests(client, up, &shared);
    let _ = back.join();
    shared.conns.lock().unwrap().retain(|(i, _, _)| *i != id);
}

/// Client → Elasticsearch, holding what [`Proxy::hold`] asks for. A request line arrives at the
/// start of a read (clients send a request's head in one write), so each chunk's first line is
/// checked.
fn forward_requests(mut client: TcpStream, mut up: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = buf[..n].to_vec();
        let line = request_line(&chunk);
        if let Some(line) = &line {
            let hold = {
                let mut h = shared.hold.lock().unwrap();
                match h.as_mut() {
                    Some(h) if h.left > 0 && line.contains(&h.pattern) => {
                        h.left -= 1;
                        Some(h.duration)
                    }
                    _ => None,
                }
            };
            if let Some(d) = hold {
                let idx = {
                    let mut held = shared.held.lock().unwrap();
                    held.push(Held {
                        request_line: line.clone(),
                        since: Instant::now(),
                        until: None,
                        fate: HeldFate::Holding,
                    });
                    held.len() - 1
                };
                let gone = hold_watching(&mut client, &mut chunk, d);
                let mut held = shared.held.lock().unwrap();
                held[idx].until = Some(Instant::now());
                held[idx].fate = if gone {
                    HeldFate::Dropped
                } else {
                    HeldFate::Forwarded
                };
                drop(held);
                if gone {
                    let _ = up.shutdown(Shutdown::Both);
                    return;
                }
            }
            let watched = shared.watched.lock().unwrap().clone();
            for p in watched.iter().filter(|p| line.contains(p.as_str())) {
                shared
                    .forwarded
                    .lock()
                    .unwrap()
                    .push((p.clone(), line.clone(), Instant::now()));
            }
        }
        if up.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = up.shutdown(Shutdown::Write);
}

/// Waits `d`, reading whatever more the client sends into `chunk`; true if the client closed
/// its connection meanwhile.
fn hold_watching(client: &mut TcpStream, chunk: &mut Vec<u8>, d: Duration) -> bool {
    let end = Instant::now() + d;
    let mut more = [0u8; 16 * 1024];
    let gone = loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        let _ = client.set_read_timeout(Some(left.min(Duration::from_millis(100))));
        match client.read(&mut more) {
            Ok(0) => break true,
            Ok(n) => chunk.extend_from_slice(&more[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    let _ = client.set_read_timeout(None);
    gone
}

/// The first line of `chunk` if it looks like an HTTP request line.
fn request_line(chunk: &[u8]) -> Option<String> {
    let end = chunk.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = std::str::from_utf8(&chunk[..end]).ok()?;
    let method = line.split(' ').next()?;
    matches!(method, "GET" | "POST" | "PUT" | "DELETE" | "HEAD")
        .then(|| line.to_string())
        .filter(|l| l.ends_with("HTTP/1.1") || l.ends_with("HTTP/1.0"))
}
