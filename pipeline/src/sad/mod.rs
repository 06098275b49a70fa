//! The SA database of one worker: inbound SAs found by SPI alone (M1), outbound SAs by the
//! control plane's id.
//!
//! Inbound lookup never looks at the outer destination (or source) address: that is what lets
//! an SA survive an address change and lets several gateways share one SA. Records live in
//! slabs so lookups are one probe plus one index; a removed record is handed back to the
//! caller, who frees it (and zeroizes its keys) only once every worker has let go.

pub mod spi_table;

use crate::esp::sa::{InboundSa, OutboundSa};
use crate::ids::{SaId, Spi};
use spi_table::SpiTable;

const NO_SLOT: u32 = u32::MAX;

pub struct Sad {
    spis: SpiTable,
    inbound: Vec<Option<InboundSa>>,
    free_in: Vec<u32>,
    /// SaId -> slot in `outbound`.
    out_index: Vec<u32>,
    outbound: Vec<Option<OutboundSa>>,
    free_out: Vec<u32>,
}

impl Sad {
    pub fn with_capacity(sas: usize, seed: u64) -> Self {
        Sad {
            spis: SpiTable::with_capacity(sas, seed),
            inbound: Vec::with_capacity(sas),
            free_in: Vec::new(),
            out_index: Vec::new(),
            outbound: Vec::with_capacity(sas),
            free_out: Vec::new(),
        }
    }

    pub fn inbound_len(&self) -> usize {
        self.spis.len()
    }

    pub fn outbound_len(&self) -> usize {
        self.outbound.len() - self.free_out.len()
    }

    /// The inbound SA of `spi`, whatever address the packet came from or went to.
    #[inline]
    pub fn inbound_mut(&mut self, spi: Spi) -> Option<&mut InboundSa> {
        let slot = self.spis.get(spi)?;
        self.inbound.get_mut(slot as usize)?.as_mut()
    }

    /// Staged lookups for a burst (see `worker::warm`): prefetch the SPI's table slot, then
    /// find its record's slot and prefetch the record, then read the record.
    #[inline]
    pub fn prefetch_spi(&self, spi: Spi) {
        self.spis.prefetch(spi);
    }

    /// The slab slot of `spi`'s inbound record.
    #[inline]
    pub fn inbound_slot(&self, spi: Spi) -> Option<u32> {
        self.spis.get(spi)
    }

    /// Prefetches the per-packet part of the inbound record in `slot`.
    #[inline]
    pub fn prefetch_inbound_at(&self, slot: u32) {
        if let Some(r) = self.inbound.get(slot as usize) {
            crate::prefetch::range(r, 0, InboundSa::HOT_BYTES);
        }
    }

    #[inline]
    pub fn inbound_at(&self, slot: u32) -> Option<&InboundSa> {
        self.inbound.get(slot as usize)?.as_ref()
    }

    /// The slab slot of outbound SA `id`'s record.
    #[inline]
    pub fn outbound_slot(&self, id: SaId) -> Option<u32> {
        self.out_index.get(id.0 as usize).copied()
    }

    /// Prefetches the index entry [`Sad::outbound_slot`] reads for `id`.
    #[inline]
    pub fn prefetch_outbound_slot(&self, id: SaId) {
        if let Some(e) = self.out_index.get(id.0 as usize) {
            crate::prefetch::line(e);
        }
    }

    /// Prefetches the per-packet part of the outbound record in `slot`.
    #[inline]
    pub fn prefetch_outbound_at(&self, slot: u32) {
        if let Some(r) = self.outbound.get(slot as usize) {
            crate::prefetch::range(r, 0, OutboundSa::HOT_BYTES);
        }
    }

    #[inline]
    pub fn outbound_at(&self, slot: u32) -> Option<&OutboundSa> {
        self.outbound.get(slot as usize)?.as_ref()
    }

    pub fn inbound(&self, spi: Spi) -> Option<&InboundSa> {
        let slot = self.spis.get(spi)?;
        self.inbound.get(slot as usize)?.as_ref()
    }

    /// Installs an inbound SA; returns the record it replaced (same SPI).
    pub fn insert_inbound(&mut self, sa: InboundSa) -> Option<InboundSa> {
        if let Some(slot) = self.spis.get(sa.spi) {
            return self
                .inbound
                .get_mut(slot as usize)
                .and_then(|s| s.replace(sa));
        }
        let spi = sa.spi;
        let slot = match self.free_in.pop() {
            Some(slot) => {
                if let Some(s) = self.inbound.get_mut(slot as usize) {
                    *s = Some(sa);
                }
                slot
            }
            None => {
                self.inbound.push(Some(sa));
                (self.inbound.len() - 1) as u32
            }
        };
        // SPI 0 is refused when the record is built, so this cannot fail.
        let _ = self.spis.insert(spi, slot);
        None
    }

    pub fn remove_inbound(&mut self, spi: Spi) -> Option<InboundSa> {
        let slot = self.spis.remove(spi)?;
        let sa = self.inbound.get_mut(slot as usize)?.take();
        self.free_in.push(slot);
        sa
    }

    #[inline]
    pub fn outbound_mut(&mut self, id: SaId) -> Option<&mut OutboundSa> {
        let slot = *self.out_index.get(id.0 as usize)?;
        self.outbound.get_mut(slot as usize)?.as_mut()
    }

    pub fn outbound(&self, id: SaId) -> Option<&OutboundSa> {
        let slot = *self.out_index.get(id.0 as usize)?;
        self.outbound.get(slot as usize)?.as_ref()
    }

    /// Installs an outbound SA under its id; returns the record it replaced.
    pub fn insert_outbound(&mut self, sa: OutboundSa) -> Option<OutboundSa> {
        let idx = sa.id.0 as usize;
        if idx >= self.out_index.len() {
            self.out_index.resize(idx + 1, NO_SLOT);
        }
        let existing = self.out_index.get(idx).copied().unwrap_or(NO_SLOT);
        if existing != NO_SLOT {
            return self
                .outbound
                .get_mut(existing as usize)
                .and_then(|s| s.replace(sa));
        }
        let slot = match self.free_out.pop() {
            Some(slot) => {
                if let Some(s) = self.outbound.get_mut(slot as usize) {
                    *s = Some(sa);
                }
                slot
            }
            None => {
                self.outbound.push(Some(sa));
                (self.outbound.len() - 1) as u32
            }
        };
        if let Some(i) = self.out_index.get_mut(idx) {
            *i = slot;
        }
        None
    }

    pub fn remove_outbound(&mut self, id: SaId) -> Option<OutboundSa> {
        let i = self.out_index.get_mut(id.0 as usize)?;
        let slot = core::mem::replace(i, NO_SLOT);
        if slot == NO_SLOT {
            return None;
        }
        let sa = self.outbound.get_mut(slot as usize)?.take();
        self.free_out.push(slot);
        sa
    }

    pub fn inbound_iter(&self) -> impl Iterator<Item = &InboundSa> {
        self.inbound.iter().flatten()
    }

    pub fn inbound_iter_mut(&mut self) -> impl Iterator<Item = &mut InboundSa> {
        self.inbound.iter_mut().flatten()
    }

    pub fn outbound_iter(&self) -> impl Iterator<Item = &OutboundSa> {
        self.outbound.iter().flatten()
    }
}
