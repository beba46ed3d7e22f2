//! Resolving a node's first segment into the next hop `bpf_fib_lookup` would find for it, from
//! the kernel over rtnetlink, so that `cpn_steer` can redirect without a FIB lookup per packet:
//!
//! ```text
//!   cache_allowed   forwarding on, IPv6 rules exactly the kernel's defaults (else nothing is cached)
//!   route           ip -6 route get fibmatch SEGMENT  → interface, gateway (or on-link), route MTU
//!   link            ip link show dev IF               → up?, its MAC, its MTU
//!   neighbour       ip -6 neigh get GATEWAY dev IF    → a usable MAC (NUD_VALID, as the FIB helper)
//! ```
//! Each step answers either its part of a [`NextHop`] or a typed [`NotCached`]; a node without
//! a next hop takes the FIB path, which is always correct. The agent re-resolves on the
//! kernel's notifications ([`Changes`]) and keeps the gateways in use resolved with *managed*
//! neighbour entries ([`manage_neighbour`]): traffic that XDP redirects never confirms a
//! neighbour, so without them the entry would go stale and eventually be garbage-collected.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use bytes::BytesMut;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    IpVersion, RouteMessageBuilder,
    packet_core::{NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkFlags},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage,
            NeighbourState,
        },
        route::{
            RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol,
            RouteType,
        },
        rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
    },
    sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols},
};
use serde::{Deserialize, Serialize};

use super::{MacAddr, NextHop};
use crate::dataplane::kernel::KernelRoutes;

/// Why a node has no cached next hop (its packets take the FIB path).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotCached {
    #[error("no route")]
    NoRoute,
    /// A blackhole, unreachable, prohibit or local route, …: the FIB helper does not forward.
    #[error("the route is {kind}, not unicast")]
    NotUnicast { kind: String },
    /// ECMP: the FIB path hashes each flow onto one of the paths, a cache would pin them all
    /// to one.
    #[error("ECMP route ({paths} paths): left to the FIB path, which hashes each flow")]
    Multipath { paths: usize },
    /// The route pushes its own encapsulation (lwtunnel): the FIB helper hands such packets to
    /// the kernel.
    #[error("the route encapsulates ({kind}): left to the kernel")]
    Encapsulating { kind: String },
    /// A route the cache does not take apart (an IPv4 gateway, no interface).
    #[error("unsupported route: {what}")]
    UnsupportedRoute { what: String },
    #[error("interface {interface} is down")]
    InterfaceDown { interface: String },
    #[error("interface {interface} has no Ethernet address")]
    NotEthernet { interface: String },
    /// No usable link-layer address yet (absent, incomplete, failed): the FIB path passes such
    /// packets to the kernel, which resolves the neighbour.
    #[error("neighbour {neighbour} on {interface} is {state}")]
    NeighbourUnresolved {
        neighbour: Ipv6Addr,
        interface: String,
        state: String,
    },
    #[error(
        "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0): the FIB helper would \
         refuse to forward"
    )]
    ForwardingDisabled,
    /// Rules can select on what only the packet has (source, incoming interface, mark, …);
    /// the FIB helper applies them to every packet, a cache could not.
    #[error(
        "policy routing: {count} IPv6 rule(s) beyond the defaults (`{example}`); the FIB path \
         applies them per packet"
    )]
    PolicyRules { count: usize, example: String },
}

/// What the route to a first segment says, before the neighbour and the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// The egress interface.
    pub oif: u32,
    /// The gateway, or the first segment itself on a connected subnet.
    pub neighbour: Ipv6Addr,
    /// The route's own MTU (`mtu N`), if it sets one.
    pub mtu: Option<u32>,
}

/// The egress interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up with carrier.
    pub up: bool,
}

/// A neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub state: NeighbourState,
    pub mac: Option<MacAddr>,
    /// `NTF_EXT_MANAGED`: the kernel keeps it resolved by itself.
    pub managed: bool,
    /// Created by a cpn agent ([`NEIGHBOUR_PROTOCOL`]).
    pub ours: bool,
}

impl Neighbour {
    /// `NUD_VALID`: what `bpf_fib_lookup` forwards to (else `BPF_FIB_LKUP_RET_NO_NEIGH`).
    pub const fn is_usable(&self) -> bool {
        matches!(
            self.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        )
    }

