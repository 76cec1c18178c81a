//! System calls the engine makes itself rather than through std or tokio.
//!
//! - **A connection's reads and writes** (`recv`, `send`, `writev`) go straight to the kernel
//!   through rustix, not through glibc. In a process with more than one thread, glibc's
//!   wrappers of these calls are cancellation points: each one switches the thread to
//!   asynchronous cancellation and back around the system call (an atomic read-modify-write
//!   on the thread's state each way). pymesh never cancels a thread, and those two switches
//!   cost about 0.15 µs per proxied request, 1-2% of the proxy's CPU (`perf record`,
//!   `h1-keepalive-1k` and `tcp-passthrough`); nginx and HAProxy, single-threaded, never pay
//!   them. rustix's calls are the bare instructions, with the same errors.
//! - **Registering such a socket with tokio's reactor** (`AsyncFd`) is `unsafe` since tokio
//!   1.54: the caller vouches that the descriptor stays open and the same while registered.
//! - **`TCP_DEFER_ACCEPT`** (listener.rs) has no setter in socket2 0.6 or in stable std
//!   (`TcpStreamExt::set_deferaccept` is unstable), so it is set with `setsockopt(2)` directly.
//!
//! The crate's only `unsafe` is here, allowed in this module alone.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf};

/// Register a TCP socket with the current worker's reactor, for reading and writing.
pub(crate) fn register(stream: std::net::TcpStream) -> io::Result<AsyncFd<std::net::TcpStream>> {
    // SAFETY: the `AsyncFd` owns the stream, whose descriptor stays open and the same until
    // the `AsyncFd` drops (a std `TcpStream` closes its descriptor only when dropped, and
    // nothing takes it out: lazy.rs uses `get_ref` alone).
    Ok(unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE | Interest::WRITABLE) }?)
}

/// Read what the socket holds, up to the room left in `buf`, with one `recv(2)`; the count
/// read (0: end of stream). Errors as the kernel gives them (`WouldBlock`, `Interrupted`...).
pub(crate) fn recv(socket: impl AsFd, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: `unfilled_mut` lends the buffer's unfilled bytes, possibly uninitialized, on the
    // condition that none is de-initialized; the kernel only writes into them.
    let room = unsafe { buf.unfilled_mut() };
    let (read, _) = rustix::net::recv(socket, room, RecvFlags::empty())?;
    let n = read.0.len();
    // SAFETY: rustix returns the part the kernel wrote, initialized: its first `n` bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// Write as much of `data` as the socket takes, with one `send(2)` (no `SIGPIPE` when the peer
/// has gone: an error instead).
pub(crate) fn send(socket: impl AsFd, data: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(socket, data, SendFlags::NOSIGNAL)?)
}

/// Write as much of `bufs`, in order, as the socket takes, with one `writev(2)`.
pub(crate) fn writev(socket: impl AsFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    Ok(rustix::io::writev(socket, bufs)?)
}

/// Set `TCP_DEFER_ACCEPT` on a listening TCP socket: accept a connection only once data has
/// arrived, or after about `seconds` (0: off).
pub(crate) fn set_tcp_defer_accept(socket: impl AsFd, seconds: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is borrowed from a live socket for the call's duration; the option value
    // points at a `c_int` on this frame, and its length is exactly that of a `c_int`.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's `TCP_DEFER_ACCEPT` as the kernel keeps it (seconds, rounded to its SYN-ACK
/// retransmission schedule); for tests.
#[cfg(test)]
pub(crate) fn tcp_defer_accept(socket: impl AsFd) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: as above; `len` says how much room `value` has and the kernel writes no more.
    let result = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_mut(&mut value).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if result == 0 {
        Ok(u32::try_from(value).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}
