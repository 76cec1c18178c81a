//! The engine's TCP stream: read and written with direct system calls (sys.rs), and, for an
//! accepted connection, joining the reactor only when it first has to wait.
//!
//! Registering a socket with epoll and deregistering it before the close are two system calls
//! (`epoll_ctl` ADD and DEL) and a reactor slot per connection. A connection whose request is
//! already in the socket when it is accepted, and that is answered and closed without a read
//! or write ever finding the socket not ready (`Connection: close`, the common case for a
//! client's one-off request), never needs them. HTTP listeners defer the accept until the
//! client's first bytes arrive (`TCP_DEFER_ACCEPT`, listener.rs), so the first read finds the
//! request. Measured on `h1-new-connection`: see docs/decisions.md.
//!
//! Until then the stream is a plain non-blocking socket and each read or write is tried
//! directly; the first one that would block registers it ([`Socket`]), and from there the
//! reactor's readiness (edge-triggered) says when to try again. No wake-up is lost in between:
//! epoll reports a socket that is ready when it is added.
//!
//! Why not tokio's `TcpStream`: its reads and writes go through glibc, whose wrappers cost
//! every call a switch into and out of asynchronous cancellation (sys.rs). [`Socket`] keeps
//! tokio's readiness rules exactly (tokio's `AsyncFd` is the registration), and makes the
//! calls itself.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys;

/// A non-blocking TCP socket registered with the worker's reactor for reading and writing.
/// Shared references read and write too (`&Socket` is `AsyncRead + AsyncWrite`), so the two
/// directions of a relay need no split.
#[derive(Debug)]
pub(crate) struct Socket(AsyncFd<TcpStream>);

impl Socket {
    /// Register `stream`, which must be non-blocking.
    pub(crate) fn new(stream: TcpStream) -> io::Result<Self> {
        sys::register(stream).map(Self)
    }

    /// A socket that tokio opened (a connector's), re-registered as ours. Costs an
    /// `epoll_ctl` each way, once per upstream connection.
    pub(crate) fn from_tokio(stream: tokio::net::TcpStream) -> io::Result<Self> {
        Self::new(stream.into_std()?)
    }

