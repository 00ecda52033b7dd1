//! The difference between a domain's current tuning and the tuning it should
//! have, as the fewest single-knob changes, ordered so that limits never
//! conflict midway (pure).
//!
//! Only knobs the desired tuning has a value for are touched. Nested limits
//! (the knob table's `nest` rows: memory `soft <= hard <= swap`) are ordered so
//! that the nesting holds after every step whenever it holds before and after:
//! raising moves the outer limit first, lowering the inner one.

use crate::model::tuning::{Change, Knob, KnobValue, Tuning};

/// Changes that turn `current` into `desired` on every knob `desired` sets.
pub fn plan(current: &Tuning, desired: &Tuning) -> Vec<Change> {
    let mut changes: Vec<Change> = desired
        .changes()
        .into_iter()
        .filter(|c| current.get_or_absent(&c.knob).as_ref() != Some(&c.value))
        .collect();
    order_memory(current, &mut changes);
    changes
}

/// The rank of a knob among the nested limits, inner first.
fn nest(k: &Knob) -> Option<u8> {
    k.row().and_then(|r| r.nest)
}

fn is_memory(k: &Knob) -> bool {
    nest(k).is_some()
}

/// Whether the nested limits that are set keep their order (inner <= outer).
fn consistent(t: &Tuning) -> bool {
    let mut set: Vec<(u8, u64)> = Knob::SCALARS
        .iter()
        .filter_map(|k| match (nest(k), t.get(k)) {
            (Some(rank), Some(KnobValue::Unsigned(v))) => Some((rank, v)),
            _ => None,
        })
        .collect();
    set.sort_unstable();
    set.windows(2).all(|w| w[0].1 <= w[1].1)
}

