use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use proto::codec::Record;

/// A unique path under /dev/shm (or the temp dir), removed on drop whatever happened.
struct TmpPath(PathBuf);

impl TmpPath {
    fn new(name: &str) -> TmpPath {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new("/dev/shm");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let n = N.fetch_add(1, Ordering::Relaxed);
        TmpPath(dir.join(format!("roamgate-test-{}-{n}-{name}", std::process::id())))
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spec(kind: RingKind, slot_size: u32, slot_count: u32, zeroize: bool) -> RingSpec {
    RingSpec {
        kind,
        index: 0,
        slot_size,
        slot_count,
        zeroize,
    }
}

/// xorshift64*: deterministic record contents.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Record `seq`: 8 bytes of sequence, then bytes derived from it; length 8..=max.
fn record(seq: u64, max: usize, out: &mut Vec<u8>) {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let len = 8 + (next(&mut x) as usize % (max - 7));
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    while out.len() < len {
        out.push(next(&mut x) as u8);
    }
}

#[test]
fn create_then_open_checks_and_shares_the_header() {
    let p = TmpPath::new("hdr");
    let rings = [
        spec(RingKind::Update, 64, 8, true),
        spec(RingKind::Event, 128, 4, false),
    ];
    let a = Region::create(&p.0, &rings).unwrap();
    let mode = std::fs::metadata(&p.0).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = Region::open(&p.0).unwrap();
    assert_eq!(a.identity(), b.identity());
    assert_eq!(b.identity().creator_pid, std::process::id());
    assert_eq!(b.rings(), &rings);
    assert!(b.is_open() && b.creator_alive());
    assert!(matches!(
        Region::create(&p.0, &rings),
        Err(ShmError::Exists(_))
    ));
    // The creator's drop closes the region and removes the file; a peer that still maps it
    // sees it closed.
    drop(a);
    assert!(!b.is_open());
    assert!(!p.0.exists());
    assert!(matches!(Region::open(&p.0), Err(ShmError::Io { .. })));
}

#[test]
fn bad_layouts_are_refused_at_creation() {
    let p = TmpPath::new("layout");
    for bad in [
        spec(RingKind::Ack, 12, 8, false),
        spec(RingKind::Ack, 8, 8, false),
        spec(RingKind::Ack, 64, 6, false),
        spec(RingKind::Ack, 64, 1, false),
    ] {
        assert!(matches!(
            Region::create(&p.0, &[bad]),
            Err(ShmError::Layout(_))
        ));
        assert!(!p.0.exists());
    }
    assert!(matches!(
        Region::create(&p.0, &[]),
        Err(ShmError::Layout(_))
    ));
}

/// Opens after changing `len` bytes at `at` in a fresh region's file; puts them back.
fn open_with(path: &Path, at: u64, bytes: &[u8]) -> Result<Arc<Region>, ShmError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut old = vec![0u8; bytes.len()];
    f.read_exact_at(&mut old, at).unwrap();
    f.write_all_at(bytes, at).unwrap();
    let r = Region::open(path);
    f.write_all_at(&old, at).unwrap();
    r
}

use std::sync::Arc;

#[test]
fn every_header_field_is_checked_on_open() {
    let p = TmpPath::new("fields");
    let _a = Region::create(&p.0, &[spec(RingKind::Punt, 64, 8, false)]).unwrap();
    let e = |at, b: &[u8]| open_with(&p.0, at, b).err().unwrap();
    assert!(matches!(e(0, b"X"), ShmError::Magic));
    assert!(matches!(
        e(8, &2u32.to_le_bytes()),
        ShmError::Version {
            found: 2,
            expected: 1
        }
    ));
    assert!(matches!(e(12, &0u32.to_le_bytes()), ShmError::Header(_)));
    assert!(matches!(e(12, &2u32.to_le_bytes()), ShmError::Header(_)));
    assert!(matches!(e(16, &1u64.to_le_bytes()), ShmError::Size { .. }));
    assert!(matches!(e(36, &0u32.to_le_bytes()), ShmError::NotReady));
    assert!(matches!(e(36, &2u32.to_le_bytes()), ShmError::Closed));
    assert!(matches!(e(36, &7u32.to_le_bytes()), ShmError::Header(_)));
    assert!(matches!(e(40, &[0xff; 16]), ShmError::Stale(_)));
    // Descriptor 0 at 64: offset, slot size, slot count, kind, index, flags, reserved.
    let desc = |i: ShmError| matches!(i, ShmError::Descriptor { ring: 0, .. });
    assert!(desc(e(64, &100u64.to_le_bytes())));
    assert!(desc(e(64, &0u64.to_le_bytes())));
    assert!(desc(e(64, &(1u64 << 30).to_le_bytes())));
    assert!(desc(e(72, &12u32.to_le_bytes())));
    assert!(desc(e(72, &(1u32 << 16).to_le_bytes())));
    assert!(desc(e(76, &7u32.to_le_bytes())));
    assert!(desc(e(76, &(1u32 << 20).to_le_bytes())));
    assert!(desc(e(80, &9u16.to_le_bytes())));
    assert!(desc(e(84, &4u32.to_le_bytes())));
    assert!(desc(e(88, &1u64.to_le_bytes())));
    // Untouched, it still opens.
    assert!(Region::open(&p.0).is_ok());
}

#[test]
fn short_foreign_and_exposed_files_are_refused() {
    let p = TmpPath::new("foreign");
    std::fs::write(&p.0, b"tiny").unwrap();
    std::fs::set_permissions(&p.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(Region::open(&p.0), Err(ShmError::TooSmall(4))));
    std::fs::write(&p.0, [0u8; 4096]).unwrap();
    assert!(matches!(Region::open(&p.0), Err(ShmError::NotReady)));
    std::fs::set_permissions(&p.0, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        Region::open(&p.0),
        Err(ShmError::Permissions { mode: 0o644, .. })
    ));
    // A region whose file grew after creation no longer matches its header.
    let q = TmpPath::new("grown");
    let _a = Region::create(&q.0, &[spec(RingKind::Ack, 16, 2, false)]).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&q.0).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len + 4096).unwrap();
    assert!(matches!(Region::open(&q.0), Err(ShmError::Size { .. })));
}

