//! Pure: the relay tree of a large group. Given the ready proxies of a group (each by a stable
//! identity, its node's name), pick about √N of them as relays and assign every other proxy
//! (a leaf) to one relay. Publishers connect to the relays only; each relay connects to its
//! leaves. No I/O: the controller plans the EndpointSlices from a [`Tree`], the benchmark
//! builds its in-process tree from the same function.
//!
//! Why √N: a publisher pays per connected proxy per message, a relay per leaf per message;
//! with R relays and N proxies the publisher pays R and the busiest relay about N/R, which
//! balance at R = √N (5 000 nodes: 71 relays, about 70 leaves each).
//!
//! Both choices are rendezvous (highest-random-weight) hashing, so that a join or a leave moves
//! as few assignments as possible, and no state is kept: any controller replica computes the
//! same tree from the same set of proxies.
//! - **Relays**: the R proxies with the highest `score(seed, identity)`. A proxy that joins
//!   becomes a relay only if it outranks the R-th (about one join in √N), displacing one.
//! - **Leaves**: each leaf goes to the relay with the highest `score(leaf, relay)` among those
//!   with room. Room is a cap of ⌈(L/R)·5/4⌉ leaves per relay (bounded-load rendezvous), so no
//!   relay carries more than 1.25x the mean, whatever the hash does. Leaves are placed in the
//!   order of their own score, so a leaf's place depends only on the leaves before it: a
//!   change moves the changed leaf and, rarely, a short chain of leaves displaced by a full
//!   relay (measured by the tests below).
//!
//! The seed is the group's uid, so two groups on the same nodes get different relays.

use std::collections::BTreeMap;

/// Leaves per relay at most, as a fraction of the mean: `CAP_NUMERATOR / CAP_DENOMINATOR`.
pub const CAP_NUMERATOR: usize = 5;
pub const CAP_DENOMINATOR: usize = 4;

/// How many relays a tree of `proxies` proxies has: ⌈√N⌉ (0 for none).
pub fn relay_count(proxies: usize) -> usize {
    if proxies == 0 {
        return 0;
    }
    let mut root = (proxies as f64).sqrt() as usize;
    // Correct the float estimate to the exact ceiling.
    while root * root > proxies {
        root -= 1;
    }
    while root * root < proxies {
        root += 1;
    }
    root
}

/// Most leaves one relay carries in a tree of `leaves` leaves under `relays` relays.
pub fn leaf_cap(leaves: usize, relays: usize) -> usize {
    if relays == 0 {
        return 0;
    }
    (leaves * CAP_NUMERATOR).div_ceil(relays * CAP_DENOMINATOR).max(1)
}

/// FNV-1a, 64 bit, then the splitmix64 finaliser: stable across Rust releases and processes
/// (unlike `DefaultHasher`), so every controller computes the same tree, and well mixed in
/// every bit, which rendezvous hashing needs (FNV alone is weak in the high bits).
fn hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A group's relay tree: which members are relays and which relay each leaf hangs off.
/// Members are named by the identities given to [`plan_tree`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// The relays, sorted.
    pub relays: Vec<String>,
    /// Leaf → its relay.
    pub leaves: BTreeMap<String, String>,
}

impl Tree {
    /// The leaves of each relay (every relay present, possibly with none), sorted.
    pub fn by_relay(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut by_relay: BTreeMap<&str, Vec<&str>> = self
            .relays
            .iter()
            .map(|relay| (relay.as_str(), Vec::new()))
            .collect();
        for (leaf, relay) in &self.leaves {
            by_relay.entry(relay.as_str()).or_default().push(leaf.as_str());
        }
        by_relay
    }

    /// Leaves whose relay differs between `self` and `other`, counting a member that is a
    /// leaf in one tree and not in the other (it joined, left, or changed tier). The measure of
    /// churn: each such leaf is one disconnect and/or connect by a relay.
    pub fn moved_leaves(&self, other: &Tree) -> usize {
        let mut moved = self
            .leaves
            .iter()
            .filter(|(leaf, relay)| other.leaves.get(*leaf) != Some(*relay))
            .count();
        moved += other
            .leaves
            .keys()
            .filter(|leaf| !self.leaves.contains_key(*leaf))
            .count();
        moved
    }
}

