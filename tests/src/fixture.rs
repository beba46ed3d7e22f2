//! Fixture runner: one packet through one XDP program via `BPF_PROG_TEST_RUN`, and the
//! steering fixtures again through `cpn_steer_tc` (the same program over a socket buffer).
//!
//! The programs are loaded unpinned, so fixtures never touch a running agent's maps; maps are
//! set up through the agent's own data-plane API ([`Runner::dataplane`]).

use std::fmt::{self, Write as _};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions};
use cpn_agent::dataplane::{
    Dataplane, Hook, IcmpRateLimit, LoadOptions, Pinning, Program, ProtoStats,
};
use cpn_common::stats::Reason;

/// Room for headers a program may push in front of the packet.
const OUTPUT_HEADROOM: usize = 512;

/// An XDP verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Unknown(u32),
}

impl From<u32> for XdpAction {
    fn from(value: u32) -> Self {
        match value {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Unknown(other),
        }
    }
}

/// What a program did with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: XdpAction,
    pub output: Vec<u8>,
}

/// One test case: a packet in, the expected verdict and bytes out.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub program: Program,
    pub input: Vec<u8>,
    pub expect: Outcome,
}

/// Holds a freshly loaded, unpinned data plane.
#[derive(Debug)]
pub struct Runner {
    dataplane: Dataplane,
    /// The interface packets "arrive" on (in the calling thread's namespace); 0: loopback.
    ingress_ifindex: u32,
}

impl Runner {
    /// A data plane without the ICMP rate limit: fixture tables send many errors to one client
    /// in a row (the limit has fixtures of its own, through [`Runner::with_options`]). Its FIB
    /// answer cache is off, as on any data plane no agent has turned it on (generation 0).
    pub fn new() -> Result<Self> {
        Self::with_options(&LoadOptions {
            icmp: IcmpRateLimit::OFF,
            ..LoadOptions::default()
        })
    }

    pub fn with_options(options: &LoadOptions) -> Result<Self> {
        let dataplane = Dataplane::load_with(&Pinning::Unpinned, options).context(
            "loading the eBPF object for fixtures (root and a BPF-capable kernel needed)",
        )?;
        Ok(Self {
            dataplane,
            ingress_ifindex: 0,
        })
    }

    /// Packets will arrive on this interface (of the namespace the calling thread is in).
    #[must_use]
    pub fn arriving_on(mut self, ifindex: u32) -> Self {
        self.ingress_ifindex = ifindex;
        self
    }

    /// The data plane whose maps the fixtures set up.
    pub fn dataplane(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    /// The data plane, read-only.
    pub fn dataplane_ref(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The per-protocol counters of `program`.
    pub fn dataplane_stats(&self, program: Program) -> ProtoStats {
        self.dataplane
            .proto_stats(program)
            .expect("read the protocol counters")
    }

    /// Runs `input` through `program` once.
    pub fn run(&self, program: Program, input: &[u8]) -> Result<Outcome> {
        let xdp = self.dataplane.program(program)?;
        let mut output = vec![0u8; input.len() + OUTPUT_HEADROOM];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (all u32).
        let ctx: Vec<u8> = [
            0,
            u32::try_from(input.len())?,
            0,
            self.ingress_ifindex,
            0,
            0,
        ]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
        let ctx = if self.ingress_ifindex == 0 {
            None
        } else {
            Some(ctx.as_slice())
        };
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut output),
                ctx_in: ctx,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        output.truncate(usize::try_from(result.data_size_out)?);
        Ok(Outcome {
            action: result.return_value.into(),
            output,
        })
    }

    /// Runs `input` through `cpn_steer_tc_ingress` once, as a socket buffer on the runner's interface;
    /// its TC action reads as the XDP verdict it stands for (`TC_ACT_OK`: pass, `TC_ACT_SHOT`:
    /// drop, `TC_ACT_REDIRECT`: redirect).
    pub fn run_tc(&self, input: &[u8]) -> Result<Outcome> {
        let tc = self.dataplane.steer_tc(Hook::TcIngress)?;
        let mut output = vec![0u8; input.len() + OUTPUT_HEADROOM];
        // struct __sk_buff with only `ifindex` (offset 40) set: the kernel gives the test's
        // socket buffer that device.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&self.ingress_ifindex.to_ne_bytes());
        let result = tc
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut output),
                ctx_in: (self.ingress_ifindex > 1).then_some(ctx.as_slice()),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN of cpn_steer_tc")?;
        output.truncate(usize::try_from(result.data_size_out)?);
        let action = match result.return_value {
            0 => XdpAction::Pass,
            2 => XdpAction::Drop,
            7 => XdpAction::Redirect,
            other => XdpAction::Unknown(other),
        };
        Ok(Outcome { action, output })
    }