#[test]
fn each_end_is_taken_once_per_mapping() {
    let p = TmpPath::new("take");
    let a = Region::create(&p.0, &[spec(RingKind::Ack, 32, 4, false)]).unwrap();
    let _tx = a.producer(0).unwrap();
    assert!(matches!(a.producer(0), Err(ShmError::Taken { .. })));
    let _rx = a.consumer(0).unwrap();
    assert!(matches!(a.consumer(0), Err(ShmError::Taken { .. })));
    assert!(matches!(a.consumer(1), Err(ShmError::NoSuchRing(1))));
    let b = Region::open(&p.0).unwrap();
    assert!(b.consumer(0).is_ok());
}

#[test]
fn full_is_back_pressure_and_records_span_slots() {
    let p = TmpPath::new("full");
    // 8 slots of 32 bytes: 24 payload bytes in one slot.
    let a = Region::create(&p.0, &[spec(RingKind::Punt, 32, 8, false)]).unwrap();
    let mut tx = a.producer(0).unwrap();
    let mut rx = a.consumer(0).unwrap();
    let mut buf = [0u8; 256];
    assert_eq!(rx.try_pop(&mut buf), Ok(None));
    assert_eq!(tx.max_record_len(), 8 * 32 - 8);
    assert_eq!(
        tx.try_push(&[0; 249]),
        Err(PushError::TooLarge { len: 249, max: 248 })
    );
    for i in 0..8u8 {
        tx.try_push(&[i; 24]).unwrap();
    }
    assert_eq!(tx.try_push(&[9]), Err(PushError::Full));
    assert_eq!(rx.try_pop(&mut buf), Ok(Some(24)));
    assert_eq!(buf[..24], [0; 24]);
    tx.try_push(&[8; 20]).unwrap();
    // Too small a buffer consumes nothing.
    assert_eq!(
        rx.try_pop(&mut buf[..10]),
        Err(PopError::BufferTooSmall { needed: 24 })
    );
    for i in 1..8u8 {
        assert_eq!(rx.try_pop(&mut buf), Ok(Some(24)));
        assert_eq!(buf[..24], [i; 24]);
    }
    assert_eq!(rx.try_pop(&mut buf), Ok(Some(20)));
    assert_eq!(buf[..20], [8; 20]);
    assert_eq!(rx.try_pop(&mut buf), Ok(None));
    // Head and tail are at 9 (slot 1). Six records take slots 1..=6; a 3-slot record then
    // does not fit in slot 7 before the end: a skip marker fills slot 7, the record waits for
    // room at slot 0.
    for _ in 0..6 {
        tx.try_push(&[1; 24]).unwrap();
    }
    assert_eq!(tx.try_push(&[7; 80]), Err(PushError::Full));
    for _ in 0..6 {
        rx.try_pop(&mut buf).unwrap().unwrap();
    }
    tx.try_push(&[7; 80]).unwrap();
    {
        let g = rx.try_read().unwrap().unwrap();
        assert_eq!(&*g, &[7; 80][..]);
    }
    assert_eq!(rx.try_pop(&mut buf), Ok(None));
    // The largest record, over the whole ring: the producer publishes a skip to the end and
    // reports Full until the consumer has passed it.
    assert_eq!(tx.try_push(&[5; 248]), Err(PushError::Full));
    assert_eq!(rx.try_pop(&mut buf), Ok(None));
    tx.try_push(&[5; 248]).unwrap();
    assert_eq!(rx.try_pop(&mut buf), Ok(Some(248)));
    assert_eq!(buf[..248], [5; 248]);
    // Batch read.
    for i in 0..5u8 {
        tx.try_push(&[i; 3]).unwrap();
    }
    let mut seen = Vec::new();
    assert_eq!(rx.drain(4, |r| seen.push(r[0])), Ok(4));
    assert_eq!(rx.drain(10, |r| seen.push(r[0])), Ok(1));
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}