    /// An operator's static entry: never made managed, never removed by us.
    pub const fn is_static(&self) -> bool {
        matches!(
            self.state,
            NeighbourState::Permanent | NeighbourState::Noarp
        )
    }
}

/// `NDA_PROTOCOL` of the neighbour entries the agent creates (`ip -6 neigh show proto 201`),
/// so that a restarted agent finds the ones a crashed one left.
pub const NEIGHBOUR_PROTOCOL: RouteProtocol = RouteProtocol::Other(201);

/// Where the kernel's IPv6 forwarding switch is read.
const FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Whether IPv6 forwarding is on (for the calling thread's network namespace).
pub fn forwarding_enabled() -> Result<bool> {
    let text =
        std::fs::read_to_string(FORWARDING).with_context(|| format!("reading {FORWARDING}"))?;
    Ok(text.trim() != "0")
}

/// Whether anything may be cached at all: IPv6 forwarding on, and no IPv6 policy rule beyond
/// the kernel's defaults.
pub async fn cache_allowed(kernel: &KernelRoutes) -> Result<Result<(), NotCached>> {
    if !forwarding_enabled()? {
        return Ok(Err(NotCached::ForwardingDisabled));
    }
    let rules: Vec<RuleMessage> = kernel
        .handle()
        .rule()
        .get(IpVersion::V6)
        .execute()
        .try_collect()
        .await
        .context("listing the IPv6 policy rules")?;
    Ok(classify_rules(&rules))
}

/// The rules Linux starts with: `0: from all lookup local`, `32766: from all lookup main` (and
/// IPv4's `32767: from all lookup default`, which some systems add for IPv6 too).
const DEFAULT_RULES: [(u32, u32); 3] = [(0, 255), (32_766, 254), (32_767, 253)];

/// `Ok` when `rules` (an IPv6 rule dump) are only the kernel's defaults, which select on
/// nothing a packet carries, so that a lookup by destination alone answers what the FIB helper
/// would answer for every packet.
pub fn classify_rules(rules: &[RuleMessage]) -> Result<(), NotCached> {
    let extra: Vec<&RuleMessage> = rules.iter().filter(|r| !is_default_rule(r)).collect();
    match extra.first() {
        None => Ok(()),
        Some(first) => Err(NotCached::PolicyRules {
            count: extra.len(),
            example: describe_rule(first),
        }),
    }
}

fn is_default_rule(rule: &RuleMessage) -> bool {
    let header = &rule.header;
    let mut priority = 0;
    let mut table = u32::from(header.table);
    for attribute in &rule.attributes {
        match attribute {
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            // The kernel reports "no suppression" as -1 on every rule.
            RuleAttribute::Protocol(_)
            | RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
            // Any selector (source, destination, interfaces, mark, ports, …), goto, suppress.
            _ => return false,
        }
    }
    let selects = header.dst_len != 0
        || header.src_len != 0
        || header.tos != 0
        || !(header.flags - RuleFlags::Permanent).is_empty();
    header.action == RuleAction::ToTable && !selects && DEFAULT_RULES.contains(&(priority, table))
}

/// A rule as `ip -6 rule` prints it, roughly.
fn describe_rule(rule: &RuleMessage) -> String {
    let mut priority = 0;
    let mut table = u32::from(rule.header.table);
    let mut parts = Vec::new();
    for attribute in &rule.attributes {
        match attribute {
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Source(a) => parts.push(format!("from {a}/{}", rule.header.src_len)),
            RuleAttribute::Destination(a) => {
                parts.push(format!("to {a}/{}", rule.header.dst_len));
            }
            RuleAttribute::Iifname(i) => parts.push(format!("iif {i}")),
            RuleAttribute::Oifname(o) => parts.push(format!("oif {o}")),
            RuleAttribute::FwMark(m) => parts.push(format!("fwmark {m:#x}")),
            RuleAttribute::Protocol(_)
            | RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
            other => parts.push(format!("{other:?}")),
        }
    }
    if rule.header.flags.contains(RuleFlags::Invert) {
        parts.insert(0, "not".to_owned());
    }
    if parts.is_empty() {
        parts.push("from all".to_owned());
    }
    let action = match rule.header.action {
        RuleAction::ToTable => format!("lookup {table}"),
        other => format!("{other:?}").to_lowercase(),
    };
    format!("{priority}: {} {action}", parts.join(" "))
}

/// `ip -6 route get fibmatch SEGMENT`: the route the kernel's FIB (rules included) picks.
pub async fn route(
    kernel: &KernelRoutes,
    first_segment: Ipv6Addr,
) -> Result<Result<Route, NotCached>> {
    let mut query = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(first_segment, 128)
        .build();
    query.header.flags = RouteFlags::FibMatch;
    let mut answers = kernel.handle().route().get(query).execute();
    let not_unicast = |kind: &str| {
        Ok(Err(NotCached::NotUnicast {
            kind: kind.to_owned(),
        }))
    };
    let route = match answers.try_next().await {
        Ok(Some(route)) => route,
        Ok(None) => return Ok(Err(NotCached::NoRoute)),
        // The kernel answers a route that does not forward with the error it gives packets.
        Err(rtnetlink::Error::NetlinkError(e)) => match -e.raw_code() {
            libc::ENETUNREACH => return Ok(Err(NotCached::NoRoute)),
            libc::EHOSTUNREACH => return not_unicast("unreachable"),
            libc::EACCES => return not_unicast("prohibit"),
            libc::EINVAL => return not_unicast("blackhole"),
            _ => {
                return Err(rtnetlink::Error::NetlinkError(e))
                    .with_context(|| format!("looking up the route to {first_segment}"));
            }
        },
        Err(e) => {
            return Err(e).with_context(|| format!("looking up the route to {first_segment}"));
        }
    };
    Ok(classify_route(first_segment, &route))
}

/// The route part of a next hop, from the route the FIB matched.
pub fn classify_route(first_segment: Ipv6Addr, route: &RouteMessage) -> Result<Route, NotCached> {
    if route.header.kind != RouteType::Unicast {
        return Err(NotCached::NotUnicast {
            kind: format!("{:?}", route.header.kind).to_lowercase(),
        });
    }
    let mut gateway = None;
    let mut oif = None;
    let mut mtu = None;
    let mut attributes: Vec<&RouteAttribute> = route.attributes.iter().collect();
    for attribute in &route.attributes {
        if let RouteAttribute::MultiPath(paths) = attribute {
            match paths.as_slice() {
                [path] => {
                    oif = Some(path.interface_index);
                    attributes.extend(&path.attributes);
                }
                paths => return Err(NotCached::Multipath { paths: paths.len() }),
            }
        }
    }
    for attribute in attributes {
        match attribute {
            RouteAttribute::Gateway(RouteAddress::Inet6(address)) => gateway = Some(*address),
            RouteAttribute::Gateway(other) => {
                return Err(NotCached::UnsupportedRoute {
                    what: format!("gateway {other:?}"),
                });
            }
            RouteAttribute::Via(via) => {
                return Err(NotCached::UnsupportedRoute {
                    what: format!("gateway {via:?}"),
                });
            }
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::EncapType(kind) => {
                return Err(NotCached::Encapsulating {
                    kind: format!("{kind:?}").to_lowercase(),
                });
            }
            RouteAttribute::Encap(_) => {
                return Err(NotCached::Encapsulating {
                    kind: "lwtunnel".to_owned(),
                });
            }
            RouteAttribute::Metrics(metrics) => {
                for metric in metrics {
                    if let RouteMetric::Mtu(value) = metric
                        && *value > 0
                    {
                        mtu = Some(*value);
                    }
                }
            }
            _ => {}
        }
    }
    let oif = oif.ok_or_else(|| NotCached::UnsupportedRoute {
        what: "no egress interface".to_owned(),
    })?;
    Ok(Route {
        oif,
        neighbour: gateway.unwrap_or(first_segment),
        mtu,
    })
}

/// `ip link show dev IF`; none if it is gone.
pub async fn link(kernel: &KernelRoutes, ifindex: u32) -> Result<Option<Link>> {
    let mut links = kernel.handle().link().get().match_index(ifindex).execute();
    let message = match links.try_next().await {
        Ok(Some(message)) => message,
        Ok(None) => return Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading interface {ifindex}")),
    };
    let mut link = Link {
        ifindex,
        name: format!("#{ifindex}"),
        mac: None,
        mtu: 0,
        up: message
            .header
            .flags
            .contains(LinkFlags::Up | LinkFlags::LowerUp),
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_link_layer(&bytes),
            _ => {}
        }
    }
    Ok(Some(link))
}

