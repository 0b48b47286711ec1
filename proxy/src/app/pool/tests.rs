//! Tests of [`super`].
#![allow(clippy::unwrap_used)]

use super::*;
use http_body_util::BodyExt;

/// An HTTP/1 app at `addr` answering its own address, keeping connections alive.
async fn app_at(addr: SocketAddr) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let svc = hyper::service::service_fn(move |_req| async move {
                let body = http_body_util::Full::new(Bytes::from(addr.to_string()));
                Ok::<_, std::convert::Infallible>(Response::new(body))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Two applications on the same port at two addresses each get their own requests, though
/// the connections to both are kept alive in the one pool.
#[tokio::test]
async fn connections_are_kept_per_address_not_per_port() {
    let one = app_at("127.0.0.1:0".parse().unwrap()).await;
    let Ok(two) = tokio::net::TcpListener::bind(("127.0.0.2", one.port())).await else {
        return; // no 127.0.0.2 here
    };
    drop(two);
    let two = app_at(SocketAddr::new([127, 0, 0, 2].into(), one.port())).await;
    let pool = Http1Pool::new(Duration::from_secs(5));
    for _ in 0..3 {
        for addr in [one, two] {
            let req = Request::get("/")
                .header("host", "app")
                .body(body::empty())
                .unwrap();
            let rsp = pool.request(addr, req).await.unwrap();
            let text = rsp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(text, addr.to_string());
        }
    }
}
