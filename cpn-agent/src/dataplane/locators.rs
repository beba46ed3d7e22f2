//! Learned SRv6 locators become kernel routes (`proto bgp`), so that the encapsulated packets
//! an ingress sends reach the node that owns the SID. A withdrawn locator's route goes once no
//! node in the data plane uses an address in it any more (make before break): until steering
//! has moved the rings off those nodes, flows still hashed to them would meet "no route". The
//! joining side mirrors it: steering gives a learned node ring slots only once the locator
//! route covering its SID is installed (selection/steering.rs, `unrouted_locators`).
//!
//! Only cpn locators become routes (the import policy, `bgp::policy::Import`), each through
//! its BGP next hop resolved in the kernel's FIB: a next hop behind a reflector or reached
//! over an IGP is installed via the gateway of the route that covers it, and re-resolved when
//! the kernel's routes change (`cpnctl show routes` shows the result).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
    sync::Arc,
};

use ipnet::{IpNet, Ipv6Net};
use tokio::sync::watch;

use crate::{
    bgp::{
        policy::{Import, Imported},
        rib::RibIn,
    },
    core::View,
    dataplane::kernel::{self, KernelRoutes, Resolved, Unresolved, interface_name},
};

/// What the kernel has for a learned locator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locator {
    /// Installed towards the BGP next hop, through the route that resolves it.
    Installed { next_hop: Ipv6Addr, via: Resolved },
    /// Not installed: its next hop does not resolve (yet).
    Unresolved { next_hop: Ipv6Addr, why: Unresolved },
}

impl Locator {
    pub const fn is_installed(&self) -> bool {
        matches!(self, Self::Installed { .. })
    }

    /// The BGP next hop it was learned with.
    pub const fn next_hop(&self) -> Ipv6Addr {
        match *self {
            Self::Installed { next_hop, .. } | Self::Unresolved { next_hop, .. } => next_hop,
        }
    }

    /// For operators: `via GATEWAY dev INTERFACE`, or why it is not installed.
    pub fn describe(&self) -> String {
        match self {
            Self::Installed { via, .. } => {
                format!("via {} dev {}", via.gateway, interface_name(via.oif))
            }
            Self::Unresolved { why, .. } => format!("not installed: {why}"),
        }
    }
}

/// The learned locators by prefix and length, and what the kernel has for each.
pub type Locators = BTreeMap<(Ipv6Addr, u8), Locator>;

/// The locators task's snapshot of [`Locators`], republished on every change.
pub type Installed = watch::Receiver<Locators>;

/// The locator routes `rib` asks for: for each cpn locator (`import`) other than `own`, the
/// next hop of the path with the lowest AIGP, then the shortest `AS_PATH`.
pub fn wanted(
    rib: &RibIn,
    own: Option<(Ipv6Addr, u8)>,
    import: &Import,
) -> BTreeMap<(Ipv6Addr, u8), Ipv6Addr> {
    let mut best: BTreeMap<(Ipv6Addr, u8), (u64, usize, Ipv6Addr)> = BTreeMap::new();
    for learned in rib.routes() {
        let route = learned.route;
        let IpNet::V6(net) = route.prefix else {
            continue;
        };
        let key = (net.network(), net.prefix_len());
        if import.classify(&route) != Imported::Locator
            || Some(key) == own
            || route.next_hop.is_unspecified()
        {
            continue;
        }
        let rank = (
            route.aigp.unwrap_or(u64::MAX),
            route.as_path.len(),
            route.next_hop,
        );
        best.entry(key)
            .and_modify(|b| *b = (*b).min(rank))
            .or_insert(rank);
    }
    best.into_iter().map(|(k, (_, _, via))| (k, via)).collect()
}

/// What the locators task follows.
#[derive(Debug)]
pub struct Inputs {
    /// The routing core's snapshots: their RIB.
    pub core: View,
    /// This node's own locator (never installed from BGP).
    pub own: Option<(Ipv6Addr, u8)>,
    pub import: Import,
    /// Addresses the data plane's nodes use (make before break for withdrawals).
    pub in_use: watch::Receiver<BTreeSet<Ipv6Addr>>,
}

