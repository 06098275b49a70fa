//! The etcd backend: etcd 3.4's v3 API through the `etcd-client` crate, on a current-thread
//! tokio runtime inside one driver thread (`etcd-driver`).
//!
//! The caller's side ([`EtcdStore`]) is synchronous: requests go to the driver over a channel
//! and each runs as its own task, so many are in flight at once (etcd batches their fsyncs);
//! completions and watch events come back over a bounded channel that [`Store::poll`] drains.
//!
//! - **Members and failover.** The driver holds one client per member (each connects lazily
//!   to its one endpoint) and sends to the *current* member. A request that fails for a
//!   reason that says nothing about the request (transport error, unavailable, no leader,
//!   timeout) moves the current member on to the next one and is retried there, with a short
//!   back-off, until [`EtcdOptions::retry_for`] has passed. (The crate's own balanced channel
//!   fails every request while one endpoint refuses connections, a known limitation of the
//!   crate, hence one client per member.) A write is acknowledged only when etcd answered
//!   it, i.e. after a quorum applied it, so killing one member loses no acknowledged write.
//!   A retried transaction that was in fact applied the first time is applied again: plain
//!   puts are idempotent; a compare-on-revision then reports `succeeded: false` and its
//!   owner re-reads, as after any lost race.
//! - **Watches.** One task per watch. It delivers each response's events in order, remembers
//!   the revision after the last one, and when its stream breaks (a member died) re-creates
//!   the watch from that revision on the next member. When etcd answers that the revision was
//!   compacted, it re-lists the prefix (paged, at one revision) and delivers
//!   [`Event::Resync`], then watches from the revision after the listing.
//! - **Back-pressure.** At most [`EtcdOptions::window`] requests are in flight: `submit` blocks
//!   (taking completions into its stash) while the window is full. The event channel is
//!   bounded; a watch task whose events are not taken waits, and etcd's stream waits with it
//!   (HTTP/2 flow control): nothing is dropped.
//! - **Leases.** Granted, kept alive and revoked on request ([`Request::LeaseKeepAlive`] every
//!   third of the ttl is the caller's timer, as in the memory backend); a process that dies
//!   stops keeping its lease alive and etcd deletes its keys after the ttl.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions,
    GetOptions, Identity, PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc as tokio_mpsc;
use tonic::Code;
use zeroize::Zeroizing;

use super::{
    prefix_end, Change, Event, Kv, LeaseId, Op, Reply, Request, Revision, Store, StoreError,
    Ticket, Txn, WatchId,
};

/// TLS to the members: the CA that signed them, and our client certificate and key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members (`http://` or, with `tls`, `https://`).
    pub endpoints: Vec<String>,
    /// etcd user and password (auth enabled).
    pub user: Option<(String, Zeroizing<String>)>,
    pub tls: Option<TlsFiles>,
    /// Requests in flight at most (back-pressure beyond).
    pub window: usize,
    /// One attempt on one member.
    pub request_timeout: Duration,
    /// How long a request is retried across members before it fails `Unavailable`.
    pub retry_for: Duration,
    /// HTTP/2 keep-alive interval (and its timeout): how soon a member that stopped answering
    /// (hung, cut off) is given up on, watches included.
    pub keep_alive: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            user: None,
            tls: None,
            window: 256,
            request_timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(15),
            keep_alive: Duration::from_secs(2),
        }
    }
}

/// Page size of a listing (keeps each response far below the 4 MiB gRPC limit).
const PAGE: i64 = 2000;
/// Events waiting for the caller at most.
const EVENT_QUEUE: usize = 4096;

enum Cmd {
    Req(Ticket, Request),
}

