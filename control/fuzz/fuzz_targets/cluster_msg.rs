#![no_main]
//! The cluster channel's messages (`control::cluster::msg`): any bytes, decoded both ways;
//! whatever decodes encodes to bytes that decode to the same message. Then the bytes as an
//! edge's message into a crypto node (a hello first): nothing may panic.
use control::cluster::{CryptoNode, EdgeMsg, NodeMsg};
use control::core::ControlCore;
use control::repo::SaRepository;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = EdgeMsg::decode(data) {
        let again = m.encode().unwrap();
        assert_eq!(EdgeMsg::decode(&again).unwrap(), m);
    }
    if let Ok(m) = NodeMsg::decode(data) {
        let again = m.encode().unwrap();
        let m2 = NodeMsg::decode(&again).unwrap();
        assert_eq!(m2.encode().unwrap(), again);
    }
    let core = ControlCore::for_cluster_node(
        Vec::new(),
        SaRepository::new(Vec::new(), 64),
        [1; 32],
        "192.0.2.1".parse().unwrap(),
        4,
        1,
    )
    .unwrap();
    let mut node = CryptoNode::new(core);
    let now = control::driver::Instant::ZERO;
    node.edge_up(0);
    node.handle(
        now,
        0,
        EdgeMsg::Hello {
            edge: 0,
            incarnation: 1,
            applied: 0,
        },
    );
    if let Ok(m) = EdgeMsg::decode(data) {
        node.handle(now, m.edge(), m);
    }
    while node.poll_for(0).is_some() {}
});
