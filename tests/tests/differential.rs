//! Differential tests: Linux's SRv6 is the reference (DESIGN.md, "Data plane").

use anyhow::Result;
use cpn_tests::differential::{
    endpoint::{Case, Client, Dut, EndpointLab, NEXT, Verdict, sid},
    wire::{self, Ipv6, Srh},
};

fn same(name: &str, packets: impl Fn(&Client) -> Vec<Vec<u8>> + 'static) -> Case {
    Case {
        name: name.to_owned(),
        packets: Box::new(packets),
        verdict: Verdict::Same,
        needs_vrf: false,
    }
}

fn cases() -> Vec<Case> {
    vec![same("end_sl1", |c| {
        vec![
            Ipv6::new(c.v6, sid::END)
                .ext(Srh::path(&[sid::END, NEXT], 1).ext())
                .inner(wire::udp6(c.v6, NEXT, 64, (1, 2), b"x"))
                .bytes(),
        ]
    })]
}

#[test]
fn endpoint_differential_smoke() -> Result<()> {
    let cases = cases();
    let linux = EndpointLab::start(Dut::Linux, true)?.run(&cases)?;
    println!("{linux:?}");
    let cpn = EndpointLab::start(Dut::Cpn, true)?.run(&cases)?;
    println!("{cpn:?}");
    Ok(())
}
