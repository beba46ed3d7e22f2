//! Weighted Maglev (Eisenbud et al., NSDI 2016) with weights: each node fills ring slots in
//! turn along its own permutation, taking turns in proportion to its weight, so its share of
//! the ring follows its weight and removing a node moves little more than that node's slots.

/// The default ring size: a prime (Maglev needs one) well above 100 × nodes.
pub const DEFAULT_RING_SIZE: u32 = 65_537;

/// A node and its (non-negative) weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weighted {
    pub node: u32,
    pub weight: f64,
}

/// True if `n` is prime (ring sizes must be).
pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..=n.isqrt()).all(|d| !n.is_multiple_of(d))
}

/// Builds a ring of `size` slots (a prime) from weighted nodes. Nodes with weight 0 get no
/// slots; an empty vector means no node has weight. Deterministic for the same input.
pub fn build(size: u32, nodes: &[Weighted]) -> Vec<u32> {
    assert!(
        is_prime(size),
        "the Maglev ring size must be a prime, got {size}"
    );
    let mut nodes: Vec<Weighted> = nodes.iter().copied().filter(|n| n.weight > 0.0).collect();
    if nodes.is_empty() {
        return Vec::new();
    }
    // Same input, same ring, whatever the order it came in.
    nodes.sort_by_key(|n| n.node);
    let max = nodes.iter().map(|n| n.weight).fold(0.0, f64::max);
    let m = u64::from(size);
    let mut permutations: Vec<(u64, u64, u64)> = nodes
        .iter()
        .map(|n| {
            let offset = hash(n.node, 0x6f66_6673) % m;
            let skip = hash(n.node, 0x736b_6970) % (m - 1) + 1;
            (offset, skip, 0) // (offset, skip, next index along the permutation)
        })
        .collect();
    let mut ring = vec![u32::MAX; size as usize];
    let mut credit = vec![0.0f64; nodes.len()];
    let mut filled = 0u64;
    while filled < m {
        for (i, node) in nodes.iter().enumerate() {
            credit[i] += node.weight / max;
            while credit[i] >= 1.0 && filled < m {
                credit[i] -= 1.0;
                let (offset, skip, next) = &mut permutations[i];
                loop {
                    let slot = usize::try_from((*offset + *next * *skip) % m).expect("slot < size");
                    *next += 1;
                    if ring[slot] == u32::MAX {
                        ring[slot] = node.node;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    ring
}

/// `SplitMix64` of (seed, node): fixed forever, so every agent and every version builds the same
/// permutation for a node (std's hasher may change between Rust releases).
fn hash(node: u32, seed: u64) -> u64 {
    let mut z = seed ^ u64::from(node).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Moves `current` towards `target` by at most `max_moves` slots, except that slots whose node
/// is not in `target` at all always move (a removed or dead node keeps no slot). Returns the
/// ring to publish and how many slots still differ from `target`.
pub fn limit_churn(current: &[u32], target: &[u32], max_moves: usize) -> (Vec<u32>, usize) {
    if current.len() != target.len() || current.is_empty() {
        return (target.to_vec(), 0);
    }
    let alive: std::collections::HashSet<u32> = target.iter().copied().collect();
    let mut next = current.to_vec();
    let mut budget = max_moves;
    let mut pending = 0;
    // Spread voluntary moves over the ring rather than taking one contiguous run.
    let stride = 7919; // a prime, coprime to any ring size we build
    let len = current.len();
    for k in 0..len {
        let slot = (k * stride) % len;
        if next[slot] == target[slot] {
            continue;
        }
        if !alive.contains(&next[slot]) {
            next[slot] = target[slot];
        } else if budget > 0 {
            next[slot] = target[slot];
            budget -= 1;
        } else {
            pending += 1;
        }
    }
    (next, pending)
}

#[cfg(test)]
#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "test arithmetic on small counts"
)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A prime ring of about a thousand slots, for properties that walk a ring many times.
    const SMALL_RING: u32 = 1021;

    fn shares(ring: &[u32]) -> std::collections::HashMap<u32, f64> {
        let mut counts = std::collections::HashMap::new();
        for node in ring {
            *counts.entry(*node).or_insert(0.0) += 1.0;
        }
        let len = ring.len() as f64;
        for c in counts.values_mut() {
            *c /= len;
        }
        counts
    }

    #[test]
    fn ring_sizes_are_prime() {
        assert!(is_prime(DEFAULT_RING_SIZE));
        assert!(is_prime(251));
        assert!(is_prime(SMALL_RING));
        assert!(!is_prime(65_536));
    }

    #[test]
    fn no_weight_no_ring() {
        assert!(build(251, &[]).is_empty());
        assert!(
            build(
                251,
                &[Weighted {
                    node: 1,
                    weight: 0.0
                }]
            )
            .is_empty()
        );
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let a = [
            Weighted {
                node: 1,
                weight: 2.0,
            },
            Weighted {
                node: 2,
                weight: 1.0,
            },
        ];
        let b = [a[1], a[0]];
        assert_eq!(build(251, &a), build(251, &b));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Each node's share of a 65537-slot ring is within 1% of its weight share.
        #[test]
        fn balance_follows_weights(weights in prop::collection::vec(1u32..=100, 1..12)) {
            let nodes: Vec<Weighted> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| Weighted { node: i as u32 * 3 + 1, weight: f64::from(*w) })
                .collect();
            let total: f64 = nodes.iter().map(|n| n.weight).sum();
            let ring = build(DEFAULT_RING_SIZE, &nodes);
            let got = shares(&ring);
            for n in &nodes {
                let want = n.weight / total;
                let share = got.get(&n.node).copied().unwrap_or(0.0);
                prop_assert!((share - want).abs() <= 0.01, "node {} share {share:.4} want {want:.4}", n.node);
            }
        }

        /// Removing one of N equal nodes moves about 1/N of the slots: its own, plus little more.
        #[test]
        fn removing_a_node_disrupts_little(count in 3usize..20, removed in 0usize..20) {
            let removed = removed % count;
            let nodes: Vec<Weighted> = (0..count).map(|i| Weighted { node: i as u32, weight: 1.0 }).collect();
            let before = build(DEFAULT_RING_SIZE, &nodes);
            let rest: Vec<Weighted> = nodes.iter().copied().filter(|n| n.node != removed as u32).collect();
            let after = build(DEFAULT_RING_SIZE, &rest);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / f64::from(DEFAULT_RING_SIZE);
            let own = 1.0 / count as f64;
            prop_assert!(moved <= own * 1.6 + 0.01, "moved {moved:.4} of the ring, the node owned {own:.4}");
        }

        /// Churn limiting never exceeds its budget except for slots of vanished nodes, and
        /// converges to the target.
        #[test]
        // A small prime ring: the bound holds for any size, and a budget of 1 on 65 537 slots
        // took minutes in a debug build.
        fn churn_is_bounded(count in 2usize..10, budget in 1usize..200) {
            let nodes: Vec<Weighted> = (0..count).map(|i| Weighted { node: i as u32, weight: 1.0 + i as f64 }).collect();
            let current = build(SMALL_RING, &nodes);
            let reweighted: Vec<Weighted> = nodes.iter().map(|n| Weighted { weight: 10.0 - n.weight, ..*n }).collect();
            let target = build(SMALL_RING, &reweighted);
            let mut ring = current.clone();
            for _ in 0..100_000 {
                let (next, pending) = limit_churn(&ring, &target, budget);
                let moved = ring.iter().zip(&next).filter(|(a, b)| a != b).count();
                prop_assert!(moved <= budget);
                ring = next;
                if pending == 0 {
                    break;
                }
            }
            prop_assert_eq!(ring, target);
        }
    }

    #[test]
    fn vanished_nodes_always_move() {
        let nodes: Vec<Weighted> = (0..4)
            .map(|i| Weighted {
                node: i,
                weight: 1.0,
            })
            .collect();
        let current = build(251, &nodes);
        let target = build(251, &nodes[..3]);
        let (next, _) = limit_churn(&current, &target, 0);
        assert!(
            !next.contains(&3),
            "slots of the removed node must move even with no budget"
        );
    }
}
