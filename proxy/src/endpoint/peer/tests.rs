#![allow(clippy::unwrap_used)]
//! The HTTP/2 client against `h2`'s own server over memory: flow control both ways, bodies
//! with trailers, a dropped response, keep-alive pings.

use super::*;

use crate::body::BoxError;

use h2::server::{self, SendResponse};
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

type Server = server::Connection<DuplexStream, Bytes>;

/// A client connection (driven by a task, its end reported on the receiver, its keep-alive's
/// end on the other) and the server's.
async fn pair(
    keepalive: Duration,
) -> (
    Sender,
    Server,
    oneshot::Receiver<Result<(), h2::Error>>,
    oneshot::Receiver<String>,
) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(server::handshake(server));
    let (sender, conn, pings) = handshake(client, keepalive).await.unwrap();
    let (ended, ended_rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = ended.send(conn.await);
    });
    let (dead, dead_rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = dead.send(pings.await);
    });
    (sender, server.await.unwrap().unwrap(), ended_rx, dead_rx)
}

/// Serves `server`'s connection, handing each request to the returned receiver.
fn serve(
    mut server: Server,
) -> mpsc::UnboundedReceiver<(http::Request<RecvStream>, SendResponse<Bytes>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(stream)) = server.accept().await {
            let _ = tx.send(stream);
        }
    });
    rx
}

/// A served client connection: the requests the server gets arrive on the receiver.
async fn served() -> (
    Sender,
    mpsc::UnboundedReceiver<(http::Request<RecvStream>, SendResponse<Bytes>)>,
) {
    let (sender, server, _ended, _dead) = pair(Duration::from_secs(3600)).await;
    (sender, serve(server))
}

/// A request body the test sends frame by frame, `first` already sent.
fn streamed(first: &'static [u8]) -> (mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>, Body) {
    let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
    tx.send(Ok(Frame::data(Bytes::from_static(first)))).unwrap();
    (tx, body::boxed(StreamBody::new(frames_from(rx))))
}

fn post(body: Body) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("http://api.default:80/upload")
        .body(body)
        .unwrap()
}

/// Sends `total` bytes on `stream` in 16 KiB chunks, as its window allows, then ends it.
async fn send_all(stream: &mut SendStream<Bytes>, total: usize) {
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.reserve_capacity(n);
        let mut room = 0;
        while room < n {
            room = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
        }
        left -= n;
        stream.send_data(chunk.slice(..n), left == 0).unwrap();
    }
}

/// A response larger than the connection's whole window (200 streams' worth) is read in full:
/// the body gives its window back as it is read, else the peer would stop sending.
#[tokio::test]
async fn a_response_larger_than_the_connection_window_arrives_whole() {
    let (sender, mut requests) = served().await;
    let total = crate::limits::H2_CONNECTION_WINDOW as usize + (1 << 20);
    tokio::spawn(async move {
        let (_req, mut respond) = requests.recv().await.unwrap();
        let rsp = http::Response::builder()
            .header(header::CONTENT_LENGTH, total)
            .body(())
            .unwrap();
        let mut stream = respond.send_response(rsp, false).unwrap();
        send_all(&mut stream, total).await;
    });
    let req = Request::get("http://api.default:80/big")
        .body(body::empty())
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(60), async {
        let rsp = request(sender.ready().await.unwrap(), req).await.unwrap();
        assert_eq!(rsp.body().size_hint().exact(), Some(total as u64));
        rsp.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("the response stalled: its window was not given back");
    assert_eq!(rsp.len(), total);
}

/// A streamed request body many times the stream's window arrives whole, then its trailers;
/// a body of known length gets `Content-Length`.
#[tokio::test]
async fn a_request_body_and_its_trailers_arrive_whole_whatever_the_window() {
    let (sender, mut requests) = served().await;
    let chunks = 64;
    let frames = (0..chunks)
        .map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![1u8; 16 * 1024]))))
        .chain(std::iter::once(Ok(Frame::trailers({
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            t
        }))));
    let streamed = body::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (req, mut respond) = requests.recv().await.unwrap();
            let length = req.headers().get(header::CONTENT_LENGTH).cloned();
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                n += data.len();
                body.flow_control().release_capacity(data.len()).unwrap();
            }
            let trailers = body.trailers().await.unwrap();
            seen.push((n, length, trailers));
            let rsp = http::Response::new(());
            respond.send_response(rsp, true).unwrap();
        }
        seen
    });
    let rsp = request(sender.clone().ready().await.unwrap(), post(streamed))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let rsp = request(sender.ready().await.unwrap(), post(body::full("hello")))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let seen = server.await.unwrap();
    let (n, length, trailers) = &seen[0];
    assert_eq!(*n, chunks * 16 * 1024);
    assert!(length.is_none(), "a streamed body has no known length");
    assert_eq!(trailers.as_ref().unwrap()["grpc-status"], "0");
    let (n, length, trailers) = &seen[1];
    assert_eq!(*n, 5);
    assert_eq!(length.as_ref().unwrap(), "5");
    assert!(trailers.is_none());
}