/// The etcd store (see the module doc).
pub struct EtcdStore {
    cmd: tokio_mpsc::UnboundedSender<Cmd>,
    events: std_mpsc::Receiver<Event>,
    stash: VecDeque<Event>,
    next_ticket: u64,
    outstanding: usize,
    window: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EtcdStore {
    /// Starts the driver thread and checks that a member answers (within `retry_for`).
    pub fn connect(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Refused("no etcd endpoints configured".into()));
        }
        let (cmd_tx, cmd_rx) = tokio_mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = std_mpsc::sync_channel(EVENT_QUEUE);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let window = opts.window.max(1);
        let thread = std::thread::Builder::new()
            .name("etcd-driver".into())
            .spawn(move || driver(opts, cmd_rx, ev_tx, ready_tx))
            .map_err(|e| StoreError::Refused(format!("cannot start the etcd driver: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(EtcdStore {
                cmd: cmd_tx,
                events: ev_rx,
                stash: VecDeque::new(),
                next_ticket: 1,
                outstanding: 0,
                window,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                thread.join().ok();
                Err(e)
            }
            Err(_) => Err(StoreError::Closed),
        }
    }

    fn take(&mut self, ev: Event) {
        if matches!(ev, Event::Done { .. }) {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
        self.stash.push_back(ev);
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Closing the command channel ends the driver (its tasks are dropped with the
        // runtime).
        let (tx, _) = tokio_mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.cmd, tx));
        // Unblock a watch task waiting on a full event queue.
        while self.events.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

impl Store for EtcdStore {
    fn submit(&mut self, req: Request) -> Result<Ticket, StoreError> {
        while self.outstanding >= self.window {
            match self.events.recv() {
                Ok(ev) => self.take(ev),
                Err(_) => return Err(StoreError::Closed),
            }
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.cmd
            .send(Cmd::Req(ticket, req))
            .map_err(|_| StoreError::Closed)?;
        self.outstanding = self.outstanding.saturating_add(1);
        Ok(ticket)
    }

    fn poll(&mut self, out: &mut Vec<Event>) {
        while let Ok(ev) = self.events.try_recv() {
            self.take(ev);
        }
        out.extend(self.stash.drain(..));
    }

    fn wait(&mut self, ticket: Ticket, timeout: Duration) -> Result<Reply, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let pos = self
                .stash
                .iter()
                .position(|e| matches!(e, Event::Done { ticket: t, .. } if *t == ticket));
            if let Some(Event::Done { result, .. }) = pos.and_then(|p| self.stash.remove(p)) {
                return result;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => self.take(ev),
                Err(std_mpsc::RecvTimeoutError::Timeout) => return Err(StoreError::Timeout),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return Err(StoreError::Closed),
            }
        }
    }
}

/// The members, and which one requests go to.
struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
    opts: EtcdOptions,
}

impl Members {
    /// The current member (`clients` is never empty: the driver starts only with one).
    fn pick(&self) -> Option<(usize, Client)> {
        let n = self.clients.len().max(1);
        let i = self.current.load(Ordering::Relaxed) % n;
        self.clients.get(i).cloned().map(|c| (i, c))
    }

    /// The member `i` failed: move on (unless another task already did).
    fn failed(&self, i: usize, why: &str) {
        let n = self.clients.len().max(1);
        let next = (i + 1) % n;
        if self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(target: "control",
                member = %self.opts.endpoints.get(i).map(String::as_str).unwrap_or("?"),
                next = %self.opts.endpoints.get(next).map(String::as_str).unwrap_or("?"),
                error = %why, "etcd member failed, moving to the next");
        }
    }
}

/// Whether an error says the member (not the request) is the problem.
fn retryable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => {
            matches!(
                s.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::Aborted
            ) || s.message().contains("leader")
                || s.message().contains("timed out")
        }
        _ => false,
    }
}

fn to_store_error(e: &etcd_client::Error) -> StoreError {
    let msg = e.to_string();
    if msg.contains("lease not found") {
        // The id is not in the message; callers know it.
        StoreError::LeaseNotFound(0)
    } else if msg.contains("compacted") {
        StoreError::Compacted(0)
    } else if retryable(e) {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Refused(msg)
    }
}

