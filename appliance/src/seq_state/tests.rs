use std::collections::HashSet;

use super::file::{parse, render, Step};
use super::*;
use pipeline::crypto::Backend;
use pipeline::esp::sa::build_outbound;
use pipeline::esp::tunnel::{encapsulate, InnerMeta, NH_IPV4};
use pipeline::port::mem::MemFrame;
use pipeline::stats::DropReason;
use proto::sa::{AeadAlg, SaKeys};
use proto::Spi;

/// A scratch directory of this test's own (removed first).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roamgate-seq-state-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn params(id: u32, spi: u32, key_byte: u8, esn: bool) -> SaParams {
    SaParams {
        id: SaId(id),
        spi: Spi(spi),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[key_byte; 20]).unwrap(),
        esn,
        replay_window: 64,
        local: "192.0.2.1".parse().unwrap(),
        remote: "192.0.2.2".parse().unwrap(),
        encap: None,
        local_ts: "10.1.0.0/24".parse().unwrap(),
        remote_ts: "10.2.0.0/24".parse().unwrap(),
        outer_ttl: 64,
        lifetime: Default::default(),
        resume: Default::default(),
        checkpoint: None,
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn the_file_round_trips_and_anything_else_is_refused() {
    let mut m = Marks::default();
    m.0.insert(KeyId([0xab; 16]), 1 << 40);
    m.0.insert(KeyId([0x01; 16]), 0);
    m.0.insert(KeyId([0xff; 16]), u64::MAX);
    let text = render(&m);
    assert_eq!(parse(text.as_bytes()).unwrap(), m);
    assert_eq!(
        parse(render(&Marks::default()).as_bytes()).unwrap(),
        Marks::default()
    );
    // One byte changed anywhere, or cut anywhere: refused (the checksum or the shape says so).
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] ^= 0x01;
        assert!(parse(&b).is_err(), "flipped byte {i}");
    }
    for n in 0..bytes.len() {
        assert!(parse(&bytes[..n]).is_err(), "cut at {n}");
    }
    // Well-formed lines with a right checksum, but not what render writes: refused too.
    let with_sum = |body: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
        let sum: String = d
            .as_ref()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{body}end {sum}\n")
    };
    let k1 = "01".repeat(16);
    let k2 = "02".repeat(16);
    for (body, what) in [
        (format!("roamgate-seq-state 2\n{k1} 5\n"), "version"),
        (format!("roamgate-seq-state 1\n{k2} 5\n{k1} 5\n"), "order"),
        (format!("roamgate-seq-state 1\n{k1} 5\n{k1} 6\n"), "repeat"),
        (format!("roamgate-seq-state 1\n{k1} 05\n"), "leading zero"),
        (format!("roamgate-seq-state 1\n{k1} -5\n"), "sign"),
        (
            format!("roamgate-seq-state 1\n{k1} 18446744073709551616\n"),
            "overflow",
        ),
        (
            format!("roamgate-seq-state 1\n{} 5\n", "AB".repeat(16)),
            "upper case",
        ),
        (format!("roamgate-seq-state 1\n{k1}5\n"), "no space"),
        ("".to_string(), "empty"),
    ] {
        assert!(parse(with_sum(&body).as_bytes()).is_err(), "{what}");
    }
    assert!(
        parse(format!("{}x", text).as_bytes()).is_err(),
        "after the end"
    );
    assert!(parse(&[0xff, 0xfe]).is_err(), "not UTF-8");
}

