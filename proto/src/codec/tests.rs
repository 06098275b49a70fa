use super::*;
use core::fmt::Debug;

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
}

fn params(alg: impl Into<EspAlg>, six: bool, encap: Option<UdpEncap>) -> SaParams {
    let alg = alg.into();
    let keymat: Vec<u8> = (0..alg.keymat_len()).map(|i| i as u8 ^ 0x5a).collect();
    let (local, remote, lts, rts) = if six {
        (
            v6(1),
            v6(2),
            "2001:db8:a::/48".parse().unwrap(),
            "2001:db8:b::/48".parse().unwrap(),
        )
    } else {
        (
            v4([192, 0, 2, 1]),
            v4([198, 51, 100, 7]),
            "10.1.0.0/16".parse().unwrap(),
            "10.2.0.0/16".parse().unwrap(),
        )
    };
    SaParams {
        id: SaId(7),
        spi: Spi(0xdead_beef),
        keys: SaKeys::from_keymat(alg, &keymat).unwrap(),
        esn: six,
        replay_window: 1024,
        local,
        remote,
        encap,
        local_ts: lts,
        remote_ts: rts,
        outer_ttl: 64,
        lifetime: Lifetime {
            soft_bytes: 1 << 30,
            hard_bytes: u64::MAX - 1,
            soft_packets: 1000,
            hard_packets: if six { 0 } else { 2000 },
        },
        resume: if six {
            Resume {
                seq: (1 << 40) + 17,
                seq_reserved: Some((1 << 40) + (1 << 20)),
                hold_us: 5_000,
                replay: None,
            }
        } else {
            Resume {
                seq: 0,
                seq_reserved: None,
                hold_us: 0,
                replay: Some(replay_state(1024)),
            }
        },
        checkpoint: six.then_some(Checkpoint {
            packets: 1 << 16,
            millis: 250,
        }),
    }
}

/// A window of `size` packets below 70000 with every third one received.
fn replay_state(size: usize) -> ReplayState {
    let mut seen = vec![0u64; size / 64];
    for i in (0..size).step_by(3) {
        seen[i / 64] |= 1 << (i % 64);
    }
    ReplayState { top: 70_000, seen }
}

fn rules() -> Vec<Rule> {
    let sel = |src: &str, dst: &str, proto, sp: PortRange, dp: PortRange| Selector {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto,
        src_ports: sp,
        dst_ports: dp,
    };
    vec![
        Rule {
            id: 1,
            selector: sel(
                "10.1.0.0/16",
                "10.2.0.0/16",
                Some(17),
                PortRange::ANY,
                PortRange { lo: 500, hi: 4500 },
            ),
            action: Action::Protect(SaId(3)),
        },
        Rule {
            id: 2,
            selector: sel(
                "2001:db8::/32",
                "::/0",
                None,
                PortRange::ANY,
                PortRange::ANY,
            ),
            action: Action::Bypass,
        },
        Rule {
            id: 3,
            selector: sel(
                "0.0.0.0/0",
                "192.0.2.9",
                Some(6),
                PortRange { lo: 22, hi: 22 },
                PortRange::ANY,
            ),
            action: Action::Discard,
        },
    ]
}

fn group_params(alg: AeadAlg, sender: Option<u32>) -> GroupSaParams {
    let keymat: Vec<u8> = (0..EspAlg::from(alg).keymat_len())
        .map(|i| i as u8 ^ 0xa5)
        .collect();
    GroupSaParams {
        id: SaId(1 << 24),
        spi: Spi(0xff00_0001),
        keys: SaKeys::from_keymat(alg, &keymat).unwrap(),
        sender_id: sender,
        sender_id_bits: 8,
        replay_window: 128,
        src_ts: "10.0.0.0/8".parse().unwrap(),
        dst_ts: "10.0.0.0/8".parse().unwrap(),
        send: sender.is_some(),
    }
}