/// Runs `f` on the current member, moving on and retrying while the member is the problem.
async fn with_retry<T, F, Fut>(m: &Members, mut f: F) -> Result<T, StoreError>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + m.opts.retry_for;
    let mut backoff = Duration::from_millis(20);
    loop {
        let (i, client) = m.pick().ok_or(StoreError::Closed)?;
        let r = tokio::time::timeout(m.opts.request_timeout, f(client)).await;
        let err = match r {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if retryable(&e) => to_store_error(&e).to_string(),
            Ok(Err(e)) => return Err(to_store_error(&e)),
            Err(_) => "request timed out".to_string(),
        };
        m.failed(i, &err);
        if Instant::now() >= deadline {
            return Err(StoreError::Unavailable(err));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn connect_options(opts: &EtcdOptions) -> Result<ConnectOptions, StoreError> {
    let mut co = ConnectOptions::new()
        .with_connect_timeout(opts.request_timeout)
        .with_timeout(opts.request_timeout)
        .with_keep_alive(opts.keep_alive, opts.keep_alive)
        .with_require_leader(true);
    if let Some((user, pass)) = &opts.user {
        co = co.with_user(user.clone(), pass.as_str());
    }
    if let Some(tls) = &opts.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| StoreError::Refused(format!("etcd TLS file {}: {e}", p.display())))
        };
        let ca = read(&tls.ca)?;
        let cert = read(&tls.cert)?;
        let key = Zeroizing::new(read(&tls.key)?);
        co = co.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(cert, key.as_slice())),
        );
    }
    Ok(co)
}

fn driver(
    opts: EtcdOptions,
    mut cmd: tokio_mpsc::UnboundedReceiver<Cmd>,
    events: std_mpsc::SyncSender<Event>,
    ready: std_mpsc::Sender<Result<(), StoreError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ready
                .send(Err(StoreError::Refused(format!("tokio runtime: {e}"))))
                .ok();
            return;
        }
    };
    rt.block_on(async move {
        let co = match connect_options(&opts).await {
            Ok(co) => co,
            Err(e) => {
                ready.send(Err(e)).ok();
                return;
            }
        };
        // One client per member; with auth, connecting authenticates, which needs the
        // member up: a member that is down now gets its client on the first failover to it
        // would be nicer, but every member must be reachable at start-up is simpler and what
        // a deployment checks anyway. Members that fail here are retried until retry_for.
        let deadline = Instant::now() + opts.retry_for;
        let mut clients = Vec::new();
        for ep in &opts.endpoints {
            loop {
                match Client::connect([ep.as_str()], Some(co.clone())).await {
                    Ok(c) => {
                        clients.push(c);
                        break;
                    }
                    Err(e) if Instant::now() < deadline && retryable(&e) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        tracing::warn!(target: "control", member = %ep, error = %e,
                            "etcd member does not answer at start-up; left out");
                        break;
                    }
                }
            }
        }
        if clients.is_empty() {
            ready
                .send(Err(StoreError::Unavailable(
                    "no etcd member could be connected".into(),
                )))
                .ok();
            return;
        }
        let members = Arc::new(Members {
            clients,
            current: AtomicUsize::new(0),
            opts,
        });
        // A first round trip: the cluster answers.
        let probe = with_retry(&members, |mut c| async move { c.status().await }).await;
        if let Err(e) = probe {
            ready.send(Err(e)).ok();
            return;
        }
        ready.send(Ok(())).ok();
        let mut watches: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
        let mut next_watch = 1u64;
        while let Some(Cmd::Req(ticket, req)) = cmd.recv().await {
            let m = members.clone();
            let tx = events.clone();
            match req {
                Request::Watch { prefix, from } => {
                    let id = WatchId(next_watch);
                    next_watch += 1;
                    let h = tokio::spawn(run_watch(m, id, prefix, from, ticket, tx));
                    watches.insert(id.0, h.abort_handle());
                }
                Request::CancelWatch(id) => {
                    let result = match watches.remove(&id.0) {
                        Some(h) => {
                            h.abort();
                            Ok(Reply::Done)
                        }
                        None => Err(StoreError::NoWatch(id.0)),
                    };
                    send(&tx, Event::Done { ticket, result }).await;
                }
                other => {
                    tokio::spawn(async move {
                        let result = handle(&m, other).await;
                        send(&tx, Event::Done { ticket, result }).await;
                    });
                }
            }
        }
        for h in watches.values() {
            h.abort();
        }
    });
}

