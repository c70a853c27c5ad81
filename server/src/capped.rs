//! A cap on open connections: an acceptor that takes a permit per connection and closes the
//! ones over the cap at once, so idle or slow clients cannot hold more than their share of file
//! descriptors and memory. Idle and slow connections are closed by the header timeout.

use axum_server::accept::Accept;
use futures_util::future::BoxFuture;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    permits: Arc<Semaphore>,
    /// Connections closed for being over the cap.
    pub refused: Arc<AtomicU64>,
}

impl<A> Capped<A> {
    pub fn new(inner: A, max_connections: usize) -> Capped<A> {
        Capped { inner, permits: Arc::new(Semaphore::new(max_connections)), refused: Arc::default() }
    }
}

/// A connection holding its permit until it closes.
pub struct Held<S> {
    stream: S,
    _permit: OwnedSemaphorePermit,
}

impl<I, S, A> Accept<I, S> for Capped<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let accepting = self.inner.accept(stream, service);
                Box::pin(async move {
                    let (stream, service) = accepting.await?;
                    Ok((Held { stream, _permit: permit }, service))
                })
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                // Dropping the stream closes the connection.
                drop(stream);
                Box::pin(async { Err(io::Error::other("connection limit reached")) })
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// With a cap of 2, a third connection is closed unanswered while two are held; once one
    /// goes, a new one is served.
    #[test]
    fn the_connection_over_the_cap_is_closed() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let capped = Capped::new(axum_server::accept::DefaultAcceptor::new(), 2);
        let refused = capped.refused.clone();
        rt.spawn(axum_server::from_tcp(listener).acceptor(capped).serve(app.into_make_service()));
        let get = |c: &mut std::net::TcpStream| -> String {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        assert!(get(&mut a).contains("200 OK"));
        assert!(get(&mut b).contains("200 OK"));
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(get(&mut c), "", "over the cap");
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        drop(a);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut d = std::net::TcpStream::connect(addr).unwrap();
            if get(&mut d).contains("200 OK") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a freed permit was never taken again");
        }
    }
}
