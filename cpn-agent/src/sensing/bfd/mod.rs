//! BFD (RFC 5880) between this agent and its BGP neighbors: single hop (RFC 5881) and
//! multihop (RFC 5883) sessions in Asynchronous mode.

pub mod packet;
pub mod session;
