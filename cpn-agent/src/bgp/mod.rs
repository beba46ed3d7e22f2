//! BGP: the agents' advertisements of compute load (DESIGN.md "Announcement").

pub mod attributes;
pub mod errors;
pub mod fsm;
pub mod graceful;
pub mod gtsm;
pub mod md5;
pub mod metric_attr;
pub mod peer;
pub mod policy;
pub mod rib;
pub mod route;
pub mod session;
pub mod speaker;