/// When the response is dropped (the client went away), the request body still being sent
/// stops: the stream is reset, not left open waiting on a body nobody will finish.
#[tokio::test]
async fn dropping_the_response_resets_a_request_body_still_being_sent() {
    let (sender, mut requests) = served().await;
    let (tx, endless) = streamed(b"first");
    let server = tokio::spawn(async move {
        let (req, mut respond) = requests.recv().await.unwrap();
        respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        let mut body = req.into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"first");
        // What comes next: the reset.
        body.data().await.map(|r| r.map(|_| ()))
    });
    let rsp = request(sender.ready().await.unwrap(), post(endless))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    drop(rsp);
    let next = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the request body's stream was left open")
        .unwrap();
    let err = next.expect("a reset, not the body's end").unwrap_err();
    assert_eq!(err.reason(), Some(Reason::CANCEL), "{err}");
    // And the client's body was let go of, so its connection is free.
    tokio::time::timeout(Duration::from_secs(10), tx.closed())
        .await
        .expect("the client's body is dropped");
}

/// A server may answer before it has read the whole request: once its response was read
/// whole, dropping it does not cut the upload short; the rest of the body still arrives.
#[tokio::test]
async fn an_upload_goes_on_after_a_whole_early_response() {
    let (sender, mut requests) = served().await;
    let (tx, upload) = streamed(b"first ");
    let server = tokio::spawn(async move {
        let (req, mut respond) = requests.recv().await.unwrap();
        let rsp = http::Response::builder()
            .header(header::CONTENT_LENGTH, 2)
            .body(())
            .unwrap();
        let mut stream = respond.send_response(rsp, false).unwrap();
        stream.send_data(Bytes::from_static(b"ok"), true).unwrap();
        let mut body = req.into_body();
        let mut got = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            body.flow_control().release_capacity(data.len()).unwrap();
            got.extend_from_slice(&data);
        }
        got
    });
    let rsp = request(sender.ready().await.unwrap(), post(upload))
        .await
        .unwrap();
    let answer = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&answer[..], b"ok");
    // The response is read whole and dropped; the client goes on sending.
    tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
        .unwrap();
    drop(tx);
    let got = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the upload ends")
        .unwrap();
    assert_eq!(&got[..], b"first second");
}

/// The peer resetting the stream stops an upload even while the client's body is quiet: the
/// client's body is let go of at once, not when it next sends.
#[tokio::test]
async fn a_reset_from_the_peer_stops_an_upload_waiting_on_its_client() {
    let (sender, mut requests) = served().await;
    let (tx, quiet) = streamed(b"first");
    tokio::spawn(async move {
        let (req, mut respond) = requests.recv().await.unwrap();
        let mut stream = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        let mut body = req.into_body();
        let _ = body.data().await;
        stream.send_reset(Reason::REFUSED_STREAM);
        // Keeps the connection's other state alive while the client notices.
        std::future::pending::<()>().await;
    });
    let rsp = request(sender.ready().await.unwrap(), post(quiet))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), tx.closed())
        .await
        .expect("the upload stopped and let the client's body go");
    drop(rsp);
}

/// A channel's receiver as a stream of frames.
fn frames_from(
    mut rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A peer that stops answering (its process stopped, a network cut that closed nothing) is
/// found out by the keep-alive ping within the interval and the pong's timeout. One that
/// answers is not.
#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_no_ping_is_found_out_and_one_that_answers_is_not() {
    let every = Duration::from_secs(30);
    // Answers: its connection is served.
    let (_sender, server, _ended, mut dead) = pair(every).await;
    let _requests = serve(server);
    tokio::time::sleep(every * 5).await;
    assert!(
        dead.try_recv().is_err(),
        "a peer that answers pings is alive"
    );
    // Silent: the server's side of the connection is never polled again.
    let (_sender, _server, _ended, dead) = pair(every).await;
    let started = tokio::time::Instant::now();
    let why = tokio::time::timeout(every * 5, dead)
        .await
        .expect("a silent peer is found out")
        .unwrap();
    assert!(why.contains("no answer to a ping"), "{why}");
    assert!(
        started.elapsed() >= every + PONG_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
}