    /// The steering fixtures of `fixtures` again, through `cpn_steer_tc_ingress`: the same
    /// bytes and verdict (an abort is a drop there; an ICMP error XDP sends back, `Tx`, the TC
    /// program redirects back out of the interface). Left out, so the answer counts only the
    /// rest:
    /// - VLAN tags in the frame (the TC program passes them: the kernel keeps a socket
    ///   buffer's tag outside its data);
    /// - what the kernel's test run builds no socket buffer from: a frame shorter than
    ///   Ethernet, or whose IPv4 or IPv6 header is cut short.
    ///
    /// Panics with every failure at once; the number of fixtures checked otherwise.
    pub fn check_table_tc(&self, fixtures: &[Fixture]) -> usize {
        let mut failures = Vec::new();
        let mut checked = 0;
        for f in fixtures {
            let runs = f.program == Program::Steer
                && builds_socket_buffer(&f.input)
                && !is_vlan_tagged(&f.input);
            if !runs {
                continue;
            }
            checked += 1;
            let expect = Outcome {
                action: match f.expect.action {
                    XdpAction::Aborted => XdpAction::Drop,
                    XdpAction::Tx => XdpAction::Redirect,
                    action => action,
                },
                output: f.expect.output.clone(),
            };
            match self.run_tc(&f.input) {
                Ok(got) if got == expect => {}
                Ok(got) => failures.push(format!(
                    "{}",
                    Mismatch {
                        fixture: Fixture {
                            name: format!("{} (TC)", f.name),
                            expect,
                            ..f.clone()
                        },
                        got
                    }
                )),
                Err(e) => failures.push(format!("fixture `{}` (TC): {e:#}", f.name)),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {checked} fixtures failed through cpn_steer_tc:\n{}",
            failures.len(),
            failures.join("\n")
        );
        checked
    }

    /// Runs a table of fixtures and panics with every failure at once. Outputs that leave the
    /// program (passed, sent back, redirected) and differ from their input are also decoded by
    /// etherparse ([`crate::packet::verify`]), so a fixture cannot pass by agreeing with a
    /// wrong expectation of ours.
    pub fn check_table(&self, fixtures: &[Fixture]) {
        let mut failures = Vec::new();
        for f in fixtures {
            let leaves = matches!(
                f.expect.action,
                XdpAction::Pass | XdpAction::Tx | XdpAction::Redirect
            );
            if let Err(e) = self.check(f) {
                failures.push(format!("{e:#}"));
            } else if leaves
                && f.expect.output != f.input
                && let Err(e) = crate::packet::verify(&f.expect.output)
            {
                failures.push(format!("fixture `{}`: output does not decode: {e}", f.name));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} fixtures failed:\n{}",
            failures.len(),
            fixtures.len(),
            failures.join("\n")
        );
    }

    /// Packets counted under `reason` so far.
    pub fn reason_packets(&self, reason: Reason) -> u64 {
        self.dataplane
            .counter(cpn_common::maps::REASON_STATS, reason as u32)
            .expect("reason counter")
            .packets
    }

    /// Runs a fixture and compares; the error shows a hex diff of the bytes.
    pub fn check(&self, fixture: &Fixture) -> Result<()> {
        let got = self.run(fixture.program, &fixture.input)?;
        if got == fixture.expect {
            return Ok(());
        }
        Err(anyhow::anyhow!(Mismatch {
            fixture: fixture.clone(),
            got
        }))
    }
}

/// Whether `BPF_PROG_TEST_RUN` of a TC program takes `frame`: Ethernet, and a whole network
/// header when it is IPv4 or IPv6.
pub fn builds_socket_buffer(frame: &[u8]) -> bool {
    let Some(ether_type) = frame.get(12..14) else {
        return false;
    };
    match u16::from_be_bytes([ether_type[0], ether_type[1]]) {
        0x86dd => frame.len() >= 14 + 40,
        0x0800 => frame.len() >= 14 + 20,
        _ => true,
    }
}

/// An 802.1Q or 802.1ad tag right after the Ethernet addresses.
fn is_vlan_tagged(frame: &[u8]) -> bool {
    matches!(frame.get(12..14), Some([0x81, 0x00] | [0x88, 0xa8]))
}

/// A fixture whose outcome differed from the expected one.
#[derive(Debug)]
pub struct Mismatch {
    fixture: Fixture,
    got: Outcome,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { fixture, got } = self;
        writeln!(f, "fixture `{}` ({}):", fixture.name, fixture.program)?;
        if got.action != fixture.expect.action {
            writeln!(
                f,
                "  action: expected {:?}, got {:?}",
                fixture.expect.action, got.action
            )?;
        }
        if got.output != fixture.expect.output {
            f.write_str(&hex_diff(&fixture.expect.output, &got.output))?;
        }
        Ok(())
    }
}