#[test]
fn open_is_a_first_start_without_a_file_refuses_a_bad_one_and_locks() {
    let dir = scratch("open");
    let path = dir.join("gw.yaml.seq-state");
    let (f, marks) = StateFile::open(&path).unwrap();
    assert_eq!(marks, None, "no file: a first start");
    // Held: a second owner is refused while the first lives.
    let e = StateFile::open(&path).err().expect("locked").to_string();
    assert!(e.contains("another roamgate process"), "{e}");
    let mut m = Marks::default();
    m.0.insert(KeyId([7; 16]), 99);
    f.store(&m).unwrap();
    drop(f);
    let (_f, marks) = StateFile::open(&path).unwrap();
    assert_eq!(marks, Some(m));
    drop(_f);
    // A file that does not parse stops the start and says which file.
    std::fs::write(&path, "roamgate-seq-state 1\ngarbage\n").unwrap();
    let e = format!("{:#}", StateFile::open(&path).err().expect("refused"));
    assert!(
        e.contains(&path.display().to_string()) && e.contains("unreadable"),
        "{e}"
    );
    // A leftover temporary file from a crash is not the state.
    std::fs::write(&path, render(&Marks::default())).unwrap();
    std::fs::write(dir.join("gw.yaml.seq-state.tmp"), "half a fil").unwrap();
    assert_eq!(StateFile::open(&path).unwrap().1, Some(Marks::default()));
    // A state file that cannot be read (a directory in its place) is refused, named.
    let odd = dir.join("odd.seq-state");
    std::fs::create_dir(&odd).unwrap();
    let e = format!("{:#}", StateFile::open(&odd).err().expect("refused"));
    assert!(e.contains(&odd.display().to_string()), "{e}");
    assert_eq!(
        default_path(Path::new("/etc/roamgate/gw.yaml")),
        PathBuf::from("/etc/roamgate/gw.yaml.seq-state")
    );
}

#[test]
fn key_ids_name_spi_and_key_without_showing_the_key() {
    let a = params(0, 0xa001, 0x5a, true);
    assert_eq!(KeyId::of(&a), KeyId::of(&a.clone()));
    assert_ne!(
        KeyId::of(&a),
        KeyId::of(&params(0, 0xa002, 0x5a, true)),
        "SPI"
    );
    assert_ne!(
        KeyId::of(&a),
        KeyId::of(&params(0, 0xa001, 0x5b, true)),
        "key"
    );
    let mut text = render(&Marks(BTreeMap::from([(KeyId::of(&a), 1)])));
    text.push_str(&format!("{:?}", KeyId::of(&a)));
    let key_hex: String = a.keys.key().iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !text.contains(&key_hex) && !text.contains("5a5a5a5a"),
        "{text}"
    );
}

#[test]
fn reservations_resume_past_the_mark_move_on_a_block_ahead_and_never_go_back() {
    let p = params(3, 0xa001, 1, true);
    let block = block_size(true);
    let mut r = Reservations::new(Marks::default());
    let (s, next) = r.start(&p);
    assert_eq!(
        s,
        Start {
            resume: 0,
            reserved: block,
            first: true
        }
    );
    r.adopt(next);
    // Less than a quarter used: nothing to do; past it: a block beyond the checkpoint.
    assert_eq!(r.extension(SaId(3), block / 4 - 1), None);
    let (up_to, next) = r.extension(SaId(3), block / 4 + 1).expect("moves on");
    assert_eq!(up_to, block / 4 + 1 + block);
    // Proposed, not written: the marks stay as they are on disk.
    assert_eq!(r.marks().0[&KeyId::of(&p)], block);
    r.adopt(next);
    assert_eq!(r.marks().0[&KeyId::of(&p)], up_to);
    // An older proposal adopted late lowers nothing.
    let mut older = r.marks().clone();
    older.0.insert(KeyId::of(&p), 5);
    r.adopt(older);
    assert_eq!(r.marks().0[&KeyId::of(&p)], up_to);
    assert_eq!(r.extension(SaId(9), 1 << 40), None, "not a kept SA");
    // A restart resumes after the mark, whatever was really sent.
    let mut again = Reservations::new(r.marks().clone());
    let (s, _) = again.start(&p);
    assert_eq!(
        (s.resume, s.reserved, s.first),
        (up_to, up_to + block, false)
    );
    // Without ESN the marks stop at 2^32 - 1; an SA that got there stays there.
    let q = params(4, 0xa002, 2, false);
    let mut near = Marks::default();
    near.0.insert(KeyId::of(&q), u64::from(u32::MAX) - 10);
    let mut r = Reservations::new(near);
    let (s, next) = r.start(&q);
    assert_eq!(
        (s.resume, s.reserved),
        (u64::from(u32::MAX) - 10, u64::from(u32::MAX))
    );
    r.adopt(next);
    assert_eq!(
        r.extension(SaId(4), u64::from(u32::MAX) - 5),
        None,
        "nothing left"
    );
}

