//! The one system call the engine makes without a safe wrapper to call it through.
//!
//! `TCP_DEFER_ACCEPT` (listener.rs) has no setter in socket2 0.6 or in stable std
//! (`TcpStreamExt::set_deferaccept` is unstable), so it is set here with `setsockopt(2)`
//! directly: the crate's only `unsafe`, allowed in this module alone.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

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