/// A group SA's keys come back as they went, and a CBC group SA is not encoded.
#[test]
fn group_sa_keys_round_trip_and_cbc_is_refused() {
    let u = UpdateEnvelope {
        generation: 1,
        update: Update::AddGroupSa {
            params: group_params(AeadAlg::AesGcm256, Some(3)),
        },
    };
    let back = same_bytes(&u);
    let (Update::AddGroupSa { params: a }, Update::AddGroupSa { params: b }) =
        (&u.update, &back.update)
    else {
        panic!("{back:?}")
    };
    assert_eq!((a.keys.key(), a.keys.salt), (b.keys.key(), b.keys.salt));
    assert_eq!(
        (a.id, a.spi, a.sender_id, a.sender_id_bits, a.send),
        (b.id, b.spi, b.sender_id, b.sender_id_bits, b.send)
    );
    assert!(!format!("{back:?}").contains("a5"));
    let mut p = group_params(AeadAlg::AesGcm128, Some(1));
    p.keys = SaKeys::from_keymat(
        EspAlg::Cbc(CbcAlg::AesCbc128, IntegAlg::HmacSha256_128),
        &[1; 48],
    )
    .unwrap();
    let u = UpdateEnvelope {
        generation: 2,
        update: Update::AddGroupSa { params: p },
    };
    assert!(to_vec(&u).is_err());
}

fn updates() -> Vec<UpdateEnvelope> {
    let encap = Some(UdpEncap {
        local_port: 4500,
        remote_port: 61000,
    });
    let mut ups = vec![
        Update::AddSa {
            dir: Direction::Inbound,
            params: params(AeadAlg::AesGcm128, false, None),
        },
        Update::AddSa {
            dir: Direction::Outbound,
            params: params(AeadAlg::AesGcm256, true, encap),
        },
        Update::AddSa {
            dir: Direction::Outbound,
            params: params(
                EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha512_256),
                true,
                None,
            ),
        },
        Update::AddSa {
            dir: Direction::Inbound,
            params: params(
                EspAlg::Cbc(CbcAlg::AesCbc128, IntegAlg::HmacSha1_96),
                false,
                encap,
            ),
        },
        Update::DeleteInbound { spi: Spi(0x1234) },
        Update::DeleteOutbound { id: SaId(99) },
        Update::RebindOutbound {
            ids: vec![SaId(4), SaId(1 << 20), SaId(7)],
            local: v4([192, 0, 2, 1]),
            remote: v4([203, 0, 113, 5]),
            encap,
        },
        Update::RebindOutbound {
            ids: vec![],
            local: v6(1),
            remote: v6(9),
            encap: None,
        },
        Update::ReplaceSpd { rules: rules() },
        Update::ReplaceSpd { rules: vec![] },
        Update::SetMasquerade {
            config: Some(MasqueradeConfig {
                external_addr: Ipv4Addr::new(192, 0, 2, 1),
                max_sessions: 12345,
                ..MasqueradeConfig::default()
            }),
        },
        Update::SetMasquerade { config: None },
        Update::SetVirtualIp {
            config: Some(MasqueradeConfig {
                external_addr: Ipv4Addr::new(10, 99, 0, 5),
                ..MasqueradeConfig::default()
            }),
        },
        Update::SetVirtualIp { config: None },
        Update::BindHost {
            dst: "10.99.0.7".parse().unwrap(),
            src: "10.9.0.0/24".parse().unwrap(),
            sa: SaId(1 << 20),
        },
        Update::BindHostDual {
            dst: "10.99.0.6".parse().unwrap(),
            src: "10.99.0.5/32".parse().unwrap(),
            sa: SaId(0x0100_0003),
        },
        Update::UnbindHost {
            dst: "fd00:99::7".parse().unwrap(),
        },
        Update::SetWanAddresses {
            addrs: vec![
                "198.51.100.10".parse().unwrap(),
                "192.0.2.10".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
            ],
        },
        Update::SetWanAddresses { addrs: vec![] },
        Update::ReserveSeq {
            id: SaId(5),
            up_to: u64::MAX,
        },
        Update::CapSeq {
            id: SaId(6),
            ahead: 512,
        },
        Update::ExportSa {
            sa: SaRef::Inbound(Spi(0xb001)),
        },
        Update::ExportSa {
            sa: SaRef::Outbound(SaId(1)),
        },
        Update::Announce {
            wan: true,
            addrs: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        },
        Update::AddGroupSa {
            params: group_params(AeadAlg::AesGcm128, Some(5)),
        },
        Update::AddGroupSa {
            params: group_params(AeadAlg::AesGcm256, None),
        },
        Update::DeleteGroupSa {
            spi: Spi(0xff00_0042),
        },
        Update::SendOnGroupSa {
            id: SaId(1 << 24),
            spi: Spi(0xff7f_ffff),
        },
        Update::SetGroupPeers {
            id: SaId(1 << 24),
            local: v4([192, 0, 2, 1]),
            outer_ttl: 64,
            peers: vec![
                GroupPeer {
                    lan: "10.2.0.0/16".parse().unwrap(),
                    outer: v4([198, 51, 100, 2]),
                },
                GroupPeer {
                    lan: "2001:db8:b::/48".parse().unwrap(),
                    outer: v6(3),
                },
            ],
            rekey_multicast: Some(v4([239, 192, 0, 1])),
        },
        Update::SetGroupPeers {
            id: SaId(3),
            local: v6(1),
            outer_ttl: 1,
            peers: vec![],
            rekey_multicast: None,
        },
    ];
    ups.extend(masq_updates());
    ups.into_iter()
        .enumerate()
        .map(|(i, update)| UpdateEnvelope {
            generation: u64::MAX - i as u64,
            update,
        })
        .collect()
}

