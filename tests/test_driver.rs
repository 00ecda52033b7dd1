//! The libvirt hypervisor layer against libvirt's built-in test driver: fast,
//! no libvirtd. Each test opens its own connection, so state never leaks between tests.

mod common;

use virt_persona::hypervisor::libvirt::LibvirtHypervisor;
use virt_persona::hypervisor::{
    ApplyScope, DomainState, Hypervisor, HypervisorError, ReadScope, StatGroups,
};
use virt_persona::model::tuning::{Bandwidth, BlkioField, Change, Direction, Knob, KnobValue};

fn host_uri() -> String {
    format!(
        "test://{}/fixtures/test-host.xml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn connect() -> LibvirtHypervisor {
    LibvirtHypervisor::connect(&host_uri()).expect("test driver connects")
}

#[test]
fn lists_fixture_domains_with_devices_and_tags() {
    let hv = connect();
    let doms = hv.list_domains().unwrap();
    let names: Vec<_> = doms.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    let web2 = doms.iter().find(|d| d.name == "web-2").unwrap();
    assert_eq!(web2.vcpus, 4);
    assert_eq!(web2.state, DomainState::Running);
    assert_eq!(web2.memory_kib, 2_097_152);
    assert_eq!(
        web2.disks
            .iter()
            .map(|d| d.target.as_str())
            .collect::<Vec<_>>(),
        ["vda", "vdb"]
    );
    assert_eq!(web2.interfaces.len(), 2);
    assert!(web2
        .interfaces
        .iter()
        .all(|i| i.target.is_some() && i.mac.is_some()));
    assert_eq!(web2.tags, ["web", "prod"]);
    let batch = doms.iter().find(|d| d.name == "batch-1").unwrap();
    assert_eq!(batch.state, DomainState::ShutOff);
    assert_eq!(batch.id, None);
}

#[test]
fn domain_by_name_id_and_uuid() {
    let hv = connect();
    let by_name = hv.domain("db-1").unwrap();
    let id = by_name.id.unwrap().to_string();
    assert_eq!(hv.domain(&id).unwrap().name, "db-1");
    assert_eq!(hv.domain(&by_name.uuid).unwrap().name, "db-1");
    assert_eq!(
        hv.domain("nope").unwrap_err(),
        HypervisorError::NoDomain("nope".into())
    );
}

#[test]
fn tags_round_trip_through_metadata() {
    let hv = connect();
    hv.set_tags("web-1", &["web".into(), "canary".into()])
        .unwrap();
    assert_eq!(hv.domain("web-1").unwrap().tags, ["web", "canary"]);
    hv.set_tags("web-1", &[]).unwrap();
    assert!(hv.domain("web-1").unwrap().tags.is_empty());
    assert!(matches!(
        hv.set_tags("ghost", &["x".into()]),
        Err(HypervisorError::NoDomain(_))
    ));
}

#[test]
fn bulk_stats_cover_every_active_domain_in_one_call() {
    let hv = connect();
    let stats = hv.all_stats(StatGroups::ALL).unwrap();
    let mut names: Vec<_> = stats.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["db-1", "desk-1", "web-1", "web-2"]);
    assert!(stats
        .iter()
        .all(|s| s.state == Some(DomainState::Running) && s.uuid.len() == 36));
}

