//! Tests for the AEAD backends: known-answer vectors, Wycheproof, cross-backend agreement and
//! the failure contract of `open_in_place`.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("bad hex"))
        .collect()
}

/// Every backend that really encrypts and is usable here.
fn real_backends() -> Vec<Backend> {
    let mut v = vec![Backend::Ring];
    if available(Backend::IpsecMb) {
        v.push(Backend::IpsecMb);
    }
    v
}

fn alg_for_key(key: &[u8]) -> AeadAlg {
    match key.len() {
        16 => AeadAlg::AesGcm128,
        32 => AeadAlg::AesGcm256,
        n => panic!("no AeadAlg for {n}-byte key"),
    }
}

/// (name, key, nonce, aad, plaintext, ciphertext, tag)
type Kat = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const P64: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const P60: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
const A20: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
const K1: &str = "feffe9928665731c6d6a8f9467308308";
const K1X2: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";

/// McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", Appendix B, test cases 1-4
/// (AES-128) and 13-16 (AES-256); all with 96-bit IVs.
const GCM_SPEC: &[Kat] = &[
    (
        "TC1",
        "00000000000000000000000000000000",
        "000000000000000000000000",
        "",
        "",
        "",
        "58e2fccefa7e3061367f1d57a4e7455a",
    ),
    (
        "TC2",
        "00000000000000000000000000000000",
        "000000000000000000000000",
        "",
        "00000000000000000000000000000000",
        "0388dace60b6a392f328c2b971b2fe78",
        "ab6e47d42cec13bdf53a67b21257bddf",
    ),
    (
        "TC3",
        K1,
        "cafebabefacedbaddecaf888",
        "",
        P64,
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
      21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
        "4d5c2af327cd64a62cf35abd2ba6fab4",
    ),
    (
        "TC4",
        K1,
        "cafebabefacedbaddecaf888",
        A20,
        P60,
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
      21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        "5bc94fbc3221a5db94fae95ae7121a47",
    ),
    (
        "TC13",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000",
        "",
        "",
        "",
        "530f8afbc74536b9a963b4f1c4cb738b",
    ),
    (
        "TC14",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000",
        "",
        "00000000000000000000000000000000",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    (
        "TC15",
        K1X2,
        "cafebabefacedbaddecaf888",
        "",
        P64,
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
      8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        "b094dac5d93471bdec1a502270e3cc6c",
    ),
    (
        "TC16",
        K1X2,
        "cafebabefacedbaddecaf888",
        A20,
        P60,
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
      8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
];

/// (name, key, salt, iv, aad, plaintext, ciphertext, tag)
type EspKat = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// RFC 4106 ESP packets from draft-mcgrew-gcm-test-01, section 4. Here the "nonce" column is
/// split as salt (4 bytes, from the keying material) || IV (8 bytes, from the packet) and the
/// AAD is SPI || (extended) sequence number.
const ESP: &[EspKat] = &[
    (
        "draft-mcgrew-gcm-test-01 #1 (AES-128, ESN)",
        "4c80cdefbb5d10da906ac73c3613a634",
        "2e443b68",
        "4956ed7e3b244cfe",
        "000043218765432100000000",
        "45000048699a000080114db7c0a80102c0a801010a9bf15638d3010000010000\
      00000000045f736970045f756470037369700963796265726369747902646b00\
      0021000101020201",
        "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34\
      cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce\
      61bc17d768fd9732",
        "459018148f6cbe722fd04796562dfdb4",
    ),
    (
        "draft-mcgrew-gcm-test-01 #3 (AES-256)",
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
        "11223344",
        "0102030405060708",
        "4a2cbfe300000002",
        "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000\
      7002400020bf0000020405b40101040201020201",
        "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763\
      748a637985771d347f0545659f14e99def842d8e",
        "b335f4eecfdbf831824b4c4915956c96",
    ),
];

/// Seals `pt` and checks ct/tag, then opens and checks the plaintext comes back.
#[allow(clippy::too_many_arguments)]
fn check_kat(
    b: Backend,
    name: &str,
    key: &[u8],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    pt: &[u8],
    ct: &[u8],
    tag: &[u8],
) {
    let aead = new_aead(b, alg_for_key(key), key).unwrap();
    let mut buf = pt.to_vec();
    let mut t = [0u8; TAG_LEN];
    aead.seal_in_place(nonce, aad, &mut buf, &mut t);
    assert_eq!(buf, ct, "{b} {name}: ciphertext");
    assert_eq!(&t[..], tag, "{b} {name}: tag");
    aead.open_in_place(nonce, aad, &mut buf, &t)
        .unwrap_or_else(|_| panic!("{b} {name}: open failed"));
    assert_eq!(buf, pt, "{b} {name}: plaintext");
}

#[test]
fn gcm_spec_vectors() {
    for b in real_backends() {
        for &(name, k, n, a, p, c, t) in GCM_SPEC {
            let nonce: [u8; NONCE_LEN] = hex(n).try_into().unwrap();
            check_kat(b, name, &hex(k), &nonce, &hex(a), &hex(p), &hex(c), &hex(t));
        }
    }
}

#[test]
fn rfc4106_esp_vectors() {
    for b in real_backends() {
        for &(name, k, s, iv, a, p, c, t) in ESP {
            let salt: [u8; SALT_LEN] = hex(s).try_into().unwrap();
            let iv: [u8; IV_LEN] = hex(iv).try_into().unwrap();
            let nonce = esp_nonce(&salt, &iv);
            check_kat(b, name, &hex(k), &nonce, &hex(a), &hex(p), &hex(c), &hex(t));
        }
    }
}

#[test]
fn wycheproof_aes_gcm() {
    use wycheproof::aead::{TestName, TestSet};
    use wycheproof::TestResult;

    let set = TestSet::load(TestName::AesGcm).expect("load wycheproof aes_gcm");
    for b in real_backends() {
        let (mut valid, mut invalid) = (0usize, 0usize);
        for group in &set.test_groups {
            // Sizes are in bits. Only what ESP uses: 96-bit nonce, 128-bit tag, 128/256-bit keys.
            if group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            if group.key_size != 128 && group.key_size != 256 {
                continue;
            }
            for t in &group.tests {
                let nonce: [u8; NONCE_LEN] = t.nonce.as_ref().try_into().unwrap();
                let tag: [u8; TAG_LEN] = t.tag.as_ref().try_into().unwrap();
                let aead = new_aead(b, alg_for_key(&t.key), &t.key).unwrap();
                let ctx = format!("{b} tcId {} ({})", t.tc_id, t.comment);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        let mut buf = t.pt.to_vec();
                        let mut out_tag = [0u8; TAG_LEN];
                        aead.seal_in_place(&nonce, &t.aad, &mut buf, &mut out_tag);
                        assert_eq!(buf, &t.ct[..], "{ctx}: ciphertext");
                        assert_eq!(out_tag, tag, "{ctx}: tag");
                        aead.open_in_place(&nonce, &t.aad, &mut buf, &tag)
                            .unwrap_or_else(|_| panic!("{ctx}: open failed"));
                        assert_eq!(buf, &t.pt[..], "{ctx}: plaintext");
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        let mut buf = t.ct.to_vec();
                        let r = aead.open_in_place(&nonce, &t.aad, &mut buf, &tag);
                        assert_eq!(r, Err(AuthError), "{ctx}: invalid case opened");
                        assert!(buf.iter().all(|&x| x == 0), "{ctx}: buffer not zeroed");
                        invalid += 1;
                    }
                }
            }
        }
        eprintln!("wycheproof aes_gcm on {b}: {valid} valid, {invalid} invalid cases");
        assert!(valid >= 50, "{b}: only {valid} valid Wycheproof cases ran");
        assert!(
            invalid >= 20,
            "{b}: only {invalid} invalid Wycheproof cases ran"
        );
    }
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// Reference seal with RustCrypto's aes-gcm, an implementation independent of both backends.
fn rustcrypto_seal(
    alg: AeadAlg,
    key: &[u8],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    use aes_gcm::aead::AeadInPlace;
    use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce};
    let n = Nonce::from_slice(nonce);
    let t = match alg {
        AeadAlg::AesGcm128 => Aes128Gcm::new_from_slice(key)
            .unwrap()
            .encrypt_in_place_detached(n, aad, buf),
        AeadAlg::AesGcm256 => Aes256Gcm::new_from_slice(key)
            .unwrap()
            .encrypt_in_place_detached(n, aad, buf),
    }
    .unwrap();
    t.into()
}

