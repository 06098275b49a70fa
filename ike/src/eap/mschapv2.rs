//! EAP-MSCHAPv2, the authenticator's side: MS-CHAPv2 (RFC 2759) framed in EAP as
//! draft-kamath-pppext-eap-mschapv2-02 says (type 26; OpCodes Challenge 1, Response 2,
//! Success 3, Failure 4), checked against a [`UserDb`] of NT hashes, the MSK from RFC 3079.
//!
//! A conversation: our Challenge (16 random octets and our name) -> the peer's Response
//! (its challenge, NT-Response, its user name) -> our Success request with the
//! Authenticator Response ("S=<40 hex digits>") -> the peer's Success response -> EAP-Success.
//! A response that does not check ends at once in EAP-Failure (RFC 3748 4.2 allows it at any
//! time), for a reason: the user is unknown, the password is wrong, the packet is malformed,
//! the peer refused the method (Nak). There is no retry and no password change.
//!
//! The MSK (64 octets): MasterReceiveKey | MasterSendKey | 32 zero octets, the two keys as
//! RFC 3079 3.4 derives them for the server (receive: Magic2, send: Magic3), as strongSwan and
//! Windows compute it on the client.
//!
//! Owns: the MS-CHAPv2 functions (MD4, DES and SHA-1 from the RustCrypto crates) and the user
//! file's format.
//! Must never: keep a password (the file and memory hold NT hashes, zeroized on drop) or print
//! a hash.

use std::collections::HashMap;
use std::sync::Arc;

use des::cipher::{BlockEncrypt, KeyInit};
use md4::{Digest, Md4};
use rand_core::RngCore;
use sha1::Sha1;
use zeroize::Zeroizing;

use super::{code, method, packet, EapServer, Packet, Step};
use crate::ids::IkeSaId;
use crate::services::auth::ct_eq;
use crate::services::AuthError;
use crate::time::Instant;

/// MS-CHAPv2 OpCodes in EAP (draft-kamath-pppext-eap-mschapv2-02 2).
pub mod opcode {
    pub const CHALLENGE: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SUCCESS: u8 = 3;
    pub const FAILURE: u8 = 4;
}

/// An NT hash: MD4 of the password in UTF-16LE (RFC 2759 8.3).
pub type NtHash = Zeroizing<[u8; 16]>;

/// NtPasswordHash (RFC 2759 8.3).
pub fn nt_hash(password: &str) -> NtHash {
    let utf16: Zeroizing<Vec<u8>> =
        Zeroizing::new(password.encode_utf16().flat_map(u16::to_le_bytes).collect());
    Zeroizing::new(Md4::digest(utf16.as_slice()).into())
}

/// HashNtPasswordHash (RFC 2759 8.4).
pub fn hash_nt_hash(h: &[u8; 16]) -> NtHash {
    Zeroizing::new(Md4::digest(h).into())
}

/// ChallengeHash (RFC 2759 8.2): SHA-1 of PeerChallenge | AuthenticatorChallenge | UserName,
/// the first 8 octets. `user` is the name without any domain ("DOMAIN\user").
pub fn challenge_hash(peer: &[u8; 16], auth: &[u8; 16], user: &[u8]) -> [u8; 8] {
    let d = Sha1::new()
        .chain_update(peer)
        .chain_update(auth)
        .chain_update(user)
        .finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
    out
}

/// A 56-bit key as an 8-octet DES key (the parity bits, which DES ignores, set).
fn des_key(k: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    let mut next = 0u8;
    for (i, o) in out.iter_mut().take(7).enumerate() {
        let b = k.get(i).copied().unwrap_or(0);
        let i = u32::try_from(i).unwrap_or(0);
        *o = (b.checked_shr(i).unwrap_or(0)) | next | 1;
        next = b.checked_shl(7u32.saturating_sub(i)).unwrap_or(0);
    }
    out[7] = next | 1;
    out
}

/// ChallengeResponse (RFC 2759 8.5): the challenge DES-encrypted under the three keys cut
/// from the zero-padded hash.
pub fn challenge_response(challenge: &[u8; 8], hash: &[u8; 16]) -> [u8; 24] {
    let mut z = Zeroizing::new([0u8; 21]);
    for (d, s) in z.iter_mut().zip(hash) {
        *d = *s;
    }
    let mut out = [0u8; 24];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        let start = i.saturating_mul(7);
        let key = Zeroizing::new(des_key(
            z.get(start..start.saturating_add(7)).unwrap_or(&[]),
        ));
        let c = des::Des::new(&(*key).into());
        let mut block = (*challenge).into();
        c.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    out
}

