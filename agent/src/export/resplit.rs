//! Re-splitting a lane: its batches routed again over the current table and
//! moved (or split and pushed) to the lanes of the gateways that are up. Used
//! for a gateway that left the set, one that failed over, and the `default`
//! lane of batches queued before any gateway was known.

use crate::queue::{Lane, NewBatch, Queue, QueueError};
use crate::route::split::{self, Split};
use crate::route::Routes;
use crate::telemetry::{self, Metrics};

/// Routes every batch of `lane` again over the current table and moves or
/// pushes it there, deleting it from `lane`. Stops at a batch that would stay
/// in `lane` (its gateway is the only one up). Returns the batches moved.
///
/// # Errors
///
/// The queue's; what was moved stays moved.
pub(crate) fn resplit(
    queue: &Queue,
    routes: &Routes,
    metrics: &Metrics,
    lane: &Lane,
    reason: &str,
) -> Result<u64, QueueError> {
    let table = routes.current();
    let signal = lane.signal();
    let mut moved = 0u64;
    let labels = [("endpoint", lane.destination()), ("reason", reason)];
    loop {
        let peeked = queue.peek(lane, 64)?;
        telemetry::count_drops(metrics, &peeked.dropped);
        if peeked.batches.is_empty() {
            break;
        }
        for batch in peeked.batches {
            let dest_of = |g: usize| table.members.get(g).map(|m| m.destination.as_str());
            match split::split(&table, signal, &batch.payload) {
                Split::Whole(g) => {
                    let Some(dest) = dest_of(g) else {
                        return Ok(moved);
                    };
                    if dest == lane.destination() {
                        return Ok(moved);
                    }
                    queue.move_batch(batch.id, dest)?;
                }
                Split::Parts(parts) => {
                    if parts
                        .iter()
                        .any(|p| dest_of(p.gateway) == Some(lane.destination()))
                    {
                        return Ok(moved);
                    }
                    for p in &parts {
                        let Some(dest) = dest_of(p.gateway) else {
                            continue;
                        };
                        let pushed = queue.push(
                            &Lane::new(signal, dest),
                            NewBatch {
                                payload: &p.encoded.payload,
                                items: p.items as u64,
                                created: batch.created,
                                checkpoint: None,
                            },
                        )?;
                        telemetry::count_drops(metrics, &pushed.dropped);
                    }
                    queue.ack(batch.id)?;
                }
            }
            moved += 1;
            metrics.inc("tern_export_rerouted_batches_total", &labels);
            metrics.add(
                "tern_export_rerouted_points_total",
                &labels,
                batch.items as f64,
            );
        }
    }
    if moved > 0 {
        log::info!(
            "Queued batches re-routed lane={lane} reason={reason} batches={moved} gateways={}",
            table.up()
        );
    }
    Ok(moved)
}