#[test]
fn consumed_key_records_are_zeroized_and_others_not() {
    let p = TmpPath::new("zero");
    let a = Region::create(
        &p.0,
        &[
            spec(RingKind::Update, 64, 4, true),
            spec(RingKind::Punt, 64, 4, false),
        ],
    )
    .unwrap();
    let key = [0xa7u8; 100];
    let file = || std::fs::read(&p.0).unwrap();
    let has_key = |bytes: &[u8]| bytes.windows(32).any(|w| w == &key[..32]);
    let mut tx = a.producer(0).unwrap();
    let mut rx = a.consumer(0).unwrap();
    tx.try_push(&key).unwrap();
    assert!(has_key(&file()));
    let mut buf = [0u8; 128];
    assert_eq!(rx.try_pop(&mut buf), Ok(Some(100)));
    assert!(!has_key(&file()), "key bytes left in the update ring");
    tx.try_push(&key).unwrap();
    drop(rx.try_read().unwrap().unwrap());
    assert!(!has_key(&file()), "key bytes left after a read guard");
    // A ring without the flag keeps its bytes (no cost where there is no key).
    let mut tx = a.producer(1).unwrap();
    let mut rx = a.consumer(1).unwrap();
    tx.try_push(&key).unwrap();
    rx.try_pop(&mut buf).unwrap();
    assert!(has_key(&file()));
}

#[test]
fn garbage_from_the_peer_is_an_error_not_a_crash() {
    let p = TmpPath::new("garbage");
    let a = Region::create(&p.0, &[spec(RingKind::Event, 32, 8, false)]).unwrap();
    let ring_at = 128u64; // header 96 bytes, rounded up to 128
    let f = std::fs::OpenOptions::new().write(true).open(&p.0).unwrap();
    let mut tx = a.producer(0).unwrap();
    let mut rx = a.consumer(0).unwrap();
    let mut buf = [0u8; 512];
    tx.try_push(&[1; 10]).unwrap();
    // A slot header of an unknown kind.
    f.write_all_at(&9u32.to_le_bytes(), ring_at + 256 + 4)
        .unwrap();
    assert!(matches!(rx.try_pop(&mut buf), Err(PopError::Corrupt(_))));
    // A length beyond the ring.
    f.write_all_at(&1u32.to_le_bytes(), ring_at + 256 + 4)
        .unwrap();
    f.write_all_at(&u32::MAX.to_le_bytes(), ring_at + 256)
        .unwrap();
    assert!(matches!(rx.try_pop(&mut buf), Err(PopError::Corrupt(_))));
    // A length past the tail (1 record published, this one would need 2 slots).
    f.write_all_at(&30u32.to_le_bytes(), ring_at + 256).unwrap();
    assert!(matches!(rx.try_pop(&mut buf), Err(PopError::Corrupt(_))));
    // A tail far ahead of the head.
    f.write_all_at(&1000u64.to_le_bytes(), ring_at).unwrap();
    let mut rx2 = Region::open(&p.0).unwrap().consumer(0).unwrap();
    assert!(matches!(rx2.try_pop(&mut buf), Err(PopError::Corrupt(_))));
    // A head ahead of the tail, seen by the producer.
    f.write_all_at(&1u64.to_le_bytes(), ring_at).unwrap();
    f.write_all_at(&500u64.to_le_bytes(), ring_at + 128)
        .unwrap();
    let mut tx2 = Region::open(&p.0).unwrap().producer(0).unwrap();
    for _ in 0..8 {
        match tx2.try_push(&[0; 24]) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e, PushError::Corrupt);
                return;
            }
        }
    }
    panic!("a corrupt head was never noticed");
}

