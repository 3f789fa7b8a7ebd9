//! A response body that returns its connection to the pool when it has been read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use attache_filters::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::Endpoint;
use super::deadline::Timer;

/// A response body that gives its connection back to the pool once read to the end (or
/// dropped after the end, when the server never polls an empty body).
pub(super) struct Pooled {
    pub(super) inner: Incoming,
    pub(super) back: Option<Back>,
}

/// What goes back to the pool with a connection.
pub(super) struct Back {
    pub(super) conn: http1::SendRequest<Body>,
    pub(super) timer: Timer,
    pub(super) pool: Arc<Endpoint>,
}

impl Pooled {
    fn release(&mut self) {
        if let Some(Back { conn, timer, pool }) = self.back.take() {
            pool.put(conn, timer);
        }
    }
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.release(),
            // A broken exchange leaves the connection to close with it.
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}
