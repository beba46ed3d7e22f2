//! The data-plane fuzzer in CI: generated and mutated packets through `cpn_steer`, its TC
//! variant and `cpn_endpoint`, every outcome checked (see `cpn_tests::dataplane_fuzz`). Long
//! runs: `cargo xtask fuzz --dataplane --packets N`.

use cpn_tests::dataplane_fuzz::{self, Config};

/// Packets per CI run; `CPN_FUZZ_PACKETS` changes it for a local run.
const PACKETS: u64 = 100_000;

#[test]
fn dataplane_fuzz_100k_packets_break_no_invariant() {
    let packets = std::env::var("CPN_FUZZ_PACKETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(PACKETS);
    // A new seed each run covers new packets; the report names it, to run it again.
    let seed = std::env::var("CPN_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(rand::random);
    let config = Config {
        packets,
        seed,
        save_failures: Some(
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dataplane-fuzz"),
        ),
    };
    let report = dataplane_fuzz::run(&config, |_| {}).expect("the fuzz run");
    assert_eq!(report.failed, 0, "{report}");
    eprintln!("{report}");
    assert_eq!(report.packets, packets);
}
