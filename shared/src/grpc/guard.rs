//! The layer in front of every service a daemon serves: who may call at all, and the
//! status of requests the gRPC framework itself refuses.
//!
//! - Admission: a daemon may pass a check of the caller (the mount daemon checks the
//!   socket's peer credentials). It runs before routing, so a refused caller gets
//!   PERMISSION_DENIED from every service on the socket, health and reflection included.
//! - Authentication: on TCP, where there are no peer credentials, every request must carry
//!   the listener's API token (`authorization: Bearer <token>`), checked the same way
//!   before routing; without it, UNAUTHENTICATED.
//! - Framework refusals: tonic answers a request body that is not a valid message (bad
//!   protobuf, a truncated frame, no message at all, a bad compression flag) with INTERNAL
//!   and an oversized one with OUT_OF_RANGE. Those are the caller's errors, so they are
//!   rewritten here to INVALID_ARGUMENT and RESOURCE_EXHAUSTED: INTERNAL stays reserved
//!   for the daemons' own faults.
//! - Status messages longer than [`MAX_MESSAGE`] are cut, so an error quoting huge input
//!   still reaches the caller as its status.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};

use crate::auth::Token;

/// A check of the caller of every request, from the request's extensions (e.g. tonic's
/// `UdsConnectInfo` with the peer credentials). `Err` is returned to the caller as is.
pub type Admit = Arc<dyn Fn(&http::Extensions) -> Result<(), Status> + Send + Sync>;

/// Message prefixes of the INTERNAL status tonic gives a malformed request body.
const MALFORMED: &[&str] = &[
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "protocol error:",
];

/// Message prefix of tonic's status for a request larger than the decoding limit.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// The status a framework refusal should have been, if `status` is one.
pub fn client_error(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::Internal if MALFORMED.iter().any(|p| message.starts_with(p)) => Some(
            Status::invalid_argument(format!("malformed request: {message}")),
        ),
        Code::OutOfRange if message.starts_with(TOO_LARGE) => {
            Some(Status::resource_exhausted(message.to_string()))
        }
        _ => None,
    }
}

/// Longest status message sent (bytes). Messages may quote input; a huge one would not fit
/// the client's HTTP/2 header limit, and the call would fail with a connection error
/// instead of its status.
pub const MAX_MESSAGE: usize = 1024;

/// `status` with its message cut to [`MAX_MESSAGE`] bytes, if longer.
fn bounded(status: Status) -> Status {
    if status.message().len() <= MAX_MESSAGE {
        return status;
    }
    let message = status.message();
    let cut = (0..=MAX_MESSAGE)
        .rev()
        .find(|&i| message.is_char_boundary(i))
        .unwrap_or(0);
    Status::new(
        status.code(),
        format!(
            "{}... (message cut, {} bytes)",
            &message[..cut],
            message.len()
        ),
    )
}

/// Rewrites a trailers-only response (how tonic answers a request with an error, its own
/// or the handler's): framework refusals get client-error status, and long messages are
/// cut.
fn rewrite(mut response: http::Response<Body>) -> http::Response<Body> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let long = status.message().len() > MAX_MESSAGE;
    let fixed = match client_error(&status) {
        Some(fixed) => bounded(fixed),
        None if long => bounded(status),
        None => return response,
    };
    if fixed.add_header(response.headers_mut()).is_ok() {
        response.extensions_mut().insert(fixed);
    }
    response
}

/// The status of a request without the right token.
fn unauthenticated() -> Status {
    Status::unauthenticated(
        "missing or wrong API token: send metadata `authorization: Bearer <token>` \
         (the token is in control.token next to the control plane's socket)",
    )
}

/// [`Admit`], the token check and [`client_error`] around a service.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    admit: Option<Admit>,
    token: Option<Arc<Token>>,
}

impl<S> Guard<S> {
    pub fn layer(
        admit: Option<Admit>,
        token: Option<Arc<Token>>,
    ) -> impl tower::Layer<S, Service = Guard<S>> + Clone {
        tower::layer::layer_fn(move |inner| Guard {
            inner,
            admit: admit.clone(),
            token: token.clone(),
        })
    }
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(token) = &self.token
            && !token.accepts(
                request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
        {
            return Box::pin(std::future::ready(Ok(unauthenticated().into_http())));
        }
        if let Some(admit) = &self.admit
            && let Err(status) = admit(request.extensions())
        {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map(rewrite) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_refusals_become_client_errors() {
        let bad = Status::internal("failed to decode Protobuf message: invalid wire type");
        let fixed = client_error(&bad).unwrap();
        assert_eq!(fixed.code(), Code::InvalidArgument);
        assert!(fixed.message().contains("invalid wire type"), "{fixed:?}");
        let eof = client_error(&Status::internal("Unexpected EOF decoding stream.")).unwrap();
        assert_eq!(eof.code(), Code::InvalidArgument);
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(client_error(&big).unwrap().code(), Code::ResourceExhausted);
    }

    #[test]
    fn the_daemons_own_statuses_pass_unchanged() {
        assert!(client_error(&Status::internal("backing store: disk on fire")).is_none());
        assert!(client_error(&Status::out_of_range("offset past the end")).is_none());
        assert!(client_error(&Status::not_found("no entry x")).is_none());
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let response = rewrite(Status::not_found("ü".repeat(40_000)).into_http());
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().len() < MAX_MESSAGE + 64,
            "{}",
            status.message().len()
        );
        assert!(status.message().ends_with("(message cut, 80000 bytes)"));
        let short = rewrite(Status::not_found("no entry x").into_http());
        assert_eq!(
            Status::from_header_map(short.headers()).unwrap().message(),
            "no entry x"
        );
    }

    #[tokio::test]
    async fn tcp_requests_without_the_token_never_reach_the_service() {
        use tower::{Layer, Service, ServiceExt};
        let token = Token::generate().unwrap();
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reached.clone();
        let inner = tower::service_fn(move |_: http::Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(
                Status::ok("").into_http::<Body>(),
            ))
        });
        let mut guard = Guard::layer(None, Some(Arc::new(token.clone()))).layer(inner);
        let call = |value: Option<String>| {
            let mut request = http::Request::builder().uri("/fusestream.v1.Control/Stage");
            if let Some(value) = value {
                request = request.header(http::header::AUTHORIZATION, value);
            }
            request.body(()).unwrap()
        };
        for bad in [None, Some("Bearer 00".to_string()), Some(String::new())] {
            let response = guard.ready().await.unwrap().call(call(bad)).await.unwrap();
            let status = Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.code(), Code::Unauthenticated);
        }
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
        let good = Some(token.header_value());
        guard.ready().await.unwrap().call(call(good)).await.unwrap();
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_rewritten_response_carries_the_new_status() {
        let response = rewrite(Status::internal("Missing request message.").into_http());
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "malformed request: Missing request message."
        );
    }
}
