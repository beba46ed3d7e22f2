//! Kernel routes the agent owns, through rtnetlink: a route for every local SID (`seg6local`,
//! the kernel's copy of the behaviour XDP runs, or the only one with `decap = "kernel"`), and
//! routes to remote nodes' locators; and where the kernel sends a destination (`ip route get`).

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        link::{InfoKind, LinkAttribute, LinkInfo},
        route::{
            RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol,
            RouteSeg6LocalTunnel, RouteType, Seg6LocalAction,
        },
    },
};

/// What the kernel's route for a local SID does (`seg6local` actions, RFC 8986 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSid {
    End,
    EndX {
        nexthop: Ipv6Addr,
    },
    EndDt6 {
        table: u32,
    },
    /// End.DT4 in the VRF bound to `vrftable` (Linux needs a VRF device for it).
    EndDt4 {
        vrftable: u32,
    },
    /// End.DT46 in the VRF bound to `vrftable`.
    EndDt46 {
        vrftable: u32,
    },
    /// `::` decapsulates and routes the inner packet as the host routes any it receives.
    EndDx6 {
        nexthop: Ipv6Addr,
    },
    /// `0.0.0.0` decapsulates and routes the inner packet as the host routes any it receives.
    EndDx4 {
        nexthop: std::net::Ipv4Addr,
    },
    /// No behaviour the kernel can express here: a blackhole, so the kernel still owns the
    /// SID and never forwards a packet addressed to it.
    Discard,
}

/// How the kernel reaches a BGP next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The gateway of the route that covers the next hop, or the next hop itself when it is
    /// on a connected subnet.
    pub gateway: Ipv6Addr,
    /// The interface that route leaves by.
    pub oif: u32,
}

/// Why a BGP next hop cannot be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("no route to the next hop")]
    NoRoute,
    #[error("only a route learned in BGP covers the next hop")]
    OnlyViaBgp,
}

/// A channel that yields whenever the kernel's IPv6 routes or interfaces change (netlink
/// multicast), for a task that must follow them; its socket lives as long as the receiver.
pub fn route_changes() -> Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    let mut messages = subscribe_to_route_and_link_changes()?;
    let (changed, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures_util::StreamExt as _;
        while messages.next().await.is_some() {
            if changed.send(()).is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}

/// The kernel's messages about IPv6 routes and interfaces (netlink multicast), as they come;
/// the socket lives as long as the stream.
fn subscribe_to_route_and_link_changes() -> Result<
    impl futures_util::Stream<
        Item = (
            rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
            rtnetlink::sys::SocketAddr,
        ),
    > + Send
    + Unpin
    + 'static,
> {
    use rtnetlink::{
        constants::{RTMGRP_IPV6_ROUTE, RTMGRP_LINK},
        sys::AsyncSocket as _,
    };
    let (mut connection, _handle, messages) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(
            0,
            RTMGRP_IPV6_ROUTE | RTMGRP_LINK,
        ))
        .context("subscribing to route and link changes")?;
    tokio::spawn(connection);
    Ok(messages)
}

/// What [`route_events`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    /// The kernel deleted an IPv6 route the agent installed (`proto static`).
    Removed { prefix: Ipv6Addr, len: u8 },
    /// An interface changed (went up or down, was added or removed).
    LinkChanged,
}

/// A channel of the deletions of IPv6 routes the agent installs and of interface changes
/// (netlink multicast); its socket lives as long as the receiver.
pub fn route_events() -> Result<tokio::sync::mpsc::UnboundedReceiver<RouteEvent>> {
    use rtnetlink::{packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage};
    let mut messages = subscribe_to_route_and_link_changes()?;
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures_util::StreamExt as _;
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(route))
                    if route.header.protocol == RouteProtocol::Static =>
                {
                    let Some(prefix) = route.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet6(prefix)) => Some(*prefix),
                        _ => None,
                    }) else {
                        continue;
                    };
                    RouteEvent::Removed {
                        prefix,
                        len: route.header.destination_prefix_length,
                    }
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
                ) => RouteEvent::LinkChanged,
                _ => continue,
            };
            if events.send(event).is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}

