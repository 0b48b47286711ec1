use std::collections::HashMap;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use weft_policy::registry::{Endpoint, EndpointSource};

use super::*;
use crate::body;
use crate::svc::Labels;

/// Endpoints by `<namespace>/<service>`; unknown services answer with none. Addresses: what
/// `addresses` holds (the sender kept, so a test can change it), else nothing known.
struct Table(
    HashMap<String, Vec<SocketAddr>>,
    Mutex<HashMap<IpAddr, watch::Sender<Option<Arc<AddressInfo>>>>>,
);

impl Table {
    fn new(known: &[(&str, SocketAddr)]) -> Self {
        Self(
            known
                .iter()
                .map(|(k, a)| (k.to_string(), vec![*a]))
                .collect(),
            Mutex::new(HashMap::new()),
        )
    }

    /// Registers a workload of `default/<service>` at `address`, with `identity` (a name).
    fn workload(&self, service: &str, address: &str, identity: Option<&str>) {
        self.workload_with(service, address, identity, &[]);
    }

    /// [`Table::workload`] of a service that declares `opaque_ports`.
    fn workload_with(
        &self,
        service: &str,
        address: &str,
        identity: Option<&str>,
        opaque_ports: &[u16],
    ) {
        let address: SocketAddr = address.parse().unwrap();
        let info = AddressInfo {
            ip: address.ip(),
            endpoints: vec![weft_policy::registry::AddressEndpoint {
                namespace: "default".into(),
                service: service.into(),
                endpoint: Endpoint {
                    address,
                    identity: identity.map(id),
                    labels: Default::default(),
                    source: EndpointSource::Registered,
                },
                opaque_ports: opaque_ports.to_vec(),
            }],
        };
        self.set(address.ip(), Some(info));
    }

    fn set(&self, ip: IpAddr, info: Option<AddressInfo>) {
        let mut map = self.1.lock().unwrap();
        let tx = map.entry(ip).or_insert_with(|| watch::channel(None).0);
        tx.send_replace(info.map(Arc::new));
    }
}

fn id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://weft.local/ns/default/sa/{name}")).unwrap()
}

impl Resolve for Table {
    fn address(&self, ip: IpAddr) -> watch::Receiver<Option<Arc<AddressInfo>>> {
        match self.1.lock().unwrap().get(&ip) {
            Some(tx) => tx.subscribe(),
            None => {
                watch::channel(Some(Arc::new(AddressInfo {
                    ip,
                    endpoints: Vec::new(),
                })))
                .1
            }
        }
    }

    fn resolve(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceEndpoints>>> {
        let endpoints = self
            .0
            .get(&format!("{namespace}/{service}"))
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|address| {
                Arc::new(Endpoint {
                    address,
                    identity: None,
                    labels: Default::default(),
                    source: EndpointSource::Static,
                })
            })
            .collect();
        watch::channel(Some(Arc::new(ServiceEndpoints {
            namespace: namespace.into(),
            service: service.into(),
            ports: Vec::new(),
            opaque_ports: Vec::new(),
            endpoints,
            unknown: false,
        })))
        .1
    }
}

/// The mesh: answers `from: mesh`.
fn mesh() -> HttpService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, BoxError>(
            Response::builder()
                .header("from", "mesh")
                .body(body::empty())
                .unwrap(),
        )
    }))
}

/// An HTTP/1 server answering one request with `from: app` and the Host it got as the body.
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 {
                return;
            }
            buf.push(b[0]);
        }
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        let host = text
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .unwrap_or("")
            .to_string();
        let rsp = format!(
            "HTTP/1.1 200 OK\r\nfrom: app\r\ncontent-length: {}\r\n\r\n{host}",
            host.len()
        );
        s.write_all(rsp.as_bytes()).await.unwrap();
    });
    addr
}

/// The endpoint service: answers `from: endpoint`, with the endpoint and destination the
/// request was given.
fn endpoint() -> HttpService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
        let picked = req.extensions().get::<Picked>().unwrap().endpoint().clone();
        let dst = req.extensions().get::<Destination>().unwrap();
        Ok::<_, BoxError>(
            Response::builder()
                .header("from", "endpoint")
                .header("endpoint", picked.address.to_string())
                .header("identity", picked.identity.unwrap().as_str())
                .header("authority", dst.authority.as_str())
                .header("service", dst.label().as_ref())
                .body(body::empty())
                .unwrap(),
        )
    }))
}

fn svc(known: &[(&str, SocketAddr)]) -> Intercepted {
    with_table(Arc::new(Table::new(known)))
}

