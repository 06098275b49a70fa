//! IKE SAs that move between nodes (an HA pair): their records taken from the endpoint, and
//! records adopted with their CHILD_SAs installed under the SA ids the other node used.
//!
//! Owns: the translation between the endpoint's export/adopt and the repository's CHILD_SAs.
//! Must never: send anything on an adopted IKE SA (adoption is silent; the peer notices
//! nothing but the same SAs going on), or allocate fresh SA ids for adopted CHILD_SAs.

use ike::ExportError;
use ike::{ChildSaInfo, IkeSaId, IkeSaRecord, Instant};
use proto::SaId;

use super::ControlCore;

/// Why a record could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptFailure {
    #[error("the record: {0}")]
    Record(#[from] ike::RecordError),
    #[error("the endpoint: {0}")]
    Endpoint(#[from] ike::AdoptError),
    #[error("CHILD_SA {0}: no replicated SA ids for it")]
    NoIds(String),
    #[error("{0}")]
    Repo(#[from] crate::repo::RepoError),
}

impl ControlCore {
    /// The established IKE SAs' ids.
    pub fn ike_ids(&self) -> Vec<IkeSaId> {
        self.endpoint.list().into_iter().map(|s| s.0).collect()
    }

    /// The record of IKE SA `id` at `now` (refused while an exchange of ours is under way).
    pub fn export_ike(&self, now: Instant, id: IkeSaId) -> Result<IkeSaRecord, ExportError> {
        self.endpoint.export(now, id)
    }

    /// Carries on the IKE SA of `bytes` here; its CHILD_SAs become data-plane updates under
    /// the ids `ids_of` gives (inbound, outbound). Nothing is sent to the peer.
    pub fn adopt_ike(
        &mut self,
        now: Instant,
        bytes: &[u8],
        ids_of: impl Fn(&ChildSaInfo) -> Option<(SaId, SaId)>,
    ) -> Result<IkeSaId, AdoptFailure> {
        let record = IkeSaRecord::from_bytes(bytes)?;
        let infos = record.child_infos();
        let ike = self.endpoint.adopt(now, &record)?;
        for info in &infos {
            // A CHILD_SA whose data-plane SAs were not replicated (its record overtook them)
            // stays with the IKE SA, which rekeys or deletes it as usual; it carries no
            // traffic here.
            let Some((in_id, out_id)) = ids_of(info) else {
                self.out
                    .error(format!("ha: {}", AdoptFailure::NoIds(info.name.clone())));
                continue;
            };
            match self.repo.adopt_child(info, in_id, out_id, true) {
                Ok(ups) => ups.into_iter().for_each(|u| self.route(u)),
                Err(e) => self.out.error(format!("ha: {e}")),
            }
        }
        self.view.mark_stale();
        self.pump(now);
        Ok(ike)
    }
}
