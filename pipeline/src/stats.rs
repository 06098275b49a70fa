//! Named drop reasons and the counters every worker keeps, per core and per SA.
//!
//! Every packet that does not leave a worker leaves a count under exactly one
//! [`DropReason`]. Counters have one writer (the worker that owns them) and are read by anyone
//! (the live line, `roamgate stats`): each is an `AtomicU64` updated with a relaxed load and
//! store, which on x86 compiles to a plain add with no lock prefix.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $err:literal; )*) => {
        /// Why a packet left the pipeline without being forwarded.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $( $(#[$doc])* $variant, )* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The counter's stable name (used in stats output and the lab's live line).
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }

            /// False for packets that were consumed as intended (TFC padding, NAT keepalives,
            /// IKE handed to the control plane): they are counted, but are not errors.
            pub const fn is_error(self) -> bool {
                match self { $(DropReason::$variant => $err,)* }
            }

            /// True for a packet handed to another part of the gateway (IKE to the control
            /// plane): it left the data path as intended, and views list it apart from the
            /// drops.
            pub const fn is_hand_off(self) -> bool {
                matches!(self, DropReason::IkePunted | DropReason::IkePuntedCookie)
            }
        }
    };
}

reasons! {
    /// Shorter than an Ethernet header, or not IPv4/IPv6.
    MalformedFrame => "malformed_frame", true;
    /// IP header fails its length or version checks.
    MalformedIp => "malformed_ip", true;
    /// IPv4 header checksum is wrong.
    IpChecksum => "ip_checksum", true;
    /// TTL / hop limit would reach zero when forwarded.
    TtlExceeded => "ttl_exceeded", true;
    /// An outer fragment of ESP or IKE for us while reassembly is off.
    OuterFragment => "outer_fragment", true;
    /// An outer fragment for us, kept until its datagram is complete (not an error).
    ReasmHeld => "reasm_held", false;
    /// Reassembly: the IP header fails its checks.
    ReasmMalformed => "reasm_malformed", true;
    /// Reassembly: More Fragments set and a length not a multiple of 8, or an empty fragment.
    ReasmBadLength => "reasm_bad_length", true;
    /// Reassembly: the datagram would be larger than the configured maximum.
    ReasmTooLarge => "reasm_too_large", true;
    /// Reassembly: an IPv6 unfragmentable part longer than the reassembler keeps room for.
    ReasmHeadersTooLong => "reasm_headers_too_long", true;
    /// Reassembly: the first fragment does not hold the whole header chain (RFC 1858, 7112).
    ReasmTinyFirstFragment => "reasm_tiny_first_fragment", true;
    /// Reassembly: overlaps a fragment already held (RFC 5722): the datagram is discarded.
    ReasmOverlap => "reasm_overlap", true;
    /// Reassembly: an exact copy of data already held.
    ReasmDuplicate => "reasm_duplicate", false;
    /// Reassembly: two last fragments with different ends, or data past the end.
    ReasmInconsistentEnd => "reasm_inconsistent_end", true;
    /// Reassembly: more fragments in one datagram than allowed.
    ReasmTooManyFragments => "reasm_too_many_fragments", true;
    /// Reassembly: Not-ECT fragments mixed with ECN-capable ones (RFC 3168 5.3).
    ReasmEcnMismatch => "reasm_ecn_mismatch", true;
    /// Reassembly: a fragment of a datagram discarded earlier (RFC 5722).
    ReasmDiscarded => "reasm_discarded", true;
    /// Reassembly: no slot or memory even after pushing out the oldest datagrams.
    ReasmEvicted => "reasm_evicted", true;
    /// A reassembled datagram for us that is neither ESP nor IKE.
    ReasmNotIpsec => "reasm_not_ipsec", true;
    /// A reassembled ESP datagram larger than a frame buffer (IKE is punted whatever its size).
    ReasmNoRoom => "reasm_no_room", true;
    /// ESP in the encapsulation its SA was not negotiated with (proto 50 on a UDP-encapsulated
    /// SA, UDP 4500 on a plain one).
    EspWrongEncap => "esp_wrong_encap", true;
    /// ESP shorter than header + IV + ICV, or a UDP-encapsulated ESP too short.
    EspTruncated => "esp_truncated", true;
    /// No inbound SA has this SPI.
    UnknownSpi => "unknown_spi", true;
    /// Sequence number left of the anti-replay window.
    ReplayTooOld => "replay_too_old", true;
    /// Sequence number already received.
    ReplayDuplicate => "replay_duplicate", true;
    /// Sequence number zero, or ESN inference before zero.
    ReplayZero => "replay_zero", true;
    /// ICV verification failed.
    AuthFailed => "auth_failed", true;
    /// AES-CBC ciphertext that is not a whole number of blocks (RFC 3602 2.4).
    EspBadLength => "esp_bad_length", true;
    /// The crypto backend refused or failed a packet it should have handled (a library
    /// fault, never the peer's bytes).
    CryptoFailed => "crypto_failed", true;
    /// Padding length does not fit or the padding bytes are not 1, 2, 3, ...
    BadPadding => "bad_padding", true;
    /// Next header is not IPv4 or IPv6 (tunnel mode) or disagrees with the inner version.
    BadNextHeader => "bad_next_header", true;
    /// Decrypted inner packet is not a valid IP packet.
    InnerMalformed => "inner_malformed", true;
    /// Inner packet does not match the traffic selectors of the SA that carried it.
    PolicyMismatch => "policy_mismatch", true;
    /// Clear packet matched a protect policy on the protected side (must arrive as ESP).
    ClearButProtected => "clear_but_protected", true;
    /// TFC dummy packet (next header 59): accepted and dropped silently.
    TfcDummy => "tfc_dummy", false;
    /// RFC 3948 NAT keepalive (one 0xFF byte).
    NatKeepalive => "natt_keepalive", false;
    /// IKE packet handed to the control plane.
    IkePunted => "ike_punted", false;
    /// IKE packet arrived but no control plane is attached.
    IkeNoControl => "ike_no_control", true;
    /// IKE packet arrived while the punt ring to the control plane was full (a stalled or
    /// flooded control plane): the ring is the bound, the new datagram is dropped.
    IkePuntFull => "ike_punt_full", true;
    /// An IKE_SA_INIT request whose first payload is a COOKIE notify (an initiator echoing
    /// the cookie we demanded) handed to the control plane on the cookie lane: a punt ring of
    /// its own, so a flood of requests without cookies cannot crowd it out.
    IkePuntedCookie => "ike_punted_cookie", false;
    /// A cookie echo arrived while the cookie lane's ring was full (forged echoes: only the
    /// control plane can tell a valid cookie); the main punt ring is not touched.
    IkePuntCookieFull => "ike_punt_cookie_full", true;
    /// No SPD rule matched (default discard).
    NoPolicy => "no_policy", true;
    /// An SPD rule said discard.
    PolicyDiscard => "policy_discard", true;
    /// A protect rule names an SA that this core does not own or that is not installed.
    NoSa => "no_sa", true;
    /// Outbound sequence number space exhausted: the SA must be rekeyed.
    SeqExhausted => "seq_exhausted", true;
    /// A group's traffic (RFC 9838) while this member has no sending generation of the group
    /// (before its first, after the sending one was deleted, or receive-only).
    GroupNotSending => "group_not_sending", true;
    /// A group packet whose inner destination lies in no member's LAN (`SetGroupPeers`).
    GroupNoPeer => "group_no_peer", true;
    /// A group packet whose sequence number differs from the counter in its IV.
    GroupSeqMismatch => "group_seq_mismatch", true;
    /// Outbound: the next sequence number lies beyond what the SA's owner has reserved (made
    /// durable); the SA sends again when the reservation moves on.
    SeqNotReserved => "seq_not_reserved", true;
    /// The SA reached its hard byte or packet lifetime: it carries nothing more.
    SaExpired => "sa_expired", true;
    /// Too big for the egress MTU after encapsulation; an ICMP error went back.
    MtuExceeded => "mtu_exceeded", true;
    /// A hairpinned packet (one road warrior to another) too big for the WAN MTU once sealed
    /// again: no ICMP error goes back (it would have to travel inside the sender's tunnel).
    HairpinMtuExceeded => "hairpin_mtu_exceeded", true;
    /// A hairpinned packet while the WAN transmit queue held more than its cap (pausing WAN
    /// receive on the WAN's own queue could deadlock two gateways whose links are both full).
    HairpinQueueFull => "hairpin_queue_full", true;
    /// A client's copy of a packet for the direct path on probation (the original took the
    /// gateway path): the WAN transmit queue held half the frames that pause LAN receive
    /// (under pressure the copies give way first).
    DualPathQueueFull => "dual_path_queue_full", true;
    /// A copy for the direct path on probation found no free buffer (the original went).
    DualPathNoBuffer => "dual_path_no_buffer", true;
    /// A copy for the direct path on probation too big for the WAN MTU once sealed (the
    /// original, on the gateway path, answers with the ICMP error if it does not fit either).
    DualPathMtuExceeded => "dual_path_mtu_exceeded", true;
    /// Buffer lacked head- or tailroom for the encapsulation.
    NoBufferRoom => "no_buffer_room", true;
    /// Not addressed to us, and nothing to route it by.
    NotForUs => "not_for_us", true;
    /// NAT: malformed transport header.
    NatMalformed => "nat_malformed", true;
    /// NAT: inbound packet to the masquerading address without a session.
    NatNoSession => "nat_no_session", true;
    /// NAT: no free port.
    NatPortsExhausted => "nat_ports_exhausted", true;
    /// NAT: session table full.
    NatTableFull => "nat_table_full", true;
    /// NAT: a non-first fragment.
    NatFragment => "nat_fragment", true;
    /// NAT: a protocol that cannot be masqueraded.
    NatUnsupported => "nat_unsupported", true;
    /// ARP or neighbour solicitation not asking for our address, or an advertisement (normal
    /// link chatter; what it says about its sender is learned first).
    NeighborIgnored => "neighbor_ignored", false;
    /// Kept by the neighbour cache until its next hop resolves (not an error; what becomes of
    /// it is counted by the cache: `L3Stat`).
    NeighborQueued => "neighbor_queued", false;
    /// Every neighbour queue together was full.
    NeighborQueueFull => "neighbor_queue_full", true;
    /// The next hop could not be resolved (an unspecified address).
    NeighborUnresolved => "neighbor_unresolved", true;
    /// The neighbour cache was full of permanent entries.
    NeighborCacheFull => "neighbor_cache_full", true;
    /// Neither on-link nor a configured gateway (or neighbour) for this destination.
    NoRoute => "no_route", true;
    /// Handed over by another worker, but longer than a frame of this worker's port.
    HandOffNoRoom => "handoff_no_room", true;
    /// Per-connection masquerade (`docs/masq.md`): a client's packet its user's access rules
    /// refuse.
    MasqDenied => "masq_denied", true;
    /// A masqueraded client's packet from a source no client of the user table names.
    MasqNoUser => "masq_no_user", true;
    /// A packet to hold for a table miss while its key (or the whole hold) was full.
    MasqHoldFull => "masq_hold_full", true;
    /// A held packet whose answer did not come within 1 s (or the masquerade was turned off).
    MasqHoldExpired => "masq_hold_expired", true;
    /// A packet to masquerade that is not a well-formed unfragmented IPv4 TCP/UDP packet.
    MasqMalformed => "masq_malformed", true;
    /// A protocol the per-connection masquerade does not carry (ICMP, ...).
    MasqUnsupported => "masq_unsupported", true;
    /// A packet a HAM forwarded (opened from a link SA) for a flow this FAM does not have
    /// (the window of a move).
    MasqMissIn => "masq_miss_in", true;
    /// A route to a node with no link SA on this worker (`MasqLink`).
    MasqLinkNoSa => "masq_link_no_sa", true;
    /// A copy of an ARP reply or neighbour advertisement another worker received, learned
    /// from here (each worker resolves on its own; the answers reach one queue). Not an error.
    NeighborShared => "neighbor_shared", false;
}

