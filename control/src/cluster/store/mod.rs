//! The cluster's state store: the SA repository of a crypto node and its edges, kept in etcd
//! (or in memory for virtual-time tests), behind one interface.
//!
//! # Layers
//!
//! - [`Store`]: a revisioned key-value store (etcd's model): transactions of puts and deletes
//!   with optional compare-on-revision, prefix reads that return the revision they were read
//!   at, watches from a revision with ordered events and a *resync* when that revision was
//!   compacted, leases that delete their keys when they expire, compaction. Two backends:
//!   [`mem::MemStore`] (deterministic, virtual time: leases expire when the test advances the
//!   clock) and [`etcd::EtcdStore`] (etcd 3.4 through the `etcd-client` crate).
//! - [`keys`]: the key layout of one cluster (below).
//! - [`record`]: the values, a versioned strict binary codec: the control core's export
//!   records (an IKE SA as the ike crate exports it, a CHILD SA as a `proto` `UpdateEnvelope`
//!   holding `AddSa`, as `ha::record` carries them), placements, outbound sequence checkpoints,
//!   edges and SPI blocks.
//! - [`seal`]: every value is encrypted and authenticated with the cluster key before it is
//!   written, with the key path as associated data.
//! - [`repo::ClusterStore`]: the typed repository the roles use (batches of records, load
//!   everything with its revision, watch decoded changes).
//! - [`local`]: starts a local etcd cluster (members on loopback in a temporary directory,
//!   killed by pid) for the integration tests and `roamgate perf cluster-store`; [`perf`]:
//!   that figure.
//!
//! # Key layout
//!
//! Every key of a cluster lives under `/roamgate/<cluster>/` (`<cluster>`, `<edge>` and
//! `<node>` are names of 1..=63 characters from `[a-z0-9_-]`; numbers are fixed-width
//! lowercase hex so that keys sort by number):
//!
//! | key | value ([`record::Record`]) | written by |
//! |---|---|---|
//! | `ike/<ike-sa-id:016x>` | `IkeSa`: the ike crate's export record of one IKE SA | crypto node |
//! | `child/<spi:08x>` | `Child`: both directions of a CHILD SA (`AddSa` envelopes, keys inside) and its outbound SA's first fence | crypto node |
//! | `placement/<spi:08x>` | `Placement`: the edges that hold this CHILD SA, each with its kind (both directions or a watched copy), when | crypto node |
//! | `seq/<spi:08x>` | `Seq`: the freshest outbound sequence checkpoint (number, reporter, when) | edges (compare-on-revision: only moves up) |
//! | `edges/<edge>` | `Edge`: a live edge (its channel address), **attached to the edge's lease** | each edge |
//! | `spi-blocks/<node>` | `SpiBlock`: the SPI range a crypto node allocates from | crypto node (create-if-absent) |
//!
//! `<spi>` is a CHILD SA's *inbound* SPI, which the cluster allocates itself (node bits make
//! it unique cluster-wide); the outbound direction is filed under its pair's inbound SPI,
//! because the peer chooses outbound SPIs and two peers may choose the same one.
//!
//! # Sync API over an async client, and why
//!
//! The control plane is sans-IO and runs in one synchronous loop; etcd's client is async. The
//! etcd backend therefore runs a current-thread tokio runtime in one driver thread of its own,
//! and [`Store`] is a *channel-based* interface: [`Store::submit`] queues a request and returns
//! a [`Ticket`] at once, [`Store::poll`] hands back completions and watch events without
//! blocking, and [`Store::wait`] blocks for one ticket (for start-up, recovery and tests). A
//! loop never waits for a round trip (an fsync on a quorum, about a millisecond or more) per
//! IKE SA: it keeps many transactions in flight, which is what makes the installs-per-second
//! figure (see [`perf`]) more than one per round trip. Back-pressure, not loss: the etcd
//! backend admits at most [`etcd::EtcdOptions::window`] requests in flight and `submit`
//! blocks the caller beyond that. The memory backend completes every request inside `submit`,
//! so a virtual-time test sees the same interface with no thread and no clock.
//!
//! # Watches and compaction
//!
//! [`Request::Watch`] from revision `r` delivers every change of the prefix with a revision
//! `>= r`, in revision order, grouped by revision ([`Event::Changes`]). When `r` (or the
//! point a watch resumes from after a lost connection) has been compacted away, the backend
//! re-lists the prefix and delivers [`Event::Resync`] with every key and the revision it was
//! read at, then continues from the revision after it: a consumer replaces its view with the
//! resync and loses nothing. A watch that loses its member resumes on another one from the
//! revision after the last it delivered.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// The `store:` section (its schema always; opening etcd with the `etcd` feature).
pub mod config;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod keys;
pub mod local;
pub mod mem;
#[cfg(feature = "etcd")]
pub mod perf;
pub mod record;
pub mod repo;
pub mod seal;

use std::fmt;
use std::time::Duration;