fn flow() -> FlowKey {
    FlowKey {
        proto: 6,
        client: Ipv4Addr::new(10, 7, 0, 10),
        client_port: 40000,
        server: Ipv4Addr::new(10, 9, 0, 10),
        server_port: 5201,
    }
}

fn masq() -> Masq {
    Masq {
        proto: 17,
        addr: Ipv4Addr::new(10, 8, 0, 100),
        port: 0xfffe,
    }
}

fn masq_users() -> MasqUsers {
    MasqUsers {
        users: vec![
            vec![
                UserRule {
                    dst: "10.9.0.10/32".parse().unwrap(),
                    proto: None,
                    ports: PortRange::ANY,
                    allow: false,
                },
                UserRule {
                    dst: "10.9.0.0/24".parse().unwrap(),
                    proto: Some(6),
                    ports: PortRange { lo: 443, hi: 443 },
                    allow: true,
                },
            ],
            vec![],
        ],
        default_allow: true,
        clients: vec![
            MasqClient {
                prefix: "10.7.0.0/24".parse().unwrap(),
                user: 0,
            },
            MasqClient {
                prefix: "10.99.0.3/32".parse().unwrap(),
                user: 1,
            },
        ],
    }
}

fn masq_updates() -> Vec<Update> {
    vec![
        Update::SetMasqPlane {
            plane: Some(MasqPlane {
                clients: vec![
                    "10.7.0.0/24".parse().unwrap(),
                    "10.99.0.0/24".parse().unwrap(),
                ],
                exclude: vec!["10.8.0.0/24".parse().unwrap()],
                served: vec![Ipv4Addr::new(10, 8, 0, 100), Ipv4Addr::new(10, 8, 0, 101)],
                link_addr: Ipv4Addr::new(10, 8, 0, 2),
            }),
        },
        Update::SetMasqPlane {
            plane: Some(MasqPlane {
                clients: vec![],
                exclude: vec![],
                served: vec![],
                link_addr: Ipv4Addr::UNSPECIFIED,
            }),
        },
        Update::SetMasqPlane { plane: None },
        Update::MasqFam {
            install: true,
            flow: flow(),
            masq: masq(),
        },
        Update::MasqFam {
            install: false,
            flow: flow(),
            masq: masq(),
        },
        Update::MasqRoute {
            masq: masq(),
            route: None,
        },
        Update::MasqRoute {
            masq: masq(),
            route: Some(Route::Local),
        },
        Update::MasqRoute {
            masq: masq(),
            route: Some(Route::Node(0xabcd)),
        },
        Update::MasqLink {
            node: 2,
            out_sa: Some(SaId(0x8000_0001)),
        },
        Update::MasqLink {
            node: 0,
            out_sa: None,
        },
        Update::MasqLinkIn {
            spi: Spi(0xf000_0002),
            install: true,
        },
        Update::MasqLinkIn {
            spi: Spi(1),
            install: false,
        },
        Update::MasqUsers {
            table: masq_users(),
        },
        Update::MasqUsers {
            table: MasqUsers {
                users: vec![],
                default_allow: false,
                clients: vec![],
            },
        },
    ]
}