/// Non-drop traffic counters of one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Traffic {
    RxPackets,
    RxBytes,
    TxPackets,
    /// Packets sealed into ESP, and their inner bytes.
    Encrypted,
    EncryptedBytes,
    /// Packets opened from ESP, and their inner bytes.
    Decrypted,
    DecryptedBytes,
    /// Opened from one road warrior's SA and sealed again onto another's (its host binding),
    /// and their inner bytes; also counted as decrypted and encrypted.
    Hairpinned,
    HairpinnedBytes,
    /// Hairpinned packets of a pair the worker's table had no room for in the current report
    /// period (reported in a later one).
    HairpinUntracked,
    /// Copies sealed onto a client's direct SA on probation (dual path: the original took
    /// the gateway path); also counted as encrypted.
    DualPathCopies,
    /// Forwarded in the clear (bypass policy).
    Bypassed,
    /// Rewritten by the masquerade.
    Masqueraded,
    /// ICMP errors generated (fragmentation needed / packet too big, time exceeded, host /
    /// address unreachable).
    IcmpSent,
    /// ICMP errors not sent: over the worker's budget (`worker::icmp_error`).
    IcmpRateLimited,
    /// ARP replies and neighbour advertisements sent for our own addresses.
    NeighborReplies,
    /// ARP requests and neighbour solicitations sent (resolution and probes).
    NeighborRequests,
    /// IKE datagrams sent for the control plane.
    IkeSent,
    /// LAN TCP/UDP packets whose L4 checksum was verified before sealing (all of them, or a
    /// sample: `gateway.lan.checksum`), those found wrong (a host that left it to hardware:
    /// unfinished), and those completed.
    ClearChecksumChecked,
    ClearChecksumBad,
    ClearChecksumCompleted,
    /// Frames handed to the worker that owns their SA (or IKE to worker 0), the frames other
    /// workers handed this one, and the turns a full lane made a frame wait (back-pressure:
    /// it stays with this worker and rx pauses).
    HandedOff,
    HandOffReceived,
    HandOffWaits,
    /// A client's decrypted answers to its virtual IP handed to the worker whose masquerade
    /// holds their session (per-core SAs: the port names it), counted by the sender.
    VipAnswersHandedOff,
    /// Per-connection masquerade: client packets rewritten to their masquerading address,
    /// answers rewritten back, answers forwarded to the FAM on a link SA (HAM), packets
    /// opened from a link SA (FAM), packets held for a table miss, held packets run again
    /// after their answer came, misses reported to the control plane.
    MasqRewrittenOut,
    MasqRewrittenIn,
    MasqForwarded,
    MasqLinkIn,
    MasqHeld,
    MasqReleased,
    MasqMissReported,
    /// Packets an outbound SA sealed in its hold after a cluster move (sent when the hold
    /// ended, in order), and those sent before its end because the hold queue was full.
    Held,
    HoldReleasedEarly,
}

