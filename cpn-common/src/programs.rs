//! Names of the XDP programs in the cpn eBPF object.

/// Ingress program: catches traffic to service addresses and pushes the SRv6 encapsulation.
pub const STEER: &str = "cpn_steer";
/// Compute-node and transit program: processes packets addressed to local SRv6 SIDs.
pub const ENDPOINT: &str = "cpn_endpoint";

/// `cpn_steer` as TC (`sched_cls`) programs, the same steering over the socket buffer: on an
/// interface's ingress and on its egress (they differ in where an ICMP error goes).
pub const STEER_TC_INGRESS: &str = "cpn_steer_tc_ingress";
pub const STEER_TC_EGRESS: &str = "cpn_steer_tc_egress";

/// Every XDP program in the object, in the order the agent reports them.
pub const ALL: [&str; 2] = [STEER, ENDPOINT];

/// Where `cpn_steer`'s code runs: in XDP on what an interface receives, or as the TC program
/// on what it receives (`tc-ingress`: clients in containers or namespaces behind a veth) or
/// sends (`tc-egress`: what the host itself sends). Each hook counts what it sees in its own
/// block of the `steer_proto` map ([`crate::maps::steer_proto_index`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "user",
    derive(serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Hook {
    #[default]
    Xdp = 0,
    TcIngress = 1,
    TcEgress = 2,
}

impl Hook {
    pub const COUNT: u32 = 3;

    pub const ALL: [Self; Self::COUNT as usize] = [Self::Xdp, Self::TcIngress, Self::TcEgress];

    /// The hook numbered `index` (its discriminant), if there is one.
    pub const fn from_index(index: u32) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index as usize])
        } else {
            None
        }
    }

    /// The name in the configuration (`hook = "tc-ingress"`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::TcIngress => "tc-ingress",
            Self::TcEgress => "tc-egress",
        }
    }

    /// The program that runs at this hook.
    pub const fn program(self) -> &'static str {
        match self {
            Self::Xdp => STEER,
            Self::TcIngress => STEER_TC_INGRESS,
            Self::TcEgress => STEER_TC_EGRESS,
        }
    }

    /// The TC program that runs at this hook (none at XDP).
    pub const fn tc_program(self) -> Option<&'static str> {
        match self {
            Self::Xdp => None,
            Self::TcIngress | Self::TcEgress => Some(self.program()),
        }
    }
}

impl core::fmt::Display for Hook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
