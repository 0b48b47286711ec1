//! `Expect: 100-continue` end to end (RFC 9110 §10.1.1): the `100 Continue` a client waits for
//! before it uploads comes from the server, so a server that refuses the upload (413, 401)
//! before reading gets none of it.
//!
//! hyper's server sends `100 Continue` the first time a request's body is polled, so a proxy
//! holds the body back behind a [`Gate`] until the server it forwards to says `100`, then lets
//! it through; if the server answers first, the body is never read. The request (its body
//! declared but never sent) is ended only once that answer has been read to its end: ended
//! before, its connection would fail with the answer's body still on it. A server that ignores
//! `Expect` (many do, and HTTP/2 ones cannot be heard: hyper carries no 1xx over HTTP/2) gets
//! the body after [`WAIT`], as curl itself sends it after 1 s without an answer. Between the
//! proxies such a request crosses on a connection of its own speaking HTTP/1.1, as an upgrade
//! does, where the peer proxy's `100` (sent when its own gate opens) can be heard.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version};
use http_body::{Frame, SizeHint};
use tokio::sync::watch;

use crate::body::{Body, BoxError};

/// How long a gate waits for the server's `100 Continue` before it lets the body through.
pub const WAIT: Duration = Duration::from_secs(1);

/// Whether `req` (HTTP/1.1) asks for `100 Continue` before sending its body.
pub fn expects_continue<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// What the server said so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing yet: the body waits.
    Waiting,
    /// `100 Continue`, or [`WAIT`] passed: the body goes.
    Open,
    /// The final answer came first: the body is never read.
    Answered,
    /// That answer has been read to its end (or dropped): the request can end.
    Read,
}

/// The proxy's side of a gate: told what the server said.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<State>>);

impl Gate {
    /// Holds `req`'s body back until the server it is sent to on an HTTP/1 connection says
    /// `100 Continue` (hyper's informational callback), its answer comes ([`Gate::answered`]),
    /// or [`WAIT`] passes.
    pub fn hold(req: &mut Request<Body>) -> Self {
        let (tx, rx) = watch::channel(State::Waiting);
        let gate = Self(Arc::new(tx));
        let opener = gate.clone();
        hyper::ext::on_informational(req, move |rsp| {
            if rsp.status() == http::StatusCode::CONTINUE {
                opener.set(State::Open);
            }
        });
        let body = std::mem::replace(req.body_mut(), crate::body::empty());
        *req.body_mut() = http_body_util::BodyExt::boxed_unsync(Gated {
            inner: body,
            wait: Some(Box::pin(wait(rx.clone()))),
            read: Some(Box::pin(read(rx))),
            answered: false,
        });
        // The server is asked too; it is a request header, not a hop-by-hop one.
        req.headers_mut().insert(
            http::header::EXPECT,
            HeaderValue::from_static("100-continue"),
        );
        gate
    }

    /// The server answered with `rsp`: a body still held back is never read, and the request
    /// ends once `rsp`'s body has been read to its end (or dropped).
    pub fn answered(&self, rsp: Response<Body>) -> Response<Body> {
        self.set(State::Answered);
        let gate = self.clone();
        rsp.map(|inner| http_body_util::BodyExt::boxed_unsync(Reading { inner, gate }))
    }

    /// The server's answer has been read: an answered request can end.
    fn read(&self) {
        self.0.send_if_modified(|s| {
            let change = *s == State::Answered;
            if change {
                *s = State::Read;
            }
            change
        });
    }

    fn set(&self, state: State) {
        self.0.send_if_modified(|s| {
            let change = *s == State::Waiting;
            if change {
                *s = state;
            }
            change
        });
    }
}

/// What the gate decided: `Open` when the server said nothing for [`WAIT`].
async fn wait(mut rx: watch::Receiver<State>) -> State {
    let decided = rx.wait_for(|s| *s != State::Waiting);
    match tokio::time::timeout(WAIT, decided).await {
        Ok(Ok(state)) => *state,
        // The server said nothing in time, or the gate is gone: the body goes.
        Ok(Err(_)) | Err(_) => State::Open,
    }
}

/// Until the server's answer has been read (or the gate is gone).
async fn read(mut rx: watch::Receiver<State>) {
    let _ = rx.wait_for(|s| *s == State::Read).await;
}

/// A body held back behind a [`Gate`].
struct Gated {
    inner: Body,
    wait: Option<Pin<Box<dyn Future<Output = State> + Send>>>,
    /// Until the answer has been read, for a request answered before its body went.
    read: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    answered: bool,
}

/// The body of the answer to a request behind a [`Gate`]: once it has been read (dropped, by
/// whoever read it), the request can end.
struct Reading {
    inner: Body,
    gate: Gate,
}

impl http_body::Body for Reading {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.gate.read();
    }
}

impl http_body::Body for Gated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(wait) = self.wait.as_mut() {
            let state = std::task::ready!(wait.as_mut().poll(cx));
            self.wait = None;
            self.answered = state == State::Answered;
        }
        if self.answered {
            // Never read (the client's proxy, hyper, sends no `100 Continue` for it); the
            // request ends, short, once its answer has been read.
            if let Some(read) = self.read.as_mut() {
                std::task::ready!(read.as_mut().poll(cx));
                self.read = None;
            }
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        (self.answered && self.read.is_none())
            || (self.wait.is_none() && !self.answered && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    fn upload() -> Request<Body> {
        let mut req = Request::put("/upload")
            .header("expect", "100-continue")
            .body(crate::body::full("data"))
            .unwrap();
        *req.version_mut() = Version::HTTP_11;
        req
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_waits_for_the_servers_word() {
        // `100 Continue`: the body goes at once.
        let mut req = upload();
        let gate = Gate::hold(&mut req);
        gate.set(State::Open);
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "data");

        // The answer came first: nothing is read, and the request ends only once the answer
        // has been read.
        let mut req = upload();
        let gate = Gate::hold(&mut req);
        let answer = gate.answered(http::Response::new(crate::body::full("no")));
        let mut body = req.into_body();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(http_body::Body::poll_frame(Pin::new(&mut body), &mut cx).is_pending());
        assert!(!http_body::Body::is_end_stream(&body));
        let read = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(read, "no");
        let body = body.collect().await.unwrap().to_bytes();
        assert!(body.is_empty());

        // The server says nothing: the body goes after WAIT, not before.
        let mut req = upload();
        let _gate = Gate::hold(&mut req);
        let started = tokio::time::Instant::now();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "data");
        assert_eq!(started.elapsed(), WAIT);
    }

    #[test]
    fn only_http1_requests_with_the_header_expect_it() {
        assert!(expects_continue(&upload()));
        let mut h2 = upload();
        *h2.version_mut() = Version::HTTP_2;
        assert!(!expects_continue(&h2));
        let plain = Request::put("/").body(()).unwrap();
        assert!(!expects_continue(&plain));
    }
}