#[test]
fn masq_updates_round_trip_field_by_field() {
    for u in masq_updates() {
        let env = UpdateEnvelope {
            generation: 9,
            update: u.clone(),
        };
        let back = same_bytes(&env).update;
        match (&u, &back) {
            (Update::SetMasqPlane { plane: a }, Update::SetMasqPlane { plane: b }) => {
                assert_eq!(a, b)
            }
            (
                Update::MasqFam {
                    install: i1,
                    flow: f1,
                    masq: m1,
                },
                Update::MasqFam {
                    install: i2,
                    flow: f2,
                    masq: m2,
                },
            ) => assert_eq!((i1, f1, m1), (i2, f2, m2)),
            (
                Update::MasqRoute {
                    masq: m1,
                    route: r1,
                },
                Update::MasqRoute {
                    masq: m2,
                    route: r2,
                },
            ) => assert_eq!((m1, r1), (m2, r2)),
            (
                Update::MasqLink {
                    node: n1,
                    out_sa: s1,
                },
                Update::MasqLink {
                    node: n2,
                    out_sa: s2,
                },
            ) => assert_eq!((n1, s1), (n2, s2)),
            (
                Update::MasqLinkIn {
                    spi: s1,
                    install: i1,
                },
                Update::MasqLinkIn {
                    spi: s2,
                    install: i2,
                },
            ) => assert_eq!((s1, i1), (s2, i2)),
            (Update::MasqUsers { table: a }, Update::MasqUsers { table: b }) => assert_eq!(a, b),
            (a, b) => panic!("{a:?} came back as {b:?}"),
        }
    }
}

#[test]
fn invalid_masq_fields_are_refused() {
    let enc = |u: Update| {
        to_vec(&UpdateEnvelope {
            generation: 1,
            update: u,
        })
        .unwrap()
        .to_vec()
    };
    // A route kind other than none, local, node: after version, tag, generation, masq (7).
    let mut r = enc(Update::MasqRoute {
        masq: masq(),
        route: Some(Route::Local),
    });
    r[2 + 8 + 7] = 3;
    assert_eq!(
        UpdateEnvelope::decode(&r).err(),
        Some(DecodeError::Invalid("masq route"))
    );
    // A client naming a user the table does not have.
    let mut t = masq_users();
    t.clients[1].user = 2;
    let b = enc(Update::MasqUsers { table: t });
    assert_eq!(
        UpdateEnvelope::decode(&b).err(),
        Some(DecodeError::Invalid("masq client user"))
    );
    // A served-address count the bytes cannot hold: refused before allocating.
    let mut p = vec![CODEC_VERSION, tag::SET_MASQ_PLANE];
    p.extend_from_slice(&1u64.to_le_bytes());
    p.push(1);
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        UpdateEnvelope::decode(&p).err(),
        Some(DecodeError::Truncated)
    );
    // An install flag that is not a bool.
    let mut f = enc(Update::MasqFam {
        install: true,
        flow: flow(),
        masq: masq(),
    });
    f[10] = 2;
    assert_eq!(
        UpdateEnvelope::decode(&f).err(),
        Some(DecodeError::Invalid("masq install flag"))
    );
    // A miss of neither direction.
    let mut e = to_vec(&Event::MasqMiss {
        worker: 1,
        key: MasqMissKey::In(masq()),
    })
    .unwrap()
    .to_vec();
    e[4] = 2;
    assert_eq!(
        Event::decode(&e).err(),
        Some(DecodeError::Invalid("masq miss direction"))
    );
}

