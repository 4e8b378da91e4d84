//! Taking a WebSocket's TCP socket back from tiny_http after the upgrade.
//!
//! `tiny_http::Request::upgrade` hands back a `Box<dyn ReadWrite>` that hides the socket: no
//! `set_nodelay`, no timeouts, no way to split reading from writing, and writes go through a
//! mutex-guarded buffer. We need all of those, so we find the socket by its addresses among
//! our own file descriptors (`/proc/self/fd`) and duplicate it. Our vendored tiny_http's
//! `upgrade` disarms the shutdown its handles would do on drop, so the upgraded box is dropped
//! right after, freeing tiny_http's connection thread. Cost: one directory scan per WebSocket
//! connect, on a network thread; nothing per packet.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{BorrowedFd, RawFd};

use socket2::SockRef;

/// Duplicates the connected TCP socket whose peer is `peer` and whose local port is
/// `local_port`, as an owned `TcpStream`.
#[cfg(target_os = "linux")]
pub fn recover_tcp_stream(peer: SocketAddr, local_port: u16) -> io::Result<TcpStream> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        if fd < 3 {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for getpeername/getsockname and an F_DUPFD;
        // it is never closed here. If another thread closes it meanwhile, these calls fail or
        // see another socket, and the address check below rejects it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if matches_addresses(&borrowed, peer, local_port) {
            let stream = TcpStream::from(borrowed.try_clone_to_owned()?);
            // Re-check the duplicate: it cannot change underneath us.
            if matches_addresses(&stream, peer, local_port) {
                return Ok(stream);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no socket connected to {peer} on local port {local_port}"),
    ))
}

#[cfg(not(target_os = "linux"))]
pub fn recover_tcp_stream(peer: SocketAddr, _local_port: u16) -> io::Result<TcpStream> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("taking over the socket of {peer} needs /proc (Linux)"),
    ))
}

fn matches_addresses(fd: &impl std::os::fd::AsFd, peer: SocketAddr, local_port: u16) -> bool {
    let sock = SockRef::from(fd);
    let peer_ok = sock
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .is_some_and(|a| a == peer);
    peer_ok
        && sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == local_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn finds_and_duplicates_the_accepted_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let mut recovered = recover_tcp_stream(peer, port).unwrap();
        recovered.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(accepted);
        let stranger: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(recover_tcp_stream(stranger, port).is_err());
    }
}
