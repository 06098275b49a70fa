//! [`ControlChannel`]: the roamgate layout of rings in one region, and typed endpoints that
//! encode and decode records with `proto::codec`.
#![deny(unsafe_code)]

use core::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use super::region::{Region, RingKind, RingSpec};
use super::ring::{Consumer, PopError, Producer, PushError};
use super::ShmError;
use proto::codec::{DecodeError, EncodeError, Record};
use proto::{Ack, Datagram, Event, UpdateEnvelope};

/// Slot size and count of one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSize {
    pub slot_size: u32,
    pub slot_count: u32,
}

/// Ring sizes of a [`ControlChannel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSizes {
    pub update: RingSize,
    pub ack: RingSize,
    pub punt: RingSize,
    /// The cookie lane: punted IKE_SA_INIT requests that echo a cookie.
    pub punt_cookie: RingSize,
    pub transmit: RingSize,
    pub event: RingSize,
}

impl Default for ChannelSizes {
    /// An AddSa (about 100 bytes) takes one 256-byte update slot; a 1 MiB update ring holds
    /// an SPD of some 30k IPv4 or 19k IPv6 rules in one record. An IKE datagram of up to
    /// 2 KiB takes one punt or transmit slot; the cookie lane holds 64 such requests (a
    /// returning initiator's request waits behind at most that many forged echoes).
    fn default() -> Self {
        let size = |slot_size, slot_count| RingSize {
            slot_size,
            slot_count,
        };
        ChannelSizes {
            update: size(256, 4096),
            ack: size(32, 1024),
            punt: size(2048, 512),
            punt_cookie: size(2048, 64),
            transmit: size(2048, 512),
            event: size(64, 4096),
        }
    }
}

