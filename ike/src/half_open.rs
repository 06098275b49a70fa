//! The responder's half-open IKE SAs (IKE_SA_INIT answered, IKE_AUTH not yet): found by
//! (initiator SPI, peer address) to spot retransmitted requests, and counted in total and per
//! source so the endpoint can demand cookies and refuse new ones past its caps (RFC 7296 2.6,
//! RFC 8019 5).
//!
//! A source is an IPv4 address or an IPv6 /64 (one host may hold a whole /64, as RFC 8019 5
//! notes).
//!
//! Owns: the table and its counts, which always agree (one entry per half-open IKE SA).
//! Must never: hold two entries for one key; keep a per-source count at zero.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::ids::{IkeSaId, IkeSpi};

/// (initiator SPI, peer address): a responder's key for an IKE_SA_INIT request.
pub(crate) type InitKey = (IkeSpi, SocketAddr);

/// Where requests come from, as the per-source cap counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a.octets()),
            IpAddr::V6(a) => {
                let o = a.octets();
                let mut p = [0u8; 8];
                for (d, s) in p.iter_mut().zip(o.iter()) {
                    *d = *s;
                }
                Source::V6(p)
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct HalfOpen {
    by_key: HashMap<InitKey, IkeSaId>,
    per_source: HashMap<Source, u32>,
}

impl HalfOpen {
    pub(crate) fn get(&self, key: &InitKey) -> Option<IkeSaId> {
        self.by_key.get(key).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn of_source(&self, ip: IpAddr) -> u32 {
        self.per_source.get(&Source::of(ip)).copied().unwrap_or(0)
    }

    /// Adds IKE SA `id` under `key`; false (and nothing changed) if the key is taken.
    pub(crate) fn insert(&mut self, key: InitKey, id: IkeSaId) -> bool {
        if self.by_key.contains_key(&key) {
            return false;
        }
        self.by_key.insert(key, id);
        let n = self.per_source.entry(Source::of(key.1.ip())).or_insert(0);
        *n = n.saturating_add(1);
        true
    }

    /// Takes out `key` if it is IKE SA `id`'s.
    pub(crate) fn remove(&mut self, key: &InitKey, id: IkeSaId) {
        if self.by_key.get(key) != Some(&id) {
            return;
        }
        self.by_key.remove(key);
        let s = Source::of(key.1.ip());
        if let Some(n) = self.per_source.get_mut(&s) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&s);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        self.per_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spi: u64, addr: &str) -> InitKey {
        (IkeSpi(spi), addr.parse().unwrap())
    }

    #[test]
    fn counts_follow_the_entries() {
        let mut t = HalfOpen::default();
        assert!(t.insert(key(1, "192.0.2.1:500"), IkeSaId(IkeSpi(11))));
        assert!(t.insert(key(2, "192.0.2.1:4500"), IkeSaId(IkeSpi(12))));
        assert!(
            !t.insert(key(2, "192.0.2.1:4500"), IkeSaId(IkeSpi(13))),
            "taken"
        );
        assert!(t.insert(key(1, "[2001:db8::1]:500"), IkeSaId(IkeSpi(14))));
        assert!(t.insert(key(1, "[2001:db8::ffff]:500"), IkeSaId(IkeSpi(15))));
        assert_eq!(t.len(), 4);
        assert_eq!(t.of_source("192.0.2.1".parse().unwrap()), 2);
        assert_eq!(t.of_source("2001:db8::77".parse().unwrap()), 2, "one /64");
        assert_eq!(t.of_source("2001:db8:0:1::1".parse().unwrap()), 0);
        // Only the holder's removal counts.
        t.remove(&key(2, "192.0.2.1:4500"), IkeSaId(IkeSpi(13)));
        assert_eq!(t.len(), 4);
        for (k, id) in [
            (key(1, "192.0.2.1:500"), 11),
            (key(2, "192.0.2.1:4500"), 12),
            (key(1, "[2001:db8::1]:500"), 14),
            (key(1, "[2001:db8::ffff]:500"), 15),
        ] {
            t.remove(&k, IkeSaId(IkeSpi(id)));
        }
        assert_eq!((t.len(), t.sources()), (0, 0));
    }
}
