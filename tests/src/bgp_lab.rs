//! Agent configurations shared by the BGP labs: a compute node `computeN` (interface `eth0`,
//! source `2001:db8:1N::2`, locator `fc00:N::/32`, End.DT6 SID `fc00:N::d6`, serving
//! [`VIP`](crate::steering_lab::VIP)) and `[bgp]` sections.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;

use crate::{
    lab::Lab,
    steering_lab::{MAX_IN_FLIGHT, VIP},
};

/// Addresses the BGP labs' star: `client` (`2001:db8:1::1`, default via the ingress) on
/// ingress `eth0` (`2001:db8:1::2`), and `computeN` (`2001:db8:1N::2`, [`VIP`] on `lo`, default
/// via the ingress) on ingress `ethN` (`2001:db8:1N::1`), for N in 1..=2; forwarding on at the
/// ingress. The ingress has no route to the compute nodes' locators: it learns them in BGP.
pub fn address_star(lab: &Lab) -> Result<()> {
    let client = lab.node("client")?;
    client.add_address("eth0", "2001:db8:1::1/64")?;
    client.add_route(&["default", "via", "2001:db8:1::2"])?;
    client.checksum_in_software("eth0")?;
    let ingress = lab.node("ingress")?;
    ingress.add_address("eth0", "2001:db8:1::2/64")?;
    ingress.enable_forwarding()?;
    for n in 1..=2 {
        ingress.add_address(&format!("eth{n}"), &format!("2001:db8:1{n}::1/64"))?;
        let node = lab.node(&format!("compute{n}"))?;
        node.add_address("eth0", &format!("2001:db8:1{n}::2/64"))?;
        node.add_address("lo", &format!("{VIP}/128"))?;
        node.add_route(&["default", "via", &format!("2001:db8:1{n}::1")])?;
    }
    Ok(())
}

/// A `[bgp]` section (hold time 3 s); `neighbors` are (address, AS, extra lines).
pub fn bgp_section(asn: u32, router_id: &str, neighbors: &[(&str, u32, &str)]) -> String {
    let mut text = format!("[bgp]\nasn = {asn}\nrouter_id = \"{router_id}\"\nhold_time_s = 3\n");
    for (address, asn, extra) in neighbors {
        let _ = write!(
            text,
            "\n[[bgp.neighbor]]\naddress = \"{address}\"\nasn = {asn}\n{extra}"
        );
    }
    text
}

/// Compute node `n` with CPU `capacity`, its in-flight count read from `inflight`, and `bgp`.
pub fn compute_config(n: u32, capacity: f64, inflight: &Path, bgp: &str) -> String {
    format!(
        "[node]\nname = \"compute{n}\"\nroles = [\"compute\"]\n\n\
         [[interface]]\nname = \"eth0\"\nprogram = \"endpoint\"\n\n\
         [srv6]\nsource = \"2001:db8:1{n}::2\"\nlocator = \"fc00:{n}::/32\"\n\n\
         [[srv6.sid]]\nsid = \"fc00:{n}::d6\"\nbehavior = \"End.DT6\"\n\n\
         [[service]]\naddress = \"{VIP}\"\nsid = \"fc00:{n}::d6\"\ncapacity = {{ cpu = {capacity:e} }}\n\
         in_flight_file = \"{}\"\nmax_in_flight = {MAX_IN_FLIGHT}\n\n\
         [metrics]\ninterval_ms = 200\nsample_host = false\n\n{bgp}",
        inflight.display()
    )
}

/// Two nodes on one link, `eth0` to `eth0`, each with its address (`/64`): a compute node
/// and the peer it tests against.
pub fn pair(name: &str, (a, a_address): (&str, &str), (b, b_address): (&str, &str)) -> Result<Lab> {
    let lab = Lab::builder(name)
        .node(a)
        .node(b)
        .link((a, "eth0"), (b, "eth0"))
        .build()?;
    lab.node(a)?
        .add_address("eth0", &format!("{a_address}/64"))?;
    lab.node(b)?
        .add_address("eth0", &format!("{b_address}/64"))?;
    Ok(lab)
}
