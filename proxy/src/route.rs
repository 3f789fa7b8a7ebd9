//! The top of the outbound tail: which target a request goes to. A flag route
//! (specs/feature-flags.md §9) names an upstream in the request's [`RouteTarget`] extension;
//! `Route` sends the request to that upstream's service when the leg knows it, else to the
//! leg's own target. The choice is a map lookup, made only when a route named an upstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use attache_filters::flags::settings::RouteTarget;
use http::Request;

/// A leg's own service and the services of the upstreams flag routes may pick, by name.
#[derive(Clone)]
pub struct Route<S> {
    own: S,
    routed: Arc<HashMap<Arc<str>, S>>,
}

impl<S> Route<S> {
    pub fn new(own: S, routed: HashMap<Arc<str>, S>) -> Self {
        Self {
            own,
            routed: Arc::new(routed),
        }
    }
}

impl<S, B> tower::Service<Request<B>> for Route<S>
where
    S: tower::Service<Request<B>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    /// Ready when the leg's own service is: the services of routed upstreams are driven ready
    /// by the call that picks one (see `call`).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.own.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        if let Some(RouteTarget(name)) = req.extensions().get::<RouteTarget>()
            && let Some(routed) = self.routed.get(name)
        {
            // Always ready (every service of the tail is), so it is called at once on a clone,
            // as `tower::ServiceExt::oneshot` would after a ready poll.
            return routed.clone().call(req);
        }
        self.own.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// A service that answers with its own name.
    #[derive(Clone)]
    struct Named(&'static str);

    impl tower::Service<Request<()>> for Named {
        type Response = &'static str;
        type Error = Infallible;
        type Future = std::future::Ready<Result<&'static str, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(self.0))
        }
    }

    #[tokio::test]
    async fn a_flag_route_picks_a_known_upstream_and_nothing_else() {
        let route = Route::new(
            Named("app"),
            HashMap::from([(Arc::from("canary"), Named("canary"))]),
        );
        let to = |target: Option<&str>| {
            let mut req = Request::new(());
            if let Some(t) = target {
                req.extensions_mut().insert(RouteTarget(Arc::from(t)));
            }
            route.clone().oneshot(req)
        };
        assert_eq!(to(None).await, Ok("app"));
        assert_eq!(to(Some("canary")).await, Ok("canary"));
        // An upstream this leg does not know: the leg's own target.
        assert_eq!(to(Some("elsewhere")).await, Ok("app"));
    }
}