/// Keeps the kernel's locator routes in line with the RIB until aborted. Each next hop is
/// resolved through the kernel's FIB (next-hop tracking), and resolved again whenever the
/// kernel's routes or interfaces change, so a locator behind a reflector or an IGP follows
/// the path to its next hop.
pub async fn run(inputs: Inputs, kernel: KernelRoutes, installed: watch::Sender<Locators>) {
    let Inputs {
        mut core,
        own,
        import,
        mut in_use,
    } = inputs;
    let mut route_changes = match kernel::route_changes() {
        Ok(changes) => Some(changes),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "next hops are resolved again only when BGP routes change");
            None
        }
    };
    loop {
        let used = in_use.borrow_and_update().clone();
        let rib = core.borrow_and_update().rib.clone();
        let want = wanted(&rib, own, &import);
        let have = installed.borrow().clone();
        for (&(prefix, len), &next_hop) in &want {
            let state = match kernel.resolve(next_hop).await {
                Ok(Ok(via)) => Locator::Installed { next_hop, via },
                Ok(Err(why)) => Locator::Unresolved { next_hop, why },
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "resolving a locator's next hop");
                    continue;
                }
            };
            let before = have.get(&(prefix, len)).copied();
            if before == Some(state) {
                continue;
            }
            let locator = format!("{prefix}/{len}");
            match state {
                Locator::Installed { via, .. } => {
                    if let Err(error) = kernel.set_learned_route(prefix, len, via).await {
                        tracing::warn!(error = %format!("{error:#}"), "installing a learned locator");
                        continue;
                    }
                    tracing::info!(%locator, %next_hop, gateway = %via.gateway, oif = via.oif, "learned locator installed");
                }
                Locator::Unresolved { why, .. } => {
                    tracing::warn!(%locator, %next_hop, %why, "learned locator not installed");
                    if before.is_some_and(|b| b.is_installed()) {
                        // Its path is gone: a route through the old gateway would blackhole.
                        remove(&kernel, prefix, len).await;
                    }
                }
            }
            installed.send_modify(|now| {
                now.insert((prefix, len), state);
            });
        }
        let still_used = |(prefix, len): &(Ipv6Addr, u8)| {
            Ipv6Net::new(*prefix, *len).is_ok_and(|net| used.iter().any(|a| net.contains(a)))
        };
        for (key, state) in have
            .iter()
            .filter(|(k, _)| !want.contains_key(k) && !still_used(k))
        {
            if state.is_installed() {
                remove(&kernel, key.0, key.1).await;
            }
            installed.send_modify(|now| {
                now.remove(key);
            });
        }
        let wake = tokio::select! {
            changed = rib_changed(&mut core, &rib) => changed.map(|()| true),
            nodes = in_use.changed() => nodes.map(|()| true).map_err(drop),
            open = next_change(&mut route_changes) => Ok(open),
        };
        match wake {
            Err(()) => return,
            Ok(false) => route_changes = None,
            Ok(true) => {}
        }
        if let Some(pending) = &mut route_changes {
            // A burst of route changes (ours included) is one pass.
            while pending.try_recv().is_ok() {}
        }
    }
}

/// Resolves once the core publishes a RIB other than `seen` (its snapshots with new link
/// measurements alone change no locator); an error once the core is gone.
async fn rib_changed(core: &mut View, seen: &Arc<RibIn>) -> Result<(), ()> {
    loop {
        core.changed().await.map_err(drop)?;
        if !Arc::ptr_eq(&core.borrow().rib, seen) {
            return Ok(());
        }
    }
}

/// The next kernel route or link change; never, without a subscription.
async fn next_change(changes: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>) -> bool {
    match changes {
        Some(changes) => changes.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

async fn remove(kernel: &KernelRoutes, prefix: Ipv6Addr, len: u8) {
    match kernel.remove_learned(prefix, len).await {
        Ok(()) => tracing::info!(locator = %format!("{prefix}/{len}"), "learned locator removed"),
        // Gone already (an operator, or the link's removal): nothing left to undo.
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "removing a learned locator");
        }
    }
}