/// GenerateNTResponse (RFC 2759 8.1).
pub fn nt_response(auth: &[u8; 16], peer: &[u8; 16], user: &[u8], hash: &[u8; 16]) -> [u8; 24] {
    challenge_response(&challenge_hash(peer, auth, user), hash)
}

const MAGIC1: &[u8] = b"Magic server to client signing constant";
const MAGIC2: &[u8] = b"Pad to make it do more than one iteration";

/// GenerateAuthenticatorResponse (RFC 2759 8.7): the 20 octets that "S=" carries in hex.
pub fn authenticator_response(
    hash_hash: &[u8; 16],
    nt_resp: &[u8; 24],
    challenge: &[u8; 8],
) -> [u8; 20] {
    let d = Sha1::new()
        .chain_update(hash_hash)
        .chain_update(nt_resp)
        .chain_update(MAGIC1)
        .finalize();
    Sha1::new()
        .chain_update(d)
        .chain_update(challenge)
        .chain_update(MAGIC2)
        .finalize()
        .into()
}

const KEY_MAGIC1: &[u8] = b"This is the MPPE Master Key";
const KEY_MAGIC2: &[u8] =
    b"On the client side, this is the send key; on the server side, it is the receive key.";
const KEY_MAGIC3: &[u8] =
    b"On the client side, this is the receive key; on the server side, it is the send key.";

/// GetMasterKey (RFC 3079 3.4).
pub fn master_key(hash_hash: &[u8; 16], nt_resp: &[u8; 24]) -> Zeroizing<[u8; 16]> {
    let d = Sha1::new()
        .chain_update(hash_hash)
        .chain_update(nt_resp)
        .chain_update(KEY_MAGIC1)
        .finalize();
    let mut k = Zeroizing::new([0u8; 16]);
    k.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
    k
}

/// GetAsymmetricStartKey (RFC 3079 3.4) for 16-octet keys, with `magic` KEY_MAGIC2 or 3.
fn asymmetric_start_key(master: &[u8; 16], magic: &[u8]) -> Zeroizing<[u8; 16]> {
    let d = Sha1::new()
        .chain_update(master)
        .chain_update([0u8; 40])
        .chain_update(magic)
        .chain_update([0xf2u8; 40])
        .finalize();
    let mut k = Zeroizing::new([0u8; 16]);
    k.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
    k
}

/// The server's MasterReceiveKey and MasterSendKey (RFC 3079 3.4).
pub fn server_keys(
    hash_hash: &[u8; 16],
    nt_resp: &[u8; 24],
) -> (Zeroizing<[u8; 16]>, Zeroizing<[u8; 16]>) {
    let m = master_key(hash_hash, nt_resp);
    (
        asymmetric_start_key(&m, KEY_MAGIC2),
        asymmetric_start_key(&m, KEY_MAGIC3),
    )
}

/// The EAP-MSCHAPv2 MSK: MasterReceiveKey | MasterSendKey | 32 zero octets.
pub fn msk(hash_hash: &[u8; 16], nt_resp: &[u8; 24]) -> crate::crypto::Secret {
    let (recv, send) = server_keys(hash_hash, nt_resp);
    let mut v = Zeroizing::new(Vec::with_capacity(64));
    v.extend_from_slice(recv.as_slice());
    v.extend_from_slice(send.as_slice());
    v.resize(64, 0);
    v
}

/// The local users: name -> NT hash. The file: one `name:hash` per line (the hash as 32 hex
/// digits), `#` comments and blank lines ignored; `roamgate eap-user NAME` makes a line.
#[derive(Default)]
pub struct UserDb {
    users: HashMap<String, NtHash>,
}

impl core::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "UserDb({} users, <hashes>)", self.users.len())
    }
}

/// A line of a user file that does not read: its number (from 1) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct UserFileError {
    pub line: usize,
    pub what: String,
}

