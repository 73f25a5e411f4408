//! A bound on how long a write to a caller may wait: a caller that stops reading a response must
//! not hold the response body, and with it the upstream connection and its turn in the pacer,
//! for as long as it likes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A caller's stream whose writes fail with `TimedOut` once one has made no progress for
/// `limit`. The clock runs only while a write waits, so a slow but steady reader is never cut,
/// and an idle connection is the header timeout's business.
pub struct WriteIdle<S> {
    inner: S,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` is counting for the write now waiting.
    armed: bool,
}

/// The error a stalled write ends the connection with.
#[derive(Debug, thiserror::Error)]
#[error("the caller read nothing for {0:?}")]
pub struct Stalled(pub Duration);

impl<S> WriteIdle<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        WriteIdle { inner, limit, timer: Box::pin(tokio::time::sleep(limit)), armed: false }
    }

    /// After the inner stream answered `poll`: restarts the clock on progress, or fails the
    /// write when it has waited too long.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.limit;
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, Stalled(self.limit)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteIdle<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteIdle<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_waiting_longer_than_the_limit_fails_and_a_steady_one_does_not() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut stream = WriteIdle::new(near, Duration::from_secs(1));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        // 6 KiB through a 1 KiB pipe: 4.5 s in all, never a pause of a second.
        stream.write_all(&[7u8; 6 * 1024]).await.unwrap();
        let _far = reader.await.unwrap();
        let error = stream.write_all(&[7u8; 2048]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.get_ref().unwrap().is::<Stalled>());
    }
}