fn neighbour_message(ifindex: u32, address: Ipv6Addr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet6;
    message.header.ifindex = ifindex;
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
            address,
        )));
    message
}

fn neighbour_of(message: &NeighbourMessage) -> Neighbour {
    let mut neighbour = Neighbour {
        state: message.header.state,
        mac: None,
        managed: false,
        ours: false,
    };
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                neighbour.mac = MacAddr::from_link_layer(bytes);
            }
            NeighbourAttribute::ExtFlags(flags) => {
                neighbour.managed = flags.contains(NeighbourExtFlags::Managed);
            }
            NeighbourAttribute::Protocol(protocol) => {
                neighbour.ours = *protocol == NEIGHBOUR_PROTOCOL;
            }
            _ => {}
        }
    }
    neighbour
}

/// `ip -6 neigh get ADDRESS dev IF`; none if there is no entry.
pub async fn neighbour(
    kernel: &KernelRoutes,
    ifindex: u32,
    address: Ipv6Addr,
) -> Result<Option<Neighbour>> {
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(neighbour_message(
        ifindex, address,
    )));
    request.header.flags = NLM_F_REQUEST;
    let mut handle = kernel.handle().clone();
    let mut answers = handle
        .request(request)
        .with_context(|| format!("asking for neighbour {address}"))?;
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(message)) => {
                return Ok(Some(neighbour_of(&message)));
            }
            NetlinkPayload::Error(e) if -e.raw_code() == libc::ENOENT => return Ok(None),
            NetlinkPayload::Error(e) => {
                return Err(rtnetlink::Error::NetlinkError(e))
                    .with_context(|| format!("reading neighbour {address} (interface {ifindex})"));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The next hop from its parts: the route, its egress interface and the neighbour entry for
/// its gateway (or on-link destination) there.
pub fn next_hop(
    route: &Route,
    link: &Link,
    neighbour: Option<&Neighbour>,
) -> Result<NextHop, NotCached> {
    if !link.up {
        return Err(NotCached::InterfaceDown {
            interface: link.name.clone(),
        });
    }
    let src_mac = link.mac.ok_or_else(|| NotCached::NotEthernet {
        interface: link.name.clone(),
    })?;
    let unresolved = |state: String| NotCached::NeighbourUnresolved {
        neighbour: route.neighbour,
        interface: link.name.clone(),
        state,
    };
    let dst_mac = match neighbour {
        None => return Err(unresolved("absent".to_owned())),
        Some(n) if !n.is_usable() => return Err(unresolved(n.state.to_string())),
        Some(n) => n
            .mac
            .ok_or_else(|| unresolved(format!("{} without a MAC", n.state)))?,
    };
    Ok(NextHop {
        ifindex: route.oif,
        mtu: route.mtu.unwrap_or(link.mtu),
        neighbour: route.neighbour,
        dst_mac,
        src_mac,
    })
}

/// The next hop `bpf_fib_lookup` would find for packets to `first_segment` (an encapsulating
/// ingress's outer destination), or why it must be left to it; in the caller's network
/// namespace. Read-only: it neither creates nor probes neighbour entries.
pub async fn resolve(
    kernel: &KernelRoutes,
    first_segment: Ipv6Addr,
) -> Result<Result<NextHop, NotCached>> {
    if let Err(why) = cache_allowed(kernel).await? {
        return Ok(Err(why));
    }
    match route(kernel, first_segment).await? {
        Ok(route) => resolve_route(kernel, &route).await,
        Err(why) => Ok(Err(why)),
    }
}

/// The rest of [`resolve`] once the route is known: interface and neighbour.
pub async fn resolve_route(
    kernel: &KernelRoutes,
    route: &Route,
) -> Result<Result<NextHop, NotCached>> {
    let Some(link) = link(kernel, route.oif).await? else {
        return Ok(Err(NotCached::InterfaceDown {
            interface: format!("#{}", route.oif),
        }));
    };
    let neighbour = neighbour(kernel, route.oif, route.neighbour).await?;
    Ok(next_hop(route, &link, neighbour.as_ref()))
}

/// [`resolve`] for a thread without a runtime, e.g. one that has entered a network namespace
/// (`setns` affects only the calling thread): a benchmark or a test.
pub fn resolve_now(first_segment: Ipv6Addr) -> Result<Result<NextHop, NotCached>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an async runtime for netlink")?;
    runtime.block_on(async { resolve(&KernelRoutes::connect()?, first_segment).await })
}

