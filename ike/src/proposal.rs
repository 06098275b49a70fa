//! SA proposals (RFC 7296 3.3): the suites roamgate offers and accepts, their SA payload form,
//! and choosing one from what the peer proposed.
//!
//! IKE: AES-GCM-16 (128/256), or AES-CBC (128/256) with HMAC-SHA2-256-128; PRF
//! HMAC-SHA2-256/384/512; DH x25519, ecp256, modp2048. ESP: AES-GCM-16 (128/256), or
//! AES-CBC (128/256) with HMAC-SHA1-96 or HMAC-SHA2-256-128/384-192/512-256 (the native
//! clients' defaults), each with or without ESN.
//!
//! Owns: [`IkeProposal`], [`EspProposal`], [`EspInteg`], the transforms they stand for,
//! selection in our order of preference.
//! Must never: accept a proposal the peer did not offer completely.

use crate::crypto::{self, DhGroup, Prf, SkCipher};
use crate::ids::ChildSpi;
use crate::wire::{proto, transform, Proposal, Transform};

/// An IKE SA proposal: AES-GCM-16 (or, with `cbc`, AES-CBC with HMAC-SHA2-256-128) with
/// `encr_bits`, a PRF and a DH group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IkeProposal {
    pub encr_bits: u16,
    pub prf: Prf,
    pub dh: DhGroup,
    pub cbc: bool,
}

impl IkeProposal {
    /// Encryption key material per direction (GCM: key and salt; CBC: the key).
    pub fn encr_len(&self) -> usize {
        if self.cbc {
            usize::from(self.encr_bits / 8)
        } else {
            SkCipher::keymat_len(self.encr_bits)
        }
    }

    /// Integrity key length per direction (none for GCM).
    pub fn integ_len(&self) -> usize {
        if self.cbc {
            crypto::INTEG_SHA256_KEY_LEN
        } else {
            0
        }
    }

    /// Its transforms, as an SA payload lists them.
    pub fn transforms(&self) -> Vec<Transform> {
        let mut t = vec![Transform {
            kind: transform::ENCR,
            id: if self.cbc {
                transform::ENCR_AES_CBC
            } else {
                transform::ENCR_AES_GCM_16
            },
            key_len: Some(self.encr_bits),
        }];
        if self.cbc {
            t.push(Transform {
                kind: transform::INTEG,
                id: transform::AUTH_HMAC_SHA2_256_128,
                key_len: None,
            });
        }
        t.extend([
            Transform {
                kind: transform::PRF,
                id: self.prf.id(),
                key_len: None,
            },
            Transform {
                kind: transform::DH,
                id: self.dh.id(),
                key_len: None,
            },
        ]);
        t
    }

    /// Its PRF as strongSwan names it (`PRF_HMAC_SHA2_256`).
    pub fn prf_name(&self) -> &'static str {
        match self.prf {
            Prf::HmacSha256 => "PRF_HMAC_SHA2_256",
            Prf::HmacSha384 => "PRF_HMAC_SHA2_384",
            Prf::HmacSha512 => "PRF_HMAC_SHA2_512",
        }
    }

    /// Its DH group as strongSwan names it (`CURVE_25519`).
    pub fn dh_name(&self) -> &'static str {
        match self.dh {
            DhGroup::X25519 => "CURVE_25519",
            DhGroup::Ecp256 => "ECP_256",
            DhGroup::Modp2048 => "MODP_2048",
        }
    }

    /// Its name as strongSwan prints a negotiated IKE proposal (`swanctl --list-sas`):
    /// encryption with key size, integrity (CBC only), PRF, DH group.
    pub fn name(&self) -> String {
        let (prf, dh) = (self.prf_name(), self.dh_name());
        if self.cbc {
            format!("AES_CBC-{}/HMAC_SHA2_256_128/{prf}/{dh}", self.encr_bits)
        } else {
            format!("AES_GCM_16-{}/{prf}/{dh}", self.encr_bits)
        }
    }
}