/// Where the kernel sends packets to a destination, and the MTU on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub interface: String,
    /// The route's MTU if it sets one, else the interface's.
    pub mtu: u32,
}

/// The IPv6 minimum link MTU (RFC 8200 §5): every path must carry packets of this size.
pub const IPV6_MIN_MTU: u32 = 1280;

impl Egress {
    /// Why the encapsulation of `encap_len` bytes cannot leave here with a 1280-byte packet
    /// inside (a path that breaks IPv6 clients: Packet Too Big cannot go below 1280), if so.
    pub fn too_small_for(&self, encap_len: u32) -> Option<String> {
        let needed = IPV6_MIN_MTU + encap_len;
        (self.mtu < needed).then(|| {
            format!(
                "egress {} has MTU {}, but 1280-byte IPv6 packets plus {encap_len} bytes of                  SRv6 encapsulation need {needed}: raise its MTU (docs/OPERATIONS.md, \"MTU\")",
                self.interface, self.mtu
            )
        })
    }
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

    /// The rtnetlink handle, for the next-hop resolver's own requests.
    pub const fn handle(&self) -> &Handle {
        &self.handle
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
            KernelSid::EndDt4 { vrftable } => {
                tunnel.push(RouteSeg6LocalTunnel::VrfTable(vrftable));
                Seg6LocalAction::EndDt4
            }
            KernelSid::EndDt46 { vrftable } => {
                tunnel.push(RouteSeg6LocalTunnel::VrfTable(vrftable));
                Seg6LocalAction::EndDt46
            }
            KernelSid::Discard => {
                let route = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(sid, 128)
                    .kind(RouteType::BlackHole)
                    .protocol(RouteProtocol::Static)
                    .build();
                return self
                    .replace(route)
                    .await
                    .with_context(|| format!("installing the blackhole route for {sid}"));
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

    /// A route learned in BGP, through its resolved next hop:
    /// `ip -6 route replace PREFIX/LEN via GATEWAY dev OIF proto bgp`.
    pub async fn set_learned_route(&self, prefix: Ipv6Addr, len: u8, via: Resolved) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix, len)
            .gateway(via.gateway)
            .output_interface(via.oif)
            .protocol(RouteProtocol::Bgp)
            .build();
        self.replace(route).await.with_context(|| {
            format!(
                "installing the route to {prefix}/{len} via {} (interface {})",
                via.gateway, via.oif
            )
        })
    }