impl Traffic {
    pub const ALL: &'static [Traffic] = &[
        Traffic::RxPackets,
        Traffic::RxBytes,
        Traffic::TxPackets,
        Traffic::Encrypted,
        Traffic::EncryptedBytes,
        Traffic::Decrypted,
        Traffic::DecryptedBytes,
        Traffic::Hairpinned,
        Traffic::HairpinnedBytes,
        Traffic::HairpinUntracked,
        Traffic::DualPathCopies,
        Traffic::Bypassed,
        Traffic::Masqueraded,
        Traffic::IcmpSent,
        Traffic::IcmpRateLimited,
        Traffic::NeighborReplies,
        Traffic::NeighborRequests,
        Traffic::IkeSent,
        Traffic::ClearChecksumChecked,
        Traffic::ClearChecksumBad,
        Traffic::ClearChecksumCompleted,
        Traffic::HandedOff,
        Traffic::HandOffReceived,
        Traffic::HandOffWaits,
        Traffic::VipAnswersHandedOff,
        Traffic::MasqRewrittenOut,
        Traffic::MasqRewrittenIn,
        Traffic::MasqForwarded,
        Traffic::MasqLinkIn,
        Traffic::MasqHeld,
        Traffic::MasqReleased,
        Traffic::MasqMissReported,
        Traffic::Held,
        Traffic::HoldReleasedEarly,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub const fn name(self) -> &'static str {
        match self {
            Traffic::RxPackets => "rx_packets",
            Traffic::RxBytes => "rx_bytes",
            Traffic::TxPackets => "tx_packets",
            Traffic::Encrypted => "encrypted",
            Traffic::EncryptedBytes => "encrypted_bytes",
            Traffic::Decrypted => "decrypted",
            Traffic::DecryptedBytes => "decrypted_bytes",
            Traffic::Hairpinned => "hairpinned",
            Traffic::HairpinnedBytes => "hairpinned_bytes",
            Traffic::HairpinUntracked => "hairpin_untracked",
            Traffic::DualPathCopies => "dual_path_copies",
            Traffic::Bypassed => "bypassed",
            Traffic::Masqueraded => "masqueraded",
            Traffic::IcmpSent => "icmp_sent",
            Traffic::IcmpRateLimited => "icmp_rate_limited",
            Traffic::NeighborReplies => "neighbor_replies",
            Traffic::NeighborRequests => "neighbor_requests",
            Traffic::IkeSent => "ike_sent",
            Traffic::ClearChecksumChecked => "clear_checksum_checked",
            Traffic::ClearChecksumBad => "clear_checksum_bad",
            Traffic::ClearChecksumCompleted => "clear_checksum_completed",
            Traffic::HandedOff => "handed_off",
            Traffic::HandOffReceived => "handoff_received",
            Traffic::HandOffWaits => "handoff_waits",
            Traffic::VipAnswersHandedOff => "vip_answers_handed_off",
            Traffic::MasqRewrittenOut => "masq_rewritten_out",
            Traffic::MasqRewrittenIn => "masq_rewritten_in",
            Traffic::MasqForwarded => "masq_forwarded",
            Traffic::MasqLinkIn => "masq_link_in",
            Traffic::MasqHeld => "masq_held",
            Traffic::MasqReleased => "masq_released",
            Traffic::MasqMissReported => "masq_miss_reported",
            Traffic::Held => "held_at_move",
            Traffic::HoldReleasedEarly => "hold_released_early",
        }
    }
}