#[test]
fn backends_agree_on_random_inputs() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for alg in [AeadAlg::AesGcm128, AeadAlg::AesGcm256] {
        let mut key = vec![0u8; alg.key_len()];
        rng.fill(&mut key);
        let aeads: Vec<_> = real_backends()
            .into_iter()
            .map(|b| new_aead(b, alg, &key).unwrap())
            .collect();
        for len in 0..2000usize {
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill(&mut nonce);
            // ESP uses 8 or 12 bytes of AAD; also cover empty and odd lengths.
            let aad_len = [0usize, 8, 12, 13, 31][len % 5];
            let mut aad = vec![0u8; aad_len];
            rng.fill(&mut aad);
            let mut pt = vec![0u8; len];
            rng.fill(&mut pt);

            let mut reference = pt.clone();
            let ref_tag = rustcrypto_seal(alg, &key, &nonce, &aad, &mut reference);
            for a in &aeads {
                let mut buf = pt.clone();
                let mut tag = [0u8; TAG_LEN];
                a.seal_in_place(&nonce, &aad, &mut buf, &mut tag);
                assert_eq!(
                    buf,
                    reference,
                    "{} {alg} len {len}: ciphertext",
                    a.backend()
                );
                assert_eq!(tag, ref_tag, "{} {alg} len {len}: tag", a.backend());
            }
            // Everything sealed by one backend opens on every other.
            for a in &aeads {
                let mut buf = reference.clone();
                a.open_in_place(&nonce, &aad, &mut buf, &ref_tag).unwrap();
                assert_eq!(buf, pt, "{} {alg} len {len}: open", a.backend());
            }
        }
    }
}

