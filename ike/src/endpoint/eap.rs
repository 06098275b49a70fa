//! The endpoint's side of an EAP backend with a server behind it (RADIUS): its datagrams and
//! deadlines pass through the endpoint, so a driver needs one socket and no more state; the
//! backend's results resume the IKE SAs whose IKE_AUTH request waits for them.
//!
//! Owns: feeding the backend's results to the right IKE SA.
//! Must never: answer an IKE SA that went meanwhile (its result is dropped).

use super::Endpoint;
use crate::exchange::eap_auth;
use crate::time::Instant;

impl Endpoint {
    /// EAP for the connections `eap` names (and its clients); replaces any before.
    pub fn set_eap(&mut self, eap: crate::eap::EapService) {
        self.services.eap = Some(eap);
    }

    /// A datagram for the EAP backend's server (RADIUS), to send from the driver's socket.
    pub fn poll_eap_transmit(&mut self) -> Option<Vec<u8>> {
        self.services.eap.as_mut()?.server.as_mut()?.poll_transmit()
    }

    /// The EAP backend's counters (RADIUS requests, retransmits, answers dropped, ...).
    pub fn eap_counters(&self) -> Vec<(&'static str, u64)> {
        self.services
            .eap
            .as_ref()
            .and_then(|e| e.server.as_ref())
            .map(|s| s.counters())
            .unwrap_or_default()
    }

    /// A datagram from the EAP backend's server.
    pub fn handle_eap_datagram(&mut self, now: Instant, data: &[u8]) {
        if let Some(s) = self.services.eap.as_mut().and_then(|e| e.server.as_mut()) {
            s.handle_datagram(now, data);
        }
        self.eap_results(now);
    }

    /// The backend's deadline (a RADIUS retransmission or timeout), also in `poll_timeout`.
    pub(super) fn eap_timeout(&self) -> Option<Instant> {
        self.services.eap.as_ref()?.server.as_ref()?.poll_timeout()
    }

    pub(super) fn eap_handle_timeout(&mut self, now: Instant) {
        if self.eap_timeout().is_some_and(|t| t <= now) {
            if let Some(s) = self.services.eap.as_mut().and_then(|e| e.server.as_mut()) {
                s.handle_timeout(now);
            }
        }
        self.eap_results(now);
    }

    /// Each result resumes its IKE SA's waiting request.
    fn eap_results(&mut self, now: Instant) {
        while let Some((ike, step)) = self
            .services
            .eap
            .as_mut()
            .and_then(|e| e.server.as_mut())
            .and_then(|s| s.poll_result())
        {
            self.run(ike, now, |sa, ctx| eap_auth::resume(sa, ctx, step));
        }
        self.apply_effects(now);
    }
}