fn acks() -> Vec<Ack> {
    vec![
        Ack::Applied {
            worker: 3,
            generation: 1 << 40,
        },
        Ack::Rejected {
            worker: 65535,
            generation: 2,
            why: "no inbound SA with that SPI".into(),
        },
        Ack::Rejected {
            worker: 0,
            generation: 0,
            why: String::new(),
        },
    ]
}

fn events() -> Vec<Event> {
    let mut out = vec![
        Event::UnknownSpi {
            worker: 1,
            spi: Spi(5),
            src: v4([198, 51, 100, 7]),
            src_port: 4500,
            dst: v4([192, 0, 2, 1]),
            packets: 17,
        },
        Event::UnknownSpi {
            worker: 1,
            spi: Spi(5),
            src: v6(7),
            src_port: 0,
            dst: v6(1),
            packets: 1,
        },
        Event::SeqNearWrap {
            worker: 2,
            id: SaId(8),
            spi: Spi(9),
            seq: u64::from(u32::MAX) - 1000,
            limit: u64::from(u32::MAX),
        },
        Event::AuthFailures {
            worker: 4,
            id: SaId(1),
            spi: Spi(2),
            count: 3,
        },
        Event::ReplayFailures {
            worker: 4,
            id: SaId(1),
            spi: Spi(2),
            count: u64::MAX,
        },
    ];
    out.extend([
        Event::SeqCheckpoint {
            worker: 0,
            id: SaId(1),
            spi: Spi(0xa001),
            seq: 1 << 20,
            seq_reserved: Some(1 << 21),
        },
        Event::SeqCheckpoint {
            worker: 3,
            id: SaId(2),
            spi: Spi(0xa002),
            seq: 0,
            seq_reserved: None,
        },
        Event::SaState {
            worker: 1,
            generation: 42,
            id: SaId(2),
            spi: Spi(0xb001),
            state: SaState::Inbound {
                replay: replay_state(4096),
            },
        },
        Event::SaState {
            worker: 1,
            generation: 43,
            id: SaId(1),
            spi: Spi(0xa001),
            state: SaState::Outbound {
                seq: 99,
                seq_reserved: Some(1000),
            },
        },
        Event::Hairpin {
            worker: 2,
            src: v4([10, 99, 0, 1]),
            dst: v4([10, 99, 0, 2]),
            packets: 1000,
            bytes: 1_200_000,
            millis: 1000,
        },
        Event::Hairpin {
            worker: 0,
            src: v6(1),
            dst: v6(2),
            packets: u64::MAX,
            bytes: 0,
            millis: u32::MAX,
        },
        Event::MasqMiss {
            worker: 3,
            key: MasqMissKey::Out(flow()),
        },
        Event::MasqMiss {
            worker: 0,
            key: MasqMissKey::In(masq()),
        },
    ]);
    for dir in [Direction::Inbound, Direction::Outbound] {
        for kind in [LifetimeKind::Soft, LifetimeKind::Hard] {
            for limit in [
                LifetimeLimit::Time,
                LifetimeLimit::Bytes,
                LifetimeLimit::Packets,
            ] {
                out.push(Event::Lifetime {
                    worker: 9,
                    id: SaId(10),
                    spi: Spi(11),
                    dir,
                    kind,
                    limit,
                    bytes: 1 << 33,
                    packets: 1 << 20,
                    age_secs: 3600,
                });
            }
        }
    }
    out
}

fn datagrams() -> Vec<Datagram> {
    vec![
        Datagram {
            src: v4([198, 51, 100, 7]),
            dst: v4([192, 0, 2, 1]),
            src_port: 500,
            dst_port: 500,
            payload: (0..300u16).map(|i| i as u8).collect(),
        },
        Datagram {
            src: v6(2),
            dst: v6(1),
            src_port: 4500,
            dst_port: 4500,
            payload: vec![],
        },
        Datagram {
            src: v4([192, 0, 2, 1]),
            dst: v4([198, 51, 100, 7]),
            src_port: 4500,
            dst_port: 61000,
            payload: vec![0xee; 1200],
        },
    ]
}

