//! Group-mode scale (issue 22, `roamgate perf group`): one GCKS and N simulated members of
//! the sans-IO G-IKEv2 code (`ike::group`), on one core, wall-clock CPU of each step.
//!
//! - registration: each member's registration (the G-IKEv2 part: IDg and identity checks,
//!   a Sender-ID, the GSA and KD payloads with the keys wrapped under the member's KEK) as the
//!   GCKS answers it; the member takes the answer (measured apart). Not included: the IKE SA
//!   the registration runs over (IKE_SA_INIT's Diffie-Hellman and AUTH, `roamgate perf
//!   handshakes` measures those).
//! - rekey: the GCKS makes one generation (one GSA_REKEY for all, the new key wrapped under
//!   the Rekey SA's key); every member takes it (authenticated, Message ID checked, keys
//!   unwrapped). Baseline in the same run: a removal's rekey, which replaces the Rekey SA
//!   and wraps its key once per remaining member (O(members)).
//! - time until all use the new key: the GCKS's rekey work, then one member's work (99th percentile)
//!   (members run on their own machines, in parallel; the network's delay is not modelled),
//!   then the activation delay (ATD, policy: it must exceed the spread of the arrivals; the
//!   wire carries it in whole seconds, GWP_ATD, so it is 0 or at least 1 s). The
//!   run checks on virtual time that no member sends on the new SA before that and every
//!   member does from then on.

use std::time::{Duration, Instant as Wall};

use ike::crypto::Prf;
use ike::group::gcks::{Gcks, GroupConfig};
use ike::group::keys::Kek;
use ike::group::member::Member;
use ike::wire::{Id, TrafficSelector};
use ike::Instant;

/// What one run measured.
#[derive(Clone, Debug)]
pub struct GroupScale {
    pub members: usize,
    /// GCKS: all registrations.
    pub gcks_register: Duration,
    /// Members: taking their registration answers (summed).
    pub members_register: Duration,
    /// GCKS: one rekey for all members.
    pub gcks_rekey: Duration,
    /// Members: taking that rekey, summed, and the 99th percentile of one member's time (the
    /// slowest single sample on a shared core is the scheduler's, not the member's).
    pub members_rekey: Duration,
    pub member_rekey_p99: Duration,
    /// Baseline in the same run: the GCKS's rekey that replaces the Rekey SA (a removal's).
    pub gcks_rekey_replaced: Duration,
    /// Bytes of the one GSA_REKEY all members get.
    pub rekey_bytes: usize,
    /// The activation delay of the policy.
    pub atd: Duration,
}

impl GroupScale {
    fn per(d: Duration, n: usize) -> f64 {
        d.as_secs_f64() * 1e6 / n.max(1) as f64
    }

    /// GCKS CPU per member for a registration, in microseconds.
    pub fn register_us_per_member(&self) -> f64 {
        Self::per(self.gcks_register, self.members)
    }

    /// GCKS CPU per member for a rekey, in microseconds.
    pub fn rekey_us_per_member(&self) -> f64 {
        Self::per(self.gcks_rekey, self.members)
    }

    /// From the rekey's start until every member holds the new key (network not counted).
    pub fn keys_everywhere(&self) -> Duration {
        self.gcks_rekey + self.member_rekey_p99
    }

    /// From the rekey's start until every member sends on the new key.
    pub fn all_use_new_key(&self) -> Duration {
        self.keys_everywhere() + self.atd
    }
}

fn cfg(n: usize, atd: Duration) -> GroupConfig {
    let ts = TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: "10.0.0.0".parse().expect("an address"),
        end: "10.255.255.255".parse().expect("an address"),
    };
    // Enough Sender-ID bits for every member.
    let mut bits = 1u8;
    while (1usize << bits) < n && bits < 16 {
        bits += 1;
    }
    GroupConfig {
        group: Id::from_text("branches.roamgate.test"),
        members: (0..n)
            .map(|i| Id::from_text(&format!("gw{i}.test")))
            .collect(),
        src: ts,
        dst: ts,
        key_bits: 128,
        lifetime: Duration::from_secs(3600),
        rekey_lead: Duration::from_secs(120),
        atd,
        dtd: atd + Duration::from_secs(60),
        sender_id_bits: bits,
        seed: [7; 32],
        delivery: Default::default(),
    }
}

