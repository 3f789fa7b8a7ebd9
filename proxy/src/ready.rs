//! Driving a stack by tower's contract: a service is called only after `poll_ready` said yes.
//! The listeners and the OFREP server hand every request over through here.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use attache_filters::Body;
use http::{Request, Response};
use tower::Service;

use crate::stack::Stack;

/// A stack's response, boxed.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Calls the stack once it is ready, waiting with the task's waker.
pub fn when_ready(mut stack: Stack, req: Request<Body>) -> ResponseFuture {
    Box::pin(async move {
        std::future::poll_fn(|cx| stack.poll_ready(cx)).await?;
        stack.call(req).await
    })
}

/// Whether the stack is ready at once. A stack that is not ready was polled with a waker that
/// does nothing, so the caller must not wait on this stack: it waits on a clone instead, which
/// registers the task's own waker.
pub fn ready_now(stack: &mut Stack) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stack.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => false,
    }
}