macro_rules! l3_stats {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal; )*) => {
        /// What the worker's reassembler and neighbour caches hold and have done: datagram and
        /// address fates, which are not per-frame drops (every frame already left with one
        /// [`DropReason`] or was forwarded). Published by the worker after it used them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum L3Stat { $( $(#[$doc])* $variant, )* }

        impl L3Stat {
            pub const ALL: &'static [L3Stat] = &[$(L3Stat::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            pub const fn name(self) -> &'static str {
                match self { $(L3Stat::$variant => $name,)* }
            }
        }
    };
}

l3_stats! {
    /// Fragments given to the reassembler.
    ReasmFragments => "reasm_fragments";
    /// Datagrams reassembled.
    ReasmReassembled => "reasm_reassembled";
    /// Bytes of reassembly buffers (at most `max_bytes`).
    ReasmMemoryBytes => "reasm_memory_bytes";
    /// Incomplete datagrams held now.
    ReasmInFlight => "reasm_in_flight";
    /// Datagrams abandoned: not complete in time.
    ReasmDatagramsTimeout => "reasm_datagrams_timeout";
    /// Datagrams pushed out by a newer one from the same source.
    ReasmDatagramsSourceLimit => "reasm_datagrams_source_limit";
    /// Datagrams pushed out by the total datagram or memory limit.
    ReasmDatagramsEvicted => "reasm_datagrams_evicted";
    /// Datagrams discarded for overlap, size, end or fragment count.
    ReasmDatagramsDiscarded => "reasm_datagrams_discarded";
    /// Fragments held in incomplete datagrams now.
    ReasmHeldFragments => "reasm_held_fragments";
    /// Fragments dropped, on arrival or with their datagram (timeouts, evictions, discards).
    ReasmFragmentsDropped => "reasm_fragments_dropped";
    NeighborLanEntries => "neighbor_lan_entries";
    /// LAN addresses resolved (INCOMPLETE to usable).
    NeighborLanResolved => "neighbor_lan_resolved";
    /// LAN addresses given up on (no answer).
    NeighborLanNoAnswer => "neighbor_lan_no_answer";
    /// Queued LAN frames dropped because their address did not resolve.
    NeighborLanUnresolved => "neighbor_lan_unresolved";
    /// Queued LAN frames pushed out by newer ones (per-address queue full), or with their
    /// entry.
    NeighborLanQueueDrops => "neighbor_lan_queue_drops";
    NeighborLanSolicits => "neighbor_lan_solicits";
    NeighborLanProbes => "neighbor_lan_probes";
    NeighborLanGleaned => "neighbor_lan_gleaned";
    NeighborLanMacChanged => "neighbor_lan_mac_changed";
    NeighborLanEvicted => "neighbor_lan_evicted";
    NeighborWanEntries => "neighbor_wan_entries";
    NeighborWanResolved => "neighbor_wan_resolved";
    NeighborWanNoAnswer => "neighbor_wan_no_answer";
    NeighborWanUnresolved => "neighbor_wan_unresolved";
    NeighborWanQueueDrops => "neighbor_wan_queue_drops";
    NeighborWanSolicits => "neighbor_wan_solicits";
    NeighborWanProbes => "neighbor_wan_probes";
    NeighborWanGleaned => "neighbor_wan_gleaned";
    NeighborWanMacChanged => "neighbor_wan_mac_changed";
    NeighborWanEvicted => "neighbor_wan_evicted";
    /// Gratuitous ARPs and unsolicited advertisements sent (announcements).
    NeighborAnnounced => "neighbor_announced";
}