/// Member `i`'s KEK (the default one its registration IKE SA would give it).
fn kek(i: usize) -> Kek {
    let mut sk_d = [0u8; 32];
    sk_d[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Kek::from_ike_sa(Prf::HmacSha256, &sk_d)
}

/// Registers `members` members with one GCKS, rekeys the group, checks that every member
/// moves to the new key at the ATD and not before, and measures each step.
pub fn run(members: usize, atd_secs: u16) -> Result<GroupScale, String> {
    if !(1..=65_536).contains(&members) {
        return Err(format!("members {members}: 1 to 65536"));
    }
    let atd = Duration::from_secs(u64::from(atd_secs));
    let c = cfg(members, atd);
    let keks: Vec<Kek> = (0..members).map(kek).collect();
    let mut g = Gcks::new(c.clone(), Instant::ZERO).map_err(|e| e.to_string())?;
    let mut ms: Vec<Member> = (0..members)
        .map(|_| Member::new(c.group.clone(), true))
        .collect();
    let requests: Vec<_> = ms.iter().map(|m| m.registration_request()).collect();
    // The GCKS's registrations.
    let t = Wall::now();
    let mut answers = Vec::with_capacity(members);
    for (i, id) in c.members.iter().enumerate() {
        answers.push(
            g.register(Instant::ZERO, id, &keks[i], &requests[i])
                .map_err(|e| format!("member {i} refused: {e:?}"))?,
        );
    }
    let gcks_register = t.elapsed();
    let t = Wall::now();
    for (i, m) in ms.iter_mut().enumerate() {
        m.on_registration(Instant::ZERO, &keks[i], &answers[i])
            .map_err(|e| format!("member {i}: registration answer: {e:?}"))?;
    }
    let members_register = t.elapsed();
    let old_spi = g.current_spi().ok_or("no SA after the registrations")?;

    // One rekey, at t0 on virtual time.
    let t0 = Instant::from_nanos(1_000_000_000);
    let t = Wall::now();
    let out = g.rekey(t0, false);
    let gcks_rekey = t.elapsed();
    let new_spi = g.current_spi().ok_or("no SA after the rekey")?;
    if new_spi == old_spi || out.len() != members {
        return Err(format!(
            "the rekey made {} messages for {members} members (SPI {old_spi:#x} -> {new_spi:#x})",
            out.len()
        ));
    }
    let rekey_bytes = out.first().map_or(0, |o| o.msg.len());
    let by_id: std::collections::HashMap<(u8, &[u8]), usize> = c
        .members
        .iter()
        .enumerate()
        .map(|(i, id)| ((id.kind, id.data.as_slice()), i))
        .collect();
    let mut members_rekey = Duration::ZERO;
    let mut each = Vec::with_capacity(members);
    for o in &out {
        let i = *by_id
            .get(&(o.to.kind, o.to.data.as_slice()))
            .ok_or("a rekey for a stranger")?;
        let t = Wall::now();
        ms[i]
            .on_rekey(t0, &o.msg)
            .map_err(|e| format!("member {i}: rekey: {e:?}"))?;
        let d = t.elapsed();
        members_rekey += d;
        each.push(d);
    }
    each.sort();
    let member_rekey_p99 = each
        .get((each.len() * 99 / 100).min(each.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    // Virtual time: before the ATD every member still sends on the old SA and receives on
    // both; from the ATD on, every member sends on the new one.
    let at = Instant::from_nanos(t0.as_nanos() + atd.as_nanos() as u64);
    let just_before = Instant::from_nanos(at.as_nanos() - 1);
    let want_before = if atd.is_zero() { None } else { Some(old_spi) };
    for (i, m) in ms.iter().enumerate() {
        let before = m.outbound(just_before).map(|s| s.spi);
        let after = m.outbound(at).map(|s| s.spi);
        let before_ok = want_before.is_none_or(|w| before == Some(w));
        if !before_ok || after != Some(new_spi) || m.inbound(new_spi, t0).is_none() {
            return Err(format!(
                "member {i}: sends on {before:x?} before the ATD and {after:x?} at it (old {old_spi:#x}, new {new_spi:#x})"
            ));
        }
    }
    // The baseline: a rekey that replaces the Rekey SA (what a removal costs).
    let t = Wall::now();
    let replaced = g.rekey(Instant::from_nanos(t0.as_nanos() + 1), true);
    let gcks_rekey_replaced = t.elapsed();
    if replaced.is_empty() {
        return Err("the Rekey SA's replacement sent nothing".into());
    }
    Ok(GroupScale {
        members,
        gcks_register,
        members_register,
        gcks_rekey,
        members_rekey,
        member_rekey_p99,
        gcks_rekey_replaced,
        rekey_bytes,
        atd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small group moves to the new key exactly at the ATD (the run's own check), and the
    /// figures add up.
    #[test]
    fn a_small_group_registers_and_rekeys() {
        let r = run(20, 1).unwrap();
        assert_eq!(r.members, 20);
        assert!(r.rekey_bytes > 0);
        assert!(r.all_use_new_key() >= Duration::from_secs(1));
        assert!(r.members_rekey >= r.member_rekey_p99);
        let r = run(5, 0).unwrap();
        assert_eq!(r.all_use_new_key(), r.keys_everywhere());
        assert!(run(0, 1).is_err());
    }
}