/// Every sample encoding, with a label.
fn encodings() -> Vec<(String, Vec<u8>)> {
    fn enc<T: Record + Debug>(out: &mut Vec<(String, Vec<u8>)>, xs: &[T]) {
        for x in xs {
            out.push((format!("{x:?}"), to_vec(x).unwrap().to_vec()));
        }
    }
    let mut out = Vec::new();
    enc(&mut out, &updates());
    enc(&mut out, &acks());
    enc(&mut out, &events());
    enc(&mut out, &datagrams());
    out
}

/// decode(encode(x)) re-encodes to the same bytes, and `encoded_len` is exact.
fn same_bytes<T: Record + Debug>(x: &T) -> T {
    let a = to_vec(x).unwrap();
    assert_eq!(a.len(), x.encoded_len().unwrap());
    let y = T::decode(&a).unwrap_or_else(|e| panic!("{x:?}: {e}"));
    assert_eq!(*a, *to_vec(&y).unwrap(), "{x:?}");
    y
}

#[test]
fn updates_round_trip() {
    for u in updates() {
        let back = same_bytes(&u);
        assert_eq!(back.generation, u.generation);
        match (&u.update, &back.update) {
            (
                Update::AddSa {
                    dir: d1,
                    params: p1,
                },
                Update::AddSa {
                    dir: d2,
                    params: p2,
                },
            ) => {
                assert_eq!(d1, d2);
                assert_eq!(p1.keys.key(), p2.keys.key());
                assert_eq!(p1.keys.salt, p2.keys.salt);
                assert_eq!(p1.keys.integ_key(), p2.keys.integ_key());
                assert_eq!(p1.keys.alg, p2.keys.alg);
                assert_eq!(
                    (
                        p1.id,
                        p1.spi,
                        p1.esn,
                        p1.replay_window,
                        p1.outer_ttl,
                        p1.lifetime
                    ),
                    (
                        p2.id,
                        p2.spi,
                        p2.esn,
                        p2.replay_window,
                        p2.outer_ttl,
                        p2.lifetime
                    )
                );
                assert_eq!(
                    (p1.local, p1.remote, p1.encap, p1.local_ts, p1.remote_ts),
                    (p2.local, p2.remote, p2.encap, p2.local_ts, p2.remote_ts)
                );
                assert_eq!((&p1.resume, p1.checkpoint), (&p2.resume, p2.checkpoint));
            }
            (Update::ReplaceSpd { rules: a }, Update::ReplaceSpd { rules: b }) => {
                assert_eq!(a, b)
            }
            (Update::SetMasquerade { config: a }, Update::SetMasquerade { config: b })
            | (Update::SetVirtualIp { config: a }, Update::SetVirtualIp { config: b }) => {
                assert_eq!(a, b)
            }
            (a, b) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        }
    }
}

#[test]
fn acks_events_and_datagrams_round_trip() {
    for a in acks() {
        assert_eq!(same_bytes(&a), a);
    }
    for e in events() {
        assert_eq!(same_bytes(&e), e);
    }
    for d in datagrams() {
        assert_eq!(same_bytes(&d), d);
    }
}

