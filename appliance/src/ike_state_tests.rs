//! The IKE state directory's mechanics: all-or-none writes of several IKE SAs (a journal left
//! by a crash is finished, a write that never committed is rolled back), refusals of what
//! cannot be read, the lock.

use super::*;
use ike::IkeSpi;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roamgate-ike-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn id(n: u64) -> IkeSaId {
    IkeSaId(IkeSpi(n))
}

fn files(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "lock")
        .collect();
    v.sort();
    v
}

#[test]
fn a_batch_lands_whole_and_a_removed_ike_sa_goes() {
    let d = dir("batch");
    let (mut s, loaded) = IkeStateDir::open(&d).unwrap();
    assert!(loaded.stored.is_empty() && loaded.refused.is_empty());
    s.write(&[(id(1), b"one"), (id(2), b"two")]).unwrap();
    assert_eq!(files(&d), [file_name(id(1)), file_name(id(2))]);
    assert_eq!(std::fs::read(d.join(file_name(id(2)))).unwrap(), b"two");
    s.remove(id(1)).unwrap();
    s.remove(id(1)).unwrap();
    assert_eq!(files(&d), [file_name(id(2))]);
    let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    drop(s);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_committed_batch_is_finished_at_start_and_an_uncommitted_one_rolled_back() {
    let d = dir("journal");
    let (s, _) = IkeStateDir::open(&d).unwrap();
    let (a, b) = (file_name(id(1)), file_name(id(2)));
    // A crash after the commit, before the renames: the start finishes them.
    s.write_tmp(&a, b"new a").unwrap();
    s.write_tmp(&b, b"new b").unwrap();
    s.write_tmp(JOURNAL, format!("{a}\n{b}").as_bytes())
        .unwrap();
    s.rename_tmp(JOURNAL).unwrap();
    s.rename_tmp(&a).unwrap();
    drop(s);
    let (s, loaded) = IkeStateDir::open(&d).unwrap();
    // The bytes are no stored IKE SA: refused by name, set aside; the renames were done.
    assert_eq!(loaded.refused.len(), 2);
    assert_eq!(
        files(&d),
        [format!("{a}.refused"), format!("{b}.refused")],
        "the journal's renames were finished and the journal removed"
    );
    assert_eq!(
        std::fs::read(d.join(format!("{b}.refused"))).unwrap(),
        b"new b"
    );
    // A crash before the commit: the .tmp files go, the old files stay.
    std::fs::write(d.join(&a), b"old a").unwrap();
    s.write_tmp(&a, b"new a").unwrap();
    s.write_tmp(JOURNAL, a.as_bytes()).unwrap();
    drop(s);
    let (_s, loaded) = IkeStateDir::open(&d).unwrap();
    assert_eq!(loaded.refused.len(), 1);
    assert_eq!(
        std::fs::read(d.join(format!("{a}.refused"))).unwrap(),
        b"old a"
    );
    assert!(!files(&d)
        .iter()
        .any(|f| f.ends_with(".tmp") || f == JOURNAL));
    drop(_s);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn unreadable_files_are_named_and_set_aside_and_a_second_owner_is_refused() {
    let d = dir("refused");
    let (s, _) = IkeStateDir::open(&d).unwrap();
    let err = IkeStateDir::open(&d).err().unwrap();
    assert!(
        format!("{err:#}").contains("another control process holds it"),
        "{err:#}"
    );
    drop(s);
    std::fs::write(d.join(file_name(id(7))), b"RGIKESA\0\x00\x01 cut").unwrap();
    std::fs::write(d.join(file_name(id(8))), vec![0u8; 200]).unwrap();
    std::fs::write(d.join("notes.txt"), b"not ours").unwrap();
    let (_s, loaded) = IkeStateDir::open(&d).unwrap();
    let why: Vec<(String, StoreError)> = loaded.refused.clone();
    assert_eq!(
        why,
        [
            (file_name(id(7)), StoreError::Truncated),
            (file_name(id(8)), StoreError::BadMagic)
        ]
    );
    assert_eq!(
        files(&d),
        [
            format!("{}.refused", file_name(id(7))),
            format!("{}.refused", file_name(id(8))),
            "notes.txt".to_string()
        ]
    );
    drop(_s);
    std::fs::remove_dir_all(&d).unwrap();
}
