//! The accept path's per-address bound: at most `--max-connections-per-ip` open connections from one IP address.
//!
//! One client that opens connections without end would otherwise take every
//! file descriptor (and a task and buffers per connection) and lock everyone
//! else out. The bound sits in the accept loop, before a byte is read, so a
//! refused connection costs an accept and a close; it counts TCP connections
//! (HTTP keep-alive and websockets alike) and releases a slot when the
//! connection's socket is dropped.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::serve::Listener;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

type Open = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A `TcpListener` that closes connections from an address that already has `max` open.
pub struct PerAddressLimit {
    inner: TcpListener,
    max: usize,
    open: Open,
}

impl PerAddressLimit {
    pub fn new(inner: TcpListener, max: usize) -> Self {
        PerAddressLimit {
            inner,
            max: max.max(1),
            open: Arc::default(),
        }
    }
}

impl Listener for PerAddressLimit {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Counted, SocketAddr) {
        loop {
            let (stream, addr) = Listener::accept(&mut self.inner).await;
            let ip = addr.ip();
            {
                let mut open = self.open.lock();
                let n = open.entry(ip).or_insert(0);
                if *n >= self.max {
                    drop(open);
                    tracing::debug!(%ip, limit = self.max, "connection refused: max-connections-per-ip reached");
                    drop(stream);
                    continue;
                }
                *n += 1;
            }
            // Small answers and websocket frames go out at once instead of waiting
            // for Nagle's algorithm to collect more (up to 40 ms with delayed ACKs).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("could not set TCP_NODELAY: {e}");
            }
            let guard = Slot {
                ip,
                open: self.open.clone(),
            };
            return (
                Counted {
                    stream,
                    _slot: guard,
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One open connection's place in the count; given back when dropped.
struct Slot {
    ip: IpAddr,
    open: Open,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection that holds its address's slot while it is open.
pub struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