fn with_table(table: Arc<Table>) -> Intercepted {
    Intercepted::new(
        mesh(),
        endpoint(),
        "default",
        Backends::new(table.clone(), Limits::default()),
        Arc::new(Addresses::new(table)),
        OwnSockets::default(),
        crate::metrics::ProxyMetrics::new(weft_runtime::metrics::Registry::new()),
    )
}

fn get(host: &str, orig: Option<SocketAddr>) -> (Request<Body>, Arc<Labels>) {
    let mut req = Request::get("/x")
        .header(http::header::HOST, host)
        .body(body::empty())
        .unwrap();
    let labels = Arc::new(Labels::default());
    req.extensions_mut().insert(labels.clone());
    if let Some(o) = orig {
        req.extensions_mut().insert(OrigDst(o));
    }
    (req, labels)
}

async fn call(mut s: Intercepted, req: Request<Body>) -> Response<Body> {
    s.ready().await.unwrap().call(req).await.unwrap()
}

#[tokio::test]
async fn without_an_original_destination_it_is_the_mesh() {
    let (req, _) = get("10.1.2.3:8080", None);
    let rsp = call(svc(&[]), req).await;
    assert_eq!(rsp.headers()["from"], "mesh");
}

#[tokio::test]
async fn an_address_goes_as_it_is_to_the_original_destination() {
    let dst = app().await;
    let (req, labels) = get("10.1.2.3:8080", Some(dst));
    let rsp = call(svc(&[]), req).await;
    assert_eq!(rsp.headers()["from"], "app");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    // The Host the application wrote, not the address the proxy connected to.
    assert_eq!(&body[..], b"10.1.2.3:8080");
    assert_eq!(labels.dst(), UNMESHED);
    assert_eq!(labels.peer(), ("none", false));
}

#[tokio::test]
async fn a_name_the_mesh_does_not_know_goes_to_the_original_destination() {
    let dst = app().await;
    let some: SocketAddr = "10.9.9.9:4143".parse().unwrap();
    let (req, _) = get("example.com", Some(dst));
    let rsp = call(svc(&[("default/api", some)]), req).await;
    assert_eq!(rsp.headers()["from"], "app");
}

#[tokio::test]
async fn a_service_with_endpoints_takes_the_mesh() {
    let some: SocketAddr = "10.9.9.9:4143".parse().unwrap();
    let (req, labels) = get("api:8080", Some("10.1.2.3:8080".parse().unwrap()));
    let rsp = call(svc(&[("default/api", some)]), req).await;
    assert_eq!(rsp.headers()["from"], "mesh");
    assert_eq!(labels.dst(), "unknown");
}

#[tokio::test]
async fn an_unreachable_original_destination_is_a_connect_failure() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (req, _) = get("10.1.2.3:8080", Some(closed));
    let mut s = svc(&[]);
    let err = s.ready().await.unwrap().call(req).await.unwrap_err();
    let e = Some(crate::edge::proxy_error(&*err).code());
    assert_eq!(e, Some("connect_failed"));
}

#[tokio::test]
async fn the_proxys_own_sockets_are_known_while_they_live() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dst = l.local_addr().unwrap();
    let own = OwnSockets::default();
    let metrics = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
    let (client, mut app_side) = tokio::io::duplex(64);
    let forward = {
        let own = own.clone();
        tokio::spawn(async move { forward_tcp(client, dst, &own, "outbound", &metrics).await })
    };
    let (mut server, remote) = l.accept().await.unwrap();
    assert!(own.contains(remote), "the proxy's own socket is recognised");
    assert!(!own.contains("127.0.0.1:1".parse().unwrap()));
    server.write_all(b"220 banner\r\n").await.unwrap();
    let mut banner = [0u8; 12];
    app_side.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    drop(server);
    drop(app_side);
    forward.await.unwrap();
    assert!(!own.contains(remote), "forgotten once closed");
}

#[tokio::test]
async fn a_meshed_workloads_address_goes_to_its_proxy_with_its_identity() {
    let table = Arc::new(Table::new(&[]));
    table.workload("api", "10.1.2.3:4143", Some("api"));
    let (req, labels) = get("10.1.2.3:8080", Some("10.1.2.3:8080".parse().unwrap()));
    let rsp = call(with_table(table), req).await;
    let h = rsp.headers();
    assert_eq!(h["from"], "endpoint");
    // The proxy where the workload registered, not the app port the app dialled.
    assert_eq!(h["endpoint"], "10.1.2.3:4143");
    assert_eq!(h["identity"], "spiffe://weft.local/ns/default/sa/api");
    // The app port travels in the authority: the peer proxy forwards to it.
    assert_eq!(h["authority"], "10.1.2.3:8080");
    assert_eq!(h["service"], "default/api");
    assert_eq!(labels.dst(), "default/api");
    assert_eq!(
        labels.peer(),
        ("spiffe://weft.local/ns/default/sa/api", true)
    );
}

