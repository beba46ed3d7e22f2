//! The kernel routes the configuration asks for (a `seg6local` route for every local SID, the
//! static routes to `[[remote]]` locators), and the task that keeps them in place: the kernel
//! deletes every route over an interface that goes down, and nothing else would put ours back
//! when it comes up (the chaos soak's link flaps found a compute node whose SID route was gone
//! for good after one).

use std::{collections::BTreeSet, net::Ipv6Addr};

use anyhow::Result;
use tokio::sync::{mpsc, watch};

use super::kernel::{self, KernelRoutes, KernelSid, RouteEvent};

/// A kernel route the agent owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnedRoute {
    Sid {
        sid: Ipv6Addr,
        what: KernelSid,
        dev: u32,
        /// `decap = "kernel"`: the kernel's route is the only implementation of the SID.
        kernel_only: bool,
    },
    Locator {
        prefix: Ipv6Addr,
        len: u8,
        via: Ipv6Addr,
    },
}

impl OwnedRoute {
    /// Its destination, as prefix and length.
    pub const fn destination(&self) -> (Ipv6Addr, u8) {
        match *self {
            Self::Sid { sid, .. } => (sid, 128),
            Self::Locator { prefix, len, .. } => (prefix, len),
        }
    }

    /// Installs (or replaces) it.
    pub async fn install(&self, kernel: &KernelRoutes) -> Result<()> {
        self.install_with(kernel, true).await
    }

    /// Installs it again after the kernel deleted it: as [`OwnedRoute::install`], but a SID
    /// whose route the kernel refuses (its interface still down) is not replaced by a discard.
    async fn reinstall(&self, kernel: &KernelRoutes) -> Result<()> {
        self.install_with(kernel, false).await
    }

    async fn install_with(&self, kernel: &KernelRoutes, any_refusal: bool) -> Result<()> {
        match *self {
            Self::Sid {
                sid,
                what,
                dev,
                kernel_only,
            } => match kernel.set_seg6local(sid, what, dev).await {
                Ok(()) => Ok(()),
                // End.DT4/DT46 with a table need a VRF bound to it in Linux. XDP does the
                // work; the kernel only has to own the SID.
                Err(error)
                    if !kernel_only
                        && (any_refusal
                            || matches!(
                                what,
                                KernelSid::EndDt4 { .. } | KernelSid::EndDt46 { .. }
                            )) =>
                {
                    tracing::warn!(
                        %sid,
                        error = %format!("{error:#}"),
                        "the kernel cannot run this SID's behaviour (End.DT4 and End.DT46 \
                         with a table need a VRF bound to it: ip link add vrfN type vrf table \
                         N); it discards what XDP hands it"
                    );
                    kernel.set_seg6local(sid, KernelSid::Discard, dev).await
                }
                Err(error) => Err(error),
            },
            Self::Locator { prefix, len, via } => kernel.set_route_via(prefix, len, via).await,
        }
    }
}

/// Puts back every route of `owned` the kernel deletes, until aborted: at once if it can,
/// else when an interface next changes (the one it needs may be down).
pub async fn keep(mut owned: watch::Receiver<Vec<OwnedRoute>>, kernel: KernelRoutes) {
    let mut events = match kernel::route_events() {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "routes the kernel deletes (an interface down) are not put back");
            return;
        }
    };
    // Routes deleted and not put back yet.
    let mut missing: BTreeSet<(Ipv6Addr, u8)> = BTreeSet::new();
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            changed = owned.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new configuration was just installed whole.
                missing.clear();
                continue;
            }
        };
        match event {
            RouteEvent::Removed { prefix, len } => {
                if owned
                    .borrow()
                    .iter()
                    .any(|r| r.destination() == (prefix, len))
                {
                    missing.insert((prefix, len));
                }
            }
            RouteEvent::LinkChanged => {}
        }
        // A burst of events (the kernel deleting a device's routes one by one) is one pass.
        drain(&mut events, &mut missing, &owned);
        let routes: Vec<OwnedRoute> = owned
            .borrow()
            .iter()
            .filter(|r| missing.contains(&r.destination()))
            .copied()
            .collect();
        for route in routes {
            let (prefix, len) = route.destination();
            match route.reinstall(&kernel).await {
                Ok(()) => {
                    missing.remove(&(prefix, len));
                    tracing::warn!(route = %format!("{prefix}/{len}"), "the kernel deleted a route the configuration asks for (its interface went down?): installed again");
                }
                Err(error) => {
                    tracing::debug!(route = %format!("{prefix}/{len}"), error = %format!("{error:#}"), "a deleted route cannot be installed again yet; trying at the next interface change");
                }
            }
        }
    }
}

fn drain(
    events: &mut mpsc::UnboundedReceiver<RouteEvent>,
    missing: &mut BTreeSet<(Ipv6Addr, u8)>,
    owned: &watch::Receiver<Vec<OwnedRoute>>,
) {
    while let Ok(event) = events.try_recv() {
        if let RouteEvent::Removed { prefix, len } = event
            && owned
                .borrow()
                .iter()
                .any(|r| r.destination() == (prefix, len))
        {
            missing.insert((prefix, len));
        }
    }
}