impl std::error::Error for Mismatch {}

/// Side-by-side hex rows of 16 bytes; rows that differ are marked and the differing bytes
/// underlined with `^^`.
pub fn hex_diff(expected: &[u8], got: &[u8]) -> String {
    let mut out = format!(
        "  bytes: expected {} bytes, got {} bytes\n",
        expected.len(),
        got.len()
    );
    let rows = expected.len().max(got.len()).div_ceil(16);
    for row in 0..rows {
        let range = row * 16..(row + 1) * 16;
        let exp = expected
            .get(range.start..range.end.min(expected.len()))
            .unwrap_or(&[]);
        let act = got
            .get(range.start..range.end.min(got.len()))
            .unwrap_or(&[]);
        if exp == act {
            let _ = writeln!(out, "    {:04x}  {}", range.start, hex_row(exp));
            continue;
        }
        let _ = writeln!(out, "  - {:04x}  {}", range.start, hex_row(exp));
        let _ = writeln!(out, "  + {:04x}  {}", range.start, hex_row(act));
        let marks: String = (0..16)
            .map(|i| {
                if exp.get(i) == act.get(i) {
                    "   "
                } else {
                    "^^ "
                }
            })
            .collect();
        let _ = writeln!(out, "          {}", marks.trim_end());
    }
    out
}

fn hex_row(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::hex_diff;

    #[test]
    fn hex_diff_marks_only_differing_bytes() {
        let expected: Vec<u8> = (0..20).collect();
        let mut got = expected.clone();
        got[17] = 0xff;
        let diff = hex_diff(&expected, &got);
        assert!(diff.contains("    0000  00 01 02"), "{diff}");
        assert!(diff.contains("  - 0010  10 11 12 13"), "{diff}");
        assert!(diff.contains("  + 0010  10 ff 12 13"), "{diff}");
        assert!(diff.contains("             ^^"), "{diff}");
    }

    #[test]
    fn hex_diff_shows_length_difference() {
        let diff = hex_diff(&[1, 2, 3], &[1, 2]);
        assert!(diff.contains("expected 3 bytes, got 2 bytes"), "{diff}");
        assert!(diff.contains("  - 0000  01 02 03"), "{diff}");
    }
}
