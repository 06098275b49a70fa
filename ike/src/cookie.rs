//! The responder's IKE_SA_INIT cookies (RFC 7296 2.6): a proof that the initiator receives at
//! the address it sends from, asked for before any state or Diffie-Hellman work is spent on
//! its request.
//!
//! A cookie is `version || HMAC-SHA-256(secret, Ni | IPi | SPIi)` truncated to 16 bytes: the
//! RFC's `<VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)` with the secret as the MAC
//! key. Nothing is stored per cookie: checking one recomputes it from the request. The secret
//! is replaced every `cookie_secret_lifetime` (lazily, on the first use after that time: the
//! core has no clock of its own); the one before stays valid for `cookie_grace` after the
//! replacement, so a cookie handed out just before a rotation still opens the door. The
//! version byte says which secret made a cookie, so a check costs one MAC whatever the age.
//! A version names a secret only while that secret is kept: versions count up (wrapping) and
//! only the current and the previous secret are ever accepted.
//!
//! Owns: the secrets (zeroized on drop, never in `Debug`), making and checking cookies.
//! Must never: keep anything per request; accept a cookie made from a secret past its grace.

use core::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use ring::hmac;
use std::net::IpAddr;
use zeroize::Zeroizing;

use crate::ids::IkeSpi;
use crate::time::Instant;

/// Bytes of MAC in a cookie (after the version byte).
const MAC_LEN: usize = 16;
/// A cookie's length: version byte and MAC.
pub(crate) const COOKIE_LEN: usize = 1 + MAC_LEN;
/// The ChaCha20 stream (of the endpoint's seed) cookie secrets come from; the endpoint's own
/// generator uses stream 0.
const COOKIE_STREAM: u64 = 1;

/// One cookie secret and the version byte that names it.
struct Secret {
    version: u8,
    key: Zeroizing<[u8; 32]>,
}

impl Secret {
    fn new(version: u8, rng: &mut impl RngCore) -> Secret {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        Secret { version, key }
    }

    fn cookie(&self, ni: &[u8], ip: IpAddr, spi_i: IkeSpi) -> [u8; COOKIE_LEN] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, self.key.as_ref());
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(ni);
        match ip {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&spi_i.0.to_be_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; COOKIE_LEN];
        let (v, mac) = out.split_at_mut(1);
        v.fill(self.version);
        for (o, t) in mac.iter_mut().zip(tag.as_ref()) {
            *o = *t;
        }
        out
    }
}

/// The current cookie secret and the previous one while its grace lasts.
pub(crate) struct CookieSecrets {
    current: Secret,
    /// When `current` was made (it is replaced `lifetime` after that).
    made: Instant,
    /// The secret before `current`, and until when its cookies are accepted.
    previous: Option<(Secret, Instant)>,
    /// The endpoint's seed on a stream of its own: secrets owe nothing to the nonces and SPIs
    /// the endpoint's generator hands out.
    rng: ChaCha20Rng,
}

impl core::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieSecrets")
            .field("version", &self.current.version)
            .field("made", &self.made)
            .finish_non_exhaustive()
    }
}

impl CookieSecrets {
    pub(crate) fn new(seed: [u8; 32], now: Instant) -> CookieSecrets {
        let mut rng = ChaCha20Rng::from_seed(seed);
        rng.set_stream(COOKIE_STREAM);
        CookieSecrets {
            current: Secret::new(0, &mut rng),
            made: now,
            previous: None,
            rng,
        }
    }

    /// Replaces the secret when it is `lifetime` old; the replaced one is accepted for
    /// `grace` after the moment it was due (not after the moment we noticed: an idle
    /// endpoint must not stretch an old secret's life).
    fn rotate(&mut self, now: Instant, (lifetime, grace): (Duration, Duration)) {
        let due = self.made.saturating_add(lifetime);
        if now < due {
            return;
        }
        let next = Secret::new(self.current.version.wrapping_add(1), &mut self.rng);
        let old = core::mem::replace(&mut self.current, next);
        let until = due.saturating_add(grace);
        self.previous = (now < until).then_some((old, until));
        self.made = now;
    }

