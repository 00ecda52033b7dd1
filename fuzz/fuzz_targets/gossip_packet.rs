//! Fuzzes what a gossip datagram meets: the opener (authentication,
//! freshness, replay window) with any bytes, and — as if the key had leaked —
//! the driver (frames, digests, item answers), the state item decoder and
//! the merge with any payload. Never a panic; a
//! random datagram never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_persona::cluster::driver::{Driver, DriverConfig};
use virt_persona::cluster::seal::{KeyRing, Opener, Sealer};
use virt_persona::cluster::state::{ClusterState, Item};

fuzz_target!(|data: &[u8]| {
    let ring = KeyRing::new(&[[7u8; 32]]);
    let me: std::net::SocketAddr = "127.0.0.1:7946".parse().unwrap();
    let other: std::net::SocketAddr = "127.0.0.1:7947".parse().unwrap();
    let mut o = Opener::new(ring.clone(), "fuzz");
    assert!(
        o.open(data, 1_800_000_000_000, |_| true).is_err(),
        "random bytes opened"
    );
    // a sealed payload of fuzz bytes opens once, at its receiver only
    let mut s = Sealer::new(ring, "fuzz", other, 1);
    let p = s.seal(data, me, 1_800_000_000_000, 1_800_000_000_000);
    if p.len() <= virt_persona::cluster::seal::MAX_DATAGRAM {
        assert!(o.open(&p, 1_800_000_000_000, |to| to == other).is_err());
        let opened = o.open(&p, 1_800_000_000_000, |to| to == me);
        assert_eq!(opened.map(|x| x.payload).as_deref(), Ok(data));
        assert!(o.open(&p, 1_800_000_000_000, |to| to == me).is_err());
    }
    // any authentic payload: the driver refuses or takes it, never panics
    let shared = std::sync::Arc::new(virt_persona::cluster::node::Shared::default());
    let mut driver = Driver::new(
        DriverConfig {
            node: "fuzz".into(),
            addr: "127.0.0.1:7946".parse().unwrap(),
            bump: 1,
            seeds: Vec::new(),
            expected_members: 4,
            rng_seed: 1,
        },
        shared,
        1_800_000_000_000,
    );
    let _ = driver.receive(1_800_000_000_000, "127.0.0.1:7947".parse().unwrap(), data);
    if let Ok(item) = Item::decode(data) {
        let mut st = ClusterState::default();
        st.apply(&item, 0);
        assert!(!st.apply(&item, 0), "the same item twice is not new");
    }
});
