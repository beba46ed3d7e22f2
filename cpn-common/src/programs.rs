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
