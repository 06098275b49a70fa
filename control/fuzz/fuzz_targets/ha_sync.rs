#![no_main]
//! The HA sync channel's messages: any bytes, decoded; whatever decodes must encode back to
//! exactly the input (the encoding is canonical). Then the same bytes into a standby and an
//! active node of a pair: nothing may panic, and a decode failure is counted by reason.
use control::ha::{HaParams, Message, Node};
use libfuzzer_sys::fuzz_target;
use proto::sa::Checkpoint;

fn params(slot: u8) -> HaParams {
    HaParams {
        slot,
        priority: 100,
        heartbeat_ms: 30,
        detection_ms: 150,
        checkpoint: Checkpoint {
            packets: 256,
            millis: 20,
        },
        max_pps: 10_000,
        window: 16,
        max_backlog: 64,
        switchover_margin: 512,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(&*m.encode().unwrap(), data);
    }
    // A node that starts, hears the bytes as one message, and runs its timers.
    let mut n = Node::new(params(0), Default::default(), 0);
    n.handle_timeout(200);
    n.handle_message(201, data);
    n.handle_timeout(400);
    while n.poll_message().is_some() {}
    while n.poll_output().is_some() {}
    if Message::decode(data).is_err() {
        assert_eq!(n.stats().decode_errors.values().sum::<u64>(), 1);
    }
});