pub use keys::{Layout, RecordKey};
pub use record::Record;
pub use repo::ClusterStore;
pub use seal::Sealer;

/// An etcd revision: the store's logical clock; every transaction that changes something
/// takes the next one. 0 means "none" (a key that does not exist has mod revision 0).
pub type Revision = i64;

/// A lease id (etcd's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// A watch id (the backend's own, stable across resumes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchId(pub u64);

/// Names one submitted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// One key and its value as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// 0: no lease.
    pub lease: i64,
}

impl fmt::Debug for Kv {
    // Values are sealed records: lengths only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Kv({} = {} bytes @{})",
            String::from_utf8_lossy(&self.key),
            self.value.len(),
            self.mod_revision
        )
    }
}

/// One write of a transaction.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: Vec<u8>,
    },
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { key, value, lease } => write!(
                f,
                "Put({}, {} bytes, lease {lease:?})",
                String::from_utf8_lossy(key),
                value.len()
            ),
            Op::Delete { key } => write!(f, "Delete({})", String::from_utf8_lossy(key)),
        }
    }
}

/// A condition of a transaction: the key's mod revision equals `revision` (0: the key does not
/// exist). This is how a record's owner writes only over what it read (and how a create is
/// made create-if-absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub mod_revision: Revision,
}

/// Puts and deletes applied atomically, at one revision, if every compare holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>, lease: Option<LeaseId>) -> &mut Self {
        self.ops.push(Op::Put { key, value, lease });
        self
    }

    pub fn delete(&mut self, key: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Delete { key });
        self
    }

    pub fn when(&mut self, key: Vec<u8>, mod_revision: Revision) -> &mut Self {
        self.compare.push(Compare { key, mod_revision });
        self
    }
}

/// What a store is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Txn(Txn),
    /// Every key under the prefix, with the revision the read was made at.
    Range {
        prefix: Vec<u8>,
    },
    /// Changes under the prefix from revision `from` on (0: from the next change).
    Watch {
        prefix: Vec<u8>,
        from: Revision,
    },
    CancelWatch(WatchId),
    /// A lease of `ttl_s` seconds; keys put with it are deleted when it expires or is revoked.
    LeaseGrant {
        ttl_s: i64,
    },
    /// Renews the lease for its whole ttl.
    LeaseKeepAlive(LeaseId),
    LeaseRevoke(LeaseId),
    /// Drops the history before `revision` (watches from before it then resync).
    Compact(Revision),
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `succeeded`: whether the compares held (and so the ops were applied); `revision`: the
    /// store's revision after the transaction.
    Txn {
        succeeded: bool,
        revision: Revision,
    },
    Range {
        kvs: Vec<Kv>,
        revision: Revision,
    },
    Watching(WatchId),
    Lease {
        id: LeaseId,
        ttl_s: i64,
    },
    Done,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    Delete {
        key: Vec<u8>,
        mod_revision: Revision,
    },
}

impl Change {
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// What [`Store::poll`] hands back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A submitted request completed.
    Done {
        ticket: Ticket,
        result: Result<Reply, StoreError>,
    },
    /// Changes of one watch, in revision order (one or more revisions).
    Changes {
        watch: WatchId,
        changes: Vec<Change>,
    },
    /// The watch's resume point was compacted: this is the whole prefix at `revision`; the
    /// watch continues from `revision + 1`. Replace the view with it.
    Resync {
        watch: WatchId,
        kvs: Vec<Kv>,
        revision: Revision,
    },
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no etcd member answered: {0}")]
    Unavailable(String),
    #[error("revision {0} has been compacted")]
    Compacted(Revision),
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(i64),
    #[error("unknown watch {0}")]
    NoWatch(u64),
    #[error("the store's driver has stopped")]
    Closed,
    #[error("timed out waiting for the store")]
    Timeout,
    #[error("etcd refused the request: {0}")]
    Refused(String),
}

/// The interface every part of the cluster reaches its state through (see the module doc for
/// why it is channel-based).
pub trait Store {
    /// Queues a request. The memory backend completes it at once; the etcd backend blocks only
    /// while its window of in-flight requests is full (back-pressure).
    fn submit(&mut self, req: Request) -> Result<Ticket, StoreError>;

    /// Moves completions and watch events that are ready into `out`, in order, without
    /// blocking.
    fn poll(&mut self, out: &mut Vec<Event>);

    /// Blocks until `ticket` completes, for at most `timeout`; events that arrive meanwhile
    /// are kept for the next [`Store::poll`].
    fn wait(&mut self, ticket: Ticket, timeout: Duration) -> Result<Reply, StoreError>;

    /// Submits and waits.
    fn call(&mut self, req: Request, timeout: Duration) -> Result<Reply, StoreError> {
        let t = self.submit(req)?;
        self.wait(t, timeout)
    }
}

/// The end of the key range that a prefix covers (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last.wrapping_add(1));
            return end;
        }
    }
    // An empty prefix (or all 0xff): every key; etcd spells that "\0".
    vec![0]
}