/// Reorders the memory changes (kept where the first of them stood) into an
/// order whose every intermediate state is consistent, if there is one.
fn order_memory(current: &Tuning, changes: &mut Vec<Change>) {
    let mem: Vec<Change> = changes
        .iter()
        .filter(|c| is_memory(&c.knob))
        .cloned()
        .collect();
    if mem.len() < 2 {
        return;
    }
    let Some(pos) = changes.iter().position(|c| is_memory(&c.knob)) else {
        return;
    };
    changes.retain(|c| !is_memory(&c.knob));
    let n = mem.len();
    let mut best: Option<Vec<Change>> = None;
    let perms: &[&[usize]] = if n == 2 {
        &[&[0, 1], &[1, 0]]
    } else {
        &[
            &[0, 1, 2],
            &[0, 2, 1],
            &[1, 0, 2],
            &[1, 2, 0],
            &[2, 0, 1],
            &[2, 1, 0],
        ]
    };
    for p in perms {
        let mut t = current.clone();
        let mut ok = true;
        for &i in p.iter() {
            t.set(&mem[i]);
            if !consistent(&t) {
                ok = false;
                break;
            }
        }
        if ok {
            best = Some(p.iter().map(|&i| mem[i].clone()).collect());
            break;
        }
    }
    let ordered = best.unwrap_or_else(|| {
        // no consistent path (the start or the end is inconsistent): raise outer first
        let raising = mem.iter().any(|c| match (&c.value, current.get(&c.knob)) {
            (KnobValue::Unsigned(v), Some(KnobValue::Unsigned(cur))) => *v > cur,
            _ => false,
        });
        // outermost first
        let rank = |k: &Knob| u8::MAX - nest(k).unwrap_or(0);
        let mut m = mem.clone();
        m.sort_by_key(|c| {
            if raising {
                rank(&c.knob)
            } else {
                u8::MAX - rank(&c.knob)
            }
        });
        m
    });
    for (i, c) in ordered.into_iter().enumerate() {
        changes.insert((pos + i).min(changes.len()), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tuning::{Bandwidth, Direction, InterfaceTuning, MEMORY_UNLIMITED_KIB};
    use proptest::prelude::*;

    fn mem(soft: u64, hard: u64, swap: u64) -> Tuning {
        Tuning {
            memory_soft_limit: Some(soft),
            memory_hard_limit: Some(hard),
            memory_swap_hard_limit: Some(swap),
            ..Default::default()
        }
    }

    fn apply(mut t: Tuning, changes: &[Change]) -> (Tuning, bool) {
        let mut always_consistent = true;
        for c in changes {
            t.set(c);
            always_consistent &= consistent(&t);
        }
        (t, always_consistent)
    }

    #[test]
    fn nothing_to_do_when_already_there() {
        let t = mem(1, 2, 3);
        assert!(plan(&t, &t).is_empty());
        assert!(
            plan(&t, &Tuning::default()).is_empty(),
            "an empty desire touches nothing"
        );
    }

    #[test]
    fn raising_moves_the_outer_limit_first_and_lowering_the_inner() {
        let up = plan(&mem(100, 200, 300), &mem(1000, 2000, 3000));
        let order: Vec<String> = up.iter().map(|c| c.knob.to_string()).collect();
        assert_eq!(
            order,
            [
                "memory_swap_hard_limit",
                "memory_hard_limit",
                "memory_soft_limit"
            ]
        );
        let down = plan(&mem(1000, 2000, 3000), &mem(100, 200, 300));
        let order: Vec<String> = down.iter().map(|c| c.knob.to_string()).collect();
        assert_eq!(
            order,
            [
                "memory_soft_limit",
                "memory_hard_limit",
                "memory_swap_hard_limit"
            ]
        );
        let u = MEMORY_UNLIMITED_KIB;
        let (_, ok) = apply(
            mem(u, u, u),
            &plan(&mem(u, u, u), &mem(1 << 20, 2 << 20, 3 << 20)),
        );
        assert!(ok, "from unlimited");
    }

    #[test]
    fn only_differences_are_planned() {
        let mut cur = mem(1, 2, 3);
        cur.cpu_shares = Some(1024);
        cur.interfaces.insert(
            "vnet0".into(),
            InterfaceTuning {
                inbound: Some(Bandwidth::default()),
                outbound: None,
            },
        );
        let mut want = Tuning {
            cpu_shares: Some(1024),
            memory_hard_limit: Some(2),
            ..Default::default()
        };
        assert!(plan(&cur, &want).is_empty());
        want.interfaces.insert(
            "vnet0".into(),
            InterfaceTuning {
                inbound: Some(Bandwidth {
                    average: 5,
                    peak: 0,
                    burst: 0,
                }),
                outbound: None,
            },
        );
        let p = plan(&cur, &want);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].knob.to_string(), "interface[vnet0].inbound");
    }

    fn arb_tuning() -> impl Strategy<Value = Tuning> {
        (
            prop::option::of(2u64..262_144),
            prop::option::of(-1i64..100_000),
            prop::option::of((1u64..1000, 0u64..1000, 0u64..1000)),
            prop::collection::btree_map(0u32..4, prop::collection::btree_set(0u32..8, 1..4), 0..4),
        )
            .prop_map(|(shares, quota, mem3, pins)| {
                let mut t = Tuning {
                    cpu_shares: shares,
                    vcpu_quota: quota,
                    ..Default::default()
                };
                if let Some((soft, d1, d2)) = mem3 {
                    t.memory_soft_limit = Some(soft);
                    t.memory_hard_limit = Some(soft + d1);
                    t.memory_swap_hard_limit = Some(soft + d1 + d2);
                }
                t.vcpu_pin = pins
                    .into_iter()
                    .map(|(k, v)| (k, crate::units::CpuSet::from_cpus(v)))
                    .collect();
                t
            })
    }

    /// A tuning as a hypervisor reads it, with per-device blkio settings that
    /// may be absent.
    fn arb_read() -> impl Strategy<Value = Tuning> {
        let dev = (
            prop::option::of(100u32..1000),
            prop::option::of(1u64..10_000),
            prop::option::of(1u64..10_000),
        );
        (
            arb_tuning(),
            prop::option::of(100u32..1000),
            prop::collection::btree_map(
                prop::sample::select(vec!["/dev/vda", "/dev/sda", "/dev/sdb"]),
                dev,
                0..3,
            ),
        )
            .prop_map(|(mut t, weight, devs)| {
                // a hypervisor always reports these (the defaults when never set);
                // only per-device blkio settings and bandwidth can be absent
                t.blkio_weight = Some(weight.unwrap_or(100));
                t.cpu_shares.get_or_insert(1024);
                t.vcpu_quota.get_or_insert(-1);
                let u = MEMORY_UNLIMITED_KIB;
                if t.memory_soft_limit.is_none() {
                    (
                        t.memory_soft_limit,
                        t.memory_hard_limit,
                        t.memory_swap_hard_limit,
                    ) = (Some(u), Some(u), Some(u));
                }
                for vcpu in 0..4 {
                    t.vcpu_pin
                        .entry(vcpu)
                        .or_insert_with(|| crate::units::CpuSet::from_cpus(0..8));
                }
                for (path, (w, r, wr)) in devs {
                    t.blkio_devices.insert(
                        path.to_string(),
                        crate::model::tuning::BlkioDeviceTuning {
                            weight: w,
                            read_iops: r,
                            write_iops: wr,
                            ..Default::default()
                        },
                    );
                }
                t.normalized()
            })
    }

    /// What a persona asks: only the knobs it names.
    fn arb_persona() -> impl Strategy<Value = Tuning> {
        (
            arb_read(),
            prop::collection::btree_map(
                prop::sample::select(vec!["/dev/vda", "/dev/sda", "/dev/sdc"]),
                1u64..5000,
                0..3,
            ),
        )
            .prop_map(|(mut t, iops)| {
                for (path, v) in iops {
                    t.blkio_devices
                        .entry(path.to_string())
                        .or_default()
                        .read_iops = Some(v);
                }
                t
            })
    }

    /// The reconciler's cycle on one domain: record the original of every knob
    /// the persona changes (absent included), apply, then restore the baseline.
    fn wear_and_revert(orig: &Tuning, persona: &Tuning) -> (Tuning, Tuning) {
        let mut desired = orig.clone();
        for c in persona.changes() {
            desired.set(&c);
        }
        // as the reconciler: a knob without a readable original is not changed
        let on: Vec<Change> = plan(orig, &desired)
            .into_iter()
            .filter(|c| orig.get_or_absent(&c.knob).is_some())
            .collect();
        let mut baseline = Tuning::default();
        for c in &on {
            if let Some(value) = orig.get_or_absent(&c.knob) {
                baseline.set(&Change {
                    knob: c.knob.clone(),
                    value,
                });
            }
        }
        let (worn, _) = apply(orig.clone(), &on);
        let worn = worn.normalized();
        let off = plan(&worn, &baseline);
        let (back, _) = apply(worn.clone(), &off);
        (worn, back.normalized())
    }

    #[test]
    fn a_throttle_that_did_not_exist_is_removed_on_revert() {
        let orig = Tuning {
            blkio_weight: Some(100),
            ..Default::default()
        };
        let mut persona = Tuning {
            blkio_weight: Some(777),
            ..Default::default()
        };
        persona.blkio_devices.insert(
            "/dev/vda".into(),
            crate::model::tuning::BlkioDeviceTuning {
                read_iops: Some(2000),
                ..Default::default()
            },
        );
        let (worn, back) = wear_and_revert(&orig, &persona);
        assert_eq!(worn.blkio_devices["/dev/vda"].read_iops, Some(2000));
        assert_eq!(back, orig, "no throttle left behind");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn apply_then_revert_gives_back_the_baseline_absent_values_included(
            orig in arb_read(),
            persona in arb_persona(),
        ) {
            let (worn, back) = wear_and_revert(&orig, &persona);
            for c in persona.changes() {
                prop_assert_eq!(worn.get_or_absent(&c.knob), Some(c.value.clone()));
            }
            prop_assert_eq!(back, orig);
        }
    }

    /// A value of a row's knob inside its range, in libvirt's units.
    fn arb_value(input: crate::model::knobs::Input) -> BoxedStrategy<KnobValue> {
        use crate::model::knobs::{Input, QUOTA_MIN_US};
        match input {
            Input::CpuSet | Input::NodeSet => prop::collection::btree_set(0u32..8, 1..4)
                .prop_map(|s| KnobValue::CpuSet(crate::units::CpuSet::from_cpus(s)))
                .boxed(),
            Input::Count { min, max } | Input::Micros { min, max } => {
                (min..=max).prop_map(KnobValue::Unsigned).boxed()
            }
            Input::Quota => prop_oneof![Just(-1i64), QUOTA_MIN_US..=1_000_000i64]
                .prop_map(KnobValue::Signed)
                .boxed(),
            Input::Memory => prop_oneof![Just(MEMORY_UNLIMITED_KIB), 1u64..(1 << 30)]
                .prop_map(KnobValue::Unsigned)
                .boxed(),
        }
    }

    /// Every row of the knob table, each with a value (in its range) with
    /// probability `p`, else none: as a host reads a domain (none where it
    /// reports no value) or as a persona asks (only the knobs it names). A
    /// per-device row has a value for each of four devices with probability
    /// `p`, two disks a throttle set drawn from the disk field table, and
    /// two interfaces their bandwidth per direction (`read`: as a host reads
    /// them, always both directions).
    fn arb_rows(p: f64, read: bool) -> impl Strategy<Value = Tuning> {
        // one knob set with probability p to a value in its range
        let change = |knob: Knob, value: BoxedStrategy<KnobValue>| {
            prop::option::weighted(p, value)
                .prop_map(move |v| {
                    v.map(|value| Change {
                        knob: knob.clone(),
                        value,
                    })
                })
                .boxed()
        };
        let mut rows: Vec<BoxedStrategy<Option<Change>>> = Knob::SCALARS
            .iter()
            .filter_map(|k| Some(change(k.clone(), arb_value(k.row()?.input))))
            .collect();
        for row in crate::model::tuning::DEVICE_ROWS {
            // devices every index kind can name
            for device in ["1", "2", "3", "4"] {
                if let Some(knob) = Knob::for_device(row.key, device) {
                    rows.push(change(knob, arb_value(row.input)));
                }
            }
        }
        // QEMU's throttle of two disks, each a whole set of limits (and a
        // group) with probability p; no entry is no throttle, as libvirt reads it
        use crate::model::knobs::DiskField;
        use crate::model::tuning::DiskThrottle;
        for target in ["vda", "vdb"] {
            let throttle = (
                prop::collection::btree_map(
                    prop::sample::select(DiskField::ALL.to_vec()),
                    1u64..1_000_000_000,
                    1..6,
                ),
                prop::option::weighted(0.3, prop::sample::select(vec!["g1", "g2"])),
            )
                .prop_map(|(limits, group)| KnobValue::Throttle {
                    throttle: DiskThrottle {
                        limits,
                        group: group.map(str::to_string),
                    },
                });
            let knob = Knob::Disk {
                target: target.to_string(),
            };
            rows.push(change(knob, throttle.boxed()));
        }
        // interface bandwidth per direction of two interfaces: a host reads
        // both directions of every interface the domain has (0 = no limit),
        // a persona names some
        for target in ["vnet0", "vnet1"] {
            for direction in [Direction::Inbound, Direction::Outbound] {
                let bw = (0u32..100_000, 0u32..100_000, 0u32..100_000)
                    .prop_map(|(average, peak, burst)| {
                        KnobValue::Bandwidth(Bandwidth {
                            average,
                            peak,
                            burst,
                        })
                    })
                    .boxed();
                let knob = Knob::Interface {
                    target: target.to_string(),
                    direction,
                };
                rows.push(if read {
                    bw.prop_map(move |value| {
                        Some(Change {
                            knob: knob.clone(),
                            value,
                        })
                    })
                    .boxed()
                } else {
                    change(knob, bw)
                });
            }
        }
        rows.prop_map(|changes| {
            let mut t = Tuning::default();
            for c in changes.iter().flatten() {
                t.set(c);
            }
            t
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Every knob of the table, absent values included: wearing a persona
        /// and reverting gives back exactly what was read, and the persona's
        /// values are worn wherever an original could be read.
        #[test]
        fn every_knob_of_the_table_reverts_exactly(
            orig in arb_rows(0.85, true),
            persona in arb_rows(0.5, false),
        ) {
            let (worn, back) = wear_and_revert(&orig, &persona);
            for c in persona.changes() {
                if orig.get_or_absent(&c.knob).is_some() {
                    prop_assert_eq!(worn.get(&c.knob), Some(c.value.clone()), "{}", c.knob);
                } else {
                    prop_assert_eq!(worn.get(&c.knob), None, "{} has no original", c.knob);
                }
            }
            prop_assert_eq!(back, orig);
        }
    }

    #[test]
    fn the_property_strategy_covers_every_row() {
        // every row can be generated: a row added to the table is in the
        // property test above without a line here
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut seen = std::collections::BTreeSet::new();
        let mut fields = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let t = proptest::strategy::ValueTree::current(
                &arb_rows(0.5, false).new_tree(&mut runner).unwrap(),
            );
            for c in t.changes() {
                seen.insert(c.knob.key());
                if let KnobValue::Throttle { throttle } = &c.value {
                    fields.extend(throttle.limits.keys().copied());
                }
            }
        }
        let all: std::collections::BTreeSet<&str> = crate::model::tuning::ROWS
            .iter()
            .map(|r| r.key)
            .chain(crate::model::tuning::DEVICE_ROWS.iter().map(|r| r.key))
            .chain(["disk", "interface"])
            .collect();
        assert_eq!(seen, all);
        // every disk throttle field of the field table
        assert_eq!(fields.len(), crate::model::knobs::DiskField::ALL.len());
    }

    proptest! {
        #[test]
        fn plan_of_x_to_x_is_empty(x in arb_tuning()) {
            prop_assert!(plan(&x, &x).is_empty());
        }

        #[test]
        fn applying_plan_a_b_to_a_gives_b(a in arb_tuning(), b in arb_tuning()) {
            let changes = plan(&a, &b);
            let (got, always_consistent) = apply(a.clone(), &changes);
            for c in b.changes() {
                prop_assert_eq!(got.get(&c.knob), Some(c.value.clone()));
            }
            // knobs b does not set are untouched
            for c in a.changes() {
                if b.get(&c.knob).is_none() {
                    prop_assert_eq!(got.get(&c.knob), Some(c.value));
                }
            }
            // both ends consistent and both set all three limits: every step is consistent
            if a.memory_soft_limit.is_some() && b.memory_soft_limit.is_some() {
                prop_assert!(always_consistent, "{:?}", changes);
            }
            // the fewest changes: no knob twice, none already right
            prop_assert!(changes.iter().all(|c| a.get(&c.knob) != Some(c.value.clone())));
        }
    }
}
