//! A response body that holds a value until it ends: used to mark a request finished (for
//! the connection's deadlines) at the true end of its response.

use std::pin::Pin;
use std::task::{Context, Poll};

use attache_filters::{Body, BoxError};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    pub struct Finish<T> {
        #[pin]
        inner: Body,
        guard: Option<T>,
    }
}

impl<T> Finish<T> {
    pub fn new(inner: Body, guard: T) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<T> HttpBody for Finish<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.guard.take();
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
