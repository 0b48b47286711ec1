use super::*;

#[test]
fn connections_are_spread_and_each_keeps_a_fixed_interval() {
    // 4 connections sharing 1,000 req/s: one request every 1 ms in all, every 4 ms on each.
    let at = |c, k| intended_offset(c, k, 4, 1000);
    assert_eq!(at(0, 0), Duration::ZERO);
    assert_eq!(at(1, 0), Duration::from_millis(1));
    assert_eq!(at(3, 0), Duration::from_millis(3));
    assert_eq!(at(0, 1), Duration::from_millis(4));
    for c in 0..4 {
        for k in 0..100 {
            assert_eq!(at(c, k + 1) - at(c, k), Duration::from_millis(4));
        }
    }
    // In the pacer's slot order the intended times never go back.
    let slots: Vec<Duration> = (0..400u64)
        .map(|slot| at((slot % 4) as usize, slot / 4))
        .collect();
    assert!(slots.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn rates_that_do_not_divide_a_second_stay_exact() {
    // 32 connections at 1,000 req/s: 31.25 req/s each, 32 ms apart; no drift after an hour.
    assert_eq!(intended_offset(5, 1, 32, 1000), Duration::from_millis(37));
    let hour = 3_600_000 / 32;
    assert_eq!(
        intended_offset(0, hour, 32, 1000),
        Duration::from_secs(3600)
    );
    assert_eq!(
        intended_offset(1, 0, 3, 7),
        Duration::from_nanos(142_857_142)
    );
}

fn cfg(addr: SocketAddr, rate: Option<u64>) -> LoadConfig {
    LoadConfig {
        target: format!("http://{addr}/hello").parse().unwrap(),
        host: Some("api.default:8080".into()),
        connections: 4,
        rate,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        max_requests: 100_000,
        http2: false,
        new_connection: false,
        request_body_size: 0,
    }
}

async fn app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(crate::app::accept_loop(l, Bytes::from_static(b"hi")));
    addr
}

#[tokio::test]
async fn open_loop_sends_the_scheduled_requests_and_measures_them() {
    let addr = app().await;
    let c = cfg(addr, Some(500));
    let r = run(&c, Window::after_warmup(c.warmup, c.duration))
        .await
        .unwrap();
    // 500 req/s over a 0.4 s window: 200 requests, all answered.
    assert_eq!(r.requests, 200, "{r:?}");
    assert_eq!(r.errors(), 0, "{r:?}");
    assert!(r.p50_ms > 0.0 && r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms);
    assert!(!r.capped);
}

#[tokio::test]
async fn errors_are_counted_by_kind_not_dropped() {
    // Nothing listens: every request is a transport error with a message saying why.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = cfg(free, Some(100));
    let r = run(&c, Window::after_warmup(c.warmup, c.duration))
        .await
        .unwrap();
    assert_eq!(r.requests, 0);
    assert_eq!(r.transport_errors, 40, "{r:?}");
    assert!(r.first_error.unwrap().contains("connect to"));
}

#[tokio::test]
async fn closed_loop_stops_at_the_request_cap() {
    let addr = app().await;
    let mut c = cfg(addr, None);
    c.warmup = Duration::ZERO;
    c.max_requests = 50;
    let r = run(&c, Window::after_warmup(c.warmup, c.duration))
        .await
        .unwrap();
    assert_eq!(r.requests, 50, "{r:?}");
    assert!(r.capped);
}

#[test]
fn targets_off_loopback_and_private_networks_are_refused() {
    for refused in ["192.0.2.7:80", "8.8.8.8:53", "[2001:db8::1]:80"] {
        let c = cfg(refused.parse().unwrap(), None);
        let err = Target::new(&c).unwrap_err();
        assert!(err.contains("neither a loopback nor a private"), "{err}");
    }
    // The veth addresses of `weft-bench intercept`, and other private networks.
    for allowed in [
        "10.78.0.2:9080",
        "192.168.1.2:80",
        "172.16.0.1:80",
        "[::1]:80",
    ] {
        let c = cfg(allowed.parse().unwrap(), None);
        assert!(Target::new(&c).is_ok(), "{allowed}");
    }
}

#[test]
fn a_window_at_a_wall_clock_time_may_start_late_only_within_half_the_warmup() {
    let (warmup, duration) = (Duration::from_secs(1), Duration::from_secs(2));
    let soon = std::time::SystemTime::now() + Duration::from_millis(500);
    let w = Window::starting_at(soon, warmup, duration).unwrap();
    let ahead = w.start.saturating_duration_since(Instant::now());
    assert!(
        ahead > Duration::from_millis(300) && ahead <= Duration::from_millis(500),
        "{ahead:?}"
    );
    assert_eq!(w.measure_from - w.start, warmup);
    assert_eq!(w.deadline - w.measure_from, duration);
    // Late by less than half the warm-up: the backlog goes out within the warm-up.
    let late = std::time::SystemTime::now() - Duration::from_millis(200);
    let w = Window::starting_at(late, warmup, duration).unwrap();
    let behind = Instant::now().saturating_duration_since(w.start);
    assert!(
        behind >= Duration::from_millis(200) && behind < Duration::from_millis(400),
        "{behind:?}"
    );
    // Later than that, the burst would be measured.
    let too_late = std::time::SystemTime::now() - Duration::from_millis(600);
    assert!(Window::starting_at(too_late, warmup, duration).is_none());
}

#[tokio::test]
async fn a_new_connection_per_request_when_asked() {
    use std::sync::atomic::AtomicUsize;
    // The app behind a listener that counts the connections made to it.
    let app = app().await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = front.accept().await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(app).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let mut c = cfg(addr, Some(200));
    c.new_connection = true;
    let r = run(&c, Window::after_warmup(c.warmup, c.duration))
        .await
        .unwrap();
    // 200 req/s for 0.5 s in all (warm-up included): 100 requests, 100 connections.
    assert_eq!(r.errors(), 0, "{r:?}");
    assert_eq!(r.requests, 80, "{r:?}");
    assert_eq!(accepted.load(Ordering::Relaxed), 100);
    // Kept-alive connections, for contrast: made once per load connection.
    accepted.store(0, Ordering::Relaxed);
    c.new_connection = false;
    run(&c, Window::after_warmup(c.warmup, c.duration))
        .await
        .unwrap();
    assert_eq!(accepted.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn request_bodies_are_sent_whole_with_post_over_kept_alive_connections() {
    use std::sync::Mutex;
    // A server that records each request's method and body length, and counts connections.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(http::Method, usize)>>> = Arc::default();
    let conns = Arc::new(AtomicU64::new(0));
    let (seen2, conns2) = (seen.clone(), conns.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            conns2.fetch_add(1, Ordering::Relaxed);
            let seen = seen2.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let method = req.method().clone();
                        let body = req.into_body().collect().await?.to_bytes();
                        seen.lock().unwrap().push((method, body.len()));
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    let mut c = cfg(addr, Some(200));
    c.request_body_size = 3000;
    let r = run(&c, Window::after_warmup(c.warmup, c.duration))
        .await
        .unwrap();
    assert_eq!(r.errors(), 0, "{r:?}");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() as u64 >= r.requests && r.requests > 0, "{r:?}");
    assert!(
        seen.iter()
            .all(|(m, n)| *m == http::Method::POST && *n == 3000),
        "{seen:?}"
    );
    // Keep-alive held: no more connections than the generator opens.
    assert_eq!(conns.load(Ordering::Relaxed), c.connections as u64);

    // The benchmark's app reads request bodies and keeps the connection.
    let app = app().await;
    let mut c = cfg(app, Some(200));
    c.request_body_size = 100_000;
    let r = run(&c, Window::after_warmup(c.warmup, c.duration))
        .await
        .unwrap();
    assert!(r.requests > 0 && r.errors() == 0, "{r:?}");
}