    /// The cookie for a request with nonce `ni` and initiator SPI `spi_i` from `ip`.
    pub(crate) fn make(
        &mut self,
        now: Instant,
        life: (Duration, Duration),
        ni: &[u8],
        ip: IpAddr,
        spi_i: IkeSpi,
    ) -> Vec<u8> {
        self.rotate(now, life);
        self.current.cookie(ni, ip, spi_i).to_vec()
    }

    /// Whether `cookie` is one we made for this request with the current secret, or with the
    /// previous one inside its grace. Compared in constant time.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        life: (Duration, Duration),
        cookie: &[u8],
        ni: &[u8],
        ip: IpAddr,
        spi_i: IkeSpi,
    ) -> bool {
        self.rotate(now, life);
        let Some(&version) = cookie.first() else {
            return false;
        };
        let secret = if version == self.current.version {
            &self.current
        } else {
            match &self.previous {
                Some((s, until)) if s.version == version && now < *until => s,
                _ => return false,
            }
        };
        let want = secret.cookie(ni, ip, spi_i);
        // Every byte compared whatever the first difference: the time says nothing about it.
        want.len() == cookie.len()
            && want.iter().zip(cookie).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(10));

    fn at(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    #[test]
    fn a_cookie_binds_nonce_address_and_spi() {
        let mut s = CookieSecrets::new([7; 32], at(0));
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let c = s.make(at(1), LIFE, b"nonce-1", ip, IkeSpi(5));
        assert_eq!(c.len(), COOKIE_LEN);
        assert!(s.check(at(2), LIFE, &c, b"nonce-1", ip, IkeSpi(5)));
        assert!(!s.check(at(2), LIFE, &c, b"nonce-2", ip, IkeSpi(5)));
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        assert!(!s.check(at(2), LIFE, &c, b"nonce-1", other, IkeSpi(5)));
        assert!(!s.check(at(2), LIFE, &c, b"nonce-1", ip, IkeSpi(6)));
        assert!(!s.check(at(2), LIFE, &c[..8], b"nonce-1", ip, IkeSpi(5)));
        assert!(!s.check(at(2), LIFE, &[], b"nonce-1", ip, IkeSpi(5)));
        let mut bent = c.clone();
        bent[COOKIE_LEN - 1] ^= 1;
        assert!(!s.check(at(2), LIFE, &bent, b"nonce-1", ip, IkeSpi(5)));
    }

    #[test]
    fn a_rotated_secret_is_honoured_for_its_grace_only() {
        let mut s = CookieSecrets::new([8; 32], at(0));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let old = s.make(at(59), LIFE, b"n", ip, IkeSpi(1));
        // Rotated at 60 s: the new secret makes a different cookie with the next version.
        let new = s.make(at(61), LIFE, b"n", ip, IkeSpi(1));
        assert_ne!(old, new);
        assert_eq!(new[0], old[0].wrapping_add(1));
        assert!(s.check(at(65), LIFE, &old, b"n", ip, IkeSpi(1)));
        assert!(s.check(at(65), LIFE, &new, b"n", ip, IkeSpi(1)));
        // The grace runs from when the rotation was due (60 s), not from when it happened.
        assert!(!s.check(at(70), LIFE, &old, b"n", ip, IkeSpi(1)));
        assert!(s.check(at(70), LIFE, &new, b"n", ip, IkeSpi(1)));
    }

    #[test]
    fn an_idle_endpoint_forgets_both_old_secrets() {
        let mut s = CookieSecrets::new([9; 32], at(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let c = s.make(at(1), LIFE, b"n", ip, IkeSpi(1));
        // Nothing arrives until long after the rotation and its grace were due.
        assert!(!s.check(at(500), LIFE, &c, b"n", ip, IkeSpi(1)));
    }

    #[test]
    fn secrets_never_print() {
        let s = CookieSecrets::new([1; 32], at(0));
        let d = format!("{s:?}");
        assert!(!d.contains("key"), "{d}");
    }
}