#[test]
fn open_failure_zeroes_buffer() {
    let mut rng = Rng(42);
    for b in real_backends() {
        for alg in [AeadAlg::AesGcm128, AeadAlg::AesGcm256] {
            let mut key = vec![0u8; alg.key_len()];
            rng.fill(&mut key);
            let a = new_aead(b, alg, &key).unwrap();
            let nonce = [7u8; NONCE_LEN];
            let aad = [1u8, 2, 3, 4, 0, 0, 0, 9];
            for len in [1usize, 15, 16, 17, 64, 1420] {
                let mut pt = vec![0u8; len];
                rng.fill(&mut pt);
                let mut ct = pt.clone();
                let mut tag = [0u8; TAG_LEN];
                a.seal_in_place(&nonce, &aad, &mut ct, &mut tag);

                let mut bad_tag = tag;
                bad_tag[15] ^= 0x80;
                let mut bad_ct = ct.clone();
                bad_ct[len / 2] ^= 1;
                let mut bad_nonce = nonce;
                bad_nonce[0] ^= 1;
                type Case<'a> = (&'a str, [u8; NONCE_LEN], &'a [u8], Vec<u8>, [u8; TAG_LEN]);
                let cases: [Case; 4] = [
                    ("tag", nonce, &aad, ct.clone(), bad_tag),
                    ("ciphertext", nonce, &aad, bad_ct, tag),
                    ("aad", nonce, &aad[..7], ct.clone(), tag),
                    ("nonce", bad_nonce, &aad, ct.clone(), tag),
                ];
                for (what, n, ad, mut buf, t) in cases {
                    assert_eq!(
                        a.open_in_place(&n, ad, &mut buf, &t),
                        Err(AuthError),
                        "{b} {alg} {len} bad {what}"
                    );
                    assert!(
                        buf.iter().all(|&x| x == 0),
                        "{b} {alg} {len} bad {what}: buffer not zeroed"
                    );
                }
                // The untouched packet still opens.
                a.open_in_place(&nonce, &aad, &mut ct, &tag).unwrap();
                assert_eq!(ct, pt);
            }
        }
    }
}

