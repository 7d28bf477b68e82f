//! Property tests: random sequences of create / map / unmap / fork / switch /
//! exit run on every backend over its host model, checked against a reference
//! model after every step, and differentially across backends, over a
//! differently scrambled Xen p2m each time
//! (`pvops_integration::differential`).

use proptest::prelude::*;
use pvops_integration::differential::{run_sequence_seeded, Op};
use pvops_native as _;
use pvops_xen64 as _;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        6 => (0..4usize, 0..30u64, 1..1000u64).prop_map(|(space, page, tag)| Op::Map { space, page, tag }),
        2 => (0..4usize, 0..30u64).prop_map(|(space, page)| Op::Unmap { space, page }),
        1 => (0..4usize).prop_map(|space| Op::Fork { space }),
        3 => (0..4usize).prop_map(|space| Op::Switch { space }),
        1 => Just(Op::SwitchInit),
        1 => (0..4usize).prop_map(|space| Op::Exit { space }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_address_space_sequences_agree_on_every_backend(
        ops in prop::collection::vec(op(), 1..40),
        p2m_seed in 1..1000u64,
    ) {
        prop_assert_eq!(run_sequence_seeded(&ops, p2m_seed), Ok(()));
    }
}
