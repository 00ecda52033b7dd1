//! Fuzzes what a gossip datagram meets: the opener (authentication,
//! freshness, replay window) with any bytes, and — as if the key had leaked —
//! the state item decoder and the merge with any payload. Never a panic; a
//! random datagram never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_persona::cluster::seal::{KeyRing, Opener, Sealer};
use virt_persona::cluster::state::{ClusterState, Item};

fuzz_target!(|data: &[u8]| {
    let ring = KeyRing::new(&[[7u8; 32]]);
    let mut o = Opener::new(ring.clone(), "fuzz");
    assert!(o.open(data, 1_800_000_000_000).is_err(), "random bytes opened");
    // a sealed payload of fuzz bytes opens once, then is a replay
    let mut s = Sealer::new(ring, "fuzz", [1, 2, 3, 4]);
    let p = s.seal(data, 1_800_000_000_000);
    if p.len() <= virt_persona::cluster::seal::MAX_DATAGRAM {
        assert_eq!(o.open(&p, 1_800_000_000_000).as_deref(), Ok(data));
        assert!(o.open(&p, 1_800_000_000_000).is_err());
    }
    if let Ok(item) = Item::decode(data) {
        let mut st = ClusterState::default();
        st.apply(&item, 0);
        assert!(!st.apply(&item, 0), "the same item twice is not new");
    }
});
