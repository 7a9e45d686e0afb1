//! The relay tree's properties over generated groups (`fanout::relay_tree`): random node names
//! and seeds, any order. Every member is placed exactly once; no relay carries more than the
//! bounded-load cap; the tree depends on the set, not its order; a join or a leave moves at most
//! the stated number of assignments. (`PROPTEST_CASES` raises the 256 cases each runs.)

use fanout::relay_tree::{Tree, leaf_cap, plan_tree, relay_count};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn members() -> impl Strategy<Value = BTreeSet<String>> {
    proptest::collection::btree_set("[a-z0-9][a-z0-9.-]{0,40}", 1..150)
}

fn tree_of(seed: &str, members: &BTreeSet<String>) -> Tree {
    plan_tree(seed, members.iter().map(String::as_str))
}

/// The bound of `relay_tree`'s documentation for one join or leave between `before` and
/// `after`: 1 + R with the relay set unchanged, 2·cap + R/2 + 2 when it changed.
fn churn_bound(before: &Tree, after: &Tree) -> usize {
    let relays = before.relays.len().max(after.relays.len());
    if before.relays == after.relays {
        1 + relays
    } else {
        let cap = leaf_cap(before.leaves.len(), before.relays.len())
            .max(leaf_cap(after.leaves.len(), after.relays.len()));
        2 * cap + relays / 2 + 2
    }
}

proptest! {
    #[test]
    fn every_member_is_placed_once_within_the_cap(seed in "[a-z0-9-]{1,36}", members in members()) {
        let tree = tree_of(&seed, &members);
        prop_assert_eq!(tree.relays.len(), relay_count(members.len()));
        prop_assert_eq!(tree.relays.len() + tree.leaves.len(), members.len());
        let relays: BTreeSet<&String> = tree.relays.iter().collect();
        for (leaf, relay) in &tree.leaves {
            prop_assert!(relays.contains(relay));
            prop_assert!(!relays.contains(leaf));
        }
        let cap = leaf_cap(tree.leaves.len(), tree.relays.len());
        for (relay, leaves) in tree.by_relay() {
            prop_assert!(leaves.len() <= cap, "{} carries {} > {}", relay, leaves.len(), cap);
        }
    }

    #[test]
    fn the_tree_is_the_same_in_any_order(seed in "[a-z0-9-]{1,36}", members in members(), rotate in 0usize..300) {
        let mut shuffled: Vec<&str> = members.iter().map(String::as_str).collect();
        let by = rotate % shuffled.len();
        shuffled.rotate_left(by);
        shuffled.reverse();
        prop_assert_eq!(tree_of(&seed, &members), plan_tree(&seed, shuffled));
    }

    #[test]
    fn a_join_or_a_leave_moves_few_assignments(
        seed in "[a-z0-9-]{1,36}",
        members in members(),
        newcomer in "[A-Z]{1,12}",
        leaving in 0usize..300,
    ) {
        let before = tree_of(&seed, &members);
        let mut joined = members.clone();
        joined.insert(newcomer);
        let after = tree_of(&seed, &joined);
        let moved = before.moved_leaves(&after);
        prop_assert!(moved <= churn_bound(&before, &after), "join moved {}", moved);

        let gone = members.iter().nth(leaving % members.len()).cloned().unwrap_or_default();
        let mut left = members.clone();
        left.remove(&gone);
        let after = tree_of(&seed, &left);
        let moved = before.moved_leaves(&after);
        prop_assert!(moved <= churn_bound(&before, &after), "leave of {} moved {}", gone, moved);
    }
}