impl UserDb {
    pub fn parse(text: &str) -> Result<UserDb, UserFileError> {
        let mut users = HashMap::new();
        for (i, l) in text.lines().enumerate() {
            let line = i.saturating_add(1);
            let err = |what: &str| UserFileError {
                line,
                what: what.into(),
            };
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (name, hex) = l
                .rsplit_once(':')
                .ok_or_else(|| err("expected name:nthash"))?;
            let name = name.trim();
            if name.is_empty() || name.len() > super::MAX_IDENTITY {
                return Err(err("the user name is empty or longer than 253 octets"));
            }
            let h = parse_hash(hex.trim()).ok_or_else(|| {
                err("the NT hash must be 32 hex digits (never the password itself)")
            })?;
            if users.insert(name.to_owned(), h).is_some() {
                return Err(err(&format!("user '{name}' appears twice")));
            }
        }
        Ok(UserDb { users })
    }

    /// A user file line for `name` with `password` (the password itself is not in it).
    pub fn entry(name: &str, password: &str) -> String {
        let h = nt_hash(password);
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        format!("{name}:{hex}")
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn get(&self, name: &str) -> Option<&NtHash> {
        self.users.get(name)
    }
}

fn parse_hash(s: &str) -> Option<NtHash> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut h = Zeroizing::new([0u8; 16]);
    for (i, o) in h.iter_mut().enumerate() {
        let at = i.saturating_mul(2);
        *o = u8::from_str_radix(s.get(at..at.saturating_add(2))?, 16).ok()?;
    }
    Some(h)
}

/// Where one conversation is.
enum Conv {
    /// Our Challenge went out with EAP identifier `id`.
    Challenged {
        identity: String,
        id: u8,
        challenge: [u8; 16],
    },
    /// Our Success request went out; the MSK waits for the peer's acknowledgement.
    Succeeded {
        identity: String,
        id: u8,
        msk: crate::crypto::Secret,
    },
}

/// EAP-MSCHAPv2 against a [`UserDb`].
pub struct LocalMschapv2 {
    users: Arc<UserDb>,
    /// The name in our Challenge.
    name: String,
    convs: HashMap<IkeSaId, Conv>,
}

impl LocalMschapv2 {
    pub fn new(users: Arc<UserDb>) -> LocalMschapv2 {
        LocalMschapv2 {
            users,
            name: "roamgate".into(),
            convs: HashMap::new(),
        }
    }

    /// Conversations under way (for tests and views).
    pub fn active(&self) -> usize {
        self.convs.len()
    }
}

fn fail(why: AuthError, id: u8) -> Step {
    Step::Failure {
        why,
        packet: packet(code::FAILURE, id, &[]),
    }
}

/// An MS-CHAPv2 request: EAP header, type, OpCode, MS-CHAPv2-ID, MS-Length, data.
fn mschap_request(id: u8, op: u8, data: &[&[u8]]) -> Vec<u8> {
    let data_len: usize = data.iter().map(|d| d.len()).sum();
    // MS-Length: the EAP Length minus 5 (the EAP header and the type).
    let ms_len = u16::try_from(data_len.saturating_add(4)).unwrap_or(u16::MAX);
    let mut head = vec![method::MSCHAPV2, op, id];
    head.extend_from_slice(&ms_len.to_be_bytes());
    let mut parts: Vec<&[u8]> = vec![&head];
    parts.extend_from_slice(data);
    packet(code::REQUEST, id, &parts)
}

impl EapServer for LocalMschapv2 {
    fn begin(
        &mut self,
        _now: Instant,
        ike: IkeSaId,
        identity: &str,
        response: &[u8],
        rng: &mut dyn RngCore,
    ) -> Step {
        let last = Packet::parse(response).map_or(0, |p| p.id);
        let id = last.wrapping_add(1);
        let mut challenge = [0u8; 16];
        rng.fill_bytes(&mut challenge);
        self.convs.insert(
            ike,
            Conv::Challenged {
                identity: identity.to_owned(),
                id,
                challenge,
            },
        );
        Step::Request(mschap_request(
            id,
            opcode::CHALLENGE,
            &[&[16], &challenge, self.name.as_bytes()],
        ))
    }