/// Sends an event, waiting (not dropping) while the caller's queue is full.
async fn send(tx: &std_mpsc::SyncSender<Event>, mut ev: Event) -> bool {
    loop {
        match tx.try_send(ev) {
            Ok(()) => return true,
            Err(std_mpsc::TrySendError::Full(back)) => {
                ev = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => return false,
        }
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn etcd_txn(t: &Txn) -> EtcdTxn {
    let compares: Vec<EtcdCompare> = t
        .compare
        .iter()
        .map(|c| EtcdCompare::mod_revision(c.key.clone(), CompareOp::Equal, c.mod_revision))
        .collect();
    let ops: Vec<TxnOp> = t
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, lease } => TxnOp::put(
                key.clone(),
                value.clone(),
                lease.map(|l| PutOptions::new().with_lease(l.0)),
            ),
            Op::Delete { key } => TxnOp::delete(key.clone(), None),
        })
        .collect();
    EtcdTxn::new().when(compares).and_then(ops)
}

/// A listing of `prefix` at one revision, in pages.
async fn list(m: &Members, prefix: &[u8]) -> Result<(Vec<Kv>, Revision), StoreError> {
    let end = prefix_end(prefix);
    let mut out = Vec::new();
    let mut from = prefix.to_vec();
    let mut at: Revision = 0;
    loop {
        let (key, end2) = (from.clone(), end.clone());
        let resp = with_retry(m, |mut c| {
            let (key, end2) = (key.clone(), end2.clone());
            async move {
                let mut o = GetOptions::new().with_range(end2).with_limit(PAGE);
                if at > 0 {
                    o = o.with_revision(at);
                }
                c.get(key, Some(o)).await
            }
        })
        .await?;
        if at == 0 {
            at = resp.header().map_or(0, |h| h.revision());
        }
        let kvs = resp.kvs();
        out.extend(kvs.iter().map(kv_of));
        match (resp.more(), kvs.last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((out, at)),
        }
    }
}

