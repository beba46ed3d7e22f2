//! Bounds-checked packet access and header parsing.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use cpn_common::{
    headers::{EthHdr, ExtHdr, FragHdr, Ipv4Hdr, Ipv6Hdr, VlanHdr, ether_type, proto},
    stats::ProtoCounter,
};

/// IPv6 extension headers walked before giving up (hop-by-hop, routing, fragment, destination
/// options, in any order).
pub const MAX_EXT_HEADERS: usize = 4;
/// Largest header offset we follow; keeps every variable offset provably bounded.
pub const MAX_HEADER_OFFSET: usize = 512;
/// Where the network header starts at the latest: after Ethernet and one VLAN tag.
pub const MAX_L2_LEN: usize = size_of::<EthHdr>() + size_of::<VlanHdr>();
/// The longest IP packet a header can describe: IPv6's 40 bytes plus a 16-bit payload length.
pub const MAX_IP_LEN: usize = size_of::<Ipv6Hdr>() + u16::MAX as usize;

/// A packet the programs read and write in place, with the same bounds checks: an XDP frame,
/// or a socket buffer's linear part (TC; the entry pulls in the headers it needs first).
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The program's context, for helpers that take either kind (`bpf_fib_lookup`).
    fn context(&self) -> *mut core::ffi::c_void;
    /// The whole packet's length (a socket buffer's may go beyond `data_end`).
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }
    /// Copies `len` packet bytes from `offset` to `to` (the helper checks the bounds); false if
    /// they are not there.
    fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> bool;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn context(&self) -> *mut core::ffi::c_void {
        self.ctx.cast()
    }

    #[inline(always)]
    fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> bool {
        // SAFETY: helper call on our context; `to` holds `len` bytes (the caller's promise).
        unsafe { aya_ebpf::helpers::bpf_xdp_load_bytes(self.ctx, offset, to, len) == 0 }
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn context(&self) -> *mut core::ffi::c_void {
        self.skb.skb.cast()
    }

    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }

    #[inline(always)]
    fn load_bytes(&self, offset: u32, to: *mut core::ffi::c_void, len: u32) -> bool {
        // SAFETY: helper call on our context; `to` holds `len` bytes (the caller's promise).
        unsafe { aya_ebpf::helpers::bpf_skb_load_bytes(self.skb.skb.cast(), offset, to, len) == 0 }
    }
}

/// A pointer to a `T` at byte `offset` of the packet, if the whole `T` lies inside it.
///
/// Every packet access goes through here or [`ptr_at_mut`], so the verifier sees one
/// bounds-check pattern. Pointers must be taken again after `bpf_xdp_adjust_*`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Option<*const T> {
    // Check the very pointer we hand out, so the verifier ties the bound to it even when the
    // offset is a variable.
    let ptr = ctx.data() + offset;
    if ptr + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(ptr as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &impl Frame, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p.cast_mut())
}

// Packet access with the access width of `T`'s alignment. LLVM's BPF backend turns a load or
// store it cannot prove aligned into one instruction per byte, and it never knows a packet
// pointer's alignment. The BPF machine itself allows packet accesses at any alignment (the
// verifier checks packet alignment only on architectures without efficient unaligned access;
// the JITs emit plain moves), which is what the kernel's and Katran's C programs rely on when
// they read `struct ipv6hdr` as 32-bit words at offset 14. So [`read`] and [`write`] claim `T`'s
// alignment (the headers in `cpn_common::headers` declare theirs) to get one instruction per
// word; nothing here derives facts from a packet pointer's low bits.

/// Reads a `T` at `offset` (see above for the access width).
#[inline(always)]
pub fn read<T: Copy>(ctx: &impl Frame, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked the bounds; alignment: see above.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read() })
}

/// Writes a `T` at `offset` (see above for the access width); false if it does not fit.
#[inline(always)]
pub fn write<T>(ctx: &impl Frame, offset: usize, value: T) -> bool {
    match ptr_at_mut::<T>(ctx, offset) {
        // SAFETY: bounds checked by `ptr_at_mut`; alignment: see above.
        Some(p) => {
            unsafe { p.write(value) };
            true
        }
        None => false,
    }
}

/// Reads a header `T` of byte fields as the words `W` (same size) and hands it out as `T`: LLVM
/// loads a struct of byte arrays one byte at a time, words in one instruction each.
#[inline(always)]
pub fn read_as<W: Copy, T: Copy>(ctx: &impl Frame, offset: usize) -> Option<T> {
    const { assert!(size_of::<W>() == size_of::<T>()) };
    // SAFETY: same size (asserted); the headers read this way are plain byte arrays, valid
    // for any bytes.
    read::<W>(ctx, offset).map(|words| unsafe { core::mem::transmute_copy::<W, T>(&words) })
}

