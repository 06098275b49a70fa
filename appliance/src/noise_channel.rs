//! The channels between our nodes (the HA pair's sync channel, a cluster edge's channel to
//! its crypto node): a reliable, ordered, authenticated and encrypted stream of messages over
//! TCP. A [`Protocol`] names each use: its prologue is bound into the handshake, so a peer of
//! another channel (or version) fails it.
//!
//! This module owns the connection (Noise `NNpsk0` over one TCP stream, via `snow`: both ends
//! prove knowledge of the channel's pre-shared key in the handshake, and the ephemeral
//! X25519 exchange gives every connection its own keys), the framing (a 2-byte big-endian
//! length, then one Noise transport message, as the Noise spec suggests), and [`SyncLink`]: a
//! thread that keeps one connection up (the node of slot 0 dials, the other listens;
//! reconnects with a back-off), a bounded send queue ([`SyncLink::try_send`] says `Full`
//! instead of dropping anything) and the received messages and connection changes as
//! [`LinkEvent`]s; and [`Hub`], the listening end for many peers (a crypto node and its
//! edges: one connection, thread and bounded queue per peer). A wrong key fails the handshake; a changed, cut or replayed byte fails
//! the decryption of its message and closes the connection (never the process).
//!
//! It never interprets a message (the pair's core does), never prints the key, and never
//! loses a message silently: what was queued when a connection broke is reported as lost
//! (`LinkEvent::Down { unsent }`), and the core sends everything unacknowledged again on the
//! next connection (`Node::link_up`).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use zeroize::Zeroizing;

/// The Noise protocol of the channel.
pub const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// One use of the channel: its prologue (bound into the handshake: a peer of another
/// protocol or version fails it) and the name of its threads.
#[derive(Clone, Copy, Debug)]
pub struct Protocol {
    pub prologue: &'static [u8],
    pub thread: &'static str,
}

/// The HA pair's sync channel.
pub const HA_SYNC: Protocol = Protocol {
    prologue: b"roamgate ha sync 1",
    thread: "ha-sync",
};

/// A cluster edge's channel to its crypto node.
pub const CLUSTER: Protocol = Protocol {
    prologue: b"roamgate cluster 1",
    thread: "cluster-link",
};
/// The largest Noise message.
const MAX_FRAME: usize = 65535;
/// The AEAD tag of a transport message.
const TAG: usize = 16;
/// The largest message the channel carries.
pub const MAX_PAYLOAD: usize = MAX_FRAME - TAG;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The pair's pre-shared key: 32 bytes, zeroized on drop, never in `Debug`.
#[derive(Clone)]
pub struct Psk(Zeroizing<[u8; 32]>);

impl Psk {
    pub fn new(key: [u8; 32]) -> Psk {
        Psk(Zeroizing::new(key))
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("sync channel I/O: {0}")]
    Io(#[from] io::Error),
    #[error("sync channel handshake failed (wrong key, or not a roamgate sync peer): {0}")]
    Handshake(snow::Error),
    #[error("a sync message did not decrypt (changed in transit): the connection is closed")]
    Decrypt,
    #[error("sync message of {0} bytes is longer than {MAX_PAYLOAD}")]
    TooLong(usize),
    #[error("the peer closed the sync connection")]
    Closed,
}

fn read_frame(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, ChannelError> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ChannelError::Closed),
        r => r?,
    }
    let n = usize::from(u16::from_be_bytes(len));
    let frame = buf.get_mut(..n).ok_or(ChannelError::TooLong(n))?;
    stream.read_exact(frame)?;
    Ok(n)
}

fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> Result<(), ChannelError> {
    let len = u16::try_from(frame.len()).map_err(|_| ChannelError::TooLong(frame.len()))?;
    let mut out = Vec::with_capacity(frame.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    stream.write_all(&out)?;
    Ok(())
}

/// One established, encrypted connection.
pub struct Connection {
    stream: TcpStream,
    noise: Arc<Mutex<snow::TransportState>>,
}

impl Connection {
    /// The dialling side's handshake.
    pub fn initiate(
        stream: TcpStream,
        psk: &Psk,
        proto: Protocol,
    ) -> Result<Connection, ChannelError> {
        Self::handshake(stream, psk, true, proto)
    }

    /// The listening side's handshake.
    pub fn respond(
        stream: TcpStream,
        psk: &Psk,
        proto: Protocol,
    ) -> Result<Connection, ChannelError> {
        Self::handshake(stream, psk, false, proto)
    }

    fn handshake(
        mut stream: TcpStream,
        psk: &Psk,
        initiator: bool,
        proto: Protocol,
    ) -> Result<Connection, ChannelError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let params = PATTERN.parse().map_err(ChannelError::Handshake)?;
        let b = snow::Builder::new(params)
            .prologue(proto.prologue)
            .and_then(|b| b.psk(0, &psk.0))
            .map_err(ChannelError::Handshake)?;
        let mut hs = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(ChannelError::Handshake)?;
        let mut buf = Zeroizing::new(vec![0u8; MAX_FRAME]);
        let mut payload = Zeroizing::new(vec![0u8; MAX_FRAME]);
        // NN: initiator -> e (with the PSK mixed in), responder -> e, ee.
        let mut my_turn = initiator;
        while !hs.is_handshake_finished() {
            if my_turn {
                let n = hs
                    .write_message(&[], &mut buf)
                    .map_err(ChannelError::Handshake)?;
                write_frame(&mut stream, buf.get(..n).unwrap_or_default())?;
            } else {
                let n = read_frame(&mut stream, &mut buf)?;
                hs.read_message(buf.get(..n).unwrap_or_default(), &mut payload)
                    .map_err(ChannelError::Handshake)?;
            }
            my_turn = !my_turn;
        }
        let noise = hs.into_transport_mode().map_err(ChannelError::Handshake)?;
        stream.set_read_timeout(None)?;
        Ok(Connection {
            stream,
            noise: Arc::new(Mutex::new(noise)),
        })
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        send_on(&mut self.stream, &self.noise, msg)
    }

    /// Receives one message (blocking).
    pub fn recv(&mut self) -> Result<Zeroizing<Vec<u8>>, ChannelError> {
        let mut frame = vec![0u8; MAX_FRAME];
        recv_on(&mut self.stream, &self.noise, &mut frame)
    }
}

fn send_on(
    stream: &mut TcpStream,
    noise: &Mutex<snow::TransportState>,
    msg: &[u8],
) -> Result<(), ChannelError> {
    if msg.len() > MAX_PAYLOAD {
        return Err(ChannelError::TooLong(msg.len()));
    }
    // Ciphertext only: nothing to zeroize.
    let mut frame = vec![0u8; msg.len() + TAG];
    let n = {
        let mut t = noise.lock().map_err(|_| ChannelError::Closed)?;
        t.write_message(msg, &mut frame)
            .map_err(|_| ChannelError::TooLong(msg.len()))?
    };
    write_frame(stream, frame.get(..n).unwrap_or_default())
}

/// Reads and opens one message. `frame` (at least [`MAX_FRAME`] bytes, the caller's, used
/// again for every message) only ever holds ciphertext, so it is not zeroized: allocating
/// and zeroizing 64 KiB per message cost more than the rest of a resync.
fn recv_on(
    stream: &mut TcpStream,
    noise: &Mutex<snow::TransportState>,
    frame: &mut [u8],
) -> Result<Zeroizing<Vec<u8>>, ChannelError> {
    let n = read_frame(stream, frame)?;
    let mut out = Zeroizing::new(vec![0u8; n]);
    let m = {
        let mut t = noise.lock().map_err(|_| ChannelError::Closed)?;
        t.read_message(frame.get(..n).unwrap_or_default(), &mut out)
            .map_err(|_| ChannelError::Decrypt)?
    };
    out.truncate(m);
    Ok(out)
}

/// What a [`SyncLink`] reports. `Debug` prints a message's length, never its bytes (sync
/// records carry keys).
pub enum LinkEvent {
    /// A new connection is up (the core calls `Node::link_up`).
    Up,
    /// A message and when the channel's thread read it (the driver's queueing delay).
    Message(Zeroizing<Vec<u8>>, std::time::Instant),
    /// The connection went; `unsent` queued messages went with it.
    Down { why: String, unsent: usize },
}

impl std::fmt::Debug for LinkEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEvent::Up => f.write_str("Up"),
            LinkEvent::Message(bytes, at) => f
                .debug_struct("Message")
                .field("len", &bytes.len())
                .field("read_at", at)
                .finish(),
            LinkEvent::Down { why, unsent } => f
                .debug_struct("Down")
                .field("why", why)
                .field("unsent", unsent)
                .finish(),
        }
    }
}

