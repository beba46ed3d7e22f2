//! Reading UDP datagrams with what the kernel knows of them: the TTL or Hop Limit they arrived
//! with (BFD's single-hop check, STAMP's sender TTL) and when they arrived (STAMP's
//! timestamps, taken by the kernel so that a busy agent does not stretch them).

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::sys::socket::{
    self as nix_socket, ControlMessageOwned, MsgFlags, SockaddrStorage, sockopt,
};
use tokio::{io::Interest, net::UdpSocket};

/// A datagram as it came.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// Its TTL or Hop Limit, when the socket asks for it.
    pub ttl: Option<u8>,
    /// When the kernel took it in, when the socket asks for it.
    pub at: Option<SystemTime>,
}

/// A nonblocking socket bound to `port` on every address, both families, that reports each
/// datagram's TTL and, with `timestamps`, its arrival time.
pub fn listen(port: u16, timestamps: bool) -> io::Result<std::net::UdpSocket> {
    let socket =
        std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))?;
    report_ttl(&socket)?;
    if timestamps {
        nix_socket::setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Asks for each datagram's Hop Limit, and TTL (IPv4 datagrams to a dual-stack socket report
/// it at the IP level).
pub fn report_ttl(socket: &std::net::UdpSocket) -> io::Result<()> {
    nix_socket::setsockopt(socket, sockopt::Ipv6RecvHopLimit, &true)?;
    nix_socket::setsockopt(socket, sockopt::Ipv4RecvTtl, &true)?;
    Ok(())
}

/// The next datagram on `socket`, into `buf`.
pub async fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    socket
        .async_io(Interest::READABLE, || {
            let mut iov = [io::IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!(libc::c_int, libc::c_int, libc::timespec);
            let message = nix_socket::recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)?;
            let (mut ttl, mut at) = (None, None);
            for cmsg in message.cmsgs().map_err(io::Error::from)? {
                match cmsg {
                    ControlMessageOwned::Ipv6HopLimit(hops)
                    | ControlMessageOwned::Ipv4Ttl(hops) => ttl = u8::try_from(hops).ok(),
                    ControlMessageOwned::ScmTimestampns(ts) => {
                        let since = Duration::new(
                            u64::try_from(ts.tv_sec()).unwrap_or(0),
                            u32::try_from(ts.tv_nsec()).unwrap_or(0),
                        );
                        at = Some(UNIX_EPOCH + since);
                    }
                    _ => {}
                }
            }
            let from = message
                .address
                .and_then(|a| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::new(IpAddr::V6(v6.ip()), v6.port()))
                        .or_else(|| {
                            a.as_sockaddr_in()
                                .map(|v4| SocketAddr::new(IpAddr::V4(v4.ip()), v4.port()))
                        })
                })
                .ok_or_else(|| io::Error::other("no source address"))?;
            Ok(Received {
                len: message.bytes,
                from,
                ttl,
                at,
            })
        })
        .await
}
