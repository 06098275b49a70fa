use super::*;

#[test]
fn commands_are_acknowledged_by_generation() {
    let r = rig(1500);
    assert_eq!(r.agent.acked(), 3);
    assert_eq!(r.w.counters.generation.get(), 3);
    assert_eq!(r.w.sad().inbound_len(), 1);
    assert_eq!(r.w.sad().outbound_len(), 1);
}

#[test]
fn replaced_records_are_released_to_the_agent() {
    let mut r = rig(1500);
    r.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            2,
            0xb001,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    r.update(Update::DeleteOutbound { id: SaId(1) });
    // Old inbound record, old outbound record, and the first (empty) SPD.
    assert_eq!(r.agent.released, 3);
    // Deleting what is not there is reported, not fatal.
    let g = r.agent.send(Command::DeleteOutbound(SaId(1)));
    r.w.poll(0);
    r.agent.pump();
    assert_eq!(r.agent.rejections(), &[(g, "no outbound SA with that id")]);
}

#[test]
fn the_sa_list_follows_installs_replacements_and_deletes() {
    let mut r = rig(1500);
    for i in 10..15u32 {
        for dir in [Direction::Inbound, Direction::Outbound] {
            r.update(Update::AddSa {
                dir,
                params: sa(
                    i,
                    0x100 + i,
                    "192.0.2.1",
                    "192.0.2.2",
                    "10.1.0.0/24",
                    "10.2.0.0/24",
                ),
            });
        }
    }
    r.update(Update::DeleteInbound { spi: Spi(0x10b) });
    r.update(Update::DeleteOutbound { id: SaId(10) });
    // A replacement (same id) is one entry, with the new counters.
    r.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            12,
            0x999,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    let mut got: Vec<(bool, u32, u32)> =
        r.w.handle()
            .sa_counters
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.direction == Direction::Outbound, e.id.0, e.spi.0))
            .collect();
    got.sort();
    let mut want: Vec<(bool, u32, u32)> =
        r.w.sad()
            .inbound_iter()
            .map(|s| (false, s.id.0, s.spi.0))
            .chain(r.w.sad().outbound_iter().map(|s| (true, s.id.0, s.spi.0)))
            .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(got.contains(&(true, 12, 0x999)));
    assert!(!got
        .iter()
        .any(|e| *e == (false, 11, 0x10b) || e.1 == 10 && e.0));
}