/// Between retries: yields, since the tests run on few cores beside each other and a spinning
/// side could take the core its peer needs.
fn wait() {
    std::thread::yield_now();
}

/// Pushes `n` records through `tx` (retrying on Full), reads them back through `rx` on
/// another thread and checks every byte and the order.
fn stream(mut tx: Producer, mut rx: Consumer, n: u64, max: usize) {
    let reader = std::thread::spawn(move || {
        let mut want = Vec::new();
        let mut buf = vec![0u8; max];
        let mut seq = 0;
        let mut empty = 0u64;
        while seq < n {
            match rx.try_pop(&mut buf).unwrap() {
                Some(len) => {
                    record(seq, max, &mut want);
                    assert_eq!(&buf[..len], &want[..], "record {seq}");
                    seq += 1;
                }
                None => {
                    empty += 1;
                    wait();
                }
            }
        }
        assert_eq!(rx.try_pop(&mut buf), Ok(None));
        empty
    });
    let mut rec = Vec::new();
    let mut full = 0u64;
    for seq in 0..n {
        record(seq, max, &mut rec);
        loop {
            match tx.try_push(&rec) {
                Ok(()) => break,
                Err(PushError::Full) => {
                    full += 1;
                    wait();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let empty = reader.join().unwrap();
    println!("{n} records: producer saw full {full} times, consumer saw empty {empty} times");
}

/// Two mappings of one file (what two processes see), one thread on each: millions of
/// records of 8..=150 bytes through a small ring (wraps, skips, full and empty all the time).
#[test]
fn two_mappings_two_threads_millions_of_records() {
    let p = TmpPath::new("stress");
    let a = Region::create(&p.0, &[spec(RingKind::Punt, 64, 64, true)]).unwrap();
    let b = Region::open(&p.0).unwrap();
    let n = if cfg!(debug_assertions) {
        1 << 21
    } else {
        1 << 23
    };
    stream(a.producer(0).unwrap(), b.consumer(0).unwrap(), n, 150);
}

const CHILD_ENV: &str = "ROAMGATE_SHM_TEST_CHILD";
const CROSS_N: u64 = 200_000;

/// The child's half of `crosses_a_process_boundary`: only does something when re-executed
/// with `CHILD_ENV` naming the region. Reads ring 0 and echoes every record back on ring 1.
#[test]
fn child_role() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let r = Region::open(Path::new(&path)).unwrap();
    assert_ne!(r.identity().creator_pid, std::process::id());
    let mut rx = r.consumer(0).unwrap();
    let mut tx = r.producer(1).unwrap();
    let mut buf = vec![0u8; rx.max_record_len()];
    let mut want = Vec::new();
    let mut seq = 0;
    while seq < CROSS_N {
        let Some(len) = rx.try_pop(&mut buf).unwrap() else {
            wait();
            continue;
        };
        record(seq, 300, &mut want);
        assert_eq!(&buf[..len], &want[..], "record {seq}");
        while tx.try_push(&buf[..len]) == Err(PushError::Full) {
            wait();
        }
        seq += 1;
    }
}

#[test]
fn crosses_a_process_boundary() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let p = TmpPath::new("process");
    let a = Region::create(
        &p.0,
        &[
            spec(RingKind::Update, 128, 256, true),
            spec(RingKind::Ack, 128, 256, false),
        ],
    )
    .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "shm::tests::child_role",
            "--nocapture",
            "--quiet",
        ])
        .env(CHILD_ENV, &p.0)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut tx = a.producer(0).unwrap();
    let mut rx = a.consumer(1).unwrap();
    let (mut sent, mut got) = (0u64, 0u64);
    let (mut rec, mut buf, mut want) = (Vec::new(), vec![0u8; 1024], Vec::new());
    let start = std::time::Instant::now();
    while got < CROSS_N {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "stuck at {sent} sent, {got} echoed"
        );
        if sent < CROSS_N {
            record(sent, 300, &mut rec);
            match tx.try_push(&rec) {
                Ok(()) => sent += 1,
                Err(PushError::Full) => {}
                Err(e) => panic!("{e}"),
            }
        }
        if let Some(len) = rx.try_pop(&mut buf).unwrap() {
            record(got, 300, &mut want);
            assert_eq!(&buf[..len], &want[..], "echo {got}");
            got += 1;
        }
        // A child that failed ends the test; one that succeeded may have left echoes in the
        // ring, still to be read.
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "child failed: {status}");
        }
    }
    assert!(child.wait().unwrap().success());
}