#[test]
fn a_keeper_installs_after_writing_and_a_new_key_starts_again_at_one() {
    let dir = scratch("keeper");
    let path = dir.join("gw.yaml.seq-state");
    let out = params(0, 0xa001, 0x11, true);
    let inb = params(1, 0xb001, 0x22, true);
    let mut sas = vec![
        (Direction::Outbound, out.clone()),
        (Direction::Inbound, inb.clone()),
    ];
    let mut k = SeqKeeper::open(&path, &[]).unwrap();
    k.start(&mut sas).unwrap();
    let block = block_size(true);
    assert_eq!(sas[0].1.resume.seq, 0);
    assert_eq!(sas[0].1.resume.seq_reserved, Some(block));
    assert_eq!(sas[0].1.checkpoint, Some(checkpoints(true)));
    assert_eq!(
        sas[1].1.resume,
        Default::default(),
        "inbound SAs are not kept"
    );
    let on_disk = parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        on_disk.0.get(&KeyId::of(&out)),
        Some(&block),
        "written before install"
    );
    // A checkpoint past a quarter of the block: the reservation moves on, on disk first.
    let cp = |seq| Event::SeqCheckpoint {
        worker: 0,
        id: SaId(0),
        spi: Spi(0xa001),
        seq,
        seq_reserved: None,
    };
    assert!(k.on_event(&cp(10)).is_none());
    let u = k.on_event(&cp(block / 2));
    let want = block / 2 + block;
    assert!(
        matches!(u, Some(Update::ReserveSeq { id: SaId(0), up_to }) if up_to == want),
        "{u:?}"
    );
    let on_disk = parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk.0.get(&KeyId::of(&out)), Some(&want));
    drop(k);
    // An owner that restarts while the SA runs on (a control process under `run`): it knows
    // the SA from the config and moves its reservation on from the file, without a start.
    let mut k = SeqKeeper::open(&path, &[(Direction::Outbound, out.clone())]).unwrap();
    let u = k.on_event(&cp(want - block / 2));
    let later = want - block / 2 + block;
    assert!(
        matches!(u, Some(Update::ReserveSeq { up_to, .. }) if up_to == later),
        "{u:?}"
    );
    drop(k);
    let want = later;
    // The next start resumes after the reservation; a new key for the same SA starts at 1 and
    // the old key's mark stays (the old key may come back).
    let mut k = SeqKeeper::open(&path, &[]).unwrap();
    let mut again = vec![(Direction::Outbound, out.clone())];
    k.start(&mut again).unwrap();
    assert_eq!(again[0].1.resume.seq, want);
    let rekeyed = params(0, 0xa001, 0x33, true);
    drop(k);
    let mut k = SeqKeeper::open(&path, &[]).unwrap();
    let mut new_key = vec![(Direction::Outbound, rekeyed.clone())];
    k.start(&mut new_key).unwrap();
    assert_eq!(new_key[0].1.resume.seq, 0);
    let on_disk = parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk.0.len(), 2);
    // Two outbound SAs with one SPI and one key would share their numbers: refused.
    let mut twins = vec![
        (Direction::Outbound, out.clone()),
        (Direction::Outbound, params(5, 0xa001, 0x11, true)),
    ];
    let e = k.start(&mut twins).expect_err("refused").to_string();
    assert!(e.contains("same SPI"), "{e}");
}

#[test]
fn a_write_that_fails_sends_nothing_and_is_tried_again() {
    let dir = scratch("failing");
    let path = dir.join("gw.yaml.seq-state");
    let out = params(0, 0xa001, 0x11, true);
    let mut sas = vec![(Direction::Outbound, out.clone())];
    let mut k = SeqKeeper::open(&path, &[]).unwrap();
    k.start(&mut sas).unwrap();
    let block = block_size(true);
    let cp = Event::SeqCheckpoint {
        worker: 0,
        id: SaId(0),
        spi: Spi(0xa001),
        seq: block / 2,
        seq_reserved: Some(block),
    };
    // The directory goes away under it: the rename fails, no reservation is sent.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(k.on_event(&cp).is_none());
    // Back: the next report moves it on after all.
    std::fs::create_dir_all(&dir).unwrap();
    assert!(matches!(k.on_event(&cp), Some(Update::ReserveSeq { .. })));
    assert!(path.exists());
}