#[test]
fn add_sa_is_compact() {
    // A fresh SA (no state to resume) fits one 256-byte update slot with room to spare; one
    // that carries a replay window takes a few.
    let mut p = params(AeadAlg::AesGcm128, false, None);
    p.resume = Resume::default();
    let u = UpdateEnvelope {
        generation: 1,
        update: Update::AddSa {
            dir: Direction::Inbound,
            params: p,
        },
    };
    let n = u.encoded_len().unwrap();
    println!("AddSa (AES-128, IPv4, fresh) encodes to {n} bytes");
    assert!(n < 132, "{n}");
    let n = updates()[0].encoded_len().unwrap();
    println!("AddSa (AES-128, IPv4, a 1024-packet replay window) encodes to {n} bytes");
    assert!(n < 132 + 1024 / 8 + 1, "{n}");
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    for (what, bytes) in encodings() {
        for cut in 0..bytes.len() {
            let b = &bytes[..cut];
            let errs = [
                UpdateEnvelope::decode(b).err(),
                Ack::decode(b).err(),
                Event::decode(b).err(),
                Datagram::decode(b).err(),
            ];
            assert!(errs.iter().all(Option::is_some), "{what} cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(UpdateEnvelope::decode(&long).is_err(), "{what}");
        assert!(Ack::decode(&long).is_err(), "{what}");
        assert!(Event::decode(&long).is_err(), "{what}");
        assert!(Datagram::decode(&long).is_err(), "{what}");
    }
}

#[test]
fn a_record_from_the_wrong_ring_is_refused_by_tag() {
    let u = to_vec(&updates()[0]).unwrap();
    assert!(matches!(
        Ack::decode(&u),
        Err(DecodeError::Tag { what: "ack", .. })
    ));
    let d = to_vec(&datagrams()[0]).unwrap();
    assert!(matches!(Event::decode(&d), Err(DecodeError::Tag { .. })));
    assert!(matches!(
        Datagram::decode(&u),
        Err(DecodeError::Tag {
            what: "datagram",
            ..
        })
    ));
    let mut v = to_vec(&acks()[0]).unwrap();
    v[0] = CODEC_VERSION + 1;
    assert_eq!(
        Ack::decode(&v),
        Err(DecodeError::Version(CODEC_VERSION + 1))
    );
    v[0] = 1;
    assert_eq!(
        Ack::decode(&v),
        Err(DecodeError::Version(1)),
        "version 1 is gone"
    );
}

#[test]
fn unknown_esp_and_integrity_algorithms_are_named() {
    let add = |alg: EspAlg| {
        to_vec(&UpdateEnvelope {
            generation: 1,
            update: Update::AddSa {
                dir: Direction::Inbound,
                params: params(alg, false, None),
            },
        })
        .unwrap()
    };
    let cbc = add(EspAlg::Cbc(CbcAlg::AesCbc128, IntegAlg::HmacSha256_128));
    // The algorithm bytes follow the SPI.
    let spi = 0xdead_beef_u32.to_le_bytes();
    let at = cbc.windows(4).position(|w| w == spi).unwrap() + 4;
    assert_eq!(cbc[at..at + 2], [3, 2]);
    let mut bad = cbc.clone();
    bad[at + 1] = 9;
    assert_eq!(
        UpdateEnvelope::decode(&bad).err(),
        Some(DecodeError::Invalid("integrity algorithm"))
    );
    bad[at] = 0;
    assert_eq!(
        UpdateEnvelope::decode(&bad).err(),
        Some(DecodeError::Invalid("ESP algorithm"))
    );
}

#[test]
fn invalid_fields_are_named() {
    // A prefix with host bits set: rule 1's source length byte turned into /8.
    let mut spd = to_vec(&UpdateEnvelope {
        generation: 1,
        update: Update::ReplaceSpd {
            rules: rules()[..1].to_vec(),
        },
    })
    .unwrap();
    // version, tag, generation (8), count (4), id (4), family, 4 address bytes, length.
    let len_at = 2 + 8 + 4 + 4 + 1 + 4;
    assert_eq!(spd[len_at], 16);
    spd[len_at] = 8;
    assert!(matches!(
        UpdateEnvelope::decode(&spd),
        Err(DecodeError::Invalid("prefix"))
    ));
    // A rule count the bytes cannot hold: refused before allocating.
    let mut huge = vec![CODEC_VERSION, tag::REPLACE_SPD];
    huge.extend_from_slice(&1u64.to_le_bytes());
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        UpdateEnvelope::decode(&huge).err(),
        Some(DecodeError::Truncated)
    );
    // A bool that is neither 0 nor 1.
    let mut m = to_vec(&UpdateEnvelope {
        generation: 1,
        update: Update::SetMasquerade { config: None },
    })
    .unwrap();
    m[10] = 2;
    assert!(matches!(
        UpdateEnvelope::decode(&m),
        Err(DecodeError::Invalid(_))
    ));
    // A replay window of no words, or of more than 4096 packets.
    for (n, what) in [(0u8, "empty"), (65, "too wide")] {
        let mut e = vec![CODEC_VERSION, tag::EV_SA_STATE];
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(&7u64.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&2u32.to_le_bytes());
        e.push(0);
        e.extend_from_slice(&100u64.to_le_bytes());
        e.push(n);
        e.extend(std::iter::repeat_n(0u8, usize::from(n) * 8));
        assert_eq!(
            Event::decode(&e),
            Err(DecodeError::Invalid("replay window size")),
            "{what}"
        );
        let state = ReplayState {
            top: 1,
            seen: vec![0; usize::from(n)],
        };
        let ev = Event::SaState {
            worker: 1,
            generation: 7,
            id: SaId(1),
            spi: Spi(2),
            state: SaState::Inbound { replay: state },
        };
        assert_eq!(
            to_vec(&ev).err(),
            Some(EncodeError::TooLong("replay window")),
            "{what}"
        );
    }
    // An SA reference of neither direction.
    let mut x = to_vec(&UpdateEnvelope {
        generation: 1,
        update: Update::ExportSa {
            sa: SaRef::Outbound(SaId(1)),
        },
    })
    .unwrap();
    x[10] = 2;
    assert_eq!(
        UpdateEnvelope::decode(&x).err(),
        Some(DecodeError::Invalid("SA reference"))
    );
    // A datagram whose length field claims more than there is.
    let mut p = to_vec(&datagrams()[1]).unwrap();
    let n = p.len();
    p[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(Datagram::decode(&p), Err(DecodeError::Truncated));
}

#[test]
fn encode_into_a_short_buffer_is_an_error() {
    let u = &updates()[1];
    let n = u.encoded_len().unwrap();
    let mut buf = vec![0u8; n - 1];
    assert_eq!(u.encode(&mut buf), Err(EncodeError::BufferTooSmall));
    let mut buf = vec![0u8; n + 10];
    assert_eq!(u.encode(&mut buf), Ok(n));
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Decodes `b` as every record type; whatever is accepted must encode back to `b` exactly
/// (the encoding is canonical: one byte sequence per value).
fn decode_all(b: &[u8]) {
    fn check<T: Record + Debug>(b: &[u8]) {
        if let Ok(x) = T::decode(b) {
            assert_eq!(&*to_vec(&x).unwrap(), b, "{x:?}");
        }
    }
    check::<UpdateEnvelope>(b);
    check::<Ack>(b);
    check::<Event>(b);
    check::<Datagram>(b);
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let tags: Vec<u8> = (0x10..=0x1f)
        .chain(0x20..=0x21)
        .chain(0x30..=0x38)
        .chain(0x40..=0x40)
        .chain(0x50..=0x58)
        .collect();
    // Random bytes behind a valid version and tag, so the bodies get exercised.
    for _ in 0..100_000 {
        let len = (rng.next() % 200) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if b.len() >= 2 {
            b[0] = CODEC_VERSION;
            b[1] = tags[(rng.next() % tags.len() as u64) as usize];
        }
        decode_all(&b);
    }
    // Valid encodings with a few bytes changed, cut or extended.
    let samples = encodings();
    for _ in 0..100_000 {
        let (_, base) = &samples[(rng.next() % samples.len() as u64) as usize];
        let mut b = base.clone();
        for _ in 0..1 + rng.next() % 4 {
            let i = (rng.next() % b.len() as u64) as usize;
            b[i] = rng.next() as u8;
        }
        match rng.next() % 4 {
            0 => b.truncate((rng.next() % (b.len() as u64 + 1)) as usize),
            1 => b.push(rng.next() as u8),
            _ => {}
        }
        decode_all(&b);
    }
}
