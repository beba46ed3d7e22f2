//! Kernel routes the agent owns, through rtnetlink: `seg6local` routes for SIDs that the
//! kernel decapsulates instead of XDP, and routes to remote nodes' locators.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context as _, Result};
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::route::{RouteMessage, RouteProtocol, RouteSeg6LocalTunnel, Seg6LocalAction},
};

/// What a kernel-decapsulated SID does (the subset the kernel offers without a VRF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSid {
    End,
    EndX { nexthop: Ipv6Addr },
    EndDt6 { table: u32 },
    EndDx6 { nexthop: Ipv6Addr },
    EndDx4 { nexthop: std::net::Ipv4Addr },
}

/// A connection to the kernel's routing tables.
#[derive(Debug, Clone)]
pub struct KernelRoutes {
    handle: Handle,
}

impl KernelRoutes {
    /// Opens an rtnetlink socket; its connection runs as a task of the current runtime.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// `ip -6 route replace SID/128 encap seg6local action ... dev DEV proto static`.
    pub async fn set_seg6local(&self, sid: Ipv6Addr, what: KernelSid, dev: u32) -> Result<()> {
        let mut tunnel = vec![];
        let action = match what {
            KernelSid::End => Seg6LocalAction::End,
            KernelSid::EndX { nexthop } => {
                tunnel.push(RouteSeg6LocalTunnel::Nh6(nexthop));
                Seg6LocalAction::EndX
            }
            KernelSid::EndDt6 { table } => {
                tunnel.push(RouteSeg6LocalTunnel::Table(table));
                Seg6LocalAction::EndDt6
            }
            KernelSid::EndDx6 { nexthop } => {
                tunnel.push(RouteSeg6LocalTunnel::Nh6(nexthop));
                Seg6LocalAction::EndDx6
            }
            KernelSid::EndDx4 { nexthop } => {
                tunnel.push(RouteSeg6LocalTunnel::Nh4(nexthop));
                Seg6LocalAction::EndDx4
            }
        };
        tunnel.insert(0, RouteSeg6LocalTunnel::Action(action));
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(sid, 128)
            .output_interface(dev)
            .protocol(RouteProtocol::Static)
            .encap_seg6local(tunnel)
            .build();
        self.replace(route)
            .await
            .with_context(|| format!("installing the seg6local route for {sid}"))
    }

    /// `ip -6 route replace PREFIX/LEN via NEXTHOP proto static`.
    pub async fn set_route_via(&self, prefix: Ipv6Addr, len: u8, via: Ipv6Addr) -> Result<()> {
        self.set_route_by(prefix, len, via, RouteProtocol::Static)
            .await
    }

    /// A route learned in BGP: `ip -6 route replace PREFIX/LEN via NEXTHOP proto bgp`.
    pub async fn set_learned_route(&self, prefix: Ipv6Addr, len: u8, via: Ipv6Addr) -> Result<()> {
        self.set_route_by(prefix, len, via, RouteProtocol::Bgp)
            .await
    }

    /// Removes a route installed with [`KernelRoutes::set_learned_route`].
    pub async fn remove_learned(&self, prefix: Ipv6Addr, len: u8) -> Result<()> {
        self.remove_by(prefix, len, RouteProtocol::Bgp).await
    }

    async fn set_route_by(
        &self,
        prefix: Ipv6Addr,
        len: u8,
        via: Ipv6Addr,
        protocol: RouteProtocol,
    ) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix, len)
            .gateway(via)
            .protocol(protocol)
            .build();
        self.replace(route)
            .await
            .with_context(|| format!("installing the route to {prefix}/{len} via {via}"))
    }

    /// Removes the route to `prefix/len` (a SID or a locator) that the agent installed.
    pub async fn remove(&self, prefix: Ipv6Addr, len: u8) -> Result<()> {
        self.remove_by(prefix, len, RouteProtocol::Static).await
    }

    async fn remove_by(&self, prefix: Ipv6Addr, len: u8, protocol: RouteProtocol) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix, len)
            .protocol(protocol)
            .build();
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .with_context(|| format!("removing the route to {prefix}/{len}"))
    }

    async fn replace(&self, route: RouteMessage) -> Result<(), rtnetlink::Error> {
        self.handle.route().add(route).replace().execute().await
    }
}

/// Parses `addr/len` (IPv6).
pub fn parse_prefix(text: &str) -> Option<(Ipv6Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    match addr {
        IpAddr::V6(v6) if len <= 128 => Some((v6, len)),
        _ => None,
    }
}