/// Why a record was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Back-pressure: keep the record and send it again later.
    #[error("ring full")]
    Full,
    #[error("encoded record of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("ring indices are corrupt")]
    Corrupt,
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Why a record was not received. After `Decode` the bad record is consumed and the ring
/// goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error(transparent)]
    Ring(#[from] PopError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The sending end of a ring of `T` records.
pub struct Sender<T> {
    producer: Producer,
    _t: PhantomData<fn(&T)>,
}

impl<T: Record> Sender<T> {
    /// Encodes `rec` straight into the ring's slots (no intermediate buffer). On
    /// [`SendError::Full`] nothing was sent.
    pub fn try_send(&mut self, rec: &T) -> Result<(), SendError> {
        let len = rec.encoded_len()?;
        self.producer
            .try_push_with(len, |buf| rec.encode(buf).map(drop))
            .map_err(|e| match e {
                PushError::Full => SendError::Full,
                PushError::TooLarge { len, max } => SendError::TooLarge { len, max },
                PushError::Corrupt => SendError::Corrupt,
                PushError::Fill(e) => SendError::Encode(e),
            })
    }

    pub fn max_record_len(&self) -> usize {
        self.producer.max_record_len()
    }
}

/// The receiving end of a ring of `T` records.
pub struct Receiver<T> {
    consumer: Consumer,
    _t: PhantomData<fn() -> T>,
}

impl<T: Record> Receiver<T> {
    /// Decodes the next record in place and releases its slots (zeroized first on update
    /// rings). `Ok(None)`: nothing waiting.
    pub fn try_recv(&mut self) -> Result<Option<T>, RecvError> {
        let Some(bytes) = self.consumer.try_read()? else {
            return Ok(None);
        };
        let rec = T::decode(&bytes);
        drop(bytes);
        Ok(Some(rec?))
    }
}

/// The rings between the control plane and a data plane of `workers` workers, in one
/// region. The control process creates it; the data plane opens it. Each end of each ring is
/// taken once per process, by the side the direction gives it to.
pub struct ControlChannel {
    region: Arc<Region>,
    workers: u16,
}

const PER_WORKER: usize = 2;
/// Rings after the workers' ones: punt, transmit, event, the punt's cookie lane.
const SHARED: usize = 4;

impl ControlChannel {
    /// Creates the region at `path` (which must not exist) with the default ring sizes.
    pub fn create(path: &Path, workers: u16) -> Result<ControlChannel, ShmError> {
        Self::create_with(path, workers, &ChannelSizes::default())
    }

    pub fn create_with(
        path: &Path,
        workers: u16,
        sizes: &ChannelSizes,
    ) -> Result<ControlChannel, ShmError> {
        if workers == 0 {
            return Err(ShmError::Layout("at least one worker"));
        }
        let spec = |kind, index, s: RingSize, zeroize| RingSpec {
            kind,
            index,
            slot_size: s.slot_size,
            slot_count: s.slot_count,
            zeroize,
        };
        let mut rings = Vec::with_capacity(usize::from(workers) * PER_WORKER + SHARED);
        for w in 0..workers {
            rings.push(spec(RingKind::Update, w, sizes.update, true));
            rings.push(spec(RingKind::Ack, w, sizes.ack, false));
        }
        rings.push(spec(RingKind::Punt, 0, sizes.punt, false));
        rings.push(spec(RingKind::Transmit, 0, sizes.transmit, false));
        rings.push(spec(RingKind::Event, 0, sizes.event, false));
        rings.push(spec(RingKind::Punt, 1, sizes.punt_cookie, false));
        Ok(ControlChannel {
            region: Region::create(path, &rings)?,
            workers,
        })
    }

    /// Opens a region the control plane created and checks that it has this layout.
    pub fn open(path: &Path) -> Result<ControlChannel, ShmError> {
        let region = Region::open(path)?;
        let rings = region.rings();
        let workers = rings
            .len()
            .checked_sub(SHARED)
            .filter(|n| n % PER_WORKER == 0 && *n > 0)
            .map(|n| n / PER_WORKER)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or(ShmError::Layout("ring count is not 2 per worker + 4"))?;
        let expected = (0..workers)
            .flat_map(|w| [(RingKind::Update, w, true), (RingKind::Ack, w, false)])
            .chain([
                (RingKind::Punt, 0, false),
                (RingKind::Transmit, 0, false),
                (RingKind::Event, 0, false),
                (RingKind::Punt, 1, false),
            ]);
        for (r, (kind, index, zeroize)) in rings.iter().zip(expected) {
            if (r.kind, r.index, r.zeroize) != (kind, index, zeroize) {
                return Err(ShmError::Layout(
                    "rings are not in the control channel layout",
                ));
            }
        }
        Ok(ControlChannel { region, workers })
    }

    pub fn workers(&self) -> u16 {
        self.workers
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn worker_ring(&self, worker: u16, which: usize) -> Result<usize, ShmError> {
        if worker >= self.workers {
            return Err(ShmError::NoSuchRing(
                usize::from(worker) * PER_WORKER + which,
            ));
        }
        Ok(usize::from(worker) * PER_WORKER + which)
    }

    fn shared_ring(&self, which: usize) -> usize {
        usize::from(self.workers) * PER_WORKER + which
    }

    fn sender<T>(&self, ring: usize) -> Result<Sender<T>, ShmError> {
        Ok(Sender {
            producer: self.region.producer(ring)?,
            _t: PhantomData,
        })
    }

    fn receiver<T>(&self, ring: usize) -> Result<Receiver<T>, ShmError> {
        Ok(Receiver {
            consumer: self.region.consumer(ring)?,
            _t: PhantomData,
        })
    }

    /// Control plane: updates for `worker`.
    pub fn update_sender(&self, worker: u16) -> Result<Sender<UpdateEnvelope>, ShmError> {
        self.sender(self.worker_ring(worker, 0)?)
    }

    /// Data plane: `worker`'s updates.
    pub fn update_receiver(&self, worker: u16) -> Result<Receiver<UpdateEnvelope>, ShmError> {
        self.receiver(self.worker_ring(worker, 0)?)
    }

    /// Data plane: `worker`'s acknowledgements.
    pub fn ack_sender(&self, worker: u16) -> Result<Sender<Ack>, ShmError> {
        self.sender(self.worker_ring(worker, 1)?)
    }

    /// Control plane: acknowledgements from `worker`.
    pub fn ack_receiver(&self, worker: u16) -> Result<Receiver<Ack>, ShmError> {
        self.receiver(self.worker_ring(worker, 1)?)
    }

    /// Data plane: punted IKE datagrams.
    pub fn punt_sender(&self) -> Result<Sender<Datagram>, ShmError> {
        self.sender(self.shared_ring(0))
    }

    /// Control plane: punted IKE datagrams.
    pub fn punt_receiver(&self) -> Result<Receiver<Datagram>, ShmError> {
        self.receiver(self.shared_ring(0))
    }

    /// Data plane: punted IKE_SA_INIT requests that echo a cookie (the cookie lane).
    pub fn punt_cookie_sender(&self) -> Result<Sender<Datagram>, ShmError> {
        self.sender(self.shared_ring(3))
    }

    /// Control plane: punted IKE_SA_INIT requests that echo a cookie (the cookie lane).
    pub fn punt_cookie_receiver(&self) -> Result<Receiver<Datagram>, ShmError> {
        self.receiver(self.shared_ring(3))
    }

    /// Control plane: IKE datagrams to send.
    pub fn transmit_sender(&self) -> Result<Sender<Datagram>, ShmError> {
        self.sender(self.shared_ring(1))
    }

    /// Data plane: IKE datagrams to send.
    pub fn transmit_receiver(&self) -> Result<Receiver<Datagram>, ShmError> {
        self.receiver(self.shared_ring(1))
    }

    /// Data plane: events.
    pub fn event_sender(&self) -> Result<Sender<Event>, ShmError> {
        self.sender(self.shared_ring(2))
    }

    /// Control plane: events.
    pub fn event_receiver(&self) -> Result<Receiver<Event>, ShmError> {
        self.receiver(self.shared_ring(2))
    }
}