/// The integrity algorithm of an AES-CBC ESP proposal (RFC 2404, RFC 4868).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EspInteg {
    /// HMAC-SHA1-96: weak (SHA-1); only where configured, for peers that offer nothing else.
    HmacSha1_96,
    HmacSha256_128,
    HmacSha384_192,
    HmacSha512_256,
}

impl EspInteg {
    /// Every one, strongest first.
    pub const ALL: [EspInteg; 4] = [
        EspInteg::HmacSha512_256,
        EspInteg::HmacSha384_192,
        EspInteg::HmacSha256_128,
        EspInteg::HmacSha1_96,
    ];

    /// Its IKEv2 transform id (transform type 3).
    pub const fn id(self) -> u16 {
        match self {
            EspInteg::HmacSha1_96 => transform::AUTH_HMAC_SHA1_96,
            EspInteg::HmacSha256_128 => transform::AUTH_HMAC_SHA2_256_128,
            EspInteg::HmacSha384_192 => transform::AUTH_HMAC_SHA2_384_192,
            EspInteg::HmacSha512_256 => transform::AUTH_HMAC_SHA2_512_256,
        }
    }

    /// The algorithm of a transform id, if it is one of ours.
    pub fn from_id(id: u16) -> Option<EspInteg> {
        EspInteg::ALL.into_iter().find(|i| i.id() == id)
    }

    /// Key length in bytes: the hash's output length (RFC 2404 2, RFC 4868 2.1.1).
    pub const fn key_len(self) -> usize {
        match self {
            EspInteg::HmacSha1_96 => 20,
            EspInteg::HmacSha256_128 => 32,
            EspInteg::HmacSha384_192 => 48,
            EspInteg::HmacSha512_256 => 64,
        }
    }

    /// SHA-1 based: accepted only where configured, and warned about.
    pub const fn is_weak(self) -> bool {
        matches!(self, EspInteg::HmacSha1_96)
    }

    /// Its name as strongSwan prints it (`HMAC_SHA2_256_128`).
    pub const fn name(self) -> &'static str {
        match self {
            EspInteg::HmacSha1_96 => "HMAC_SHA1_96",
            EspInteg::HmacSha256_128 => "HMAC_SHA2_256_128",
            EspInteg::HmacSha384_192 => "HMAC_SHA2_384_192",
            EspInteg::HmacSha512_256 => "HMAC_SHA2_512_256",
        }
    }
}

/// An ESP proposal: AES-GCM-16 with `encr_bits` (`integ` none), or AES-CBC with `encr_bits`
/// and the HMAC `integ`; ESN or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspProposal {
    pub encr_bits: u16,
    pub esn: bool,
    pub integ: Option<EspInteg>,
}

impl EspProposal {
    /// AES-GCM-16 with `encr_bits`.
    pub const fn gcm(encr_bits: u16, esn: bool) -> EspProposal {
        EspProposal {
            encr_bits,
            esn,
            integ: None,
        }
    }

    /// KEYMAT per direction (RFC 7296 2.17: the encryption key, then the integrity key):
    /// GCM's key and 4-byte salt (RFC 4106 8.1), or the AES-CBC key and the HMAC key.
    pub fn keymat_len(&self) -> usize {
        match self.integ {
            None => SkCipher::keymat_len(self.encr_bits),
            Some(i) => usize::from(self.encr_bits / 8).saturating_add(i.key_len()),
        }
    }

    /// Weak (SHA-1 integrity): accepted only where configured, and logged.
    pub fn is_weak(&self) -> bool {
        self.integ.is_some_and(EspInteg::is_weak)
    }

    /// Its name as strongSwan prints a CHILD_SA's proposal (`AES_GCM_16-128`,
    /// `AES_CBC-256/HMAC_SHA2_256_128`, `/ESN` with extended sequence numbers).
    pub fn name(&self) -> String {
        let esn = if self.esn { "/ESN" } else { "" };
        match self.integ {
            None => format!("AES_GCM_16-{}{esn}", self.encr_bits),
            Some(i) => format!("AES_CBC-{}/{}{esn}", self.encr_bits, i.name()),
        }
    }