/// The tree of `members` (stable identities, duplicates ignored) for the group seeded `seed`.
/// Deterministic: the same seed and set of members give the same tree, in any order.
pub fn plan_tree<'a>(seed: &str, members: impl IntoIterator<Item = &'a str>) -> Tree {
    let mut scored: Vec<(u64, &str)> = members
        .into_iter()
        .map(|member| (hash(&[seed.as_bytes(), member.as_bytes()]), member))
        .collect();
    // Highest score first; the name breaks the (astronomically rare) tie.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    let count = relay_count(scored.len());
    let (relays, leaves) = scored.split_at(count);
    let cap = leaf_cap(leaves.len(), relays.len());
    // Each relay's own hash, mixed with each leaf's, is the rendezvous weight of the pair.
    let relay_keys: Vec<(u64, &str)> = relays.iter().map(|(score, name)| (*score, *name)).collect();
    let mut load = vec![0usize; relay_keys.len()];
    let mut assigned = BTreeMap::new();
    // Placed in the order of the leaves' own scores (highest first), which a join or a leave
    // elsewhere does not change.
    for (leaf_score, leaf) in leaves {
        let best = relay_keys
            .iter()
            .enumerate()
            .filter(|(index, _)| load[*index] < cap)
            .max_by(|(_, a), (_, b)| {
                let weight_a = mix(leaf_score ^ a.0.rotate_left(17));
                let weight_b = mix(leaf_score ^ b.0.rotate_left(17));
                weight_a.cmp(&weight_b).then_with(|| b.1.cmp(a.1))
            });
        // The caps add up to at least the leaves, so there is always room.
        if let Some((index, (_, relay))) = best {
            load[index] += 1;
            assigned.insert(leaf.to_string(), relay.to_string());
        }
    }
    let mut relays: Vec<String> = relays.iter().map(|(_, name)| name.to_string()).collect();
    relays.sort();
    Tree {
        relays,
        leaves: assigned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("node-{i:05}")).collect()
    }

    fn tree(seed: &str, members: &[String]) -> Tree {
        plan_tree(seed, members.iter().map(String::as_str))
    }

    #[test]
    fn relay_count_is_the_ceiling_of_the_square_root() {
        let expected = [
            (0, 0),
            (1, 1),
            (2, 2),
            (4, 2),
            (5, 3),
            (9, 3),
            (10, 4),
            (64, 8),
            (65, 9),
        ];
        for (n, r) in expected {
            assert_eq!(relay_count(n), r, "N = {n}");
        }
        for n in 1..20_000usize {
            let r = relay_count(n);
            assert!(r * r >= n && (r - 1) * (r - 1) < n, "N = {n}: {r}");
        }
    }

    #[test]
    fn every_member_is_a_relay_or_the_leaf_of_one_never_both() {
        for n in [1, 2, 3, 9, 12, 64, 257] {
            let members = names(0..n);
            let t = tree("uid-1", &members);
            assert_eq!(t.relays.len(), relay_count(n));
            assert_eq!(t.relays.len() + t.leaves.len(), n, "N = {n}");
            for (leaf, relay) in &t.leaves {
                assert!(t.relays.binary_search(relay).is_ok(), "{leaf} -> {relay}");
                assert!(t.relays.binary_search(leaf).is_err(), "{leaf} is a relay too");
            }
        }
    }

    #[test]
    fn the_tree_is_deterministic_whatever_the_order_or_duplicates() {
        let members = names(0..100);
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.extend(members[..10].iter().cloned());
        assert_eq!(tree("uid-1", &members), tree("uid-1", &shuffled));
        assert_ne!(
            tree("uid-1", &members).relays,
            tree("uid-2", &members).relays,
            "another group on the same nodes gets other relays"
        );
    }

    /// Balance: no relay carries more than 1.25x the mean number of leaves (rounded up).
    #[test]
    fn no_relay_carries_more_than_the_cap() {
        for n in (3..400).chain([1000, 5000]) {
            let t = tree("uid-balance", &names(0..n));
            let leaves = t.leaves.len();
            let relays = t.relays.len();
            let max = t.by_relay().values().map(Vec::len).max().unwrap_or(0);
            let mean = leaves as f64 / relays as f64;
            assert!(max <= leaf_cap(leaves, relays), "N = {n}: {max}");
            assert!(
                max as f64 <= (mean * 1.25).ceil().max(1.0),
                "N = {n}: max {max}, mean {mean:.1}"
            );
        }
    }

    /// Churn of one join or one leave, over every N up to 400 and a few large ones, each with
    /// several members joining or leaving: the moved leaves (the member itself included).
    fn churn(n: usize) -> Vec<(usize, bool)> {
        let members = names(0..n + 1);
        let before = tree("uid-churn", &members[..n]);
        let mut out = Vec::new();
        // A join: member n arrives.
        let after = tree("uid-churn", &members);
        out.push((
            before.moved_leaves(&after),
            before.relays.len() != after.relays.len() || before.relays != after.relays[..].to_vec(),
        ));
        // A leave of each of a few members (leaves and relays alike).
        for gone in (0..n).step_by((n / 7).max(1)) {
            let rest: Vec<String> = members[..n]
                .iter()
                .filter(|m| **m != members[gone])
                .cloned()
                .collect();
            let after = tree("uid-churn", &rest);
            out.push((before.moved_leaves(&after), before.relays != after.relays));
        }
        out
    }

    /// Stability. With the relay set unchanged a join or a leave moves at most the member
    /// itself plus a short displacement chain (bound: 1 + R leaves; measured mean 1.6, the
    /// worst 6 at N = 47); when the relay set changes (a relay leaves, a joiner outranks one,
    /// R steps at a square) at most the leaves of two relays plus that chain (bound:
    /// 2·cap + R/2 + 2; measured mean 1.4 caps). Means printed, and bounded here at 3 and
    /// 2 caps.
    #[test]
    fn a_join_or_a_leave_moves_few_assignments() {
        let mut same_relays = Vec::new();
        let mut new_relays = Vec::new();
        for n in (4..400).chain([1000, 2500]) {
            let relays = relay_count(n + 1);
            let cap = leaf_cap(n + 1 - relays, relays);
            for (moved, relay_change) in churn(n) {
                if relay_change {
                    assert!(
                        moved <= 2 * cap + relays / 2 + 2,
                        "N = {n}: {moved} moved, cap {cap}"
                    );
                    new_relays.push(moved as f64 / cap as f64);
                } else {
                    assert!(moved <= 1 + relays, "N = {n}: {moved} moved");
                    same_relays.push(moved as f64);
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "relay set unchanged: {} changes, mean {:.2} leaves moved; relay set changed: {} changes, mean {:.2} x cap",
            same_relays.len(),
            mean(&same_relays),
            new_relays.len(),
            mean(&new_relays)
        );
        assert!(mean(&same_relays) <= 3.0);
        assert!(mean(&new_relays) <= 2.0);
    }

    /// The leaves a relay's departure moves are its own plus the ones the relay promoted in
    /// its place takes: measured for N = 64, 256, 1024.
    #[test]
    fn a_relay_leaving_moves_its_own_leaves_and_few_others() {
        for n in [64usize, 256, 1024] {
            let members = names(0..n);
            let before = tree("uid-fail", &members);
            let by_relay = before.by_relay();
            let gone = before.relays[0].clone();
            let own = by_relay[gone.as_str()].len();
            let rest: Vec<String> = members.iter().filter(|m| **m != gone).cloned().collect();
            let after = tree("uid-fail", &rest);
            let moved = before.moved_leaves(&after);
            let cap = leaf_cap(after.leaves.len(), after.relays.len());
            println!("N = {n}: relay with {own} leaves left; {moved} leaves moved (cap {cap})");
            assert!(moved >= own, "its own leaves move");
            assert!(
                moved <= own + cap + after.relays.len() / 2 + 2,
                "N = {n}: {moved}"
            );
        }
    }

    /// As N grows across R's steps (N = k² + 1 adds a relay), the moves stay near one relay's
    /// share: printed for the record.
    #[test]
    fn crossing_a_square_moves_about_one_relays_share() {
        for k in [4usize, 8, 16, 32] {
            let members = names(0..k * k + 1);
            let before = tree("uid-step", &members[..k * k]);
            let after = tree("uid-step", &members);
            assert_eq!(after.relays.len(), before.relays.len() + 1);
            let moved = before.moved_leaves(&after);
            let cap = leaf_cap(after.leaves.len(), after.relays.len());
            println!("N = {} -> {}: {moved} leaves moved (cap {cap})", k * k, k * k + 1);
            assert!(moved <= 2 * cap + k / 2 + 2, "k = {k}: {moved}");
        }
    }
}