#[tokio::test]
async fn the_authority_sent_to_a_meshed_workload_names_the_original_port() {
    let table = Arc::new(Table::new(&[]));
    table.workload("api", "10.1.2.3:4143", Some("api"));
    let orig: SocketAddr = "10.1.2.3:8080".parse().unwrap();
    for (host, sent) in [
        ("web.example", "web.example:8080"),
        ("web.example:9999", "web.example:8080"),
        ("10.1.2.3", "10.1.2.3:8080"),
    ] {
        let (req, _) = get(host, Some(orig));
        let rsp = call(with_table(table.clone()), req).await;
        assert_eq!(rsp.headers()["authority"], sent, "Host {host}");
    }
    let mut req = Request::get("/x").body(body::empty()).unwrap();
    req.extensions_mut().insert(OrigDst(orig));
    let rsp = call(with_table(table), req).await;
    assert_eq!(rsp.headers()["authority"], "10.1.2.3:8080");
}

#[tokio::test]
async fn an_address_with_only_workloads_without_identity_goes_unmeshed() {
    let dst = app().await;
    let table = Arc::new(Table::new(&[]));
    table.workload("legacy", &dst.to_string(), None);
    let (req, labels) = get("legacy.example", Some(dst));
    let rsp = call(with_table(table), req).await;
    assert_eq!(rsp.headers()["from"], "app");
    assert_eq!(labels.dst(), UNMESHED);
}

#[tokio::test]
async fn a_service_name_goes_before_the_address() {
    let some: SocketAddr = "10.9.9.9:4143".parse().unwrap();
    let table = Arc::new(Table::new(&[("default/api", some)]));
    table.workload("other", "10.1.2.3:4143", Some("other"));
    let (req, _) = get("api:8080", Some("10.1.2.3:8080".parse().unwrap()));
    let rsp = call(with_table(table), req).await;
    assert_eq!(rsp.headers()["from"], "mesh");
}

#[tokio::test]
async fn an_address_follows_the_control_plane() {
    let dst = app().await;
    let table = Arc::new(Table::new(&[]));
    table.workload("api", &format!("{}:4143", dst.ip()), Some("api"));
    let svc = with_table(table.clone());
    let (req, _) = get("x.example", Some(dst));
    assert_eq!(call(svc.clone(), req).await.headers()["from"], "endpoint");
    // The workload leaves: its address is no longer meshed.
    table.set(
        dst.ip(),
        Some(AddressInfo {
            ip: dst.ip(),
            endpoints: Vec::new(),
        }),
    );
    let (req, labels) = get("x.example", Some(dst));
    assert_eq!(call(svc, req).await.headers()["from"], "app");
    assert_eq!(labels.dst(), UNMESHED);
}

#[tokio::test(start_paused = true)]
async fn no_answer_about_an_address_in_time_means_unmeshed() {
    let table = Arc::new(Table::new(&[]));
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    table.set(ip, None);
    let addresses = Addresses::new(table.clone());
    assert!(addresses.lookup(ip).await.is_none());
    // The answer arrives later: from then on the address is meshed.
    table.workload("api", "10.1.2.3:4143", Some("api"));
    let found = addresses.lookup(ip).await.unwrap();
    let meshed = found.meshed.as_ref().unwrap();
    assert_eq!(meshed.endpoint().address, "10.1.2.3:4143".parse().unwrap());
    assert!(!found.is_opaque(25));
}

#[tokio::test]
async fn the_services_at_an_address_declare_its_opaque_ports() {
    let table = Arc::new(Table::new(&[]));
    table.workload_with("mail", "10.1.2.3:4143", Some("mail"), &[587, 25]);
    let addresses = Addresses::new(table.clone());
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let found = addresses.lookup(ip).await.unwrap();
    assert!(found.is_opaque(25) && found.is_opaque(587) && !found.is_opaque(8080));
    // The service changes its mind: the address follows.
    table.workload_with("mail", "10.1.2.3:4143", Some("mail"), &[]);
    assert!(!addresses.lookup(ip).await.unwrap().is_opaque(25));
}