    /// Its transforms, as an SA payload lists them.
    fn transforms(&self) -> Vec<Transform> {
        let mut t = vec![Transform {
            kind: transform::ENCR,
            id: match self.integ {
                None => transform::ENCR_AES_GCM_16,
                Some(_) => transform::ENCR_AES_CBC,
            },
            key_len: Some(self.encr_bits),
        }];
        if let Some(i) = self.integ {
            t.push(Transform {
                kind: transform::INTEG,
                id: i.id(),
                key_len: None,
            });
        }
        t.push(Transform {
            kind: transform::ESN,
            id: if self.esn {
                transform::ESN_YES
            } else {
                transform::ESN_NO
            },
            key_len: None,
        });
        t
    }
}

/// Proposal numbers count from 1 (RFC 7296 3.3.1).
fn number(i: usize) -> u8 {
    u8::try_from(i.saturating_add(1)).unwrap_or(u8::MAX)
}

/// Our IKE proposals as an SA payload, each with `spi` (empty in IKE_SA_INIT, the new SPI in
/// a rekey).
pub fn ike_payload(props: &[IkeProposal], spi: &[u8]) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, p)| Proposal {
            num: number(i),
            protocol: proto::IKE,
            spi: spi.to_vec(),
            transforms: p.transforms(),
        })
        .collect()
}

/// One ESP proposal with number `num` and our inbound SPI.
pub fn esp_proposal(num: u8, e: &EspProposal, spi: ChildSpi) -> Proposal {
    Proposal {
        num,
        protocol: proto::ESP,
        spi: spi.to_bytes().to_vec(),
        transforms: e.transforms(),
    }
}

/// Our ESP proposals as an SA payload.
pub fn esp_payload(props: &[EspProposal], spi: ChildSpi) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, e)| esp_proposal(number(i), e, spi))
        .collect()
}

fn offers(t: &Proposal, kind: u8, id: u16, key: Option<u16>) -> bool {
    t.transforms
        .iter()
        .any(|x| x.kind == kind && x.id == id && (key.is_none() || x.key_len == key))
}

/// The first of our proposals (our preference) that one of the peer's proposals offers
/// completely. Returns the peer's proposal number.
pub fn select_ike(theirs: &[Proposal], ours: &[IkeProposal]) -> Option<(u8, IkeProposal)> {
    for o in ours {
        for t in theirs.iter().filter(|t| t.protocol == proto::IKE) {
            let encr = if o.cbc {
                transform::ENCR_AES_CBC
            } else {
                transform::ENCR_AES_GCM_16
            };
            let integ_ok =
                !o.cbc || offers(t, transform::INTEG, transform::AUTH_HMAC_SHA2_256_128, None);
            if offers(t, transform::ENCR, encr, Some(o.encr_bits))
                && integ_ok
                && offers(t, transform::PRF, o.prf.id(), None)
                && offers(t, transform::DH, o.dh.id(), None)
            {
                return Some((t.num, *o));
            }
        }
    }
    None
}

