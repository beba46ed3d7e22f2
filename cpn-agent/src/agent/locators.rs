//! Learned SRv6 locators become kernel routes (`proto bgp`), so that the encapsulated packets
//! an ingress sends reach the node that owns the SID. A withdrawn locator's route goes once no
//! node in the data plane uses an address in it any more (make before break): until steering
//! has moved the rings off those nodes, flows still hashed to them would meet "no route". The
//! joining side mirrors it: steering gives a learned node ring slots only once the locator
//! route covering its SID is installed (steering.rs, `unrouted_locators`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
    sync::{Arc, Mutex},
};

use ipnet::{IpNet, Ipv6Net};
use tokio::sync::watch;

use crate::{bgp::speaker::SharedRib, kernel::KernelRoutes};

/// The locator routes installed: prefix and length → next hop.
pub type Installed = Arc<Mutex<BTreeMap<(Ipv6Addr, u8), Ipv6Addr>>>;

/// The locator routes `rib` asks for: for each IPv6 prefix without a service SID (other than
/// `own`), the next hop of the path with the lowest AIGP, then the shortest `AS_PATH`.
pub fn wanted(rib: &SharedRib, own: Option<(Ipv6Addr, u8)>) -> BTreeMap<(Ipv6Addr, u8), Ipv6Addr> {
    let mut best: BTreeMap<(Ipv6Addr, u8), (u64, usize, Ipv6Addr)> = BTreeMap::new();
    for learned in rib.lock().expect("rib lock").routes() {
        let route = learned.route;
        let IpNet::V6(net) = route.prefix else {
            continue;
        };
        let key = (net.network(), net.prefix_len());
        if route.service.is_some() || Some(key) == own || route.next_hop.is_unspecified() {
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

/// Keeps the kernel's locator routes in line with the RIB until aborted.
pub async fn run(
    rib: SharedRib,
    own: Option<(Ipv6Addr, u8)>,
    kernel: KernelRoutes,
    installed: Installed,
    mut in_use: watch::Receiver<BTreeSet<Ipv6Addr>>,
) {
    let mut changes = rib.lock().expect("rib lock").subscribe();
    loop {
        let used = in_use.borrow_and_update().clone();
        let want = wanted(&rib, own);
        let have = installed.lock().expect("installed lock").clone();
        for ((prefix, len), via) in &want {
            if have.get(&(*prefix, *len)) == Some(via) {
                continue;
            }
            match kernel.set_learned_route(*prefix, *len, *via).await {
                Ok(()) => {
                    tracing::info!(locator = %format!("{prefix}/{len}"), %via, "learned locator installed");
                    installed
                        .lock()
                        .expect("installed lock")
                        .insert((*prefix, *len), *via);
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "installing a learned locator");
                }
            }
        }
        let still_used = |(prefix, len): &(Ipv6Addr, u8)| {
            Ipv6Net::new(*prefix, *len).is_ok_and(|net| used.iter().any(|a| net.contains(a)))
        };
        for key in have
            .keys()
            .filter(|k| !want.contains_key(k) && !still_used(k))
        {
            match kernel.remove_learned(key.0, key.1).await {
                Ok(()) => {
                    tracing::info!(locator = %format!("{}/{}", key.0, key.1), "withdrawn locator removed");
                }
                // Gone already (an operator, or the link's removal): nothing left to undo.
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "removing a withdrawn locator");
                }
            }
            installed.lock().expect("installed lock").remove(key);
        }
        let wake = tokio::select! {
            rib = changes.changed() => rib,
            nodes = in_use.changed() => nodes,
        };
        if wake.is_err() {
            return;
        }
    }
}
