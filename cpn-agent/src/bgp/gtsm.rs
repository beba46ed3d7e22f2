//! The Generalized TTL Security Mechanism (RFC 5082) for BGP sessions: we send with TTL (hop
//! limit) 255, and the kernel drops every segment from the neighbor that arrives with less
//! than `256 - hops` (`IP_MINTTL`, `IPV6_MINHOPCOUNT`), so a spoofer more than `hops` routers
//! away cannot reach the session, whatever it forges. Set on each socket before it connects
//! and on each accepted one before the session reads from it (as FRR does).

use std::{io, net::IpAddr, os::fd::AsRawFd};

/// The TTL every packet of a protected session leaves with.
const SEND_TTL: libc::c_int = 255;

/// Protects `socket`, connected or about to be to `peer` (IPv4-mapped addresses count as
/// IPv4: a dual-stack socket carries them in IPv4 packets), for a neighbor `hops` routers
/// away (1: directly connected).
pub fn protect(socket: &impl AsRawFd, peer: IpAddr, hops: u8) -> io::Result<()> {
    if hops == 0 || hops == u8::MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a GTSM neighbor is 1 to 254 hops away",
        ));
    }
    let min_ttl = 256 - libc::c_int::from(hops);
    let fd = socket.as_raw_fd();
    let v4 = match peer {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    if v4 {
        set(fd, libc::IPPROTO_IP, libc::IP_TTL, SEND_TTL)?;
        set(fd, libc::IPPROTO_IP, libc::IP_MINTTL, min_ttl)
    } else {
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, SEND_TTL)?;
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, min_ttl)
    }
}

fn set(fd: i32, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a plain setsockopt on a descriptor the caller owns, with a live int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(0),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{Ipv6Addr, TcpListener, TcpStream},
        os::fd::AsRawFd as _,
        time::Duration,
    };

    use super::*;

    /// What the protected end reads when a client on loopback (packets keep the hop limit they
    /// left with) sends with hop limit `client_hops`.
    fn received_from_client_with(client_hops: libc::c_int) -> Option<Vec<u8>> {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, from) = listener.accept().unwrap();
        protect(&server, from.ip(), 1).unwrap();
        set(
            client.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            client_hops,
        )
        .unwrap();
        client.write_all(b"OPEN").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).ok().map(|()| buf.to_vec())
    }

    #[test]
    fn a_neighbor_one_hop_away_is_heard_only_at_ttl_255() {
        assert_eq!(
            received_from_client_with(255).as_deref(),
            Some(&b"OPEN"[..])
        );
        // As from two routers away (or a spoofer anywhere but on the link): never delivered.
        assert_eq!(received_from_client_with(254), None);
        assert_eq!(received_from_client_with(64), None);
    }

    #[test]
    fn hops_out_of_range_are_refused() {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        assert!(protect(&listener, Ipv6Addr::LOCALHOST.into(), 0).is_err());
        assert!(protect(&listener, Ipv6Addr::LOCALHOST.into(), 255).is_err());
    }
}