/// A 16-byte address (network order) held as two 8-byte words, so that it moves in two
/// instructions: LLVM copies a `[u8; 16]` value one byte at a time. It has the bytes' layout,
/// so it is read from packets and from the 8-aligned `[u8; 16]` fields of the map types
/// (see [`Addr::from_field`]) as it is.
#[repr(C, align(8))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub [u64; 2]);

impl Addr {
    pub const ZERO: Self = Self([0; 2]);

    /// `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2).
    #[inline(always)]
    pub fn v4_mapped(v4: [u8; 4]) -> Self {
        let [a, b, c, d] = v4;
        Self([0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d])])
    }

    /// An address stored in an 8-aligned `[u8; 16]` (the map types' address fields).
    #[inline(always)]
    pub fn from_field(field: &[u8; 16]) -> Self {
        // SAFETY: same size; the map types are 8-aligned and their address fields sit at
        // multiples of 8 (asserted with their layouts in `cpn_common::maps`).
        unsafe { (field as *const [u8; 16]).cast::<Self>().read() }
    }

    /// The first byte (the high-order byte of the address).
    #[inline(always)]
    pub fn first_byte(self) -> u8 {
        self.0[0].to_ne_bytes()[0]
    }
}

/// A MAC field of a map value or an 8-aligned struct as words, read in three loads. The fields
/// sit at even offsets (`NextHopEntry`, `FibCacheEntry`).
#[inline(always)]
pub fn mac_field_words(field: &[u8; 6]) -> [u16; 3] {
    // SAFETY: same size; the field is 2-aligned (see above).
    unsafe { (field as *const [u8; 6]).cast::<[u16; 3]>().read() }
}

/// Reads a 16-byte address at `offset` in two loads.
#[inline(always)]
pub fn read_addr(ctx: &impl Frame, offset: usize) -> Option<Addr> {
    read(ctx, offset)
}

/// The packet's length: all of it, also what a socket buffer holds beyond its linear part.
#[inline(always)]
pub fn frame_len(ctx: &impl Frame) -> usize {
    ctx.len()
}

/// The link layer: where the network header starts and what it is.
#[derive(Clone, Copy)]
pub struct L2 {
    pub l3: usize,
    pub ether_type: u16,
    pub vlan_tagged: bool,
}

