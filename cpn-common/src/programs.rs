//! Names of the XDP programs in the cpn eBPF object.

/// Ingress program: catches traffic to service addresses and pushes the SRv6 encapsulation.
pub const STEER: &str = "cpn_steer";
/// Compute-node and transit program: processes packets addressed to local SRv6 SIDs.
pub const ENDPOINT: &str = "cpn_endpoint";

/// `cpn_steer` as a TC (`sched_cls`) program: the same steering over the socket buffer.
pub const STEER_TC: &str = "cpn_steer_tc";

/// Every XDP program in the object, in the order the agent reports them.
pub const ALL: [&str; 2] = [STEER, ENDPOINT];
