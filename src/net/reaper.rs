//! Closing HTTP connections that hold a thread without finishing a request.
//!
//! tiny_http reads each connection on a thread of its own and has no read timeout, so a client
//! that opens a connection and sends nothing, or trickles a header a byte at a time
//! (slowloris), would hold that thread forever. A read timeout cannot be inherited from the
//! listener (on Linux it would also time out `accept`, which ends tiny_http's accept loop),
//! and a per-read timeout would not stop a trickle anyway. So the housekeeping thread scans the
//! process's sockets on our port once a second and shuts down every plain HTTP connection that
//! has neither opened nor completed a request within the idle limit. WebSocket clients are
//! exempt (they are registered when upgraded). Keep-alive connections idle past the limit are
//! closed too, as any server's keep-alive timeout would.

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tracks HTTP activity per peer and closes idle connections.
pub struct Reaper {
    port: u16,
    idle_limit: Duration,
    /// Peers of upgraded WebSocket connections (never reaped).
    websockets: Mutex<HashSet<SocketAddr>>,
    /// Last time a request from this peer completed.
    activity: Mutex<HashMap<SocketAddr, Instant>>,
    /// First time each open connection was seen by a scan.
    first_seen: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Reaper {
    /// A reaper for connections to local `port`.
    pub fn new(port: u16, idle_limit: Duration) -> Self {
        Self {
            port,
            idle_limit,
            websockets: Mutex::default(),
            activity: Mutex::default(),
            first_seen: Mutex::default(),
        }
    }

    /// A request from `peer` completed.
    pub fn note_request(&self, peer: SocketAddr) {
        lock(&self.activity).insert(peer, Instant::now());
    }

    /// `peer` is now a WebSocket client.
    pub fn add_websocket(&self, peer: SocketAddr) {
        lock(&self.websockets).insert(peer);
    }

    /// `peer`'s WebSocket has ended.
    pub fn remove_websocket(&self, peer: SocketAddr) {
        lock(&self.websockets).remove(&peer);
    }

    /// Scans open connections and shuts down the idle ones; returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let peers = match open_peers(self.port) {
            Ok(peers) => peers,
            Err(e) => {
                log::debug!("connection scan failed: {e}");
                return 0;
            }
        };
        let websockets = lock(&self.websockets).clone();
        let mut first_seen = lock(&self.first_seen);
        let mut activity = lock(&self.activity);
        first_seen.retain(|peer, _| peers.contains_key(peer));
        activity.retain(|peer, _| peers.contains_key(peer));
        let mut reaped = 0;
        for (peer, fd) in &peers {
            if websockets.contains(peer) {
                continue;
            }
            let seen = *first_seen.entry(*peer).or_insert(now);
            let last = activity.get(peer).copied().map_or(seen, |a| a.max(seen));
            if now.duration_since(last) > self.idle_limit && shut_down_fd(*fd, *peer, self.port) {
                reaped += 1;
                first_seen.remove(peer);
            }
        }
        reaped
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(target_os = "linux")]
fn open_peers(port: u16) -> std::io::Result<HashMap<SocketAddr, std::os::fd::RawFd>> {
    use std::os::fd::BorrowedFd;
    let mut peers = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if fd < 3 {
            continue;
        }
        // SAFETY: borrowed only for getsockname/getpeername; never closed here.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        let local_port = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port());
        if local_port != Some(port) {
            continue;
        }
        if let Some(peer) = sock.peer_addr().ok().and_then(|a| a.as_socket()) {
            peers.entry(peer).or_insert(fd);
        }
    }
    Ok(peers)
}

#[cfg(not(target_os = "linux"))]
fn open_peers(_port: u16) -> std::io::Result<HashMap<SocketAddr, i32>> {
    Ok(HashMap::new())
}

/// Shuts the connection down through a duplicate of `fd`, after checking the duplicate is
/// still the connection to `peer` (the number may have been reused since the scan).
#[cfg(target_os = "linux")]
fn shut_down_fd(fd: std::os::fd::RawFd, peer: SocketAddr, port: u16) -> bool {
    use std::os::fd::BorrowedFd;
    // SAFETY: as in open_peers; the duplicate is owned and checked before use.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(owned) = borrowed.try_clone_to_owned() else {
        return false;
    };
    let stream = std::net::TcpStream::from(owned);
    let same = stream.peer_addr().is_ok_and(|p| p == peer)
        && stream.local_addr().is_ok_and(|l| l.port() == port);
    same && stream.shutdown(Shutdown::Both).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn shut_down_fd(_fd: i32, _peer: SocketAddr, _port: u16) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn idle_connections_are_shut_down_and_active_ones_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_idle_server, idle_peer) = listener.accept().unwrap();
        let ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_ws_server, ws_peer) = listener.accept().unwrap();
        let active = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_active_server, active_peer) = listener.accept().unwrap();

        let reaper = Reaper::new(port, Duration::from_secs(5));
        reaper.add_websocket(ws_peer);
        let t0 = Instant::now();
        assert_eq!(reaper.reap(t0), 0, "nothing is idle yet");
        reaper.note_request(active_peer);
        let later = Instant::now() + Duration::from_secs(6);
        reaper.note_request(active_peer);
        // Pretend the active peer's last request was just now, relative to `later`.
        lock(&reaper.activity).insert(active_peer, later);
        assert_eq!(reaper.reap(later), 1, "only the idle plain connection");
        let mut buf = [0u8; 1];
        idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(idle.read(&mut buf).unwrap(), 0, "the idle client sees EOF");
        assert!(lock(&reaper.first_seen).contains_key(&active_peer));
        drop((ws, active, idle_peer));
    }
}