/// A static SA's life in fast forward, with the real state file, the real reservation logic
/// and the real outbound record: incarnations that start from the file, send, report
/// checkpoints, move the reservation on, lose updates and reports, and crash anywhere (between
/// any two steps, or at any step of a write). Every sequence number that reached the wire is
/// remembered; none may come twice, and none may lie beyond what the file said before it was
/// sent.
#[test]
fn a_crash_at_any_point_skips_numbers_and_never_repeats_one() {
    let meta = InnerMeta {
        next_header: NH_IPV4,
        dscp: 0,
        ecn: 0,
    };
    let steps = [
        Step::Half,
        Step::Written,
        Step::Synced,
        Step::Renamed,
        Step::DirSynced,
    ];
    let mut total_sent = 0u64;
    let mut total_skipped = 0u64;
    for seed in 1..=60u64 {
        let dir = scratch(&format!("model-{seed}"));
        let path = dir.join("gw.yaml.seq-state");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let p = params(0, 0xa001, 0x77, seed % 2 == 0);
        let block = 16 + rng.below(48);
        let mut used: HashSet<u64> = HashSet::new();
        let mut highest = 0u64;
        // What the file said when it was last replaced (a rename is what makes it say so).
        let mut on_disk = 0u64;
        for _life in 0..25 {
            let (file, marks) = StateFile::open(&path).unwrap();
            let marks = marks.unwrap_or_default();
            assert_eq!(marks.0.get(&KeyId::of(&p)).copied().unwrap_or(0), on_disk);
            let mut res = Reservations::with_block(marks, block);
            let (start, next) = res.start(&p);
            // A crash during the first write: nothing was installed, nothing sent.
            let last = if rng.below(6) == 0 {
                steps[rng.below(4) as usize]
            } else {
                Step::DirSynced
            };
            file.store_until(&next, last).unwrap();
            if last >= Step::Renamed {
                on_disk = start.reserved;
            }
            if last != Step::DirSynced {
                continue;
            }
            res.adopt(next);
            let mut q = p.clone();
            q.resume.seq = start.resume;
            q.resume.seq_reserved = Some(start.reserved);
            let mut sa = build_outbound(Backend::Null, &q).unwrap();
            sa.set_checkpoint(Checkpoint {
                packets: (block / 8).max(1),
                millis: 0,
            });
            // A ReserveSeq on its way to the worker.
            let mut in_flight: Option<u64> = None;
            // Lives long enough, and an owner slow enough, that SAs often wait at their
            // reservation when the crash comes.
            for _ in 0..rng.below(1500) {
                match rng.below(100) {
                    0 => break,
                    1..=4 => {
                        if let Some(up_to) = in_flight.take() {
                            sa.reserve(up_to);
                        }
                    }
                    5 => in_flight = None,
                    _ => {
                        let mut f = MemFrame::from_bytes(&[0x45; 40]).unwrap();
                        let report = match encapsulate(&mut sa, &mut f, meta) {
                            Ok(_) => {
                                assert!(used.insert(sa.seq), "seed {seed}: {} sent twice", sa.seq);
                                // Above everything sent before, in this life or an earlier one.
                                assert!(
                                    sa.seq > highest,
                                    "seed {seed}: {} after {highest}",
                                    sa.seq
                                );
                                assert!(
                                    sa.seq <= on_disk,
                                    "seed {seed}: {} sent, the file says {on_disk}",
                                    sa.seq
                                );
                                highest = highest.max(sa.seq);
                                total_sent += 1;
                                sa.seq >= sa.next_report && sa.take_due_reports().checkpoint
                            }
                            // Held at its reservation: the timed checkpoint says so.
                            Err(DropReason::SeqNotReserved) => rng.below(4) == 0,
                            Err(r) => panic!("seed {seed}: {r:?}"),
                        };
                        // Reports get lost too.
                        if !report || rng.below(3) == 0 {
                            continue;
                        }
                        let Some((up_to, next)) = res.extension(SaId(0), sa.seq) else {
                            continue;
                        };
                        let last = if rng.below(30) == 0 {
                            steps[rng.below(4) as usize]
                        } else {
                            Step::DirSynced
                        };
                        file.store_until(&next, last).unwrap();
                        if last >= Step::Renamed {
                            on_disk = up_to;
                        }
                        if last != Step::DirSynced {
                            break;
                        }
                        res.adopt(next);
                        if rng.below(3) == 0 {
                            sa.reserve(up_to);
                        } else {
                            in_flight = Some(up_to);
                        }
                    }
                }
            }
            drop(file);
        }
        total_skipped += on_disk.saturating_sub(used.len() as u64);
    }
    // The walk went somewhere: many numbers sent, and restarts skipped some.
    assert!(total_sent > 20_000, "{total_sent}");
    assert!(total_skipped > 0);
}
