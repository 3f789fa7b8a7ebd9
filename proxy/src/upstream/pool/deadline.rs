//! The request deadline on a timer each HTTP/1.1 connection keeps for its whole life (see the
//! pool's module note: a timer made per request cost about 650 instructions).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// An HTTP/1.1 connection's timer for the deadlines of its exchanges (see the module's note).
pub(super) type Timer = Pin<Box<Sleep>>;

/// Ready once `deadline` has passed, by `timer`, which may hold an earlier exchange's deadline
/// (it is then moved on when it fires) or a later one (it is moved back at once).
fn poll_deadline(timer: &mut Timer, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    loop {
        ready!(timer.as_mut().poll(cx));
        if timer.deadline() >= deadline {
            return Poll::Ready(());
        }
        // It fired for an exchange that ended before its deadline.
        timer.as_mut().reset(deadline);
    }
}

/// `fut`'s output, or `None` once `deadline` has passed by `timer`.
pub(super) async fn by_deadline<F: Future>(
    fut: F,
    timer: &mut Timer,
    deadline: Instant,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        poll_deadline(timer, deadline, cx).map(|()| None)
    })
    .await
}
