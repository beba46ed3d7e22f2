//! Injection and capture: `AF_PACKET` raw sockets bound to one interface of a node, opened
//! from a thread that entered the node's namespace (a socket stays in the namespace it was
//! created in, whichever thread uses it later).

use std::{
    io,
    mem::{size_of, zeroed},
    net::UdpSocket,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::Node;

/// Runs `f` on a thread of its own inside `node`'s network namespace (`setns` is per thread).
pub fn in_node<T: Send>(node: &Node, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let _inside = node.enter()?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in {} panicked", node.name()))?
    })
}

const ETH_P_ALL: u16 = 0x0003;

/// An `AF_PACKET` socket on one interface: sends whole Ethernet frames, receives every frame
/// the interface receives (its own transmissions are skipped).
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
    /// Node and interface, for reports.
    pub name: String,
}

impl RawSocket {
    /// Opens and binds the socket in `node` on `interface`.
    pub fn open(node: &Node, interface: &str) -> Result<Self> {
        let name = format!("{}:{interface}", node.name());
        let iface = std::ffi::CString::new(interface)?;
        in_node(node, || {
            // SAFETY: plain syscalls; the fd is owned at once, the address struct is ours.
            unsafe {
                let ifindex = libc::if_nametoindex(iface.as_ptr());
                if ifindex == 0 {
                    bail!("no interface {interface}: {}", io::Error::last_os_error());
                }
                let raw = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ALL.to_be()),
                );
                if raw < 0 {
                    bail!("AF_PACKET socket: {}", io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(raw);
                let ifindex = i32::try_from(ifindex)?;
                let address = link_address(ifindex);
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    (&raw const address).cast(),
                    socklen::<libc::sockaddr_ll>(),
                );
                if rc != 0 {
                    bail!("binding to {interface}: {}", io::Error::last_os_error());
                }
                // Room for a flood's worth of frames while nobody reads.
                let size: libc::c_int = 8 << 20;
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    socklen::<libc::c_int>(),
                );
                Ok(Self {
                    fd,
                    ifindex,
                    name: name.clone(),
                })
            }
        })
    }

    /// Sends one Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let address = link_address(self.ifindex);
        // SAFETY: the buffer and address outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        };
        if usize::try_from(sent).ok() != Some(frame.len()) {
            bail!("sending on {}: {}", self.name, io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next received frame, if one is queued (frames this interface sent are skipped).
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 65536];
        loop {
            // SAFETY: an all-zero sockaddr_ll is valid; the kernel fills it.
            let mut from: libc::sockaddr_ll = unsafe { zeroed() };
            let mut from_len = socklen::<libc::sockaddr_ll>();
            // SAFETY: buffer and address are ours and large enough.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut from_len,
                )
            };
            let n = usize::try_from(n).ok()?;
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buffer.truncate(n);
            return Some(buffer);
        }
    }

    /// Discards whatever is queued (set-up noise: router solicitations, MLD reports).
    pub fn drain(&self) {
        while self.try_recv().is_some() {}
    }

    fn poll_fd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }
    }
}

fn link_address(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
    address.sll_protocol = ETH_P_ALL.to_be();
    address.sll_ifindex = ifindex;
    address.sll_halen = 6;
    address
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(0)
}

/// Attaches a two-instruction XDP program (`return XDP_PASS`) to `interface` in `node` and
/// returns the `bpf_link` that holds it there: a veth only receives what its peer's XDP
/// program sends with `XDP_TX` when it runs XDP itself (docs: shared TOOLCHAIN.md, "Traps"),
/// and what is `XDP_REDIRECT`ed into it only with NAPI. Written without any cpn code, so the
/// Linux topology does not depend on the data plane under test.
pub fn xdp_pass(node: &Node, interface: &str) -> Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const XDP_PASS: u64 = 2;
    // r0 = XDP_PASS (BPF_ALU64 | BPF_MOV | BPF_K); exit.
    let insns: [u64; 2] = [0xb7 | (XDP_PASS << 32), 0x95];
    let license = c"GPL";
    let iface = std::ffi::CString::new(interface)?;
    in_node(node, || {
        // bpf(2) takes a zero-padded union; the fields are at their documented offsets.
        let mut load = [0u8; 128];
        load[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
        load[4..8].copy_from_slice(&2u32.to_ne_bytes());
        load[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        load[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        // SAFETY: the attribute buffer and what it points to outlive the call.
        let prog =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, load.as_ptr(), load.len()) };
        if prog < 0 {
            bail!(
                "loading an XDP_PASS program: {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: a new fd the kernel just gave us.
        let prog = unsafe { OwnedFd::from_raw_fd(i32::try_from(prog)?) };
        // SAFETY: plain libc call on a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {interface}");
        }
        let mut link = [0u8; 64];
        link[0..4].copy_from_slice(&u32::try_from(prog.as_raw_fd())?.to_ne_bytes());
        link[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        link[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
        // SAFETY: as above.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, link.as_ptr(), link.len()) };
        if fd < 0 {
            bail!(
                "attaching XDP_PASS to {interface}: {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: as above.
        Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
    })
}

/// A frame captured on one of the capture sockets.
#[derive(Clone, Debug)]
pub struct Captured {
    /// The capturing node (its interface is implied by the topology).
    pub node: String,
    pub frame: Vec<u8>,
    /// When it was read, from the start of the collection.
    pub at: Duration,
}

/// Reads every socket until none has received anything for `quiet`, or `max` has passed.
pub fn collect(sockets: &[(&str, &RawSocket)], quiet: Duration, max: Duration) -> Vec<Captured> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut fds: Vec<libc::pollfd> = sockets.iter().map(|(_, s)| s.poll_fd()).collect();
    let quiet_ms = libc::c_int::try_from(quiet.as_millis()).unwrap_or(libc::c_int::MAX);
    while start.elapsed() < max {
        for fd in &mut fds {
            fd.revents = 0;
        }
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                libc::nfds_t::try_from(fds.len()).unwrap_or(0),
                quiet_ms,
            )
        };
        if ready <= 0 {
            break;
        }
        for (node, socket) in sockets {
            while let Some(frame) = socket.try_recv() {
                out.push(Captured {
                    node: (*node).to_owned(),
                    frame,
                    at: start.elapsed(),
                });
            }
        }
    }
    out
}

/// A non-blocking UDP socket bound in `node` (the service a DT behaviour delivers to).
pub fn udp_listener(node: &Node, address: std::net::SocketAddr) -> Result<UdpSocket> {
    in_node(node, || {
        let socket = UdpSocket::bind(address).with_context(|| format!("binding {address}"))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
}

/// Everything queued on a non-blocking UDP socket.
pub fn udp_received(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer = [0u8; 2048];
    while let Ok((n, _)) = socket.recv_from(&mut buffer) {
        out.push(buffer[..n].to_vec());
    }
    out
}