/// Parses Ethernet and at most one VLAN tag. `Err` carries whether a VLAN tag was seen.
#[inline(always)]
pub fn l2(ctx: &impl Frame) -> Result<L2, bool> {
    let eth: EthHdr = read(ctx, 0).ok_or(false)?;
    let ether_type = u16::from_be_bytes(eth.ether_type);
    if ether_type == ether_type::VLAN_8021Q || ether_type == ether_type::VLAN_8021AD {
        let vlan: VlanHdr = read(ctx, size_of::<EthHdr>()).ok_or(true)?;
        return Ok(L2 {
            l3: size_of::<EthHdr>() + size_of::<VlanHdr>(),
            ether_type: u16::from_be_bytes(vlan.ether_type),
            vlan_tagged: true,
        });
    }
    Ok(L2 {
        l3: size_of::<EthHdr>(),
        ether_type,
        vlan_tagged: false,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fragment {
    No,
    /// Offset 0 with more fragments to come: carries the L4 header.
    First,
    /// Offset > 0: no L4 header.
    Later,
}

/// The network layer of an IPv4 or IPv6 packet.
///
/// `repr(C)`, 8-aligned, addresses first: it lives on the stack, where the verifier allows only
/// aligned accesses, and the build lets LLVM copy the addresses in 8-byte words.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Ip {
    /// Addresses; IPv4 as IPv4-mapped IPv6.
    pub src: Addr,
    pub dst: Addr,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the upper-layer header (after IPv6 extension headers / IPv4 options).
    pub l4: usize,
    /// The IP packet's length according to its header.
    pub len: usize,
    /// The upper-layer protocol.
    pub protocol: u8,
    pub fragment: Fragment,
    /// Traffic class (IPv6) or TOS (IPv4): DSCP and ECN.
    pub tos: u8,
    pub v6: bool,
    /// IPv4 Don't Fragment (always true for IPv6: routers never fragment it).
    pub dont_fragment: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IpError {
    /// Cut short, wrong version, bad lengths.
    Malformed,
    /// More extension headers than [`MAX_EXT_HEADERS`].
    ChainTooLong,
}

impl IpError {
    pub const fn counter(self) -> ProtoCounter {
        ProtoCounter::Malformed
    }
}

impl Ip {
    pub const EMPTY: Self = Self {
        l3: 0,
        v6: false,
        l4: 0,
        protocol: 0,
        fragment: Fragment::No,
        src: Addr::ZERO,
        dst: Addr::ZERO,
        tos: 0,
        len: 0,
        dont_fragment: false,
    };
}

// The parsers fill an `&mut Ip` in place: returning it by value through `Result`/`Option`
// layers would put several copies of it on the 512-byte stack.

/// Parses an IPv6 header and walks its extension headers.
#[inline(always)]
pub fn ipv6(ctx: &impl Frame, l3: usize, ip: &mut Ip) -> Result<(), IpError> {
    // Version, traffic class, flow label, payload length, next header, hop limit: one word.
    let [v0, v1, v2, v3, len_hi, len_lo, next_header, _] = read::<u64>(ctx, l3)
        .ok_or(IpError::Malformed)?
        .to_ne_bytes();
    let vtc = [v0, v1, v2, v3];
    if v0 >> 4 != 6 {
        return Err(IpError::Malformed);
    }
    let payload_len = [len_hi, len_lo];
    ip.protocol = next_header;
    ip.src = read_addr(ctx, l3 + 8).ok_or(IpError::Malformed)?;
    ip.dst = read_addr(ctx, l3 + 24).ok_or(IpError::Malformed)?;
    ip.l3 = l3;
    ip.v6 = true;
    ip.l4 = l3 + size_of::<Ipv6Hdr>();
    ip.fragment = Fragment::No;
    ip.tos = (u32::from_be_bytes(vtc) >> 20) as u8;
    ip.len = size_of::<Ipv6Hdr>() + u16::from_be_bytes(payload_len) as usize;
    ip.dont_fragment = true;
    for _ in 0..MAX_EXT_HEADERS {
        match ip.protocol {
            proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS => {
                let ext: ExtHdr = read_as::<u16, _>(ctx, ip.l4).ok_or(IpError::Malformed)?;
                ip.protocol = ext.next_header;
                ip.l4 += (ext.hdr_ext_len as usize + 1) * 8;
            }
            proto::FRAGMENT => {
                let frag: FragHdr = read_as::<u64, _>(ctx, ip.l4).ok_or(IpError::Malformed)?;
                ip.protocol = frag.next_header;
                // An atomic fragment (RFC 6946) is a whole packet: it stays `Fragment::No`.
                ip.fragment = if frag.is_atomic() {
                    Fragment::No
                } else if frag.is_later_fragment() {
                    Fragment::Later
                } else {
                    Fragment::First
                };
                ip.l4 += size_of::<FragHdr>();
            }
            _ => return Ok(()),
        }
        if ip.l4 > MAX_HEADER_OFFSET {
            return Err(IpError::Malformed);
        }
    }
    match ip.protocol {
        proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS | proto::FRAGMENT => {
            Err(IpError::ChainTooLong)
        }
        _ => Ok(()),
    }
}

/// Checks an IPv4 header (version, IHL, options present in full); returns it and its length.
#[inline(always)]
pub fn ipv4_header(ctx: &impl Frame, l3: usize) -> Result<(Ipv4Hdr, usize), IpError> {
    let hdr: Ipv4Hdr = read_as::<[u32; 5], _>(ctx, l3).ok_or(IpError::Malformed)?;
    let header_len = hdr.header_len();
    if hdr.version() != 4 || header_len < size_of::<Ipv4Hdr>() {
        return Err(IpError::Malformed);
    }
    // The options must be present in full too.
    read::<u8>(ctx, l3 + header_len - 1).ok_or(IpError::Malformed)?;
    Ok((hdr, header_len))
}

/// Parses an IPv4 header (options included by IHL).
#[inline(always)]
pub fn ipv4(ctx: &impl Frame, l3: usize, ip: &mut Ip) -> Result<(), IpError> {
    let (hdr, header_len) = ipv4_header(ctx, l3)?;
    let frag = u16::from_be_bytes(hdr.frag_off);
    ip.fragment = match (frag & 0x1fff, frag & 0x2000 != 0) {
        (0, false) => Fragment::No,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    ip.l3 = l3;
    ip.v6 = false;
    ip.l4 = l3 + header_len;
    ip.protocol = hdr.protocol;
    ip.src = Addr::v4_mapped(hdr.src);
    ip.dst = Addr::v4_mapped(hdr.dst);
    ip.tos = hdr.tos;
    ip.len = u16::from_be_bytes(hdr.total_len) as usize;
    ip.dont_fragment = frag & 0x4000 != 0;
    Ok(())
}

/// What [`ip`] found after the link layer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4 or IPv6, parsed into the `Ip`.
    Ip,
    /// Not IP (the EtherType says so).
    NotIp,
    Error(IpError),
}

/// Parses the network layer after `l2` into `out`, if it is IP.
#[inline(always)]
pub fn ip(ctx: &impl Frame, l2: &L2, out: &mut Ip) -> L3 {
    let parsed = match l2.ether_type {
        ether_type::IPV6 => ipv6(ctx, l2.l3, out),
        ether_type::IPV4 => ipv4(ctx, l2.l3, out),
        _ => return L3::NotIp,
    };
    match parsed {
        Ok(()) => L3::Ip,
        Err(e) => L3::Error(e),
    }
}

/// True for protocols whose first four bytes are source and destination ports.
#[inline(always)]
pub const fn has_ports(protocol: u8) -> bool {
    matches!(protocol, proto::TCP | proto::UDP | proto::SCTP)
}