/// A counter with a single writer.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker calls this, so load + store is race-free.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the value (owner only, like `add`).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Everything one worker counts. Shared (`Arc`) with readers; written only by its worker.
#[derive(Debug)]
pub struct CoreCounters {
    traffic: [Counter; Traffic::COUNT],
    drops: [Counter; DropReason::COUNT],
    l3: [Counter; L3Stat::COUNT],
    /// Packets each edge filter rule matched (index: `proto::policy::filter_index` of the
    /// SPD rule's id): clear traffic passed or dropped, ESP sent on to an encryption node.
    filter_hits: [Counter; proto::policy::MAX_FILTER_RULES],
    /// Highest control generation this worker has applied.
    pub generation: Counter,
    /// The worker's clock at its last poll (nanoseconds since it started): what readers
    /// measure an SA's `installed_at` and `last_used` against.
    pub clock: Counter,
}

impl Default for CoreCounters {
    fn default() -> Self {
        CoreCounters {
            traffic: std::array::from_fn(|_| Counter::default()),
            drops: std::array::from_fn(|_| Counter::default()),
            l3: std::array::from_fn(|_| Counter::default()),
            filter_hits: std::array::from_fn(|_| Counter::default()),
            generation: Counter::default(),
            clock: Counter::default(),
        }
    }
}

