//! Where a redirected connection was going: `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6), the address the iptables `REDIRECT` rules of `weft init`
//! replaced with the proxy's own port.
//!
//! Read through `socket2` (`Socket::original_dst_v4` / `original_dst_v6`, feature `all`), so
//! the proxy needs no `unsafe` of its own.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

/// What the proxy needs to know about interception, shared by both directions.
#[derive(Debug, Clone, Default)]
pub struct Interception {
    /// The proxy's own listening ports (inbound, outbound, admin): an original destination
    /// on one of them is a loop and is refused.
    pub own_ports: Vec<u16>,
    /// Destination ports whose connections skip protocol detection (`--opaque-ports`):
    /// server-speaks-first protocols (MySQL, SMTP) would otherwise wait for the detection
    /// timeout.
    pub opaque_ports: Vec<u16>,
    /// Whether the proxy runs under `weft init`'s interception (`--proxy-uid`/`--proxy-gid`):
    /// then the application is reached at the address a connection was for, not on loopback
    /// ([`Interception::app_ip`]).
    pub transparent: bool,
}

impl Interception {
    pub fn is_own_port(&self, port: u16) -> bool {
        self.own_ports.contains(&port)
    }

    pub fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }

    /// Where an inbound connection's application is, as without the mesh: at the address the
    /// client dialled. A connection `weft init` redirected goes to its original destination's
    /// address; under interception, a peer proxy's connection to the inbound listener goes to
    /// the address the peer reached the proxy at (the workload's registered address, `local`);
    /// otherwise (the sidecar layout, no interception) to `loopback`, where the application
    /// listens. So under interception an application bound to its host's address works, and a
    /// port bound only to loopback is not opened to the network by the proxy (as Linkerd and
    /// Istio forward to the pod's address).
    ///
    /// `None`: a redirected connection that was not for this host (routed through it, the host
    /// being a gateway; or a loopback address arriving from the network, which the kernel
    /// would drop without the redirection). The proxy connects to nothing on its behalf.
    pub fn app_ip(
        &self,
        orig: Option<OrigDst>,
        local: Option<SocketAddr>,
        loopback: IpAddr,
    ) -> Option<IpAddr> {
        match (orig, local) {
            (Some(OrigDst(dst)), _) => {
                let ip = dst.ip().to_canonical();
                is_own_address(ip).then_some(ip)
            }
            (None, Some(local)) if self.transparent => Some(local.ip().to_canonical()),
            _ => Some(loopback),
        }
    }
}

/// Whether `ip` is one of this host's own addresses, and not a loopback one: a socket can be
/// bound to it (no `IP_FREEBIND`, so binding a foreign address fails).
fn is_own_address(ip: IpAddr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified() && std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// A connection's original destination, as a request extension of the connections that had
/// one (transparent interception).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrigDst(pub SocketAddr);

/// The original destination of the accepted connection `tcp`, or `None` when it was not
/// redirected: the socket option is missing (no NAT entry: a direct connection, or not Linux)
/// or names the socket's own local address.
pub fn orig_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    let sock = socket2::SockRef::from(tcp);
    let found = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        // An IPv4 client of a dual-stack listener arrives as an IPv4-mapped address: its NAT
        // entry is IPv4.
        sock.original_dst_v6().or_else(|_| sock.original_dst_v4())
    };
    let addr = found.ok()?.as_socket()?;
    not_redirected(addr, local)
}

/// `addr`, unless it is the connection's local address (a connection made straight to the
/// proxy's port, which the kernel still reports when conntrack saw it).
fn not_redirected(addr: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
    let same_ip = addr.ip() == local.ip()
        || match (addr, local) {
            (SocketAddr::V4(a), SocketAddr::V6(l)) => l.ip().to_ipv4_mapped() == Some(*a.ip()),
            _ => false,
        };
    if same_ip && addr.port() == local.port() {
        None
    } else {
        Some(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_direct_connection_has_none() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(orig_dst(&s), None);
    }

    #[tokio::test]
    async fn a_direct_ipv6_connection_has_none() {
        let Ok(l) = TcpListener::bind("[::1]:0").await else {
            return; // no IPv6 here
        };
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(orig_dst(&s), None);
    }

    #[test]
    fn own_and_opaque_ports() {
        let i = Interception {
            own_ports: vec![4143, 4140, 4191],
            opaque_ports: vec![3306, 25],
            transparent: true,
        };
        assert!(i.is_own_port(4140) && !i.is_own_port(8080));
        assert!(i.is_opaque(3306) && !i.is_opaque(8080));
        assert!(!Interception::default().is_opaque(3306));
    }

    /// One of this machine's own non-loopback addresses, if it has one.
    fn own_address() -> Option<IpAddr> {
        // The address a UDP socket would send from towards a documentation address: no
        // packet is sent.
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.connect("192.0.2.1:9").ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback()).then_some(ip)
    }

    #[test]
    fn the_application_is_at_the_address_the_client_dialled() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let Some(own) = own_address() else {
            return; // no network here
        };
        let dst = OrigDst(SocketAddr::new(own, 5432));
        let local = SocketAddr::new(own, 4143);
        let sidecar = Interception::default();
        let transparent = Interception {
            transparent: true,
            ..Interception::default()
        };
        for i in [&sidecar, &transparent] {
            // Redirected to this host: its original destination.
            assert_eq!(i.app_ip(Some(dst), Some(local), loopback), Some(own));
            // Redirected, but not for this host (routed through it), or for loopback from the
            // network: nowhere.
            let foreign = OrigDst("192.0.2.7:5432".parse().unwrap());
            assert_eq!(i.app_ip(Some(foreign), Some(local), loopback), None);
            let lo = OrigDst("127.0.0.1:5432".parse().unwrap());
            assert_eq!(i.app_ip(Some(lo), Some(local), loopback), None);
        }
        // A peer at the inbound listener: loopback in the sidecar layout; under interception
        // the address it reached the proxy at (an IPv4-mapped one as IPv4).
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4143".parse().unwrap();
        assert_eq!(sidecar.app_ip(None, Some(mapped), loopback), Some(loopback));
        assert_eq!(
            transparent.app_ip(None, Some(mapped), loopback),
            Some(IpAddr::from([10, 0, 0, 1]))
        );
    }

    #[test]
    fn the_local_address_is_not_a_redirection() {
        let local: SocketAddr = "10.0.0.1:4143".parse().unwrap();
        assert_eq!(not_redirected(local, local), None);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4143".parse().unwrap();
        assert_eq!(not_redirected(local, mapped), None);
        let other: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        assert_eq!(not_redirected(other, local), Some(other));
    }
}