#[test]
fn every_test_driver_knob_sets_reads_back_and_restores() {
    let hv = connect();
    let dom = "web-2";
    let original = hv.tuning(dom, ReadScope::Current).unwrap();
    assert_eq!(original.vcpu_pin.len(), 4, "{original:?}");
    let iface = original
        .interfaces
        .keys()
        .next()
        .cloned()
        .expect("an interface");
    let changes = vec![
        Change {
            knob: Knob::VcpuPin { vcpu: 1 },
            value: KnobValue::CpuSet("2-3".parse().unwrap()),
        },
        Change {
            knob: Knob::MemoryHardLimit,
            value: KnobValue::Unsigned(4 << 20),
        },
        Change {
            knob: Knob::MemorySoftLimit,
            value: KnobValue::Unsigned(2 << 20),
        },
        Change {
            knob: Knob::MemorySwapHardLimit,
            value: KnobValue::Unsigned(6 << 20),
        },
        Change {
            knob: Knob::BlkioWeight,
            value: KnobValue::Unsigned(800),
        },
        Change {
            knob: Knob::BlkioDevice {
                path: "/dev/sda".into(),
                field: BlkioField::Weight,
            },
            value: KnobValue::Unsigned(500),
        },
        Change {
            knob: Knob::BlkioDevice {
                path: "/dev/sda".into(),
                field: BlkioField::ReadIops,
            },
            value: KnobValue::Unsigned(2000),
        },
        Change {
            knob: Knob::Interface {
                target: iface.clone(),
                direction: Direction::Inbound,
            },
            value: KnobValue::Bandwidth(Bandwidth {
                average: 102_400,
                peak: 204_800,
                burst: 4096,
            }),
        },
        Change {
            knob: Knob::Interface {
                target: iface.clone(),
                direction: Direction::Outbound,
            },
            value: KnobValue::Bandwidth(Bandwidth {
                average: 51_200,
                peak: 0,
                burst: 0,
            }),
        },
    ];
    for c in &changes {
        hv.apply(dom, c, ApplyScope::default())
            .unwrap_or_else(|e| panic!("{c}: {e}"));
        let now = hv.tuning(dom, ReadScope::Current).unwrap();
        assert_eq!(now.get(&c.knob).as_ref(), Some(&c.value), "{c} read back");
    }
    // restore every knob the test touched that had a value before
    for c in changes.iter().rev() {
        if let Some(v) = original.get(&c.knob) {
            hv.apply(
                dom,
                &Change {
                    knob: c.knob.clone(),
                    value: v,
                },
                ApplyScope::default(),
            )
            .unwrap();
        }
    }
    let after = hv.tuning(dom, ReadScope::Current).unwrap();
    let mut restored = 0;
    for c in &changes {
        if let Some(v) = original.get(&c.knob) {
            assert_eq!(after.get(&c.knob), Some(v), "{} restored", c.knob);
            restored += 1;
        }
    }
    assert!(
        restored >= 5,
        "the test driver reports most knobs: {original:?}"
    );
}