mod channel {
    use super::*;
    use crate::crypto::AeadAlg;
    use crate::esp::sa::{SaKeys, SaParams};
    use crate::ids::{SaId, Spi};
    use crate::msg::{Ack, Datagram, Direction, Event, Update, UpdateEnvelope};
    use core::net::{IpAddr, Ipv4Addr};

    fn small() -> ChannelSizes {
        let s = RingSize {
            slot_size: 128,
            slot_count: 16,
        };
        ChannelSizes {
            update: s,
            ack: s,
            punt: s,
            punt_cookie: s,
            transmit: s,
            event: s,
        }
    }

    fn add_sa(generation: u64) -> UpdateEnvelope {
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        UpdateEnvelope {
            generation,
            update: Update::AddSa {
                dir: Direction::Inbound,
                params: SaParams {
                    id: SaId(1),
                    spi: Spi(0x100),
                    keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[0xa7; 20]).unwrap(),
                    esn: true,
                    replay_window: 64,
                    local: a,
                    remote: a,
                    encap: None,
                    local_ts: "10.0.0.0/8".parse().unwrap(),
                    remote_ts: "10.0.0.0/8".parse().unwrap(),
                    outer_ttl: 64,
                    resume: Default::default(),
                    checkpoint: None,
                    lifetime: Default::default(),
                },
            },
        }
    }

    #[test]
    fn every_ring_carries_its_records_between_two_mappings() {
        let p = TmpPath::new("chan");
        let control = ControlChannel::create_with(&p.0, 3, &small()).unwrap();
        let data = ControlChannel::open(&p.0).unwrap();
        assert_eq!(data.workers(), 3);
        let addr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        for w in 0..3 {
            let mut up = control.update_sender(w).unwrap();
            let mut down = data.update_receiver(w).unwrap();
            up.try_send(&add_sa(u64::from(w) + 10)).unwrap();
            let got = down.try_recv().unwrap().unwrap();
            assert_eq!(got.generation, u64::from(w) + 10);
            assert_eq!(
                proto::codec::to_vec(&got).unwrap(),
                proto::codec::to_vec(&add_sa(u64::from(w) + 10)).unwrap()
            );
            assert!(down.try_recv().unwrap().is_none());
            let ack = Ack::Applied {
                worker: w,
                generation: 10,
            };
            data.ack_sender(w).unwrap().try_send(&ack).unwrap();
            assert_eq!(
                control.ack_receiver(w).unwrap().try_recv().unwrap(),
                Some(ack)
            );
        }
        assert!(matches!(
            control.update_sender(3),
            Err(ShmError::NoSuchRing(_))
        ));
        assert!(matches!(
            control.update_sender(0),
            Err(ShmError::Taken { .. })
        ));
        let punt = Datagram {
            src: addr,
            dst: addr,
            src_port: 500,
            dst_port: 500,
            payload: vec![1; 400],
        };
        data.punt_sender().unwrap().try_send(&punt).unwrap();
        assert_eq!(
            control.punt_receiver().unwrap().try_recv().unwrap(),
            Some(punt)
        );
        let tx = Datagram {
            src: addr,
            dst: addr,
            src_port: 4500,
            dst_port: 4500,
            payload: vec![2; 100],
        };
        control.transmit_sender().unwrap().try_send(&tx).unwrap();
        assert_eq!(
            data.transmit_receiver().unwrap().try_recv().unwrap(),
            Some(tx)
        );
        let ev = Event::AuthFailures {
            worker: 2,
            id: SaId(1),
            spi: Spi(0x100),
            count: 3,
        };
        data.event_sender().unwrap().try_send(&ev).unwrap();
        assert_eq!(
            control.event_receiver().unwrap().try_recv().unwrap(),
            Some(ev)
        );
    }

    #[test]
    fn update_keys_do_not_outlive_their_slot() {
        let p = TmpPath::new("chankeys");
        let control = ControlChannel::create_with(&p.0, 1, &small()).unwrap();
        let mut tx = control.update_sender(0).unwrap();
        let mut rx = control.update_receiver(0).unwrap();
        tx.try_send(&add_sa(1)).unwrap();
        let file = || std::fs::read(&p.0).unwrap();
        assert!(file().windows(16).any(|w| w == [0xa7; 16]));
        let got = rx.try_recv().unwrap().unwrap();
        assert!(!file().windows(16).any(|w| w == [0xa7; 16]));
        drop(got);
    }

    #[test]
    fn full_rings_and_bad_records_are_reported() {
        let p = TmpPath::new("chanfull");
        let control = ControlChannel::create_with(&p.0, 1, &small()).unwrap();
        let mut tx = control.event_sender().unwrap();
        let mut rx = control.event_receiver().unwrap();
        let ev = Event::ReplayFailures {
            worker: 0,
            id: SaId(1),
            spi: Spi(2),
            count: 1,
        };
        let mut sent = 0;
        while tx.try_send(&ev).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 16);
        assert_eq!(tx.try_send(&ev), Err(SendError::Full));
        let mut got = 0;
        while let Some(e) = rx.try_recv().unwrap() {
            assert_eq!(e, ev);
            got += 1;
        }
        assert_eq!(got, 16);
        // A record that is not an event (from a raw producer in another mapping, after the
        // typed one is gone: one producer at a time): consumed and reported, the ring goes on.
        drop(tx);
        let other = Region::open(&p.0).unwrap();
        let mut raw_tx = other.producer(4).unwrap();
        raw_tx.try_push(&[1, 0x99, 0]).unwrap();
        assert!(matches!(rx.try_recv(), Err(RecvError::Decode(_))));
        raw_tx
            .try_push(&proto::codec::to_vec(&ev).unwrap())
            .unwrap();
        assert_eq!(rx.try_recv().unwrap(), Some(ev));
        let big = Datagram {
            src: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
            src_port: 1,
            dst_port: 2,
            payload: vec![0; 4096],
        };
        assert!(matches!(
            control.punt_sender().unwrap().try_send(&big),
            Err(SendError::TooLarge { .. })
        ));
        assert!(big.encoded_len().unwrap() > 4096);
    }

    #[test]
    fn open_refuses_a_region_of_another_layout() {
        let p = TmpPath::new("chanlayout");
        let _r = Region::create(
            &p.0,
            &[
                spec(RingKind::Ack, 32, 4, false),
                spec(RingKind::Update, 32, 4, true),
                spec(RingKind::Punt, 32, 4, false),
                spec(RingKind::Transmit, 32, 4, false),
                spec(RingKind::Event, 32, 4, false),
            ],
        )
        .unwrap();
        assert!(matches!(
            ControlChannel::open(&p.0),
            Err(ShmError::Layout(_))
        ));
        let q = TmpPath::new("chanlayout2");
        let _r = Region::create(&q.0, &[spec(RingKind::Ack, 32, 4, false)]).unwrap();
        assert!(matches!(
            ControlChannel::open(&q.0),
            Err(ShmError::Layout(_))
        ));
    }
}
