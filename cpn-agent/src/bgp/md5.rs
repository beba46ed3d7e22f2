//! TCP MD5 signatures for BGP sessions (RFC 2385), through Linux's `TCP_MD5SIG` socket option:
//! the key is set for the peer's address on the listening socket (accepted connections inherit
//! it) and on each socket before it connects.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
};

/// `struct tcp_md5sig` of `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; libc::TCP_MD5SIG_MAXKEYLEN],
}

/// The longest key Linux accepts.
pub const MAX_KEY_LEN: usize = libc::TCP_MD5SIG_MAXKEYLEN;

/// Signs (and requires signatures on) the segments between `socket` and `peer` with `key`.
/// An IPv4 peer is also keyed by its IPv4-mapped IPv6 address, for dual-stack sockets.
pub fn set_key(socket: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a TCP MD5 key has 1 to {MAX_KEY_LEN} bytes"),
        ));
    }
    let fd = socket.as_raw_fd();
    match peer {
        IpAddr::V6(v6) => set(fd, v6_address(v6), key),
        IpAddr::V4(v4) => {
            set(fd, v4_address(v4), key)?;
            set(fd, v6_address(v4.to_ipv6_mapped()), key)
        }
    }
}

fn v6_address(addr: std::net::Ipv6Addr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or_default(),
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
    unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
    storage
}

fn v4_address(addr: std::net::Ipv4Addr) -> libc::sockaddr_storage {
    // SAFETY: as above.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
    unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
    storage
}

fn set(fd: RawFd, addr: libc::sockaddr_storage, key: &[u8]) -> io::Result<()> {
    let mut sig = TcpMd5Sig {
        addr,
        flags: 0,
        prefix_len: 0,
        key_len: u16::try_from(key.len()).unwrap_or(u16::MAX),
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: a valid fd, and a pointer to a properly sized, initialised tcp_md5sig.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast(),
            libc::socklen_t::try_from(size_of::<TcpMd5Sig>()).unwrap_or(0),
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
    use super::*;

    #[test]
    fn the_struct_has_the_kernel_layout() {
        assert_eq!(size_of::<TcpMd5Sig>(), 128 + 1 + 1 + 2 + 4 + 80);
    }

    #[test]
    fn keys_of_bad_length_are_refused_before_the_kernel() {
        let socket = std::net::UdpSocket::bind("[::1]:0").unwrap();
        for key in [&[][..], &[b'k'; MAX_KEY_LEN + 1][..]] {
            let error = set_key(&socket, "::1".parse().unwrap(), key).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
