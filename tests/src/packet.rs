//! Test packets, built with etherparse (an independent implementation of the wire formats, so
//! that fixtures never check our programs against our own encoder).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder, VlanId};

/// The client-side MAC addresses used by fixtures.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// Builder for an Ethernet frame, optionally with one 802.1Q tag.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    vlan: Option<u16>,
}

impl Frame {
    pub fn ethernet() -> Self {
        Self::default()
    }

    /// Adds one 802.1Q tag with this VLAN id (0..=4095).
    #[must_use]
    pub fn vlan(self, id: u16) -> Self {
        Self { vlan: Some(id) }
    }

    /// An IPv6/UDP datagram carrying `payload`.
    pub fn ipv6_udp(
        self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC);
        let result = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id fits 12 bits"))
                .ipv6(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
            None => eth
                .ipv6(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
        };
        result.expect("writing to a Vec cannot fail");
        out
    }

    /// An IPv4/UDP datagram carrying `payload`.
    pub fn ipv4_udp(
        self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC);
        let result = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id fits 12 bits"))
                .ipv4(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
            None => eth
                .ipv4(src.octets(), dst.octets(), 64)
                .udp(ports.0, ports.1)
                .write(&mut out, payload),
        };
        result.expect("writing to a Vec cannot fail");
        out
    }

    /// An ARP request for `target` from `sender`.
    pub fn arp_request(self, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &CLIENT_MAC,
            &sender.octets(),
            &[0; 6],
            &target.octets(),
        )
        .expect("valid ARP fields");
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6]);
        let result = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id fits 12 bits"))
                .arp(arp)
                .write(&mut out),
            None => eth.arp(arp).write(&mut out),
        };
        result.expect("writing to a Vec cannot fail");
        out
    }
}