/// Makes the neighbour entry for `address` on `ifindex` managed (`ip -6 neigh replace ADDRESS
/// dev IF managed proto 201`, Linux 5.16 or later): the kernel then resolves it and keeps it
/// resolved by itself, without traffic confirming it. An entry that exists keeps its address
/// and state.
pub async fn manage_neighbour(
    kernel: &KernelRoutes,
    ifindex: u32,
    address: Ipv6Addr,
) -> Result<()> {
    let mut request = kernel
        .handle()
        .neighbours()
        .add(ifindex, IpAddr::V6(address))
        .state(NeighbourState::None)
        .replace();
    request.message_mut().attributes.extend([
        NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed),
        NeighbourAttribute::Protocol(NEIGHBOUR_PROTOCOL),
    ]);
    request.execute().await.with_context(|| {
        format!(
            "making neighbour {address} (interface {ifindex}) managed (needs Linux 5.16 or later)"
        )
    })
}

/// Removes a managed entry [`manage_neighbour`] made, unless someone has changed it since (no
/// longer managed, or no longer ours: an operator's entry stays).
pub async fn unmanage_neighbour(
    kernel: &KernelRoutes,
    ifindex: u32,
    address: Ipv6Addr,
) -> Result<()> {
    match neighbour(kernel, ifindex, address).await? {
        Some(n) if n.managed && n.ours && !n.is_static() => {}
        _ => return Ok(()),
    }
    match kernel
        .handle()
        .neighbours()
        .del(neighbour_message(ifindex, address))
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENOENT => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("removing neighbour {address} (interface {ifindex})"))
        }
    }
}

