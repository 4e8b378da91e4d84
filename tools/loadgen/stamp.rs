//! Kernel receive timestamps (`SO_TIMESTAMPNS`): when data reached a socket's receive queue,
//! independent of when the reader got to run. Shared with the integration tests, which
//! include this file (`#[path]`) to check the server's latency figures against them.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

/// Receives into `buf`, returning the byte count and the kernel's receive time (Unix
/// seconds, `SO_TIMESTAMPNS`) of the last segment read, when the kernel gave one.
pub fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<f64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 words: cmsg headers need their natural alignment.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer in it refers to live local buffers whose
    // sizes are given alongside, and the cmsg walk stays within `msg_controllen`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, stamp))
    }
}

/// `SO_TIMESTAMPNS` / `SCM_TIMESTAMPNS` (the same value) on Linux x86-64 and aarch64.
const SCM_TIMESTAMPNS: i32 = 35;

/// Asks the kernel to stamp received data with its arrival time.
pub fn enable_rx_timestamps(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SCM_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