impl CoreCounters {
    #[inline]
    pub fn count(&self, t: Traffic, n: u64) {
        if let Some(c) = self.traffic.get(t as usize) {
            c.add(n);
        }
    }

    #[inline]
    pub fn record_drop(&self, r: DropReason) {
        if let Some(c) = self.drops.get(r as usize) {
            c.add(1);
        }
    }

    /// `n` drops of one reason at once.
    pub fn record_drops(&self, r: DropReason, n: u64) {
        if let Some(c) = self.drops.get(r as usize) {
            c.add(n);
        }
    }

    pub fn traffic(&self, t: Traffic) -> u64 {
        self.traffic.get(t as usize).map_or(0, Counter::get)
    }

    /// Counts one packet for the filter rule SPD rule `rule_id` came from (other rules: nothing).
    #[inline]
    pub fn count_rule(&self, rule_id: u32) {
        if let Some(c) = proto::policy::filter_index(rule_id).and_then(|i| self.filter_hits.get(i))
        {
            c.add(1);
        }
    }

    /// Packets filter rule `index` matched on this worker.
    pub fn filter_hits(&self, index: usize) -> u64 {
        self.filter_hits.get(index).map_or(0, Counter::get)
    }

    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops.get(r as usize).map_or(0, Counter::get)
    }

    /// Publishes an L3 value (the worker's own; readers see it at once).
    pub fn set_l3(&self, s: L3Stat, v: u64) {
        if let Some(c) = self.l3.get(s as usize) {
            c.set(v);
        }
    }

    pub fn l3(&self, s: L3Stat) -> u64 {
        self.l3.get(s as usize).map_or(0, Counter::get)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            traffic: std::array::from_fn(|i| self.traffic.get(i).map_or(0, Counter::get)),
            drops: std::array::from_fn(|i| self.drops.get(i).map_or(0, Counter::get)),
            l3: std::array::from_fn(|i| self.l3.get(i).map_or(0, Counter::get)),
        }
    }
}

pub use proto::sa::Lifetime;

/// A limit an SA just reached (reported once each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// The soft or hard byte/packet lifetime.
    Lifetime {
        hard: bool,
        /// True when the byte count reached it, false for packets.
        bytes: bool,
    },
    /// The first authentic packet of an inbound SA installed watched
    /// ([`SaCounters::watch_first_use`]): in a cluster, the client's traffic reached this edge.
    FirstUse,
}

/// Per-SA counters: packets, bytes and the drops attributable to this SA, and the lifetime
/// thresholds they are checked against (on the same cache lines the counting touches).
///
/// Laid out for the per-packet path: what every packet reads or writes (counts, the next
/// lifetime thresholds, `expired`, `last_used`) fills the first cache line, which the
/// alignment keeps from straddling two (in an `Arc`, the reference counts sit on the line
/// before); the rest is touched only on drops, reports and lifetime crossings.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct SaCounters {
    pub packets: Counter,
    pub bytes: Counter,
    /// The packet and byte counts at which a lifetime is next reached (u64::MAX: never).
    next_packets: Counter,
    next_bytes: Counter,
    /// The worker's clock at the last packet the SA carried (0: none yet), for the views'
    /// "last use"; on the cache line the counting touches anyway.
    pub last_used: Counter,
    /// Set once the hard lifetime is reached: the SA carries nothing more.
    expired: AtomicBool,
    /// The worker's clock when it installed the SA (for the age in lifetime reports).
    pub installed_at: Counter,
    lifetime: Lifetime,
    drops: [Counter; DropReason::COUNT],
    /// Armed by [`SaCounters::watch_first_use`]: the next counted packet is a crossing
    /// ([`Crossing::FirstUse`]); `watch_saved` holds the packet threshold it stood in for.
    watch: AtomicBool,
    watch_saved: Counter,
}

// The per-packet fields share the first line.
const _: () = assert!(core::mem::offset_of!(SaCounters, expired) < 64);

impl Default for SaCounters {
    fn default() -> Self {
        SaCounters::with_lifetime(Lifetime::default())
    }
}