/// The managed entries a cpn agent made that are still there (`ip -6 neigh show proto 201`).
pub async fn our_managed_neighbours(kernel: &KernelRoutes) -> Result<BTreeSet<(u32, Ipv6Addr)>> {
    let messages: Vec<NeighbourMessage> = kernel
        .handle()
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet6)
        .execute()
        .try_collect()
        .await
        .context("listing the IPv6 neighbours")?;
    Ok(messages
        .iter()
        .filter(|m| {
            let n = neighbour_of(m);
            n.managed && n.ours
        })
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(address)) => {
                    Some((m.header.ifindex, *address))
                }
                _ => None,
            })
        })
        .collect())
}

/// What changed in the kernel, as far as cached next hops care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// An IPv6 neighbour entry: only next hops through it.
    Neighbour { ifindex: u32, address: Ipv6Addr },
    /// Routes, rules, links, next-hop objects, forwarding, or a message we cannot read:
    /// anything may have moved.
    Everything,
    /// Notifications were lost (the socket's buffer overflowed): resolve everything again.
    Lost,
}

/// The legacy bit of a multicast group below 32 (`RTMGRP_*`).
const fn group_bit(group: u32) -> u32 {
    1 << (group - 1)
}
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV4_RULE: u32 = 8;
const RTNLGRP_IPV4_NETCONF: u32 = 24;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
const RTNLGRP_IPV6_RULE: u32 = 19;
/// Forwarding switches (`RTM_NEWNETCONF`).
const RTNLGRP_IPV6_NETCONF: u32 = 25;
/// Next-hop objects (`ip nexthop`): a route using one changes when it does, silently.
const RTNLGRP_NEXTHOP: u32 = 32;

