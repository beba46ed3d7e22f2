//! Two minutes of the chaos soak, as `cargo xtask soak --minutes 2` runs it: agents killed and
//! restarted, links flapped, paths impaired, load storms and a rogue BGP peer under traffic,
//! and every check of `cpn_tests::soak` must hold.

use std::time::Duration;

use anyhow::{Result, ensure};
use cpn_tests::soak;

#[test]
fn soak_two_minutes_of_chaos_break_no_promise() -> Result<()> {
    let seed = std::env::var("CPN_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        // Its third epoch SIGKILLs the ingress's agent under held connections: the takeover
        // the 30-minute run found broken (held flows cut while the new agent took over).
        .unwrap_or(20_261_204);
    let outcome = soak::run(soak::Options {
        duration: Duration::from_mins(2),
        seed,
    })?;
    eprintln!("{}", outcome.report);
    ensure!(
        outcome.failures.is_empty(),
        "the soak broke promises (seed {seed}):\n{}",
        outcome.failures.join("\n")
    );
    Ok(())
}