/// How a link finds its peer.
pub enum Endpoint {
    Dial(SocketAddr),
    Listen(TcpListener),
}

/// The send queue is full: the message comes back to the caller, who sends it again later
/// (back-pressure). `Debug` prints the length only.
#[derive(PartialEq, Eq)]
pub struct Full(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Full({} bytes)", self.0.len())
    }
}

/// One node's end of the sync channel, kept up by a thread.
pub struct SyncLink {
    tx: SyncSender<Zeroizing<Vec<u8>>>,
    events: Receiver<LinkEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyncLink {
    /// Starts the link; at most `queue` messages wait to be sent.
    pub fn start(
        endpoint: Endpoint,
        psk: Psk,
        queue: usize,
        proto: Protocol,
    ) -> io::Result<SyncLink> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let (etx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        if let Endpoint::Listen(l) = &endpoint {
            l.set_nonblocking(true)?;
        }
        let s = stop.clone();
        let thread = thread::Builder::new()
            .name(proto.thread.into())
            .spawn(move || run(endpoint, psk, rx, etx, s, proto))?;
        Ok(SyncLink {
            tx,
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues a message; when the queue is full it comes back in `Full` (nothing is
    /// dropped).
    pub fn try_send(&self, msg: Zeroizing<Vec<u8>>) -> Result<(), Full> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(Full(m)),
        }
    }

    pub fn events(&self) -> &Receiver<LinkEvent> {
        &self.events
    }
}

impl Drop for SyncLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const POLL: Duration = Duration::from_millis(20);

fn connect(
    endpoint: &Endpoint,
    psk: &Psk,
    stop: &AtomicBool,
    proto: Protocol,
) -> Option<Connection> {
    match endpoint {
        Endpoint::Dial(addr) => {
            let s = TcpStream::connect_timeout(addr, HANDSHAKE_TIMEOUT).ok()?;
            Connection::initiate(s, psk, proto).ok()
        }
        Endpoint::Listen(l) => loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    return Connection::respond(s, psk, proto).ok();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(_) => return None,
            }
        },
    }
}

fn run(
    endpoint: Endpoint,
    psk: Psk,
    rx: Receiver<Zeroizing<Vec<u8>>>,
    events: mpsc::Sender<LinkEvent>,
    stop: Arc<AtomicBool>,
    proto: Protocol,
) {
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let Some(conn) = connect(&endpoint, &psk, &stop, proto) else {
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        backoff = Duration::from_millis(50);
        if events.send(LinkEvent::Up).is_err() {
            return;
        }
        let ev = events.clone();
        let why = serve(conn, &rx, move |e| ev.send(e).is_ok(), &stop);
        // What was queued for the broken connection is reported, not sent to the next one
        // (the core resends what the peer did not acknowledge).
        let mut unsent = 0;
        while rx.try_recv().is_ok() {
            unsent += 1;
        }
        if events.send(LinkEvent::Down { why, unsent }).is_err() {
            return;
        }
    }
}

/// Runs one connection until it breaks: a reader thread, writes here.
fn serve(
    conn: Connection,
    rx: &Receiver<Zeroizing<Vec<u8>>>,
    emit: impl Fn(LinkEvent) -> bool + Send + 'static,
    stop: &AtomicBool,
) -> String {
    let Connection { stream, noise } = conn;
    let Ok(mut reader) = stream.try_clone() else {
        return "cannot clone the socket".into();
    };
    let mut writer = stream;
    let broken = Arc::new(AtomicBool::new(false));
    let why = Arc::new(Mutex::new(String::new()));
    let (rn, rb, rw) = (noise.clone(), broken.clone(), why.clone());
    let mut frame = vec![0u8; MAX_FRAME];
    let reader_thread = thread::spawn(move || loop {
        match recv_on(&mut reader, &rn, &mut frame) {
            Ok(m) => {
                if !emit(LinkEvent::Message(m, std::time::Instant::now())) {
                    break;
                }
            }
            Err(e) => {
                if let Ok(mut w) = rw.lock() {
                    *w = e.to_string();
                }
                rb.store(true, Ordering::Relaxed);
                break;
            }
        }
    });
    let mut reason = String::new();
    while !stop.load(Ordering::Relaxed) && !broken.load(Ordering::Relaxed) {
        match rx.recv_timeout(POLL) {
            Ok(m) => {
                if let Err(e) = send_on(&mut writer, &noise, &m) {
                    reason = e.to_string();
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    let _ = reader_thread.join();
    if reason.is_empty() {
        reason = why.lock().map(|w| w.clone()).unwrap_or_default();
    }
    if reason.is_empty() {
        reason = "stopped".into();
    }
    reason
}

/// What a [`Hub`] reports: a [`LinkEvent`] of one peer's connection.
#[derive(Debug)]
pub struct HubEvent {
    /// The connection (new for every accepted connection).
    pub conn: u64,
    pub event: LinkEvent,
}

struct HubConn {
    tx: SyncSender<Zeroizing<Vec<u8>>>,
    thread: JoinHandle<()>,
}

/// The listening end for many peers: every accepted connection that completes the handshake
/// gets its own thread and bounded send queue (`queue` messages); peers reconnect by
/// dialling again (a new connection id).
pub struct Hub {
    conns: Arc<Mutex<std::collections::BTreeMap<u64, HubConn>>>,
    events: Receiver<HubEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    pub fn start(
        listener: TcpListener,
        psk: Psk,
        queue: usize,
        proto: Protocol,
    ) -> io::Result<Hub> {
        listener.set_nonblocking(true)?;
        let (etx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<std::collections::BTreeMap<u64, HubConn>>> = Arc::default();
        let (s, c) = (stop.clone(), conns.clone());
        let thread = thread::Builder::new()
            .name(format!("{}-accept", proto.thread))
            .spawn(move || accept_loop(listener, psk, queue, proto, etx, s, c))?;
        Ok(Hub {
            conns,
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues a message for connection `conn`; when its queue is full (or the connection is
    /// gone) it comes back in `Full`.
    pub fn try_send(&self, conn: u64, msg: Zeroizing<Vec<u8>>) -> Result<(), Full> {
        let Ok(conns) = self.conns.lock() else {
            return Err(Full(msg));
        };
        match conns.get(&conn) {
            Some(c) => match c.tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(Full(m)),
            },
            None => Err(Full(msg)),
        }
    }

    pub fn events(&self) -> &Receiver<HubEvent> {
        &self.events
    }

    /// Closes connection `conn` (a peer that broke the protocol).
    pub fn close(&self, conn: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            // Dropping the sender ends the connection's writer loop.
            conns.remove(&conn);
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let conns = self
            .conns
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        for (_, c) in conns {
            drop(c.tx);
            let _ = c.thread.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    psk: Psk,
    queue: usize,
    proto: Protocol,
    events: mpsc::Sender<HubEvent>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<std::collections::BTreeMap<u64, HubConn>>>,
) {
    let mut next = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(POLL);
                continue;
            }
            Err(_) => {
                thread::sleep(POLL);
                continue;
            }
        };
        let _ = s.set_nonblocking(false);
        let id = next;
        next += 1;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let (ev, st, psk) = (events.clone(), stop.clone(), psk.clone());
        // The handshake runs on the connection's own thread: a slow or silent peer holds up
        // no other.
        let spawned = thread::Builder::new()
            .name(format!("{}-{id}", proto.thread))
            .spawn(move || {
                let Ok(conn) = Connection::respond(s, &psk, proto) else {
                    return;
                };
                if ev
                    .send(HubEvent {
                        conn: id,
                        event: LinkEvent::Up,
                    })
                    .is_err()
                {
                    return;
                }
                let e2 = ev.clone();
                let why = serve(
                    conn,
                    &rx,
                    move |event| e2.send(HubEvent { conn: id, event }).is_ok(),
                    &st,
                );
                let mut unsent = 0;
                while rx.try_recv().is_ok() {
                    unsent += 1;
                }
                let _ = ev.send(HubEvent {
                    conn: id,
                    event: LinkEvent::Down { why, unsent },
                });
            });
        if let (Ok(thread), Ok(mut c)) = (spawned, conns.lock()) {
            // Connections that ended are joined as new ones come.
            let done: Vec<u64> = c
                .iter()
                .filter(|(_, h)| h.thread.is_finished())
                .map(|(k, _)| *k)
                .collect();
            for k in done {
                if let Some(h) = c.remove(&k) {
                    let _ = h.thread.join();
                }
            }
            c.insert(id, HubConn { tx, thread });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk(b: u8) -> Psk {
        Psk::new([b; 32])
    }

    fn pair(k1: Psk, k2: Psk, queue: usize) -> (SyncLink, SyncLink) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let b = SyncLink::start(Endpoint::Listen(l), k2, queue, HA_SYNC).unwrap();
        let a = SyncLink::start(Endpoint::Dial(addr), k1, queue, HA_SYNC).unwrap();
        (a, b)
    }

    #[test]
    fn a_message_event_never_prints_its_bytes() {
        let ev = LinkEvent::Message(Zeroizing::new(vec![0xab; 40]), std::time::Instant::now());
        let shown = format!("{ev:?}");
        assert!(shown.contains("len: 40"), "{shown}");
        // The bytes would show as 171 (decimal) or ab (hex); the read
        // time is printed too, so look only at what comes before it.
        let before_time = shown.split("read_at").next().unwrap_or("");
        assert!(shown.contains("read_at"), "{shown}");
        assert!(
            !before_time.contains("171") && !before_time.contains("ab"),
            "{shown}"
        );
        let full = format!("{:?}", Full(Zeroizing::new(vec![0xab; 40])));
        assert_eq!(full, "Full(40 bytes)");
    }

    fn wait_up(l: &SyncLink) {
        match l.events().recv_timeout(Duration::from_secs(5)) {
            Ok(LinkEvent::Up) => {}
            other => panic!("expected Up, got {other:?}"),
        }
    }

    fn send_blocking(l: &SyncLink, m: Vec<u8>) {
        let m = Zeroizing::new(m);
        for _ in 0..5000 {
            if l.try_send(m.clone()).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("queue stayed full");
    }

    #[test]
    fn messages_arrive_in_order_both_ways() {
        let (a, b) = pair(psk(1), psk(1), 8);
        wait_up(&a);
        wait_up(&b);
        for i in 0..500u32 {
            let len = (i as usize * 131) % 4000 + 4;
            let mut m = vec![(i % 251) as u8; len];
            m[..4].copy_from_slice(&i.to_be_bytes());
            send_blocking(&a, m.clone());
            send_blocking(&b, m);
        }
        // A message as long as the channel allows, too.
        send_blocking(&a, vec![9; MAX_PAYLOAD]);
        for l in [&b, &a] {
            for i in 0..500u32 {
                match l.events().recv_timeout(Duration::from_secs(5)) {
                    Ok(LinkEvent::Message(m, _)) => assert_eq!(&m[..4], &i.to_be_bytes()),
                    other => panic!("message {i}: {other:?}"),
                }
            }
        }
        match b.events().recv_timeout(Duration::from_secs(5)) {
            Ok(LinkEvent::Message(m, _)) => assert_eq!(m.len(), MAX_PAYLOAD),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wrong_key_is_refused_by_the_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            Connection::respond(s, &psk(2), HA_SYNC).map(|_| ())
        });
        let s = TcpStream::connect(addr).unwrap();
        let mine = Connection::initiate(s, &psk(1), HA_SYNC);
        let theirs = t.join().unwrap();
        assert!(
            matches!(theirs, Err(ChannelError::Handshake(_))),
            "{theirs:?}"
        );
        assert!(mine.is_err());
        // And a link with the wrong key never comes up.
        let (a, _b) = pair(psk(1), psk(3), 4);
        assert!(!matches!(
            a.events().recv_timeout(Duration::from_millis(500)),
            Ok(LinkEvent::Up)
        ));
    }

    #[test]
    fn a_changed_byte_breaks_the_connection_not_the_process() {
        // A proxy that flips one byte of the third frame's ciphertext.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let (saddr, paddr) = (server.local_addr().unwrap(), proxy.local_addr().unwrap());
        let p = thread::spawn(move || {
            let (mut c, _) = proxy.accept().unwrap();
            let mut s = TcpStream::connect(saddr).unwrap();
            let mut s2 = s.try_clone().unwrap();
            let mut c2 = c.try_clone().unwrap();
            let back = thread::spawn(move || {
                let _ = io::copy(&mut s2, &mut c2);
            });
            let mut frames = 0;
            loop {
                let mut len = [0u8; 2];
                if c.read_exact(&mut len).is_err() {
                    break;
                }
                let mut f = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if c.read_exact(&mut f).is_err() {
                    break;
                }
                frames += 1;
                if frames == 3 {
                    f[5] ^= 0x40;
                }
                if s.write_all(&len).and_then(|_| s.write_all(&f)).is_err() {
                    break;
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
            let _ = back.join();
        });
        let srv = thread::spawn(move || {
            let (s, _) = server.accept().unwrap();
            let mut c = Connection::respond(s, &psk(7), HA_SYNC).unwrap();
            let first = c.recv().unwrap();
            let second = c.recv();
            (first, second)
        });
        let mut c =
            Connection::initiate(TcpStream::connect(paddr).unwrap(), &psk(7), HA_SYNC).unwrap();
        c.send(b"fine").unwrap();
        c.send(b"tampered").unwrap();
        let (first, second) = srv.join().unwrap();
        assert_eq!(&first[..], b"fine");
        assert!(matches!(second, Err(ChannelError::Decrypt)), "{second:?}");
        drop(c);
        p.join().unwrap();
    }

    #[test]
    fn a_full_queue_pushes_back_and_a_lost_connection_reconnects() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        // Nobody listens: the queue fills and says so.
        let a = SyncLink::start(Endpoint::Dial(addr), psk(5), 3, HA_SYNC).unwrap();
        for _ in 0..3 {
            a.try_send(Zeroizing::new(vec![1])).unwrap();
        }
        assert_eq!(
            a.try_send(Zeroizing::new(vec![4])),
            Err(Full(Zeroizing::new(vec![4])))
        );
        // The peer appears: the link comes up and the queued messages go.
        let b = SyncLink::start(
            Endpoint::Listen(TcpListener::bind(addr).unwrap()),
            psk(5),
            3,
            HA_SYNC,
        )
        .unwrap();
        wait_up(&a);
        wait_up(&b);
        let mut got = 0;
        while got < 3 {
            match b.events().recv_timeout(Duration::from_secs(5)) {
                Ok(LinkEvent::Message(..)) => got += 1,
                other => panic!("{other:?}"),
            }
        }
        // The peer goes and comes back: Down, then Up again, and messages flow.
        drop(b);
        match a.events().recv_timeout(Duration::from_secs(5)) {
            Ok(LinkEvent::Down { why, unsent }) => assert!(!why.is_empty() && unsent == 0),
            other => panic!("{other:?}"),
        }
        let b = SyncLink::start(
            Endpoint::Listen(TcpListener::bind(addr).unwrap()),
            psk(5),
            3,
            HA_SYNC,
        )
        .unwrap();
        wait_up(&a);
        wait_up(&b);
        send_blocking(&a, b"again".to_vec());
        match b.events().recv_timeout(Duration::from_secs(5)) {
            Ok(LinkEvent::Message(m, _)) => assert_eq!(&m[..], b"again"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hub_serves_several_peers_apart_and_refuses_another_protocol() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hub = Hub::start(l, psk(9), 8, CLUSTER).unwrap();
        let a = SyncLink::start(Endpoint::Dial(addr), psk(9), 8, CLUSTER).unwrap();
        let b = SyncLink::start(Endpoint::Dial(addr), psk(9), 8, CLUSTER).unwrap();
        wait_up(&a);
        wait_up(&b);
        send_blocking(&a, b"from a".to_vec());
        send_blocking(&b, b"from b".to_vec());
        let mut conns = std::collections::BTreeMap::new();
        while conns.len() < 2 {
            let e = hub.events().recv_timeout(Duration::from_secs(5)).unwrap();
            if let LinkEvent::Message(m, _) = e.event {
                conns.insert(m.to_vec(), e.conn);
            }
        }
        // Answers go to the peer they are meant for.
        let ca = conns[&b"from a".to_vec()];
        hub.try_send(ca, Zeroizing::new(b"to a".to_vec())).unwrap();
        match a.events().recv_timeout(Duration::from_secs(5)) {
            Ok(LinkEvent::Message(m, _)) => assert_eq!(&m[..], b"to a"),
            other => panic!("{other:?}"),
        }
        assert!(b.events().recv_timeout(Duration::from_millis(200)).is_err());
        // An HA peer with the same key fails the handshake: another prologue.
        let c = SyncLink::start(Endpoint::Dial(addr), psk(9), 8, HA_SYNC).unwrap();
        assert!(c.events().recv_timeout(Duration::from_millis(800)).is_err());
    }
}
