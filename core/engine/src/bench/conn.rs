//! One load-generator connection: a minimal HTTP/1.1 client written by hand.
//!
//! Why not hyper's client: a load generator must cost less per request than what it loads,
//! and hyper's client hands every request to a connection task through a channel. This
//! writes a request that was encoded once, reads into one reused buffer, and parses the
//! response head with httparse (the parser hyper itself uses), as wrk does in C. It handles
//! what servers answer: Content-Length, chunked and close-delimited bodies, and
//! `Connection: close`.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::transport::{Io, Transport};

/// Why a request failed, in the categories the report counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

/// What a completed exchange gave: its status, the bytes read, and whether the
/// connection may carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exchange {
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) reusable: bool,
}

const MAX_HEADERS: usize = 64;
const READ_CHUNK: usize = 64 * 1024;

pub(crate) struct Conn {
    stream: Io,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn connect(transport: &Transport) -> Result<Self, Failure> {
        let stream = transport.connect().await?;
        Ok(Self { stream, buf: Vec::with_capacity(READ_CHUNK) })
    }

    /// Send `request` (a whole encoded HTTP/1.1 request) and read its response.
    pub(crate) async fn exchange(&mut self, request: &[u8], head_only: bool) -> Result<Exchange, Failure> {
        self.stream.write_all(request).await.map_err(io_failure)?;
        self.buf.clear();
        let mut read_total = 0u64;
        // The head.
        let (status, framing, head_len, reusable) = loop {
            if let Some(parsed) = parse_head(&self.buf, head_only)? {
                break parsed;
            }
            read_total += self.fill().await?;
        };
        // The body.
        match framing {
            Framing::Length(len) => {
                let mut have = (self.buf.len() - head_len) as u64;
                while have < len {
                    let n = self.read_discard().await?;
                    have += n;
                    read_total += n;
                }
            }
            Framing::Chunked => {
                let mut decoder = Chunked::default();
                let mut pos = head_len;
                loop {
                    match decoder.advance(&self.buf[pos..])? {
                        ChunkStep::Done => break,
                        ChunkStep::Consumed(n) => {
                            pos += n;
                            // Keep only what the decoder has not consumed yet.
                            self.buf.drain(..pos);
                            pos = 0;
                            read_total += self.fill().await?;
                        }
                    }
                }
            }
            Framing::Close => loop {
                match self.read_discard().await {
                    Ok(n) => read_total += n,
                    Err(Failure::Reset) => break,
                    Err(e) => return Err(e),
                }
            },
        }
        let reusable = reusable && framing != Framing::Close;
        Ok(Exchange { status, bytes: read_total, reusable })
    }

    /// Read more into the buffer's spare capacity (never zeroed, never grown past one
    /// chunk's worth per read); an orderly close here is a reset (the response is cut).
    async fn fill(&mut self) -> Result<u64, Failure> {
        self.buf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(Failure::Reset),
            Ok(n) => Ok(n as u64),
            Err(e) => Err(io_failure(e)),
        }
    }

    /// Read body bytes that need no parsing, into scratch space.
    async fn read_discard(&mut self) -> Result<u64, Failure> {
        self.buf.clear();
        self.fill().await
    }
}

fn io_failure(e: io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Reset,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// Parse a response head: `(status, framing, head length, keep-alive)`, or `None` when more
/// bytes are needed.
fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<(u16, Framing, usize, bool)>, Failure> {
    // Uninitialised header slots: no 2 KiB of zeroing per response on the hot loop.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut headers);
    let head_len = match parsed.map_err(|_| Failure::Protocol)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.ok_or(Failure::Protocol)?;
    let mut keep_alive = resp.version == Some(1);
    let mut framing = Framing::Close;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| Failure::Protocol)?;
            framing = Framing::Length(text.trim().parse().map_err(|_| Failure::Protocol)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some((status, framing, head_len, keep_alive)))
}

enum ChunkStep {
    /// The whole body (and its trailers) has been read.
    Done,
    /// This many bytes were consumed; more are needed.
    Consumed(usize),
}

/// An incremental decoder of a chunked body that only skips over it.
#[derive(Debug, Default)]
struct Chunked {
    /// Data bytes (plus the CRLF after them) still to skip in the current chunk.
    skip: u64,
    /// The zero-size chunk was seen: what follows is trailers up to an empty line.
    in_trailers: bool,
}

impl Chunked {
    fn advance(&mut self, mut data: &[u8]) -> Result<ChunkStep, Failure> {
        let start_len = data.len();
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).unwrap_or(usize::MAX).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip > 0 {
                    return Ok(ChunkStep::Consumed(start_len - data.len()));
                }
            }
            let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
                if data.len() > 4096 {
                    return Err(Failure::Protocol);
                }
                return Ok(ChunkStep::Consumed(start_len - data.len()));
            };
            let line = &data[..eol];
            data = &data[eol + 2..];
            if self.in_trailers {
                if line.is_empty() {
                    return Ok(ChunkStep::Done);
                }
                continue;
            }
            let size_text = line.split(|b| *b == b';').next().unwrap_or_default();
            let size_text = std::str::from_utf8(size_text).map_err(|_| Failure::Protocol)?;
            let size = u64::from_str_radix(size_text.trim(), 16).map_err(|_| Failure::Protocol)?;
            if size == 0 {
                self.in_trailers = true;
            } else {
                self.skip = size + 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_status_framing_and_reuse() {
        let h = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_head(h, false).unwrap(), Some((200, Framing::Length(5), h.len() - 5, true)));
        let h = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_head(h, false).unwrap(), Some((404, Framing::Chunked, h.len(), false)));
        let h = b"HTTP/1.0 200 OK\r\n\r\n";
        assert_eq!(parse_head(h, false).unwrap(), Some((200, Framing::Close, h.len(), false)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false).unwrap(), None);
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true).unwrap().unwrap().1,
            Framing::Length(0)
        );
        assert_eq!(parse_head(b"garbage\r\n\r\n", false), Err(Failure::Protocol));
    }

    #[test]
    fn chunked_bodies_are_skipped_across_reads() {
        let body = b"5\r\nhello\r\nB;ext=1\r\n hello world\r\n0\r\ntrailer: x\r\n\r\n";
        // Whole at once.
        assert!(matches!(Chunked::default().advance(body).unwrap(), ChunkStep::Done));
        // One byte at a time, as a slow server would send it.
        let mut d = Chunked::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut done = false;
        for b in body {
            pending.push(*b);
            match d.advance(&pending).unwrap() {
                ChunkStep::Done => {
                    done = true;
                    break;
                }
                ChunkStep::Consumed(n) => {
                    pending.drain(..n);
                }
            }
        }
        assert!(done);
        assert_eq!(Chunked::default().advance(b"zz\r\n").err(), Some(Failure::Protocol));
    }
}