#[test]
fn bad_input_gets_typed_errors_naming_domain_and_knob() {
    let hv = connect();
    let pin = |set: &str| Change {
        knob: Knob::VcpuPin { vcpu: 0 },
        value: KnobValue::CpuSet(set.parse().unwrap()),
    };
    match hv.apply("web-1", &pin("0-200"), ApplyScope::default()) {
        Err(HypervisorError::Invalid {
            domain,
            knob,
            reason,
        }) => {
            assert_eq!(domain, "web-1");
            assert_eq!(knob, "vcpu_pin[0]");
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        hv.apply("ghost", &pin("0"), ApplyScope::default())
            .unwrap_err(),
        HypervisorError::NoDomain("ghost".into())
    );
    // the test driver would take any weight: the range is checked before libvirt
    let bad_weight = Change {
        knob: Knob::BlkioWeight,
        value: KnobValue::Unsigned(5),
    };
    match hv.apply("web-1", &bad_weight, ApplyScope::default()) {
        Err(HypervisorError::Invalid {
            domain,
            knob,
            reason,
        }) => {
            assert_eq!((domain.as_str(), knob.as_str()), ("web-1", "blkio_weight"));
            assert_eq!(reason, "5 is out of range: expected 100..1000");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let wrong_type = Change {
        knob: Knob::CpuShares,
        value: KnobValue::Signed(-5),
    };
    assert!(matches!(
        hv.apply("web-1", &wrong_type, ApplyScope::default()),
        Err(HypervisorError::Invalid { .. })
    ));
    let no_iface = Change {
        knob: Knob::Interface {
            target: "vnet99".into(),
            direction: Direction::Inbound,
        },
        value: KnobValue::Bandwidth(Bandwidth {
            average: 1,
            peak: 0,
            burst: 0,
        }),
    };
    let message = common::knob_error(
        hv.apply("web-1", &no_iface, ApplyScope::default()),
        "web-1",
        "interface[vnet99].inbound",
    );
    assert!(
        message.contains("vnet99"),
        "libvirt's message is kept: {message}"
    );
}

/// The test driver's scheduler has only `weight`: cpu_shares and the vCPU,
/// emulator and whole-domain bandwidth knobs are unsupported there (and read
/// as no value, so the reconciler never gets this far with them), and say so as their own error kind
/// (skipped by the reconciler, not retried), unlike a bad value or device.
#[test]
fn knobs_the_driver_cannot_apply_are_unsupported_not_failures() {
    let hv = connect();
    for (knob, value) in [
        (Knob::CpuShares, KnobValue::Unsigned(2048)),
        (Knob::VcpuQuota, KnobValue::Signed(50_000)),
        (Knob::VcpuPeriod, KnobValue::Unsigned(100_000)),
        (Knob::EmulatorPeriod, KnobValue::Unsigned(100_000)),
        (Knob::EmulatorQuota, KnobValue::Signed(20_000)),
        (Knob::GlobalPeriod, KnobValue::Unsigned(100_000)),
        (Knob::GlobalQuota, KnobValue::Signed(80_000)),
    ] {
        let name = knob.to_string();
        match hv.apply("web-1", &Change { knob, value }, ApplyScope::default()) {
            Err(HypervisorError::Unsupported {
                domain,
                knob,
                message,
            }) => {
                assert_eq!((domain.as_str(), knob.as_str()), ("web-1", name.as_str()));
                assert!(
                    message.contains("unsupported by this hypervisor driver")
                        && message.contains(&name),
                    "{message}"
                );
            }
            other => panic!("{name}: expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn host_facts() {
    let hv = connect();
    let h = hv.host().unwrap();
    assert_eq!(h.cpus, 8);
    // the test driver reports CPUs 0, 2 and 4 online
    assert_eq!(h.online.to_string(), "0,2,4");
    assert_eq!(h.memory_kib, 33_554_432);
}

#[test]
fn cannot_connect_is_a_typed_error() {
    let err = LibvirtHypervisor::connect("test:///no/such/file.xml")
        .err()
        .expect("fails");
    assert!(matches!(err, HypervisorError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("test:///no/such/file.xml"));
}

/// A disk's throttle (`virsh blkdeviotune`) is written as its whole set and
/// read back as libvirt has it; writing the "none" set (all zero) removes it.
/// (The test driver refuses a limit whose `_max` is 0, unlike QEMU: the set
/// here gives both.)
#[test]
fn a_disk_throttle_is_set_read_back_and_removed() {
    use virt_persona::model::knobs::DiskField;
    use virt_persona::model::tuning::DiskThrottle;
    let hv = connect();
    let before = hv.tuning("web-2", ReadScope::Current).unwrap();
    assert!(
        before.disks.is_empty(),
        "no throttle to begin with: {before:?}"
    );
    let set = DiskThrottle {
        limits: [
            (DiskField::TotalBytesSec, 10 << 20),
            (DiskField::TotalBytesSecMax, 20 << 20),
        ]
        .into_iter()
        .collect(),
        group: None,
    };
    let knob = Knob::Disk {
        target: "vdb".into(),
    };
    hv.apply(
        "web-2",
        &Change {
            knob: knob.clone(),
            value: KnobValue::Throttle {
                throttle: set.clone(),
            },
        },
        ApplyScope::default(),
    )
    .unwrap();
    let on = hv.tuning("web-2", ReadScope::Current).unwrap();
    assert_eq!(on.disks.get("vdb"), Some(&set), "{on:?}");
    assert!(!on.disks.contains_key("vda"), "the other disk untouched");
    hv.apply(
        "web-2",
        &Change {
            value: knob.absent().unwrap(),
            knob,
        },
        ApplyScope::default(),
    )
    .unwrap();
    assert_eq!(hv.tuning("web-2", ReadScope::Current).unwrap(), before);

    // libvirt's rules are checked before the call, with the knob named
    let bad = DiskThrottle {
        limits: [(DiskField::ReadIopsSecMax, 10)].into_iter().collect(),
        group: None,
    };
    match hv.apply(
        "web-2",
        &Change {
            knob: Knob::Disk {
                target: "vda".into(),
            },
            value: KnobValue::Throttle { throttle: bad },
        },
        ApplyScope::default(),
    ) {
        Err(HypervisorError::Invalid { knob, reason, .. }) => {
            assert_eq!(knob, "disk[vda]");
            assert!(reason.contains("needs read_iops_sec"), "{reason}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The new knobs on a driver that has none of them: nothing read for the
/// scheduler caps, the NUMA nodeset or iothreads (the fixture domains have
/// none), and the iothread caps refused as unsupported with the reason.
#[test]
fn knobs_the_test_driver_lacks_read_as_no_value_and_are_refused_with_the_reason() {
    let hv = connect();
    let t = hv.tuning("web-1", ReadScope::Current).unwrap();
    assert_eq!(
        (t.emulator_quota, t.global_quota, t.iothread_quota),
        (None, None, None),
        "{t:?}"
    );
    assert!(t.iothread_pin.is_empty(), "{t:?}");
    match hv.apply(
        "web-1",
        &Change {
            knob: Knob::IothreadQuota,
            value: KnobValue::Signed(5_000),
        },
        ApplyScope::default(),
    ) {
        Err(HypervisorError::Unsupported { knob, message, .. }) => {
            assert_eq!(knob, "iothread_quota");
            assert!(message.contains("no iothreads"), "{message}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}