/// As [`select_ike`] for ESP; also returns the peer's SPI (`None` as a whole when the chosen
/// proposal's SPI is not 4 octets).
pub fn select_esp(
    theirs: &[Proposal],
    ours: &[EspProposal],
) -> Option<(u8, EspProposal, ChildSpi)> {
    for o in ours {
        for t in theirs.iter().filter(|t| t.protocol == proto::ESP) {
            let esn_id = if o.esn {
                transform::ESN_YES
            } else {
                transform::ESN_NO
            };
            // No ESN transform at all means "no ESN".
            let esn_ok = offers(t, transform::ESN, esn_id, None)
                || (!o.esn && !t.transforms.iter().any(|x| x.kind == transform::ESN));
            let encr_ok = match o.integ {
                None => offers(
                    t,
                    transform::ENCR,
                    transform::ENCR_AES_GCM_16,
                    Some(o.encr_bits),
                ),
                Some(_) => offers(
                    t,
                    transform::ENCR,
                    transform::ENCR_AES_CBC,
                    Some(o.encr_bits),
                ),
            };
            // GCM with an integrity transform other than NONE is not a valid offer for us;
            // CBC needs ours among the offered ones.
            let integ_ok = match o.integ {
                None => !t
                    .transforms
                    .iter()
                    .any(|x| x.kind == transform::INTEG && x.id != 0),
                Some(i) => offers(t, transform::INTEG, i.id(), None),
            };
            if encr_ok && integ_ok && esn_ok {
                let spi = ChildSpi::from_slice(&t.spi)?;
                return Some((t.num, *o, spi));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCM128: IkeProposal = IkeProposal {
        encr_bits: 128,
        prf: Prf::HmacSha256,
        dh: DhGroup::X25519,
        cbc: false,
    };

    #[test]
    fn names_are_strongswans() {
        assert_eq!(
            GCM128.name(),
            "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519"
        );
        let cbc = IkeProposal {
            encr_bits: 256,
            prf: Prf::HmacSha384,
            dh: DhGroup::Modp2048,
            cbc: true,
        };
        assert_eq!(
            cbc.name(),
            "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_384/MODP_2048"
        );
        let esp = EspProposal::gcm(256, true);
        assert_eq!(esp.name(), "AES_GCM_16-256/ESN");
        assert_eq!(EspProposal { esn: false, ..esp }.name(), "AES_GCM_16-256");
        let cbc = EspProposal {
            encr_bits: 128,
            esn: false,
            integ: Some(EspInteg::HmacSha1_96),
        };
        assert_eq!(cbc.name(), "AES_CBC-128/HMAC_SHA1_96");
        assert!(cbc.is_weak());
        let cbc = EspProposal {
            integ: Some(EspInteg::HmacSha512_256),
            ..cbc
        };
        assert_eq!(cbc.name(), "AES_CBC-128/HMAC_SHA2_512_256");
        assert_eq!(cbc.keymat_len(), 16 + 64);
        assert!(!cbc.is_weak());
    }

    #[test]
    fn selection_follows_our_preference_and_needs_every_transform() {
        let cbc = IkeProposal {
            cbc: true,
            ..GCM128
        };
        let theirs = ike_payload(&[cbc, GCM128], &[]);
        assert_eq!(select_ike(&theirs, &[GCM128, cbc]), Some((2, GCM128)));
        assert_eq!(select_ike(&theirs, &[cbc]), Some((1, cbc)));
        // CBC without its integrity transform is not a complete offer.
        let mut broken = ike_payload(&[cbc], &[]);
        broken[0].transforms.retain(|t| t.kind != transform::INTEG);
        assert_eq!(select_ike(&broken, &[cbc]), None);
        let e = EspProposal::gcm(256, true);
        let esp = esp_payload(&[e], ChildSpi(0x1234));
        assert_eq!(select_esp(&esp, &[e]), Some((1, e, ChildSpi(0x1234))));
        let mut short = esp.clone();
        short[0].spi = vec![1, 2];
        assert_eq!(select_esp(&short, &[e]), None, "an ESP SPI is 4 octets");
        // CBC: the integrity transform is part of the offer, and transform ids round-trip.
        let sha256 = EspProposal {
            encr_bits: 256,
            esn: false,
            integ: Some(EspInteg::HmacSha256_128),
        };
        let sha1 = EspProposal {
            integ: Some(EspInteg::HmacSha1_96),
            ..sha256
        };
        let theirs = esp_payload(&[sha1, sha256], ChildSpi(0x5678));
        assert_eq!(
            select_esp(&theirs, &[sha256, sha1]),
            Some((2, sha256, ChildSpi(0x5678)))
        );
        assert_eq!(
            select_esp(&esp_payload(&[sha1], ChildSpi(0x5678)), &[sha256]),
            None
        );
        assert_eq!(select_esp(&theirs, &[e]), None, "CBC is not GCM");
        // GCM offered with an integrity transform is not a GCM offer we take.
        let mut gcm_integ = esp.clone();
        gcm_integ[0].transforms.push(Transform {
            kind: transform::INTEG,
            id: transform::AUTH_HMAC_SHA2_256_128,
            key_len: None,
        });
        assert_eq!(select_esp(&gcm_integ, &[e]), None);
        for i in EspInteg::ALL {
            assert_eq!(EspInteg::from_id(i.id()), Some(i));
        }
    }
}