    /// Connect to `addr`, registered from the start (as tokio's own connect does: a
    /// non-blocking `connect(2)`, then the socket's first writability says it is done).
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let ty = socket2::Type::STREAM.nonblocking().cloexec();
        let socket =
            socket2::Socket::new(socket2::Domain::for_address(addr), ty, Some(socket2::Protocol::TCP))?;
        match socket.connect(&addr.into()) {
            Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
            _ => {}
        }
        let socket = Self::new(TcpStream::from(socket))?;
        // Writable (or failed: an error or hang-up wakes every interest) once the handshake
        // ends; the readiness is left set for the first write.
        drop(socket.0.writable().await?);
        match socket.get_ref().take_error()? {
            Some(e) => Err(e),
            None => Ok(socket),
        }
    }

    pub(crate) fn get_ref(&self) -> &TcpStream {
        self.0.get_ref()
    }

    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            let room = buf.remaining();
            match sys::recv(self.0.get_ref(), buf) {
                Ok(n) => {
                    // Less than the room: the socket is drained, and the next read waits for
                    // the next edge rather than make a call that finds nothing (tokio's own
                    // stream does the same).
                    if n > 0 && n < room {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `op` (a write of `len` bytes) once the socket can take some.
    fn poll_send_with(
        &self,
        cx: &mut Context<'_>,
        len: usize,
        op: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.0.poll_write_ready(cx))?;
            match op(self.0.get_ref()) {
                Ok(n) => {
                    // Part of it: the send buffer is full; wait for the next edge.
                    if n > 0 && n < len {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Read the head of what the socket holds without taking it off, once it holds more than
    /// `seen` bytes (0: anything); 0 when the peer ends the stream first.
    ///
    /// A peek leaves the socket readable, so asking again would answer at once with the same
    /// bytes. Instead, a peek that finds no more than `seen` clears the readiness it was woken
    /// by and waits for the next edge: the next bytes to arrive (or the peer's end). tokio
    /// clears it only if no newer event came in meanwhile, so bytes arriving between the peek
    /// and the clear are not missed.
    pub(crate) async fn peek_more(&self, buf: &mut [u8], seen: usize) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|io| io.get_ref().peek(buf)) {
                Ok(Ok(n)) if n <= seen && n < buf.len() => {
                    if ready.ready().is_read_closed() {
                        return Ok(0); // nothing more will come
                    }
                    ready.clear_ready();
                }
                Ok(peeked) => return peeked,
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncRead for &Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_recv(cx, buf)
    }
}

impl AsyncWrite for &Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_send_with(cx, data.len(), |io| sys::send(io, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_send_with(cx, len, |io| sys::writev(io, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_ref().shutdown(Shutdown::Write))
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_shutdown(cx)
    }
}

/// See the module's documentation.
#[derive(Debug)]
pub(crate) enum LazyStream {
    /// Not registered: every operation is tried at once.
    Plain(TcpStream),
    /// Registered with the worker's reactor.
    Registered(Socket),
    /// Registration failed; the socket is closed.
    Failed,
}

impl LazyStream {
    /// `stream` must be non-blocking (accepted with `SOCK_NONBLOCK`).
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self::Plain(stream)
    }

    /// The registered socket, registering it now if it is not yet.
    fn registered(&mut self) -> io::Result<&Socket> {
        if let Self::Plain(_) = self {
            let Self::Plain(plain) = std::mem::replace(self, Self::Failed) else { unreachable!() };
            *self = Self::Registered(Socket::new(plain)?);
        }
        match self {
            Self::Registered(io) => Ok(io),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Self::Plain(io) => io.set_nodelay(on),
            Self::Registered(io) => io.get_ref().set_nodelay(on),
            Self::Failed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// `op` on the plain socket unless it would block; from then on (registered), `registered`.
    fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&TcpStream) -> io::Result<T>,
        registered: impl FnOnce(Pin<&mut &Socket>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Self::Plain(plain) = self {
            loop {
                match op(plain) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    done => return Poll::Ready(done),
                }
            }
        }
        match self.registered() {
            Ok(io) => registered(Pin::new(&mut &*io), cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for LazyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // A plain read fills `buf` only when it succeeds, so the registered one starts afresh.
        let this = self.get_mut();
        if let Self::Plain(plain) = this {
            loop {
                match sys::recv(&*plain, buf) {
                    Ok(_) => return Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
        match this.registered() {
            Ok(io) => Pin::new(&mut &*io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for LazyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(cx, |io| sys::send(io, data), |io, cx| io.poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(cx, |io| sys::writev(io, bufs), |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.get_mut() {
            Self::Plain(io) => io.shutdown(Shutdown::Write),
            Self::Registered(io) => io.get_ref().shutdown(Shutdown::Write),
            Self::Failed => Err(io::ErrorKind::NotConnected.into()),
        })
    }
}

impl crate::http::h1server::NoDelay for LazyStream {
    fn set_nodelay(&self) {
        let _ = LazyStream::set_nodelay(self, true);
    }
}

#[cfg(test)]
mod tests {
    use super::{LazyStream, Socket};
    use std::future::Future;
    use std::io::{Read, Write};
    use std::task::Poll;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// (the client's end, the accepted end as the listener hands it over)
    fn connected() -> (std::net::TcpStream, LazyStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        (client, LazyStream::new(accepted))
    }

    /// `fut`'s output, after one poll that must find it waiting and then `wake` (which should
    /// end the wait; 5 s at most).
    async fn waits_until<F: Future>(fut: F, wake: impl FnOnce()) -> F::Output {
        let mut fut = Box::pin(fut);
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "it waits: nothing was sent yet");
        wake();
        tokio::time::timeout(Duration::from_secs(5), fut).await.expect("woken")
    }

    fn registered(stream: &LazyStream) -> bool {
        matches!(stream, LazyStream::Registered(_))
    }

    #[tokio::test]
    async fn a_stream_joins_the_reactor_only_when_it_has_to_wait() {
        let (mut client, mut stream) = connected();
        client.write_all(b"hello").unwrap();
        if let LazyStream::Plain(plain) = &stream {
            // Until the bytes are in (they are, on loopback, but the test does not rely on it).
            plain.set_nonblocking(false).unwrap();
            plain.peek(&mut [0]).unwrap();
            plain.set_nonblocking(true).unwrap();
        }
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        stream.write_all(b"answer").await.unwrap();
        assert!(!registered(&stream), "nothing had to wait");
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answer");

        // Nothing to read: one poll finds the socket empty, registers it and waits; the
        // client's next bytes then wake the read.
        let n = waits_until(stream.read(&mut buf), || client.write_all(b"again").unwrap()).await.unwrap();
        assert_eq!(&buf[..n], b"again");
        assert!(registered(&stream));
        stream.write_all(b"bye").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
    }

    #[tokio::test]
    async fn a_write_the_socket_cannot_take_registers_and_completes_as_the_client_reads() {
        let (client, mut stream) = connected();
        // More than the socket's buffers hold: the plain write stops part way.
        let big = vec![7u8; 16 << 20];
        let reader = std::thread::spawn(move || {
            let mut client = client;
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        tokio::time::timeout(Duration::from_secs(20), stream.write_all(&big)).await.unwrap().unwrap();
        assert!(registered(&stream));
        stream.shutdown().await.unwrap();
        drop(stream);
        assert!(reader.join().unwrap() == big, "every byte, in order");
    }

    #[tokio::test]
    async fn a_plain_shutdown_ends_the_clients_reads() {
        let (mut client, mut stream) = connected();
        stream.write_all(b"last words").await.unwrap();
        stream.shutdown().await.unwrap();
        assert!(!registered(&stream));
        let mut all = Vec::new();
        client.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"last words");
    }

    #[tokio::test]
    async fn a_connected_socket_carries_both_directions_at_once_through_shared_references() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The far end echoes every byte back, then closes once the socket's end half-closes.
        let echo = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut total = 0usize;
            loop {
                let n = peer.read(&mut buf).unwrap();
                if n == 0 {
                    return total;
                }
                peer.write_all(&buf[..n]).unwrap();
                total += n;
            }
        });
        let socket = Socket::connect(addr).await.unwrap();
        let sent: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = (&socket, &socket);
        // Both at once: 4 MiB is more than the buffers on the way hold, so the writer waits
        // on the reader and each wakes the other.
        let write = async {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let read = async {
            // Into uninitialized room: a `Vec`'s spare capacity, through a `ReadBuf`.
            let mut got = Vec::with_capacity(sent.len());
            while r.read_buf(&mut got).await.unwrap() > 0 {}
            got
        };
        let ((), got) =
            tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) }).await.unwrap();
        assert!(got == sent, "every byte back, in order");
        assert_eq!(echo.join().unwrap(), sent.len());
    }

    #[tokio::test]
    async fn a_read_that_drains_the_socket_waits_for_more_and_is_woken_by_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = Socket::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"0123456789").unwrap();
        let mut r = &socket;
        let mut small = [0u8; 4];
        // A read that fills its room leaves the socket's readiness set: the next read finds
        // the rest without waiting for a new edge.
        r.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"0123");
        let mut big = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), r.read(&mut big))
            .await
            .expect("not left waiting")
            .unwrap();
        assert_eq!(&big[..n], b"456789", "the rest, in one read");
        // That read drained it (fewer bytes than its room): the next one waits...
        // ...and the peer's next bytes wake it.
        let n = waits_until(r.read(&mut big), || peer.write_all(b"more").unwrap()).await.unwrap();
        assert_eq!(&big[..n], b"more");
        // A peek leaves the bytes for the read after it, and waits for more than it has seen:
        // the peer's next bytes wake it.
        peer.write_all(b"pee").unwrap();
        let mut head = [0u8; 16];
        let peek = socket.peek_more(&mut head, 0);
        let seen = tokio::time::timeout(Duration::from_secs(5), peek).await.unwrap().unwrap();
        assert_eq!(&head[..seen], &b"pee"[..seen]);
        let more =
            waits_until(socket.peek_more(&mut head, 3), || peer.write_all(b"ked").unwrap()).await.unwrap();
        assert!(more > 3 && head[..more] == b"peeked"[..more], "{more}");
        let mut all = [0u8; 6];
        r.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"peeked");
        // A peek waiting for more learns of the peer's end instead of spinning on what it has.
        peer.write_all(b"x").unwrap();
        let peek = socket.peek_more(&mut head, 0);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), peek).await.unwrap().unwrap(), 1);
        let ended =
            waits_until(socket.peek_more(&mut head, 1), || peer.shutdown(std::net::Shutdown::Write).unwrap());
        assert_eq!(ended.await.unwrap(), 0);
        let mut x = [0u8; 1];
        r.read_exact(&mut x).await.unwrap();
        assert_eq!(&x, b"x");
        // The peer's close is the end of the stream.
        drop(peer);
        assert_eq!(r.read(&mut big).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_connect_to_a_closed_port_fails_with_the_kernels_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err =
            tokio::time::timeout(Duration::from_secs(5), Socket::connect(closed)).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }

    #[tokio::test]
    async fn a_write_to_a_peer_that_reset_the_connection_fails_with_the_reset() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = Socket::connect(listener.local_addr().unwrap()).await.unwrap();
        let (peer, _) = listener.accept().unwrap();
        let mut w = &socket;
        w.write_all(b"unread").await.unwrap();
        // The bytes are at the peer, unread: its close answers with a reset.
        peer.peek(&mut [0u8; 6]).unwrap();
        drop(peer);
        // The reset's arrival wakes a read, which reports it (an event, not a timed wait)...
        let mut r = &socket;
        let read = tokio::time::timeout(Duration::from_secs(5), r.read(&mut [0u8; 16])).await;
        let kind = read.expect("woken by the reset").unwrap_err().kind();
        assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
        // ...and a write after it fails instead of sending into a dead connection.
        let kind = w.write_all(&[0u8; 1024]).await.unwrap_err().kind();
        assert!(
            matches!(kind, std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
            "{kind:?}"
        );
    }
}