#[test]
fn ipsecmb_available_when_supported() {
    let cpu_ok = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    if cfg!(ipsecmb) && cpu_ok {
        #[cfg(ipsecmb)]
        assert!(
            available(Backend::IpsecMb),
            "ipsec-mb unavailable: {:?}",
            super::ipsecmb::unavailable_reason()
        );
        assert_eq!(best_backend(), Backend::IpsecMb);
        let arch = ipsecmb_arch().expect("arch reported");
        assert!(["sse", "avx", "avx2", "avx512"].contains(&arch), "{arch}");
        eprintln!("ipsec-mb arch: {arch}");
    } else {
        assert!(!available(Backend::IpsecMb));
        assert_eq!(best_backend(), Backend::Ring);
        assert_eq!(ipsecmb_arch(), None);
        assert!(matches!(
            new_aead(Backend::IpsecMb, AeadAlg::AesGcm128, &[0; 16]),
            Err(KeyError::BackendUnavailable(Backend::IpsecMb))
        ));
    }
}

#[test]
fn wrong_key_length_rejected() {
    for b in [Backend::Ring, Backend::IpsecMb, Backend::Null] {
        for (alg, len) in [
            (AeadAlg::AesGcm128, 32),
            (AeadAlg::AesGcm128, 20),
            (AeadAlg::AesGcm256, 16),
            (AeadAlg::AesGcm256, 0),
        ] {
            match new_aead(b, alg, &vec![0; len]) {
                Err(KeyError::WrongKeyLength {
                    alg: a,
                    expected,
                    got,
                }) => {
                    assert_eq!((a, expected, got), (alg, alg.key_len(), len));
                }
                other => panic!("{b} {alg} {len}: {:?}", other.map(|_| ())),
            }
        }
    }
}

#[test]
fn debug_output_has_no_key_bytes() {
    let key = [0xabu8; 32];
    for b in [Backend::Ring, Backend::IpsecMb, Backend::Null] {
        if !available(b) {
            continue;
        }
        let a = new_aead(b, AeadAlg::AesGcm256, &key).unwrap();
        let s = format!("{a:?} {a:#?}");
        assert!(
            !s.to_lowercase().contains("ab, ") && !s.contains("171") && !s.contains("abab"),
            "{s}"
        );
        assert!(s.contains("AesGcm256"), "{s}");
        assert_eq!(a.backend(), b);
        assert_eq!(a.alg(), AeadAlg::AesGcm256);
    }
}

#[test]
fn null_backend_contract() {
    let a = new_aead(Backend::Null, AeadAlg::AesGcm128, &[1; 16]).unwrap();
    let mut buf = *b"hello world";
    let mut tag = [0xffu8; TAG_LEN];
    a.seal_in_place(&[0; NONCE_LEN], b"aad", &mut buf, &mut tag);
    assert_eq!(&buf, b"hello world");
    assert_eq!(tag, [0; TAG_LEN]);
    assert_eq!(
        a.open_in_place(&[0; NONCE_LEN], b"", &mut buf, &[0x55; TAG_LEN]),
        Ok(())
    );
    assert_eq!(&buf, b"hello world");
}

#[test]
fn names_and_helpers() {
    assert_eq!(Backend::IpsecMb.to_string(), "ipsec-mb");
    assert_eq!(Backend::Ring.to_string(), "ring");
    assert_eq!(Backend::Null.to_string(), "null");
    assert_eq!(AeadAlg::AesGcm128.key_len(), 16);
    assert_eq!(AeadAlg::AesGcm256.key_len(), 32);
    assert_eq!(
        esp_nonce(&[1, 2, 3, 4], &[5, 6, 7, 8, 9, 10, 11, 12]),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    );
    assert!(tags_equal(&[3; TAG_LEN], &[3; TAG_LEN]));
    for i in 0..TAG_LEN {
        let mut t = [3; TAG_LEN];
        t[i] ^= 1;
        assert!(!tags_equal(&[3; TAG_LEN], &t));
    }
}
