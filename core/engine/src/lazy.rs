//! An accepted TCP stream that joins the reactor only when it first has to wait.
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
//! directly; the first one that would block registers it, and from there tokio's stream
//! (readiness-driven, edge-triggered) carries on. No wake-up is lost in between: epoll reports
//! a socket that is ready when it is added.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// See the module's documentation.
#[derive(Debug)]
pub(crate) enum LazyStream {
    /// Not registered: every operation is tried at once.
    Plain(std::net::TcpStream),
    /// Registered with the worker's reactor.
    Registered(tokio::net::TcpStream),
    /// Registration failed; the socket is closed.
    Failed,
}

impl LazyStream {
    /// `stream` must be non-blocking (accepted with `SOCK_NONBLOCK`).
    pub(crate) fn new(stream: std::net::TcpStream) -> Self {
        Self::Plain(stream)
    }

    /// The registered stream, registering it now if it is not yet.
    fn registered(&mut self) -> io::Result<&mut tokio::net::TcpStream> {
        if let Self::Plain(_) = self {
            let Self::Plain(plain) = std::mem::replace(self, Self::Failed) else { unreachable!() };
            *self = Self::Registered(tokio::net::TcpStream::from_std(plain)?);
        }
        match self {
            Self::Registered(io) => Ok(io),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Self::Plain(io) => io.set_nodelay(on),
            Self::Registered(io) => io.set_nodelay(on),
            Self::Failed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// `op` on the plain socket unless it would block; from then on (registered), `registered`.
    fn poll_write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
        registered: impl FnOnce(Pin<&mut tokio::net::TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
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
            Ok(io) => registered(Pin::new(io), cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for LazyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Self::Plain(plain) = this {
            loop {
                // Safe code reads only into initialized bytes: the unfilled part is zeroed
                // first (a few KiB, on a connection's first reads only).
                match (&*plain).read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
        match this.registered() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for LazyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut io| io.write(data), |io, cx| io.poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(
            cx,
            |mut io| io.write_vectored(bufs),
            |io, cx| io.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Poll::Ready(io.shutdown(std::net::Shutdown::Write)),
            Self::Registered(io) => Pin::new(io).poll_shutdown(cx),
            Self::Failed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl crate::http::h1server::NoDelay for LazyStream {
    fn set_nodelay(&self) {
        let _ = LazyStream::set_nodelay(self, true);
    }
}

#[cfg(test)]
mod tests {
    use super::LazyStream;
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
        let mut read = Box::pin(stream.read(&mut buf));
        let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "nothing was sent yet");
        client.write_all(b"again").unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), read).await.unwrap().unwrap();
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
}