    fn respond(
        &mut self,
        _now: Instant,
        ike: IkeSaId,
        response: &[u8],
        _rng: &mut dyn RngCore,
    ) -> Step {
        let Some(conv) = self.convs.remove(&ike) else {
            return fail(AuthError::EapMalformed, 0);
        };
        let Some(p) = Packet::parse(response) else {
            return fail(AuthError::EapMalformed, 0);
        };
        if p.code != code::RESPONSE {
            return fail(AuthError::EapMalformed, p.id);
        }
        if p.kind() == Some(method::NAK) {
            return fail(AuthError::EapMethodRefused, p.id);
        }
        if p.kind() != Some(method::MSCHAPV2) {
            return fail(AuthError::EapMalformed, p.id);
        }
        let d = p.type_data();
        match conv {
            Conv::Challenged {
                identity,
                id,
                challenge,
            } => {
                // OpCode, MS-CHAPv2-ID, MS-Length, Value-Size (49), Response (49), Name.
                if p.id != id || d.first() != Some(&opcode::RESPONSE) || d.get(4) != Some(&49) {
                    return fail(AuthError::EapMalformed, p.id);
                }
                let (Some(resp), Some(name)) = (d.get(5..54), d.get(54..)) else {
                    return fail(AuthError::EapMalformed, p.id);
                };
                let mut peer = [0u8; 16];
                peer.copy_from_slice(resp.get(..16).unwrap_or(&[0; 16]));
                let mut nt = [0u8; 24];
                nt.copy_from_slice(resp.get(24..48).unwrap_or(&[0; 24]));
                let Some(hash) = self.users.get(&identity) else {
                    return fail(AuthError::EapUnknownUser, p.id);
                };
                // The user name without its domain (RFC 2759 4).
                let user = name
                    .iter()
                    .rposition(|&b| b == b'\\')
                    .map_or(name, |i| name.get(i.saturating_add(1)..).unwrap_or(&[]));
                let expected = nt_response(&challenge, &peer, user, hash);
                if !ct_eq(&expected, &nt) {
                    return fail(AuthError::EapWrongPassword, p.id);
                }
                let hh = hash_nt_hash(hash);
                let ch = challenge_hash(&peer, &challenge, user);
                let ar = authenticator_response(&hh, &nt, &ch);
                let mut msg = String::from("S=");
                for b in ar {
                    msg.push_str(&format!("{b:02X}"));
                }
                msg.push_str(" M=welcome");
                let next = p.id.wrapping_add(1);
                let req = mschap_request(next, opcode::SUCCESS, &[msg.as_bytes()]);
                // The MS-CHAPv2-ID of a Success is the Response's (draft 2.3); ours is `id`.
                self.convs.insert(
                    ike,
                    Conv::Succeeded {
                        identity,
                        id: next,
                        msk: msk(&hh, &nt),
                    },
                );
                Step::Request(req)
            }
            Conv::Succeeded { identity, id, msk } => {
                if p.id != id || d.first() != Some(&opcode::SUCCESS) {
                    return fail(AuthError::EapMalformed, p.id);
                }
                Step::Success {
                    msk,
                    identity,
                    packet: packet(code::SUCCESS, p.id, &[]),
                }
            }
        }
    }

    fn forget(&mut self, ike: IkeSaId) {
        self.convs.remove(&ike);
    }
}

/// The peer's side of EAP-MSCHAPv2 (roamgate as a road-warrior client, and the tests):
/// answers Identity with its user name, a Challenge with its NT-Response, a Success request
/// (whose Authenticator Response must check) with its acknowledgement; the MSK once known.
pub struct Client {
    pub user: String,
    hash: NtHash,
    expect: Option<([u8; 20], crate::crypto::Secret)>,
    msk: Option<crate::crypto::Secret>,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Client({}, <hash>)", self.user)
    }
}

impl Client {
    pub fn new(user: &str, hash: NtHash) -> Client {
        Client {
            user: user.into(),
            hash,
            expect: None,
            msk: None,
        }
    }

    /// The MSK, once the server's Success request checked.
    pub fn take_msk(&mut self) -> Option<crate::crypto::Secret> {
        self.msk.take()
    }

