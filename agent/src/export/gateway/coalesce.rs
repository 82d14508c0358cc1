//! Coalesced backlog: when a lane holds several batches, one request
//! carries as many as fit in `export.max_request_size` (after compression).
//! OTLP requests concatenate at the protobuf level (their one field is
//! repeated) and gzip members, like zstd frames, concatenate into one
//! stream, so the stored
//! batches are joined as they are, never decoded or compressed again. A 2xx
//! acknowledges them all; a 413 halves the number of batches a request may
//! carry (for this gateway, from then on); any other refusal sends the
//! batches of that request one by one, so that only the one at fault is
//! dropped.

use super::{Delivery, Gateway, Settle, Step, Stop};
use crate::export::error::{ExportError, Fault};
use crate::otlp::Codec;
use crate::queue::{Batch, Lane};

/// The most batches one request carries, before any 413.
pub(super) const MAX_BATCHES: usize = 1024;

/// Batches read from the queue at a time while gathering.
const READ_AHEAD: usize = 16;

impl Gateway {
    /// `head` and the batches after it in `lane` that join it in one
    /// request: while their payloads together stay within
    /// `max_request_size` and their count within the current limit. Only
    /// `head` when coalescing is off (no gzip on the wire), while the
    /// batches of a refused request go one by one, or when nothing follows.
    pub(super) fn gather(&self, lane: &Lane, head: Batch) -> Vec<Batch> {
        let limit = self.coalesce_limit.get();
        if let Some(until) = self.single_until.get() {
            if head.id <= until {
                return vec![head];
            }
            self.single_until.set(None);
        }
        let mut size = head.payload.len();
        // Only batches of one codec join: gzip members and zstd frames each
        // concatenate, not with each other (a change of codec leaves both).
        let codec = Codec::of(&head.payload);
        let mut group = vec![head];
        if !self.coalesce || limit < 2 {
            return group;
        }
        'read: while group.len() < limit {
            let after = group.last().map(|b| b.id);
            let want = READ_AHEAD.min(limit - group.len());
            // On an error the head still goes; the error shows on the next read.
            let Ok(peeked) = self.queue.peek_after(lane, after, want) else {
                break;
            };
            self.count_drops(&peeked.dropped);
            let got = peeked.batches.len();
            for batch in peeked.batches {
                if size + batch.payload.len() > self.max_request_size
                    || Codec::of(&batch.payload) != codec
                {
                    break 'read;
                }
                size += batch.payload.len();
                group.push(batch);
            }
            if got < want {
                break;
            }
        }
        group
    }

    /// Sends `group` (more than one batch; `d` is the head's delivery) as
    /// one request. `None` when its batches must go one by one instead: the
    /// caller then delivers the head alone.
    pub(super) fn deliver_group(
        &self,
        lane: &Lane,
        group: &[Batch],
        d: &mut Delivery,
        stop: &Stop,
    ) -> Option<Step> {
        let endpoint = self.sender.endpoint();
        let signal = lane.signal();
        let labels = [("endpoint", endpoint), ("signal", signal.as_str())];
        let mut body = Vec::with_capacity(group.iter().map(|b| b.payload.len()).sum());
        for batch in group {
            body.extend_from_slice(&batch.payload);
        }
        let items: u64 = group.iter().map(|b| b.items).sum();
        let Some(result) = self.send_counted(signal, &body, items, stop) else {
            return Some(Step::Stopped);
        };
        let error = match result {
            Ok(()) => {
                self.metrics.add(
                    "tern_export_coalesced_batches_total",
                    &labels,
                    group.len() as f64,
                );
                log::debug!(
                    "Batches sent in one request endpoint={endpoint} signal={signal} batches={} points={items} bytes={}",
                    group.len(),
                    body.len()
                );
                return Some(self.acknowledge(lane, group, d));
            }
            Err(e) => e,
        };
        self.count_failed(lane, &error, body.len());
        match (error.fault(), &error) {
            (Fault::Retryable, _) => Some(match self.retry_later(lane, &group[0], d, &error) {
                Some(step) => step,
                // max_elapsed_time passed: the head is dropped, the rest go on.
                None => self.deliver(lane, &group[0], d, stop),
            }),
            (_, ExportError::TooLarge { .. }) if group.len() >= 4 => {
                let halved = group.len() / 2;
                self.coalesce_limit.set(halved);
                log::info!(
                    "Gateway took {} batches in one request ({} bytes) as too large: at most {halved} a request from now on endpoint={endpoint}",
                    group.len(),
                    body.len()
                );
                Some(Step::Again)
            }
            // Which batch was at fault is not known: one by one, the single
            // path drops only that one (and splits a 413 down to items).
            _ => {
                log::debug!(
                    "Request of {} batches refused, sending them one by one endpoint={endpoint} signal={signal} error={error}",
                    group.len()
                );
                self.single_until.set(group.last().map(|b| b.id));
                None
            }
        }
    }

    /// Every batch of a delivered group leaves the queue, in order, counted
    /// as sent once. A delete that fails is retried without sending again:
    /// that batch and those after it are remembered as delivered, and each
    /// only has its ack retried when it is the head (the first through `d`,
    /// its delivery, which the caller keeps).
    fn acknowledge(&self, lane: &Lane, group: &[Batch], d: &mut Delivery) -> Step {
        let endpoint = self.sender.endpoint();
        let labels = [("endpoint", endpoint), ("signal", lane.signal().as_str())];
        self.metrics.add(
            "tern_export_sent_batches_total",
            &labels,
            group.len() as f64,
        );
        d.delivered = true;
        d.settle = Some(Settle::Ack);
        for (i, batch) in group.iter().enumerate() {
            let step = if i == 0 {
                self.settle(lane, batch, d, Settle::Ack)
            } else {
                let mut later = self.delivery(batch.id);
                later.delivered = true;
                self.settle(lane, batch, &mut later, Settle::Ack)
            };
            if let Step::Unsettled(delay) = step {
                // The head's own delivery remembers it; the rest wait here.
                let from = if i == 0 { 1 } else { i };
                let mut pending = self.pending_acks.borrow_mut();
                // Ids of batches deleted meanwhile (size policy, re-routing)
                // would stay: bounded, at the cost of sending those again.
                if pending.len() > 3 * MAX_BATCHES {
                    pending.clear();
                }
                pending.extend(group[from..].iter().map(|b| b.id));
                return Step::Unsettled(delay);
            }
        }
        Step::Done
    }
}