async fn handle(m: &Members, req: Request) -> Result<Reply, StoreError> {
    match req {
        Request::Txn(t) => {
            let txn = etcd_txn(&t);
            let lease = t.ops.iter().find_map(|op| match op {
                Op::Put { lease: Some(l), .. } => Some(l.0),
                _ => None,
            });
            let resp = with_retry(m, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| match (e, lease) {
                (StoreError::LeaseNotFound(_), Some(l)) => StoreError::LeaseNotFound(l),
                (e, _) => e,
            })?;
            Ok(Reply::Txn {
                succeeded: resp.succeeded(),
                revision: resp.header().map_or(0, |h| h.revision()),
            })
        }
        Request::Range { prefix } => {
            let (kvs, revision) = list(m, &prefix).await?;
            Ok(Reply::Range { kvs, revision })
        }
        Request::LeaseGrant { ttl_s } => {
            let resp =
                with_retry(m, |mut c| async move { c.lease_grant(ttl_s, None).await }).await?;
            Ok(Reply::Lease {
                id: LeaseId(resp.id()),
                ttl_s: resp.ttl(),
            })
        }
        Request::LeaseKeepAlive(id) => {
            let ttl = with_retry(m, |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(id.0).await?;
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(r) => Ok(r.ttl()),
                    // The stream ended without an answer: not etcd saying the lease is gone.
                    None => Ok(-1),
                }
            })
            .await
            .map_err(|e| match e {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(id.0),
                e => e,
            })?;
            if ttl < 0 {
                Err(StoreError::Unavailable(
                    "the keep-alive stream ended without an answer".into(),
                ))
            } else if ttl == 0 {
                // etcd's answer for a lease it does not have (expired or revoked).
                Err(StoreError::LeaseNotFound(id.0))
            } else {
                Ok(Reply::Lease { id, ttl_s: ttl })
            }
        }
        Request::LeaseRevoke(id) => {
            match with_retry(m, |mut c| async move { c.lease_revoke(id.0).await }).await {
                Ok(_) => Ok(Reply::Done),
                Err(StoreError::LeaseNotFound(_)) => Err(StoreError::LeaseNotFound(id.0)),
                Err(e) => Err(e),
            }
        }
        Request::Compact(rev) => {
            let r = with_retry(m, |mut c| async move {
                c.compact(rev, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await;
            r.map(|_| Reply::Done)
        }
        Request::Watch { .. } | Request::CancelWatch(_) => {
            Err(StoreError::Refused("handled by the driver".into()))
        }
    }
}

/// One watch for its whole life (see the module doc).
async fn run_watch(
    m: Arc<Members>,
    id: WatchId,
    prefix: Vec<u8>,
    from: Revision,
    ticket: Ticket,
    tx: std_mpsc::SyncSender<Event>,
) {
    let mut next = from;
    let mut answered = false;
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some((i, mut client)) = m.pick() else {
            return;
        };
        let mut o = WatchOptions::new().with_prefix();
        if next > 0 {
            o = o.with_start_revision(next);
        }
        let stream = tokio::time::timeout(
            m.opts.request_timeout,
            client.watch(prefix.clone(), Some(o)),
        )
        .await;
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                m.failed(i, &e.to_string());
                if !answered && started.elapsed() > m.opts.retry_for {
                    send(
                        &tx,
                        Event::Done {
                            ticket,
                            result: Err(to_store_error(&e)),
                        },
                    )
                    .await;
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            Err(_) => {
                m.failed(i, "watch timed out");
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    backoff = Duration::from_millis(20);
                    if resp.compact_revision() > 0 {
                        // The resume point is gone: re-list and go on from there.
                        match list(&m, &prefix).await {
                            Ok((kvs, revision)) => {
                                if !answer(&tx, &mut answered, ticket, id).await {
                                    return;
                                }
                                if !send(
                                    &tx,
                                    Event::Resync {
                                        watch: id,
                                        kvs,
                                        revision,
                                    },
                                )
                                .await
                                {
                                    return;
                                }
                                next = revision.saturating_add(1);
                            }
                            Err(e) => {
                                tracing::warn!(target: "control", error = %e,
                                    "etcd watch: re-listing after compaction failed; retrying");
                                tokio::time::sleep(backoff).await;
                            }
                        }
                        break;
                    }
                    if resp.canceled() {
                        break;
                    }
                    if resp.created() {
                        if next == 0 {
                            next = resp.header().map_or(0, |h| h.revision()).saturating_add(1);
                        }
                        if !answer(&tx, &mut answered, ticket, id).await {
                            return;
                        }
                    }
                    let mut changes = Vec::with_capacity(resp.events().len());
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        next = next.max(kv.mod_revision().saturating_add(1));
                        changes.push(match ev.event_type() {
                            etcd_client::EventType::Put => Change::Put(kv_of(kv)),
                            etcd_client::EventType::Delete => Change::Delete {
                                key: kv.key().to_vec(),
                                mod_revision: kv.mod_revision(),
                            },
                        });
                    }
                    if !changes.is_empty()
                        && !send(&tx, Event::Changes { watch: id, changes }).await
                    {
                        return;
                    }
                }
                Ok(None) => {
                    m.failed(i, "watch stream ended");
                    break;
                }
                Err(e) => {
                    m.failed(i, &e.to_string());
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Completes the watch request once (when the watch first exists).
async fn answer(
    tx: &std_mpsc::SyncSender<Event>,
    answered: &mut bool,
    ticket: Ticket,
    id: WatchId,
) -> bool {
    if *answered {
        return true;
    }
    *answered = true;
    send(
        tx,
        Event::Done {
            ticket,
            result: Ok(Reply::Watching(id)),
        },
    )
    .await
}
