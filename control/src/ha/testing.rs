//! Helpers for tests of the HA modules (and of other crates' HA tests: feature `testing`).

use proto::policy::Prefix;
use proto::sa::{AeadAlg, Lifetime, Resume, SaKeys, SaParams, UdpEncap};
use proto::{SaId, Spi};

/// The parameters of a CHILD SA direction with a fixed test key.
pub fn child_params(id: SaId, spi: u32) -> SaParams {
    SaParams {
        id,
        spi: Spi(spi),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[0xaa; 20]).expect("a 128-bit key"),
        esn: true,
        replay_window: 1024,
        local: "192.0.2.1".parse().expect("an address"),
        remote: "198.51.100.7".parse().expect("an address"),
        encap: Some(UdpEncap {
            local_port: 4500,
            remote_port: 4500,
        }),
        local_ts: Prefix::new("10.1.0.0".parse().expect("an address"), 16).expect("a prefix"),
        remote_ts: Prefix::new("10.99.0.1".parse().expect("an address"), 32).expect("a prefix"),
        outer_ttl: 64,
        lifetime: Lifetime::default(),
        resume: Resume::default(),
        checkpoint: None,
    }
}
