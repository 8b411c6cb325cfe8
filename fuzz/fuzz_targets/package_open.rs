//! Packages are untrusted: opening arbitrary bytes must not panic, whatever the trust store.
#![no_main]

use impeller_core::package::{Limits, Signer25519, TrustStore, open, read_unverified};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut trust = TrustStore::new();
    trust.add(Signer25519::from_secret([1; 32]).verifying_key());
    let limits = Limits { max_bytes: 1 << 20, max_unpacked_bytes: 4 << 20 };
    let _ = open(data, &trust, limits);
    let _ = read_unverified(data, limits);
});