/// A subscription to the kernel's notifications about links, neighbours, IPv6 routes and
/// rules, next-hop objects and IPv6 forwarding, on a socket of its own.
///
/// It reads the datagrams itself rather than through an rtnetlink connection: that connection
/// drops the messages its crate cannot parse (`RTM_NEWNETCONF`, the forwarding switch), and
/// here any message counts.
pub struct Changes {
    socket: TokioSocket,
    buffer: BytesMut,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Changes {
    /// Subscribes (in the calling thread's network namespace); call inside a tokio runtime.
    pub fn subscribe() -> Result<Self> {
        Self::subscribe_to(&[
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV6_ROUTE,
            RTNLGRP_IPV6_RULE,
            RTNLGRP_IPV6_NETCONF,
        ])
    }

    /// [`Changes::subscribe`] with IPv4's routes, rules and forwarding too: everything a
    /// cached FIB answer (`fib_cache`, both families) depends on.
    pub fn subscribe_both_families() -> Result<Self> {
        Self::subscribe_to(&[
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV4_RULE,
            RTNLGRP_IPV4_NETCONF,
            RTNLGRP_IPV6_ROUTE,
            RTNLGRP_IPV6_RULE,
            RTNLGRP_IPV6_NETCONF,
        ])
    }

    fn subscribe_to(groups: &[u32]) -> Result<Self> {
        let mut socket =
            TokioSocket::new(protocols::NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        let groups = groups
            .iter()
            .fold(0, |bits, &group| bits | group_bit(group));
        let raw = socket.socket_mut();
        raw.bind(&SocketAddr::new(0, groups))
            .context("subscribing to link, neighbour, route and rule changes")?;
        raw.add_membership(RTNLGRP_NEXTHOP)
            .context("subscribing to next-hop object changes")?;
        // Room for a burst (a link going down withdraws every route through it); what still
        // overflows is reported as `Change::Lost`.
        if let Err(error) = raw.set_rx_buf_sz(4 << 20) {
            tracing::debug!(%error, "netlink receive buffer left at its default size");
        }
        Ok(Self {
            socket,
            buffer: BytesMut::with_capacity(1 << 16),
        })
    }

    /// Waits for the next notification, then takes every one already queued: the changes
    /// they announce, in order, repeats removed. An error other than an overflow means the
    /// socket is unusable: subscribe again and resolve everything.
    pub async fn next(&mut self) -> std::io::Result<Vec<Change>> {
        let mut changes = Vec::new();
        self.receive(&mut changes).await?;
        loop {
            let ready = {
                let Self { socket, buffer } = self;
                buffer.clear();
                socket.recv_from(buffer).now_or_never()
            };
            match ready {
                None => break,
                Some(result) => self.take(result, &mut changes)?,
            }
        }
        let mut seen = BTreeSet::new();
        changes.retain(|c| seen.insert(*c));
        Ok(changes)
    }

    async fn receive(&mut self, changes: &mut Vec<Change>) -> std::io::Result<()> {
        self.buffer.clear();
        let result = self.socket.recv_from(&mut self.buffer).await;
        self.take(result, changes)
    }

    fn take(
        &self,
        result: std::io::Result<SocketAddr>,
        changes: &mut Vec<Change>,
    ) -> std::io::Result<()> {
        match result {
            Ok(_) => {
                parse_notifications(&self.buffer, changes);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                changes.push(Change::Lost);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The changes the netlink messages of one datagram announce.
pub fn parse_notifications(datagram: &[u8], changes: &mut Vec<Change>) {
    let mut offset = 0;
    while offset < datagram.len() {
        let Ok(buffer) = NetlinkBuffer::new_checked(&datagram[offset..]) else {
            changes.push(Change::Everything);
            return;
        };
        let length = usize::try_from(buffer.length()).unwrap_or(usize::MAX);
        let Some(bytes) = datagram.get(offset..offset.saturating_add(length)) else {
            changes.push(Change::Everything);
            return;
        };
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(message) => match message.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
                ) => {
                    if n.header.family == AddressFamily::Inet6
                        && let Some(address) = n.attributes.iter().find_map(|a| match a {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(*a),
                            _ => None,
                        })
                    {
                        changes.push(Change::Neighbour {
                            ifindex: n.header.ifindex,
                            address,
                        });
                    }
                }
                NetlinkPayload::InnerMessage(_) => changes.push(Change::Everything),
                NetlinkPayload::Overrun(_) => changes.push(Change::Lost),
                _ => {}
            },
            // RTM_NEWNETCONF (forwarding) and whatever else the crate does not know.
            Err(_) => changes.push(Change::Everything),
        }
        // Messages are 4-byte aligned in a datagram.
        offset = offset.saturating_add(length.max(1).next_multiple_of(4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::{
        link::LinkMessage,
        route::{RouteMetric, RouteNextHop},
        rule::RuleHeader,
    };

    const SEGMENT: Ipv6Addr = Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 0xd6);
    const GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 2);

    fn rule(priority: u32, table: u8, extra: Vec<RuleAttribute>) -> RuleMessage {
        let mut rule = RuleMessage::default();
        rule.header = RuleHeader {
            family: AddressFamily::Inet6,
            table,
            action: RuleAction::ToTable,
            ..RuleHeader::default()
        };
        // As the kernel dumps its own rules.
        rule.attributes = vec![
            RuleAttribute::Table(u32::from(table)),
            RuleAttribute::SuppressPrefixLen(u32::MAX),
            RuleAttribute::Priority(priority),
            RuleAttribute::Protocol(RouteProtocol::Kernel),
        ];
        rule.attributes.extend(extra);
        rule
    }

    #[test]
    fn only_the_default_rules_allow_a_cache() {
        let defaults = vec![rule(0, 255, vec![]), rule(32_766, 254, vec![])];
        assert_eq!(classify_rules(&defaults), Ok(()));
        let mut with_default_table = defaults.clone();
        with_default_table.push(rule(32_767, 253, vec![]));
        assert_eq!(classify_rules(&with_default_table), Ok(()));

        let mut from = defaults.clone();
        let mut source = rule(1000, 100, vec![RuleAttribute::Source(IpAddr::V6(GATEWAY))]);
        source.header.src_len = 64;
        from.push(source);
        let Err(NotCached::PolicyRules { count, example }) = classify_rules(&from) else {
            panic!("a source rule");
        };
        assert_eq!(count, 1);
        assert_eq!(example, "1000: from 2001:db8:50::2/64 lookup 100");

        // A default rule moved, a main lookup that selects, an inverted one, another action.
        let mut moved = rule(100, 254, vec![]);
        let mut marked = rule(32_766, 254, vec![RuleAttribute::FwMark(1)]);
        let mut inverted = rule(32_766, 254, vec![]);
        inverted.header.flags = RuleFlags::Invert;
        let mut blackhole = rule(0, 255, vec![]);
        blackhole.header.action = RuleAction::Blackhole;
        let mut suppressing = rule(32_766, 254, vec![RuleAttribute::SuppressPrefixLen(0)]);
        for odd in [
            &mut moved,
            &mut marked,
            &mut inverted,
            &mut blackhole,
            &mut suppressing,
        ] {
            let mut rules = defaults.clone();
            rules.push(odd.clone());
            assert!(
                matches!(
                    classify_rules(&rules),
                    Err(NotCached::PolicyRules { count: 1, .. })
                ),
                "{odd:?}"
            );
        }
        let mut permanent = rule(0, 255, vec![]);
        permanent.header.flags = RuleFlags::Permanent;
        assert_eq!(classify_rules(&[permanent]), Ok(()));
    }

    fn unicast(attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.kind = RouteType::Unicast;
        route.attributes = attributes;
        route
    }

    #[test]
    fn a_route_gives_interface_gateway_and_mtu() {
        let via = unicast(vec![
            RouteAttribute::Gateway(RouteAddress::Inet6(GATEWAY)),
            RouteAttribute::Oif(4),
        ]);
        assert_eq!(
            classify_route(SEGMENT, &via),
            Ok(Route {
                oif: 4,
                neighbour: GATEWAY,
                mtu: None
            })
        );
        let on_link = unicast(vec![
            RouteAttribute::Oif(5),
            RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)]),
        ]);
        assert_eq!(
            classify_route(SEGMENT, &on_link),
            Ok(Route {
                oif: 5,
                neighbour: SEGMENT,
                mtu: Some(1400)
            })
        );
        let path = |oif, gateway| {
            let mut hop = RouteNextHop::default();
            hop.interface_index = oif;
            hop.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet6(gateway))];
            hop
        };
        let single = unicast(vec![RouteAttribute::MultiPath(vec![path(6, GATEWAY)])]);
        assert_eq!(
            classify_route(SEGMENT, &single).map(|r| (r.oif, r.neighbour)),
            Ok((6, GATEWAY))
        );
        let ecmp = unicast(vec![RouteAttribute::MultiPath(vec![
            path(6, GATEWAY),
            path(7, GATEWAY),
        ])]);
        assert_eq!(
            classify_route(SEGMENT, &ecmp),
            Err(NotCached::Multipath { paths: 2 })
        );
        let mut local = unicast(vec![RouteAttribute::Oif(1)]);
        local.header.kind = RouteType::Local;
        assert_eq!(
            classify_route(SEGMENT, &local),
            Err(NotCached::NotUnicast {
                kind: "local".into()
            })
        );
        let encap = unicast(vec![RouteAttribute::Oif(4), RouteAttribute::Encap(vec![])]);
        assert!(matches!(
            classify_route(SEGMENT, &encap),
            Err(NotCached::Encapsulating { .. })
        ));
        assert!(matches!(
            classify_route(SEGMENT, &unicast(vec![])),
            Err(NotCached::UnsupportedRoute { .. })
        ));
    }

    fn eth1(up: bool) -> Link {
        Link {
            ifindex: 4,
            name: "eth1".into(),
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            mtu: 1500,
            up,
        }
    }

    fn neighbour(state: NeighbourState) -> Neighbour {
        Neighbour {
            state,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
            managed: true,
            ours: true,
        }
    }

    #[test]
    fn the_answer_is_route_interface_and_neighbour() {
        let route = Route {
            oif: 4,
            neighbour: GATEWAY,
            mtu: None,
        };
        let expected = NextHop {
            ifindex: 4,
            mtu: 1500,
            neighbour: GATEWAY,
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        };
        for usable in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
        ] {
            assert_eq!(
                next_hop(&route, &eth1(true), Some(&neighbour(usable))),
                Ok(expected),
                "{usable}"
            );
        }
        let with_mtu = Route {
            mtu: Some(1400),
            ..route
        };
        assert_eq!(
            next_hop(
                &with_mtu,
                &eth1(true),
                Some(&neighbour(NeighbourState::Stale))
            )
            .map(|n| n.mtu),
            Ok(1400)
        );
        let unresolved = |state: &str| {
            Err(NotCached::NeighbourUnresolved {
                neighbour: GATEWAY,
                interface: "eth1".into(),
                state: state.into(),
            })
        };
        assert_eq!(next_hop(&route, &eth1(true), None), unresolved("absent"));
        for state in [
            NeighbourState::Incomplete,
            NeighbourState::Failed,
            NeighbourState::None,
        ] {
            assert_eq!(
                next_hop(&route, &eth1(true), Some(&neighbour(state))),
                unresolved(&state.to_string())
            );
        }
        assert_eq!(
            next_hop(
                &route,
                &eth1(false),
                Some(&neighbour(NeighbourState::Reachable))
            ),
            Err(NotCached::InterfaceDown {
                interface: "eth1".into()
            })
        );
        let tunnel = Link {
            mac: None,
            ..eth1(true)
        };
        assert_eq!(
            next_hop(&route, &tunnel, Some(&neighbour(NeighbourState::Reachable))),
            Err(NotCached::NotEthernet {
                interface: "eth1".into()
            })
        );
    }

    fn datagram(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for inner in messages {
            let mut message = NetlinkMessage::from(inner);
            message.finalize();
            let mut buffer = vec![0; message.buffer_len()];
            message.serialize(&mut buffer);
            buffer.resize(buffer.len().next_multiple_of(4), 0);
            bytes.extend(buffer);
        }
        bytes
    }

    #[test]
    fn notifications_say_what_to_resolve_again() {
        let mut arp = neighbour_message(4, GATEWAY);
        arp.header.family = AddressFamily::Inet;
        arp.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
            std::net::Ipv4Addr::new(192, 0, 2, 1),
        ))];
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewNeighbour(neighbour_message(4, GATEWAY)),
            RouteNetlinkMessage::NewNeighbour(arp),
            RouteNetlinkMessage::DelNeighbour(neighbour_message(5, SEGMENT)),
            RouteNetlinkMessage::NewLink(LinkMessage::default()),
        ]);
        let mut changes = Vec::new();
        parse_notifications(&bytes, &mut changes);
        assert_eq!(
            changes,
            [
                Change::Neighbour {
                    ifindex: 4,
                    address: GATEWAY
                },
                Change::Neighbour {
                    ifindex: 5,
                    address: SEGMENT
                },
                Change::Everything,
            ]
        );
        // RTM_NEWNETCONF (type 80), which the crate cannot read: the forwarding switch.
        let mut netconf = vec![0u8; 20];
        netconf[..4].copy_from_slice(&20u32.to_ne_bytes());
        netconf[4..6].copy_from_slice(&80u16.to_ne_bytes());
        let mut changes = Vec::new();
        parse_notifications(&netconf, &mut changes);
        assert_eq!(changes, [Change::Everything]);
        let mut changes = Vec::new();
        parse_notifications(&[1, 2, 3], &mut changes);
        assert_eq!(changes, [Change::Everything]);
    }
}