/// A limit of 0 is none.
fn limit(v: u64) -> u64 {
    if v == 0 {
        u64::MAX
    } else {
        v
    }
}

impl SaCounters {
    pub fn with_lifetime(lifetime: Lifetime) -> Self {
        let c = SaCounters {
            packets: Counter::default(),
            bytes: Counter::default(),
            next_packets: Counter::default(),
            next_bytes: Counter::default(),
            expired: AtomicBool::new(false),
            last_used: Counter::default(),
            installed_at: Counter::default(),
            lifetime,
            drops: std::array::from_fn(|_| Counter::default()),
            watch: AtomicBool::new(false),
            watch_saved: Counter::default(),
        };
        c.next_packets
            .set(limit(lifetime.soft_packets).min(limit(lifetime.hard_packets)));
        c.next_bytes
            .set(limit(lifetime.soft_bytes).min(limit(lifetime.hard_bytes)));
        c
    }

    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
    }

    /// True once the hard lifetime was reached.
    #[inline]
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// Counts one packet of `bytes` (only the owning worker calls this); returns the lifetime
    /// this packet reached, if any. The packet that reaches the hard limit is the last one
    /// the SA carries.
    #[inline(always)]
    pub fn count(&self, bytes: u64) -> Option<Crossing> {
        self.packets.add(1);
        self.bytes.add(bytes);
        if self.packets.get() < self.next_packets.get() && self.bytes.get() < self.next_bytes.get()
        {
            return None;
        }
        self.crossed()
    }

    /// Counts a packet without looking at the lifetimes (the next [`count`](Self::count)
    /// reports a limit this one reached).
    #[inline]
    pub fn count_quietly(&self, bytes: u64) {
        self.packets.add(1);
        self.bytes.add(bytes);
    }

    /// The next packet counted is reported as [`Crossing::FirstUse`] (once): no cost per
    /// packet, the packet threshold of the lifetimes stands in for it. Only the owning worker
    /// calls this, before the SA carries anything or between packets.
    pub fn watch_first_use(&self) {
        if self.watch.swap(true, Ordering::Relaxed) {
            return;
        }
        self.watch_saved.set(self.next_packets.get());
        self.next_packets.set(self.packets.get().saturating_add(1));
    }

    /// Is the first use still watched for?
    pub fn watching(&self) -> bool {
        self.watch.load(Ordering::Relaxed)
    }

    #[cold]
    #[inline(never)]
    fn crossed(&self) -> Option<Crossing> {
        if self.watch.swap(false, Ordering::Relaxed) {
            // A lifetime this packet also reached is reported with the next one (the
            // thresholds compare with >=).
            self.next_packets.set(self.watch_saved.get());
            return Some(Crossing::FirstUse);
        }
        let (p, b, l) = (self.packets.get(), self.bytes.get(), self.lifetime);
        let hard_p = p >= limit(l.hard_packets);
        let hard_b = b >= limit(l.hard_bytes);
        if hard_p || hard_b {
            self.expired.store(true, Ordering::Relaxed);
            self.next_packets.set(u64::MAX);
            self.next_bytes.set(u64::MAX);
            return Some(Crossing::Lifetime {
                hard: true,
                bytes: hard_b,
            });
        }
        // The soft limit: from here on only the hard one is left to report.
        self.next_packets.set(limit(l.hard_packets));
        self.next_bytes.set(limit(l.hard_bytes));
        Some(Crossing::Lifetime {
            hard: false,
            bytes: b >= limit(l.soft_bytes),
        })
    }

    #[inline]
    pub fn record_drop(&self, r: DropReason) {
        if let Some(c) = self.drops.get(r as usize) {
            c.add(1);
        }
    }

    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops.get(r as usize).map_or(0, Counter::get)
    }
}

/// A plain copy of a core's counters, summable across cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub traffic: [u64; Traffic::COUNT],
    pub drops: [u64; DropReason::COUNT],
    /// Published L3 values ([`L3Stat`]): sums across cores; a difference of two snapshots is
    /// meaningful for the totals only, not for the gauges (memory, entries, in flight).
    pub l3: [u64; L3Stat::COUNT],
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            traffic: [0; Traffic::COUNT],
            drops: [0; DropReason::COUNT],
            l3: [0; L3Stat::COUNT],
        }
    }
}