    /// How the kernel reaches a BGP next hop (next-hop tracking through the FIB, as FRR's
    /// zebra does): the route `ip -6 route get fibmatch NEXT_HOP` finds. A route we installed
    /// from BGP ourselves does not count (no recursion through our own routes).
    pub async fn resolve(&self, next_hop: Ipv6Addr) -> Result<Result<Resolved, Unresolved>> {
        let mut query = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(next_hop, 128)
            .build();
        query.header.flags = RouteFlags::FibMatch;
        let mut answers = self.handle.route().get(query).execute();
        let route = match answers.try_next().await {
            Ok(Some(route)) => route,
            Ok(None) => return Ok(Err(Unresolved::NoRoute)),
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(-e.raw_code(), libc::ENETUNREACH | libc::EHOSTUNREACH) =>
            {
                return Ok(Err(Unresolved::NoRoute));
            }
            Err(e) => return Err(e).with_context(|| format!("resolving the next hop {next_hop}")),
        };
        if route.header.protocol == RouteProtocol::Bgp {
            return Ok(Err(Unresolved::OnlyViaBgp));
        }
        if route.header.kind != RouteType::Unicast {
            return Ok(Err(Unresolved::NoRoute));
        }
        let mut gateway = None;
        let mut oif = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Gateway(RouteAddress::Inet6(address)) => gateway = Some(*address),
                RouteAttribute::Oif(index) => oif = Some(*index),
                // ECMP: the first path (the kernel spreads flows; we need one gateway).
                RouteAttribute::MultiPath(paths) if oif.is_none() => {
                    if let Some(path) = paths.first() {
                        oif = Some(path.interface_index);
                        for a in &path.attributes {
                            if let RouteAttribute::Gateway(RouteAddress::Inet6(address)) = a {
                                gateway = Some(*address);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(oif) = oif else {
            return Ok(Err(Unresolved::NoRoute));
        };
        // No gateway: the next hop is on a connected subnet (or the route is on-link).
        Ok(Ok(Resolved {
            gateway: gateway.unwrap_or(next_hop),
            oif,
        }))
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

    /// `ip -6 route get DST`: the interface the kernel sends `dst` out of and the MTU on the
    /// way; `None` when it has no route.
    pub async fn egress(&self, dst: Ipv6Addr) -> Result<Option<Egress>> {
        let query = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, 128)
            .build();
        let mut answers = self.handle.route().get(query).execute();
        let route = match answers.try_next().await {
            Ok(Some(route)) => route,
            Ok(None) => return Ok(None),
            // ENETUNREACH / EHOSTUNREACH: no route.
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(-e.raw_code(), libc::ENETUNREACH | libc::EHOSTUNREACH) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("looking up the route to {dst}")),
        };
        let mut oif = None;
        let mut route_mtu = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Metrics(metrics) => {
                    for metric in metrics {
                        if let RouteMetric::Mtu(mtu) = metric {
                            route_mtu = Some(*mtu);
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(oif) = oif else { return Ok(None) };
        let mut links = self.handle.link().get().match_index(oif).execute();
        let link = links
            .try_next()
            .await
            .with_context(|| format!("reading interface {oif}"))?
            .with_context(|| format!("interface {oif} vanished"))?;
        let (mut interface, mut link_mtu) = (format!("#{oif}"), None);
        for attribute in link.attributes {
            match attribute {
                LinkAttribute::IfName(name) => interface = name,
                LinkAttribute::Mtu(mtu) => link_mtu = Some(mtu),
                _ => {}
            }
        }
        let mtu = route_mtu.or(link_mtu).unwrap_or(u32::MAX);
        Ok(Some(Egress { interface, mtu }))
    }

    /// A warning for each node (name, first segment, bytes of encapsulation) whose packets
    /// would leave this host by an interface whose MTU cannot carry a 1280-byte IPv6 packet
    /// once encapsulated. Nodes without a route get none (nothing leaves for them).
    pub async fn encap_mtu_warnings(
        &self,
        nodes: impl IntoIterator<Item = (String, Ipv6Addr, u32)>,
    ) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        for (name, first_segment, encap_len) in nodes {
            if let Some(egress) = self.egress(first_segment).await?
                && let Some(why) = egress.too_small_for(encap_len)
            {
                warnings.push(format!("node {name} (via {first_segment}): {why}"));
            }
        }
        Ok(warnings)
    }

    /// Whether interface `name` is a veth (its link kind, as `ip -d link` shows it).
    pub async fn is_veth(&self, name: &str) -> Result<bool> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let link = links
            .try_next()
            .await
            .with_context(|| format!("reading interface {name}"))?
            .with_context(|| format!("no interface {name}"))?;
        Ok(link.attributes.iter().any(|attribute| {
            matches!(attribute, LinkAttribute::LinkInfo(infos)
                if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
        }))
    }

    /// A warning for each of `interfaces` (those `cpn_steer` runs on in XDP) that is a veth.
    pub async fn xdp_steer_on_veth_warnings(
        &self,
        interfaces: impl IntoIterator<Item = String>,
    ) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        for name in interfaces {
            if self.is_veth(&name).await? {
                warnings.push(format!(
                    "interface {name}: cpn_steer runs in XDP on a veth. A client behind it (a \
                     container or a namespace) hands over TCP and UDP whose checksums are still \
                     to be completed (the veth's default tx checksum offload), which XDP cannot \
                     see, so they reach the service with bad checksums (ICMP still works). Steer \
                     them with `hook = \"tc-ingress\"` instead, or turn the offload off on the \
                     client's side (`ethtool -K PEER tx off`)"
                ));
            }
        }
        Ok(warnings)
    }

    async fn replace(&self, route: RouteMessage) -> Result<(), rtnetlink::Error> {
        self.handle.route().add(route).replace().execute().await
    }
}

/// An interface's name (`#INDEX` if there is none by that index here).
pub fn interface_name(index: u32) -> String {
    let mut name = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes the call may write.
    let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr().cast()) };
    if found.is_null() {
        return format!("#{index}");
    }
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
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

/// [`KernelRoutes::encap_mtu_warnings`] for a program without a runtime (`cpnctl`,
/// `--check-config`), in the calling thread's network namespace.
pub fn encap_mtu_warnings_now(
    nodes: impl IntoIterator<Item = (String, Ipv6Addr, u32)>,
) -> Result<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an async runtime for netlink")?;
    runtime.block_on(async { KernelRoutes::connect()?.encap_mtu_warnings(nodes).await })
}

/// [`KernelRoutes::xdp_steer_on_veth_warnings`] for a program without a runtime (the agent
/// before its runtime starts, `--check-config`), in the calling thread's network namespace.
pub fn xdp_steer_on_veth_warnings_now(
    interfaces: impl IntoIterator<Item = String>,
) -> Result<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an async runtime for netlink")?;
    runtime.block_on(async {
        KernelRoutes::connect()?
            .xdp_steer_on_veth_warnings(interfaces)
            .await
    })
}

/// Warnings for the `tc-egress` hooks on interfaces that do not forward IPv6: the kernel's
/// FIB helper refuses every lookup there (`BPF_FIB_LKUP_RET_FWD_DISABLED`), and the next-hop
/// cache stays empty while forwarding is off, so what the host sends leaves unsteered
/// (counted `fib_no_route`). Read from procfs, in the calling thread's network namespace.
pub fn tc_egress_forwarding_warnings(interfaces: impl IntoIterator<Item = String>) -> Vec<String> {
    interfaces
        .into_iter()
        .filter_map(|interface| {
            let path = format!("/proc/sys/net/ipv6/conf/{interface}/forwarding");
            let forwarding = std::fs::read_to_string(path)
                .ok()
                .map(|value| value.trim() != "0");
            forwarding_warning(&interface, forwarding)
        })
        .collect()
}

/// The warning for a `tc-egress` hook on `interface` whose IPv6 forwarding is `forwarding`
/// (unknown: no such interface yet, nothing to say).
fn forwarding_warning(interface: &str, forwarding: Option<bool>) -> Option<String> {
    (forwarding == Some(false)).then(|| {
        format!(
            "tc-egress on {interface}: IPv6 forwarding is off on {interface}, so the kernel's \
             FIB helper answers no lookup and what this host sends leaves unsteered (counted \
             fib_no_route); set net.ipv6.conf.{interface}.forwarding=1 (and accept_ra=2 if the \
             host takes its routes from router advertisements)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{Egress, forwarding_warning};

    #[test]
    fn tc_egress_warns_where_ipv6_forwarding_is_off() {
        let warning = forwarding_warning("eth0", Some(false)).unwrap();
        assert!(
            warning.contains("net.ipv6.conf.eth0.forwarding=1"),
            "{warning}"
        );
        assert_eq!(forwarding_warning("eth0", Some(true)), None);
        assert_eq!(forwarding_warning("eth0", None), None);
    }

    #[test]
    fn a_path_must_carry_1280_bytes_plus_the_encapsulation() {
        let egress = |mtu| Egress {
            interface: "eth1".into(),
            mtu,
        };
        // One segment with an SRH: 40 + 8 + 16 = 64 bytes.
        assert_eq!(egress(1344).too_small_for(64), None);
        let warning = egress(1300).too_small_for(64).unwrap();
        assert!(warning.contains("eth1 has MTU 1300"), "{warning}");
        assert!(warning.contains("need 1344"), "{warning}");
    }
}
