//! Tests of [`super`].
#![allow(clippy::unwrap_used)]

use super::*;

/// The read-ahead wait of these tests (the default).
const WAIT: Duration = Duration::from_millis(50);

fn req(version: Version, te: Option<&str>) -> Request<()> {
    let mut b = Request::get("/").version(version);
    if let Some(te) = te {
        b = b.header("te", te);
    }
    b.body(()).unwrap()
}

/// A body of `hello` and then `trailers`, every frame already there.
fn ready_body(trailers: &[(&'static str, &'static str)]) -> Body {
    let mut map = http::HeaderMap::new();
    for (k, v) in trailers {
        map.insert(*k, HeaderValue::from_static(v));
    }
    let frames = vec![
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(map)),
    ];
    crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

#[tokio::test]
async fn a_complete_body_gets_its_trailers_declared_and_is_unchanged() {
    let rsp = Response::new(ready_body(&[("x-checksum", "5"), ("x-count", "1")]));
    let rsp = Client::of(&req(Version::HTTP_11, Some("trailers")))
        .declare(rsp, WAIT)
        .await;
    assert_eq!(rsp.headers()["trailer"], "x-checksum, x-count");
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["x-checksum"], "5");
    assert_eq!(collected.to_bytes(), "hello");
}

#[tokio::test]
async fn a_streaming_grpc_body_gets_grpcs_trailers_declared() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let body = http_body_util::StreamBody::new(stream);
    let mut rsp = Response::new(crate::body::boxed(body));
    rsp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    let rsp = Client::of(&req(Version::HTTP_11, Some("trailers")))
        .declare(rsp, WAIT)
        .await;
    assert_eq!(rsp.headers()["trailer"], GRPC_TRAILERS);
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    tokio::spawn(async move {
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::trailers(t))).await.unwrap();
    });
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
}

/// A body fed by the test: `hello`, then after `after`, the trailer `x-checksum: 5`.
fn later_body(after: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    tokio::spawn(async move {
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        tokio::time::sleep(after).await;
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("5"));
        tx.send(Ok(Frame::trailers(t))).await.unwrap();
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    crate::body::boxed(http_body_util::StreamBody::new(stream))
}

#[tokio::test(start_paused = true)]
async fn trailers_a_moment_behind_the_head_are_waited_for_a_stream_is_not() {
    let client = Client::of(&req(Version::HTTP_11, Some("trailers")));
    let soon = client
        .declare(Response::new(later_body(Duration::from_millis(5))), WAIT)
        .await;
    assert_eq!(soon.headers()["trailer"], "x-checksum");

    let started = tokio::time::Instant::now();
    let stream = client
        .declare(Response::new(later_body(Duration::from_secs(10))), WAIT)
        .await;
    assert!(started.elapsed() >= WAIT);
    assert!(!stream.headers().contains_key("trailer"));
    // Handed on whole: what was read ahead, then the rest.
    let collected = stream.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "5");
    assert_eq!(collected.to_bytes(), "hello");
}

#[tokio::test]
async fn nothing_is_declared_for_clients_that_take_no_trailers_or_when_declared() {
    for (version, te) in [
        (Version::HTTP_11, None),
        (Version::HTTP_11, Some("gzip")),
        (Version::HTTP_10, Some("trailers")),
        (Version::HTTP_2, Some("trailers")),
    ] {
        let rsp = Response::new(ready_body(&[("x-checksum", "5")]));
        let rsp = Client::of(&req(version, te)).declare(rsp, WAIT).await;
        assert!(!rsp.headers().contains_key("trailer"), "{version:?} {te:?}");
    }
    let mut rsp = Response::new(ready_body(&[("x-checksum", "5")]));
    rsp.headers_mut()
        .insert("trailer", HeaderValue::from_static("x-other"));
    let rsp = Client::of(&req(Version::HTTP_11, Some("trailers")))
        .declare(rsp, WAIT)
        .await;
    assert_eq!(rsp.headers()["trailer"], "x-other");
}

/// Responses that cannot carry trailers, or whose trailers are known, are handed on as they
/// are: `HEAD`'s, 204, 304, 101, one with a length (not chunked), a gRPC trailers-only one.
#[tokio::test]
async fn responses_without_a_chunked_body_or_with_known_trailers_are_left_alone() {
    let head = Request::head("/")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let rsp = Client::of(&head)
        .declare(Response::new(ready_body(&[("x-checksum", "5")])), WAIT)
        .await;
    assert!(!rsp.headers().contains_key("trailer"), "HEAD");
    let client = Client::of(&req(Version::HTTP_11, Some("trailers")));
    for status in [204, 304, 101] {
        let mut rsp = Response::new(ready_body(&[("x-checksum", "5")]));
        *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
        let rsp = client.declare(rsp, WAIT).await;
        assert!(!rsp.headers().contains_key("trailer"), "{status}");
    }
    let mut sized = Response::new(ready_body(&[("x-checksum", "5")]));
    sized
        .headers_mut()
        .insert("content-length", HeaderValue::from_static("5"));
    let rsp = client.declare(sized, WAIT).await;
    assert!(!rsp.headers().contains_key("trailer"), "content-length");
    let mut trailers_only = Response::new(ready_body(&[]));
    let h = trailers_only.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("14"));
    let rsp = client.declare(trailers_only, WAIT).await;
    assert!(!rsp.headers().contains_key("trailer"), "trailers-only");
    // gRPC-Web carries its trailers in its body: not gRPC here.
    let mut web = Response::new(later_body(Duration::from_secs(10)));
    web.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/grpc-web+proto"),
    );
    let rsp = client.declare(web, Duration::ZERO).await;
    assert!(!rsp.headers().contains_key("trailer"), "grpc-web");
}