impl Snapshot {
    pub fn traffic(&self, t: Traffic) -> u64 {
        self.traffic.get(t as usize).copied().unwrap_or(0)
    }

    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops.get(r as usize).copied().unwrap_or(0)
    }

    pub fn l3(&self, s: L3Stat) -> u64 {
        self.l3.get(s as usize).copied().unwrap_or(0)
    }

    /// Counter-wise sum.
    pub fn add(&mut self, other: &Snapshot) {
        for (a, b) in self.l3.iter_mut().zip(other.l3.iter()) {
            *a = a.wrapping_add(*b);
        }
        for (a, b) in self.traffic.iter_mut().zip(other.traffic.iter()) {
            *a = a.wrapping_add(*b);
        }
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Counter-wise difference since `earlier` (for per-second rates).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut d = *self;
        for (a, b) in d.traffic.iter_mut().zip(earlier.traffic.iter()) {
            *a = a.wrapping_sub(*b);
        }
        for (a, b) in d.drops.iter_mut().zip(earlier.drops.iter()) {
            *a = a.wrapping_sub(*b);
        }
        for (a, b) in d.l3.iter_mut().zip(earlier.l3.iter()) {
            *a = a.wrapping_sub(*b);
        }
        d
    }

    /// Non-zero drop counters, by name (hand-offs apart: [`handed_off`](Self::handed_off)).
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .filter(|r| !r.is_hand_off())
            .map(|r| (*r, self.drops(*r)))
            .filter(|(_, n)| *n > 0)
    }

    /// Non-zero hand-off counters (IKE punted to the control plane), by name.
    pub fn handed_off(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .filter(|r| r.is_hand_off())
            .map(|r| (*r, self.drops(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, t) in Traffic::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
    }

    #[test]
    fn snapshots_sum_and_subtract() {
        let c = CoreCounters::default();
        c.record_drop(DropReason::AuthFailed);
        c.record_drop(DropReason::AuthFailed);
        c.count(Traffic::RxPackets, 5);
        let a = c.snapshot();
        c.count(Traffic::RxPackets, 3);
        let b = c.snapshot();
        assert_eq!(b.since(&a).traffic(Traffic::RxPackets), 3);
        let mut sum = a;
        sum.add(&b);
        assert_eq!(sum.drops(DropReason::AuthFailed), 4);
        assert_eq!(
            b.nonzero_drops().collect::<Vec<_>>(),
            vec![(DropReason::AuthFailed, 2)]
        );
    }
}

#[cfg(test)]
mod lifetime_tests {
    use super::*;

    #[test]
    fn soft_then_hard_each_reported_once_and_hard_expires() {
        let c = SaCounters::with_lifetime(Lifetime {
            soft_packets: 3,
            hard_packets: 5,
            soft_bytes: 250,
            hard_bytes: 0,
        });
        let soft_bytes = Some(Crossing::Lifetime {
            hard: false,
            bytes: true,
        });
        let hard_packets = Some(Crossing::Lifetime {
            hard: true,
            bytes: false,
        });
        assert_eq!(c.count(100), None);
        assert_eq!(c.count(100), None);
        // Packet 3 reaches both soft limits (bytes 300 >= 250): one report.
        assert_eq!(c.count(100), soft_bytes);
        assert_eq!(c.count(100), None);
        assert!(!c.expired());
        assert_eq!(c.count(100), hard_packets);
        assert!(c.expired());
        assert_eq!(c.count(100), None, "reported once");
    }

    #[test]
    fn a_watched_first_use_is_reported_once_and_hides_no_lifetime() {
        let c = SaCounters::with_lifetime(Lifetime {
            soft_packets: 2,
            hard_packets: 4,
            ..Lifetime::default()
        });
        c.watch_first_use();
        assert!(c.watching());
        assert_eq!(c.count(10), Some(Crossing::FirstUse));
        assert!(!c.watching());
        let soft = Some(Crossing::Lifetime {
            hard: false,
            bytes: false,
        });
        assert_eq!(c.count(10), soft, "packet 2: the soft limit");
        // Armed again after the soft limit: the first use, then the hard limit on packet 4.
        c.watch_first_use();
        assert_eq!(c.count(10), Some(Crossing::FirstUse));
        assert_eq!(
            c.count(10),
            Some(Crossing::Lifetime {
                hard: true,
                bytes: false,
            })
        );
        assert!(c.expired());
    }

    #[test]
    fn a_quiet_count_is_reported_by_the_next_real_one() {
        let c = SaCounters::with_lifetime(Lifetime {
            soft_packets: 2,
            ..Lifetime::default()
        });
        assert_eq!(c.count(1), None);
        c.count_quietly(1);
        assert_eq!(
            c.count(1),
            Some(Crossing::Lifetime {
                hard: false,
                bytes: false
            })
        );
        let none = SaCounters::default();
        for _ in 0..1000 {
            assert_eq!(none.count(u64::MAX / 2000), None);
        }
    }
}
