//! How the TC programs get onto an interface: a TCX link (Linux 6.6 or later), or a `bpf`
//! filter on the interface's clsact qdisc (what `tc filter add dev IF ingress bpf da` makes),
//! for older kernels or next to tools that manage tc filters themselves.
//!
//! Either survives an agent restart. A TCX link is pinned in `<pin dir>/links` and the next
//! agent updates it in place. A clsact filter lives on in the kernel by itself: cpn's has a
//! fixed priority and handle, so the next agent finds it and replaces its program in place
//! (`tc filter replace`), and the program is pinned where the link would be, so that an agent
//! that finds the interface no longer configured knows to remove the filter.

use std::path::Path;

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};
use serde::Deserialize;

use super::{Error, Hook};

/// `[dataplane] tc_attach`: how the TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// A TCX link where the kernel has them, else a clsact filter.
    #[default]
    Auto,
    /// TCX links only (an error on kernels before 6.6).
    Tcx,
    /// A filter on the clsact qdisc (added if the interface has none).
    Clsact,
}

/// The priority and handle of cpn's clsact filters (`tc filter show dev IF ingress` lists them
/// as `pref 49 ... handle 0xc9 cpn_steer_tc_ingress direct-action`).
pub const CLSACT_PRIORITY: u16 = 49;
pub const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0xc9);

/// What keeps a program attached.
#[derive(Debug)]
pub enum Held {
    /// A BPF link: XDP's, or TCX (closing the last reference detaches it).
    Link(FdLink),
    /// A clsact filter (dropping the handle removes the filter).
    Clsact(SchedClassifierLink),
}

impl Held {
    /// Lets the program stay attached after this process: a pinned link stays by its pin, a
    /// clsact filter by itself.
    pub fn leave(self) {
        match self {
            Self::Link(link) => drop(link),
            Self::Clsact(link) => std::mem::forget(link),
        }
    }
}

const fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::TcEgress => TcAttachType::Egress,
        Hook::TcIngress | Hook::Xdp => TcAttachType::Ingress,
    }
}

/// Attaches `tc` (the program of `hook`) to `interface` as `how` says. `pin` is where its
/// link (TCX) or program (clsact) is pinned, when the maps are.
pub fn attach(
    tc: &mut SchedClassifier,
    interface: &str,
    hook: Hook,
    how: TcAttach,
    pin: Option<&Path>,
) -> Result<Held, Error> {
    let error = |error: ProgramError, hint| Error::AttachTc {
        interface: interface.to_owned(),
        hook,
        hint,
        error,
    };
    match how {
        TcAttach::Tcx => tcx(tc, interface, hook, pin).map_err(|e| {
            error(
                e,
                " (TCX links need Linux 6.6 or later: tc_attach = \"clsact\")",
            )
        }),
        TcAttach::Clsact => clsact(tc, interface, hook, pin).map_err(|e| error(e, "")),
        TcAttach::Auto => match tcx(tc, interface, hook, pin) {
            Ok(link) => Ok(link),
            // A kernel without TCX refuses the attach type itself.
            Err(ProgramError::SyscallError(e))
                if matches!(
                    e.io_error.raw_os_error(),
                    Some(libc::EINVAL | libc::EOPNOTSUPP)
                ) =>
            {
                tracing::info!(%interface, %hook, "no TCX links on this kernel: a clsact filter instead");
                clsact(tc, interface, hook, pin).map_err(|e| error(e, ""))
            }
            Err(e) => Err(error(e, "")),
        },
    }
}

