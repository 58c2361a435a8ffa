//! Optimistic offers: with `allocator::Config::optimistic` above 0, each
//! allocation's resources are also offered to the next frameworks in DRF
//! order, in one *group* of offers. Exactly one offer of a group is charged
//! in the allocator at any time (first the DRF winner's). The first ACCEPT
//! that names an offer of the group wins: its offer takes the charge over
//! and the others are rescinded. A launch on a rescinded offer of a group
//! gets TASK_DROPPED, saying another framework took it first. An offer that
//! leaves its group otherwise (declined, expired, rescinded) hands the
//! charge to the next one.

use agora_proto::mesos::{FrameworkId, OfferId};

use super::{Master, Now, OfferRecord};

/// Lost offers remembered, to tell a late launch why it was dropped.
pub const MAX_LOST_OFFERS: usize = 4096;

impl Master {
    /// `o` was removed from the offers: it leaves its group too. If it held
    /// the charge and others remain, the first of them takes it over.
    pub(super) fn leave_group(&mut self, o: &OfferRecord) {
        let Some(g) = o.group else { return };
        let Some(members) = self.offer_groups.get_mut(&g) else { return };
        members.retain(|id| id != &o.id);
        if members.is_empty() {
            self.offer_groups.remove(&g);
            return;
        }
        if o.charged {
            let next = members[0].clone();
            if let Some(n) = self.offers.get_mut(&next) {
                n.charged = true;
                self.allocator.add_used(&n.framework_id, &n.agent_id, &n.resources);
            }
        }
    }

    /// An ACCEPT of framework `fid` names `ids`, all valid: each in a group
    /// takes the group's charge (if it did not hold it), and the group's
    /// other offers are rescinded and remembered as lost.
    pub(super) fn claim_offers(&mut self, fid: &FrameworkId, ids: &[OfferId], now: Now) {
        for id in ids {
            let Some(o) = self.offers.get_mut(id) else { continue };
            let Some(g) = o.group.take() else { continue };
            let was_charged = o.charged;
            o.charged = true;
            let (framework, agent, resources) = (o.framework_id.clone(), o.agent_id.clone(), o.resources.clone());
            let members = self.offer_groups.remove(&g).unwrap_or_default();
            for m in members.iter().filter(|m| *m != id) {
                // Out of the group first: no charge is handed over.
                if let Some(rec) = self.offers.get_mut(m) {
                    rec.group = None;
                }
                self.rescind_offer(m, now);
                self.note_lost(m, fid);
            }
            // The winner is charged once the previous holder gave it back.
            if !was_charged {
                self.allocator.add_used(&framework, &agent, &resources);
            }
        }
    }

    fn note_lost(&mut self, id: &OfferId, winner: &FrameworkId) {
        if self.lost_offers.insert(id.clone(), winner.clone()).is_none() {
            self.lost_order.push_back(id.clone());
        }
        while self.lost_order.len() > MAX_LOST_OFFERS {
            if let Some(old) = self.lost_order.pop_front() {
                self.lost_offers.remove(&old);
            }
        }
    }

    /// Why a launch on `id`, no longer an offer, is dropped, if it lost a
    /// race for it.
    pub(super) fn lost_race(&self, id: &OfferId) -> Option<String> {
        self.lost_offers.get(id).map(|winner| {
            format!(
                "Offer {id} was taken by framework {winner} first: with optimistic offers the first ACCEPT of \
                 the same resources wins"
            )
        })
    }
}