    /// The answer to `request`, or `None` when the peer refuses to go on (a request it does
    /// not understand, an Authenticator Response that does not check).
    pub fn answer(&mut self, request: &[u8], rng: &mut dyn RngCore) -> Option<Vec<u8>> {
        let p = Packet::parse(request)?;
        match (p.code, p.kind()) {
            (code::REQUEST, Some(method::IDENTITY)) => Some(packet(
                code::RESPONSE,
                p.id,
                &[&[method::IDENTITY], self.user.as_bytes()],
            )),
            (code::REQUEST, Some(method::MSCHAPV2)) => {
                let d = p.type_data();
                match *d.first()? {
                    opcode::CHALLENGE => {
                        let mut auth = [0u8; 16];
                        auth.copy_from_slice(d.get(5..21)?);
                        let mut peer = [0u8; 16];
                        rng.fill_bytes(&mut peer);
                        let user = self.user.as_bytes();
                        let nt = nt_response(&auth, &peer, user, &self.hash);
                        let hh = hash_nt_hash(&self.hash);
                        let ch = challenge_hash(&peer, &auth, user);
                        self.expect = Some((authenticator_response(&hh, &nt, &ch), msk(&hh, &nt)));
                        let mut resp = vec![49u8];
                        resp.extend_from_slice(&peer);
                        resp.extend_from_slice(&[0; 8]);
                        resp.extend_from_slice(&nt);
                        resp.push(0);
                        resp.extend_from_slice(user);
                        let ms_len = u16::try_from(resp.len().saturating_add(4))
                            .ok()?
                            .to_be_bytes();
                        Some(packet(
                            code::RESPONSE,
                            p.id,
                            &[
                                &[method::MSCHAPV2, opcode::RESPONSE, *d.get(1)?],
                                &ms_len,
                                &resp,
                            ],
                        ))
                    }
                    opcode::SUCCESS => {
                        let msg = d.get(4..)?;
                        let (ar, m) = self.expect.take()?;
                        let hex: String = ar.iter().map(|b| format!("{b:02X}")).collect();
                        if msg.get(..42)? != format!("S={hex}").as_bytes() {
                            return None;
                        }
                        self.msk = Some(m);
                        Some(packet(
                            code::RESPONSE,
                            p.id,
                            &[&[method::MSCHAPV2, opcode::SUCCESS]],
                        ))
                    }
                    _ => None,
                }
            }
            // Any other method: we only do MS-CHAPv2 (RFC 3748 5.3.1).
            (code::REQUEST, Some(_)) => Some(packet(
                code::RESPONSE,
                p.id,
                &[&[method::NAK, method::MSCHAPV2]],
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 2759 9.2 (and RFC 3079 3.5.3 for the keys).
    #[test]
    fn rfc2759_test_vectors() {
        let user = b"User";
        let auth: [u8; 16] = hex("5B5D7C7D7B3F2F3E3C2C602132262628").try_into().unwrap();
        let peer: [u8; 16] = hex("21402324255E262A28295F2B3A337C7E").try_into().unwrap();
        let h = nt_hash("clientPass");
        assert_eq!(h.to_vec(), hex("44EBBA8D5312B8D611474411F56989AE"));
        let hh = hash_nt_hash(&h);
        assert_eq!(hh.to_vec(), hex("41C00C584BD2D91C4017A2A12FA59F3F"));
        let ch = challenge_hash(&peer, &auth, user);
        assert_eq!(ch.to_vec(), hex("D02E4386BCE91226"));
        let nt = nt_response(&auth, &peer, user, &h);
        assert_eq!(
            nt.to_vec(),
            hex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
        );
        let ar = authenticator_response(&hh, &nt, &ch);
        assert_eq!(ar.to_vec(), hex("407A5589115FD0D6209F510FE9C04566932CDA56"));
        // RFC 3079 3.5.3: MasterKey, and the 128-bit send start key (the server's: Magic3).
        assert_eq!(
            master_key(&hh, &nt).to_vec(),
            hex("FDECE3717A8C838CB388E527AE3CDD31")
        );
        let (recv, send) = server_keys(&hh, &nt);
        assert_eq!(send.to_vec(), hex("8B7CDC149B993A1BA118CB153F56DCCB"));
        let m = msk(&hh, &nt);
        assert_eq!(m.len(), 64);
        assert_eq!(&m[..16], &recv[..]);
        assert!(m[32..].iter().all(|&b| b == 0));
    }

    #[test]
    fn user_file_reads_hashes_and_refuses_passwords() {
        let line = UserDb::entry("alice", "clientPass");
        assert_eq!(line, "alice:44ebba8d5312b8d611474411f56989ae");
        let db = UserDb::parse(&format!("# users\n\n{line}\nbob:{}\n", "00".repeat(16))).unwrap();
        assert_eq!(db.len(), 2);
        assert!(!format!("{db:?}").contains("44eb"));
        let e = UserDb::parse("alice:clientPass\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.what.contains("32 hex digits"), "{e}");
        let e = UserDb::parse(&format!("a:{0}\na:{0}\n", "11".repeat(16))).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(UserDb::parse("nocolon\n").is_err());
        assert!(UserDb::parse(&format!(":{}\n", "11".repeat(16))).is_err());
    }

    fn run(password: &str, user: &str) -> (Step, Option<crate::crypto::Secret>) {
        let db = UserDb::parse(&UserDb::entry("alice", "s3cret pass")).unwrap();
        let mut s = LocalMschapv2::new(Arc::new(db));
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let mut p = Client::new(user, nt_hash(password));
        let mut prng = ChaCha20Rng::from_seed([4; 32]);
        let ike = IkeSaId(crate::ids::IkeSpi(1));
        let idreq = packet(code::REQUEST, 9, &[&[method::IDENTITY]]);
        let idresp = p.answer(&idreq, &mut prng).unwrap();
        let mut step = s.begin(Instant::ZERO, ike, user, &idresp, &mut rng);
        loop {
            match step {
                Step::Request(r) => {
                    let Some(a) = p.answer(&r, &mut prng) else {
                        return (Step::Request(r), p.take_msk());
                    };
                    step = s.respond(Instant::ZERO, ike, &a, &mut rng);
                }
                other => {
                    assert_eq!(s.active(), 0);
                    return (other, p.take_msk());
                }
            }
        }
    }

    #[test]
    fn a_conversation_succeeds_with_the_same_msk_on_both_ends() {
        let (step, peer_msk) = run("s3cret pass", "alice");
        let Step::Success {
            msk,
            identity,
            packet,
        } = step
        else {
            panic!("{step:?}");
        };
        assert_eq!(identity, "alice");
        assert_eq!(Some(msk), peer_msk);
        assert_eq!(Packet::parse(&packet).unwrap().code, code::SUCCESS);
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_for_their_reasons() {
        let (step, _) = run("wrong", "alice");
        assert!(
            matches!(step, Step::Failure { why: AuthError::EapWrongPassword, ref packet }
                if Packet::parse(packet).unwrap().code == code::FAILURE),
            "{step:?}"
        );
        let (step, _) = run("s3cret pass", "mallory");
        assert!(
            matches!(
                step,
                Step::Failure {
                    why: AuthError::EapUnknownUser,
                    ..
                }
            ),
            "{step:?}"
        );
    }

    #[test]
    fn malformed_and_nak_responses_fail() {
        let db = UserDb::parse(&UserDb::entry("alice", "pw")).unwrap();
        let mut s = LocalMschapv2::new(Arc::new(db));
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let ike = IkeSaId(crate::ids::IkeSpi(1));
        let idresp = packet(code::RESPONSE, 1, &[&[method::IDENTITY], b"alice"]);
        for bad in [
            vec![],
            vec![2, 2, 0, 6, 26, 2],
            packet(code::RESPONSE, 2, &[&[method::MSCHAPV2, 2, 2, 0, 8, 49]]),
            packet(code::REQUEST, 2, &[&[method::MSCHAPV2]]),
        ] {
            let _ = s.begin(Instant::ZERO, ike, "alice", &idresp, &mut rng);
            let step = s.respond(Instant::ZERO, ike, &bad, &mut rng);
            assert!(
                matches!(
                    step,
                    Step::Failure {
                        why: AuthError::EapMalformed,
                        ..
                    }
                ),
                "{bad:?}: {step:?}"
            );
        }
        let _ = s.begin(Instant::ZERO, ike, "alice", &idresp, &mut rng);
        let nak = packet(code::RESPONSE, 2, &[&[method::NAK, method::TLS]]);
        let step = s.respond(Instant::ZERO, ike, &nak, &mut rng);
        assert!(matches!(
            step,
            Step::Failure {
                why: AuthError::EapMethodRefused,
                ..
            }
        ));
        assert_eq!(s.active(), 0);
    }
}