/// A TCX link: the pinned one a previous agent left, updated in place, else a new one
/// (pinned at `pin`).
fn tcx(
    tc: &mut SchedClassifier,
    interface: &str,
    hook: Hook,
    pin: Option<&Path>,
) -> Result<Held, ProgramError> {
    let name = hook.program();
    let pinned = pin.filter(|p| p.exists()).and_then(|path| {
        let link = PinnedLink::from_pin(path).ok()?;
        SchedClassifierLink::try_from(FdLink::from(link)).ok()
    });
    let id = if let Some(link) = pinned {
        let id = tc.attach_to_link(link)?;
        tracing::info!(program = name, %interface, %hook, "took over the pinned link: program replaced in place");
        id
    } else {
        let id = tc.attach_with_options(
            interface,
            attach_type(hook),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        // A clsact attachment of an earlier agent goes only once the link is in its place:
        // where the kernel has no TCX, the attach above fails and `auto` takes the filter
        // over instead, without a moment unsteered.
        if let Some(path) = pin.filter(|p| p.exists()) {
            remove_clsact(interface, hook);
            let _ = std::fs::remove_file(path);
        }
        id
    };
    let link = FdLink::try_from(tc.take_link(id)?)
        .map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))?;
    match pin {
        Some(path) if !path.exists() => {
            // Pinning consumes the link and hands back the same fd, now also held by bpffs.
            let pinned = link
                .pin(path)
                .map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))?;
            Ok(Held::Link(pinned.into()))
        }
        _ => Ok(Held::Link(link)),
    }
}

/// cpn's filter on the interface's clsact qdisc: the one a previous agent left, its program
/// replaced in place, else a new one.
fn clsact(
    tc: &mut SchedClassifier,
    interface: &str,
    hook: Hook,
    pin: Option<&Path>,
) -> Result<Held, ProgramError> {
    if let Some(path) = pin.filter(|p| p.exists())
        && PinnedLink::from_pin(path).is_ok()
    {
        // A TCX link of an earlier agent: unpinned, it detaches.
        let _ = std::fs::remove_file(path);
    }
    // Adding a clsact qdisc that is there already fails; either way one is there after.
    if let Err(error) = tc::qdisc_add_clsact(interface) {
        tracing::debug!(%interface, %error, "clsact qdisc not added (there already?)");
    }
    let existing = SchedClassifierLink::attached(
        interface,
        attach_type(hook),
        CLSACT_PRIORITY,
        CLSACT_HANDLE,
        None,
    )
    .map_err(ProgramError::IOError)?;
    let id = match tc.attach_to_link(existing) {
        Ok(id) => {
            tracing::info!(program = hook.program(), %interface, %hook, "took over the clsact filter: program replaced in place");
            id
        }
        Err(_) => tc.attach_with_options(
            interface,
            attach_type(hook),
            TcAttachOptions::Netlink(NlOptions {
                priority: CLSACT_PRIORITY,
                handle: CLSACT_HANDLE,
                ..NlOptions::default()
            }),
        )?,
    };
    let link = tc.take_link(id)?;
    if let Some(path) = pin.filter(|p| !p.exists()) {
        tc.pin(path)
            .map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))?;
    }
    Ok(Held::Clsact(link))
}

/// Removes cpn's clsact filter of `hook` from `interface`, if there is one (an agent that no
/// longer has the interface configured, or that now attaches through TCX).
pub fn remove_clsact(interface: &str, hook: Hook) {
    if let Err(error) = tc::qdisc_detach_program(interface, attach_type(hook), hook.program()) {
        tracing::debug!(%interface, %hook, %error, "no clsact filter removed");
    }
}

/// The TC hook and interface a pin of `link_name(…)` names, if it names a TC one.
pub fn attachment_of(pin_name: &str) -> Option<(Hook, &str)> {
    [Hook::TcIngress, Hook::TcEgress]
        .into_iter()
        .find_map(|hook| {
            let interface = pin_name.strip_prefix(hook.program())?.strip_prefix('-')?;
            Some((hook, interface))
        })
}

#[cfg(test)]
mod tests {
    use super::{Hook, attachment_of};
    use crate::dataplane::{Program, link_name};

    #[test]
    fn pins_name_their_hook_and_interface() {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let name = link_name(Program::Steer, hook, "veth-a1");
            assert_eq!(attachment_of(&name), Some((hook, "veth-a1")));
        }
        assert_eq!(
            attachment_of(&link_name(Program::Steer, Hook::Xdp, "eth0")),
            None
        );
        assert_eq!(attachment_of("cpn_steer_tc_ingress"), None);
    }
}
