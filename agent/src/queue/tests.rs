//! Unit tests of the queue: order, durability, limits, recovery, concurrency.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::format::{self, index_key, lane_prefix, IndexRecord, SEGMENT_HEADER_LEN};
use super::open::open_db;
use super::store::{DIR_NAME, INDEX_DIR};
use super::*;

/// A directory of its own for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tern-queue-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options for tests: no fsync (a clean close flushes anyway), small limit.
fn opts(max_size: u64) -> Options {
    Options {
        max_size,
        fsync: false,
        ..Options::default()
    }
}

fn open(dir: &TempDir, options: &Options) -> Queue {
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), options)).unwrap();
    assert_eq!(dropped, vec![]);
    queue
}

/// Runs `f` until it stops failing with `Locked`, for a short while.
///
/// sled writes from a pool of background threads that may hold the directory's
/// file (and so its lock) for a moment after the last `Queue` clone is dropped,
/// so a reopen in the same process can briefly see the lock.
fn unlocked<T>(f: impl Fn() -> Result<T, QueueError>) -> Result<T, QueueError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn new_batch(payload: &[u8], items: u64) -> NewBatch<'_> {
    NewBatch {
        payload,
        items,
        created: at(1_700_000_000_000 + items),
        checkpoint: None,
    }
}

fn push(queue: &Queue, lane: &Lane, payload: &[u8]) -> BatchId {
    let pushed = queue.push(lane, new_batch(payload, 1)).unwrap();
    assert_eq!(pushed.dropped, vec![]);
    pushed.id.unwrap()
}

/// Every payload in `lane`, oldest first.
fn payloads(queue: &Queue, lane: &Lane) -> Vec<Vec<u8>> {
    let peeked = queue.peek(lane, usize::MAX).unwrap();
    assert_eq!(peeked.dropped, vec![]);
    peeked.batches.into_iter().map(|b| b.payload).collect()
}

fn lane_backlog(stats: &Stats, lane: &Lane) -> Backlog {
    stats
        .lanes
        .iter()
        .find(|l| &l.lane == lane)
        .map(|l| l.backlog)
        .unwrap_or_default()
}

fn metrics() -> Lane {
    Lane::new(Signal::Metrics, "https://gw1:4318")
}

fn logs() -> Lane {
    Lane::new(Signal::Logs, "https://gw1:4318")
}

#[test]
fn fifo_order_per_lane() {
    let dir = TempDir::new("fifo");
    let queue = open(&dir, &opts(1 << 20));
    for i in 0..20u8 {
        let lane = if i % 3 == 0 { logs() } else { metrics() };
        push(&queue, &lane, &[i]);
    }
    let want_logs: Vec<Vec<u8>> = (0..20u8).filter(|i| i % 3 == 0).map(|i| vec![i]).collect();
    let want_metrics: Vec<Vec<u8>> = (0..20u8).filter(|i| i % 3 != 0).map(|i| vec![i]).collect();
    assert_eq!(payloads(&queue, &logs()), want_logs);
    assert_eq!(payloads(&queue, &metrics()), want_metrics);

    // Peeking does not remove; acking the head exposes the next one.
    let first = queue.peek(&metrics(), 2).unwrap().batches;
    assert_eq!(first.len(), 2);
    assert_eq!(queue.peek(&metrics(), 1).unwrap().batches[0], first[0]);
    assert!(queue.ack(first[0].id).unwrap());
    assert_eq!(queue.peek(&metrics(), 1).unwrap().batches[0], first[1]);

    // peek_after skips what is in flight.
    let after = queue
        .peek_after(&metrics(), Some(first[1].id), 2)
        .unwrap()
        .batches;
    assert_eq!(
        after.iter().map(|b| b.payload.clone()).collect::<Vec<_>>(),
        want_metrics[2..4]
    );
    assert!(after[0].id.seq() > first[1].id.seq());

    // A lane never pushed to is empty, not an error.
    let traces = Lane::new(Signal::Traces, "https://gw1:4318");
    assert_eq!(queue.peek(&traces, 10).unwrap(), Peeked::default());
}

#[test]
fn ack_removes_and_drop_batch_reports() {
    let dir = TempDir::new("ack");
    let queue = open(&dir, &opts(1 << 20));
    let a = push(&queue, &logs(), b"aaaa");
    let b = queue
        .push(&logs(), new_batch(b"bbbbbb", 7))
        .unwrap()
        .id
        .unwrap();
    let c = push(&queue, &logs(), b"cc");

    // Out of order: the middle one first.
    assert!(queue.ack(b).unwrap());
    assert!(!queue.ack(b).unwrap());
    assert_eq!(
        payloads(&queue, &logs()),
        vec![b"aaaa".to_vec(), b"cc".to_vec()]
    );
    assert_eq!(queue.stats().total().bytes, 6);

    let dropped = queue.drop_batch(a, DropReason::Permanent).unwrap().unwrap();
    assert_eq!(
        dropped,
        Dropped {
            id: Some(a),
            lane: Some(logs()),
            items: 1,
            bytes: 4,
            reason: DropReason::Permanent
        }
    );
    assert_eq!(queue.drop_batch(a, DropReason::Expired).unwrap(), None);
    assert!(queue.ack(c).unwrap());
    assert_eq!(queue.stats().total(), Backlog::default());
    assert_eq!(payloads(&queue, &logs()), Vec::<Vec<u8>>::new());
}

#[test]
fn survives_reopen_and_ids_keep_growing() {
    let dir = TempDir::new("reopen");
    let mut last = 0;
    {
        let queue = open(&dir, &opts(1 << 20));
        for i in 0..5u8 {
            last = push(&queue, &metrics(), &[i; 10]).seq();
        }
        for i in 0..3u8 {
            last = push(&queue, &logs(), &[100 + i; 3]).seq();
        }
        let head = queue.peek(&metrics(), 2).unwrap().batches;
        assert!(queue.ack(head[0].id).unwrap());
        assert!(queue.ack(head[1].id).unwrap());
    }
    let before;
    {
        let queue = open(&dir, &opts(1 << 20));
        assert_eq!(
            payloads(&queue, &metrics()),
            vec![vec![2; 10], vec![3; 10], vec![4; 10]]
        );
        assert_eq!(
            payloads(&queue, &logs()),
            vec![vec![100; 3], vec![101; 3], vec![102; 3]]
        );
        let stats = queue.stats();
        let m = lane_backlog(&stats, &metrics());
        assert_eq!((m.batches, m.bytes, m.items), (3, 30, 3));
        assert_eq!(m.oldest_created, Some(at(1_700_000_000_001)));
        assert_eq!(stats.signal(Signal::Logs).bytes, 9);
        assert_eq!(stats.total().batches, 6);
        let id = push(&queue, &logs(), b"new");
        assert!(id.seq() > last, "{} after {last}", id.seq());
        last = id.seq();

        // Drain everything: the next id must still be larger after a restart.
        for lane in [metrics(), logs()] {
            for batch in queue.peek(&lane, usize::MAX).unwrap().batches {
                assert!(queue.ack(batch.id).unwrap());
            }
        }
        before = queue.stats();
    }
    let queue = open(&dir, &opts(1 << 20));
    assert_eq!(queue.stats().total(), Backlog::default());
    assert_eq!(before.total(), Backlog::default());
    assert!(push(&queue, &metrics(), b"x").seq() > last);
}

#[test]
fn checkpoint_is_written_with_its_batch() {
    let dir = TempDir::new("checkpoint");
    let options = Options {
        fsync: true,
        ..opts(100)
    };
    {
        let queue = open(&dir, &options);
        assert_eq!(queue.checkpoint("journald").unwrap(), None);
        let checkpoint = Some(Checkpoint {
            source: "journald",
            value: b"cursor-1",
        });
        let pushed = queue.push(
            &logs(),
            NewBatch {
                checkpoint,
                ..new_batch(b"entries", 2)
            },
        );
        assert!(pushed.unwrap().id.is_some());

        // Refused under Reject: neither the batch nor its checkpoint.
        let checkpoint = Some(Checkpoint {
            source: "journald",
            value: b"cursor-2",
        });
        let big = [0u8; 200];
        let err = queue
            .push_with_policy(
                &logs(),
                NewBatch {
                    checkpoint,
                    ..new_batch(&big, 1)
                },
                FullPolicy::Reject,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::TooLarge {
                    bytes: 200,
                    max_size: 100
                }
            ),
            "{err}"
        );
        assert_eq!(
            queue.checkpoint("journald").unwrap().as_deref(),
            Some(&b"cursor-1"[..])
        );
    }
    let queue = open(&dir, &options);
    assert_eq!(
        queue.checkpoint("journald").unwrap().as_deref(),
        Some(&b"cursor-1"[..])
    );
    assert_eq!(payloads(&queue, &logs()), vec![b"entries".to_vec()]);
    queue.set_checkpoint("journald", b"cursor-3").unwrap();
    assert_eq!(
        queue.checkpoint("journald").unwrap().as_deref(),
        Some(&b"cursor-3"[..])
    );
    assert_eq!(queue.checkpoint("other").unwrap(), None);
}

fn with_checkpoint<'a>(payload: &'a [u8], value: &'a [u8]) -> NewBatch<'a> {
    let checkpoint = Some(Checkpoint {
        source: "journald",
        value,
    });
    NewBatch {
        checkpoint,
        ..new_batch(payload, 1)
    }
}

fn journald(queue: &Queue) -> Option<Vec<u8>> {
    queue.checkpoint("journald").unwrap()
}

#[test]
fn checkpoint_outlives_its_batch() {
    let dir = TempDir::new("checkpoint-life");
    let options = opts(1000);
    {
        let queue = open(&dir, &options);
        let b1 = queue
            .push(&logs(), with_checkpoint(b"one", b"c1"))
            .unwrap()
            .id
            .unwrap();
        let b2 = queue
            .push(&logs(), with_checkpoint(b"two", b"c2"))
            .unwrap()
            .id
            .unwrap();
        assert!(queue.ack(b1).unwrap());
        assert_eq!(journald(&queue).as_deref(), Some(&b"c2"[..]));
        // Acking the batch that carries the newest checkpoint keeps it.
        assert!(queue.ack(b2).unwrap());
        assert_eq!(journald(&queue).as_deref(), Some(&b"c2"[..]));
    }
    {
        let queue = open(&dir, &options);
        assert_eq!(journald(&queue).as_deref(), Some(&b"c2"[..]));
        queue.set_checkpoint("journald", b"c3").unwrap();
    }
    {
        let queue = open(&dir, &options);
        assert_eq!(journald(&queue).as_deref(), Some(&b"c3"[..]));
        let b4 = queue
            .push(&logs(), with_checkpoint(b"four", b"c4"))
            .unwrap()
            .id
            .unwrap();
        assert_eq!(journald(&queue).as_deref(), Some(&b"c4"[..]));
        // Evicted under DropOldest: the checkpoint stays too.
        let pushed = queue.push(&metrics(), new_batch(&[0; 1000], 1)).unwrap();
        assert_eq!(pushed.dropped.len(), 1);
        assert_eq!(pushed.dropped[0].id, Some(b4));
        assert_eq!(journald(&queue).as_deref(), Some(&b"c4"[..]));
    }
    let queue = open(&dir, &options);
    assert_eq!(journald(&queue).as_deref(), Some(&b"c4"[..]));
    assert_eq!(payloads(&queue, &metrics()), vec![vec![0; 1000]]);
    let long = "s".repeat(70_000);
    let err = queue.set_checkpoint(&long, b"x").unwrap_err();
    assert!(
        matches!(err, QueueError::InvalidCheckpoint { len: 70_000 }),
        "{err}"
    );
}

#[test]
fn drop_oldest_drops_the_globally_oldest() {
    let dir = TempDir::new("drop-oldest");
    let queue = open(&dir, &opts(1000));
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let lane = if i % 2 == 0 { metrics() } else { logs() };
        ids.push(
            queue
                .push(&lane, new_batch(&[i; 100], u64::from(i)))
                .unwrap()
                .id
                .unwrap(),
        );
    }
    assert_eq!(queue.stats().total().bytes, 1000);

    // 250 bytes need three 100-byte batches gone: the three oldest, across lanes.
    let pushed = queue.push(&logs(), new_batch(&[99; 250], 50)).unwrap();
    let new_id = pushed.id.unwrap();
    let want: Vec<Dropped> = (0..3u8)
        .map(|i| Dropped {
            id: Some(ids[usize::from(i)]),
            lane: Some(if i % 2 == 0 { metrics() } else { logs() }),
            items: u64::from(i),
            bytes: 100,
            reason: DropReason::QueueFull,
        })
        .collect();
    assert_eq!(pushed.dropped, want);
    let stats = queue.stats();
    assert_eq!(stats.total().bytes, 950);
    assert_eq!(lane_backlog(&stats, &metrics()).batches, 3);
    assert_eq!(
        lane_backlog(&stats, &metrics()).oldest_created,
        Some(at(1_700_000_000_004))
    );
    assert_eq!(lane_backlog(&stats, &logs()).batches, 5);
    let metrics_left: Vec<u8> = payloads(&queue, &metrics()).iter().map(|p| p[0]).collect();
    assert_eq!(metrics_left, vec![4, 6, 8]);
    let logs_left: Vec<u8> = payloads(&queue, &logs()).iter().map(|p| p[0]).collect();
    assert_eq!(logs_left, vec![3, 5, 7, 9, 99]);
    assert!(!queue.ack(ids[0]).unwrap(), "a dropped batch is gone");

    // A batch larger than the whole queue is refused alone.
    let pushed = queue.push(&metrics(), new_batch(&[0; 1001], 3)).unwrap();
    assert_eq!(pushed.id, None);
    assert_eq!(
        pushed.dropped,
        vec![Dropped {
            id: None,
            lane: Some(metrics()),
            items: 3,
            bytes: 1001,
            reason: DropReason::QueueFull
        }]
    );
    assert_eq!(queue.stats().total().bytes, 950);

    // Evicting a whole lane leaves it empty, and then holding the new batch.
    let pushed = queue.push(&metrics(), new_batch(&[1; 1000], 1)).unwrap();
    assert_eq!(pushed.dropped.len(), 8);
    assert_eq!(pushed.dropped.last().unwrap().id, Some(new_id));
    let stats = queue.stats();
    assert_eq!(lane_backlog(&stats, &logs()), Backlog::default());
    assert_eq!(lane_backlog(&stats, &metrics()).batches, 1);
    assert_eq!(stats.total().bytes, 1000);
    drop(queue);
    let queue = open(&dir, &opts(1000));
    assert_eq!(queue.stats().total().bytes, 1000);
    assert_eq!(payloads(&queue, &metrics()), vec![vec![1; 1000]]);
}

#[test]
fn drop_newest_and_reject_keep_the_queue() {
    let dir = TempDir::new("drop-newest");
    let options = Options {
        full_policy: FullPolicy::DropNewest,
        ..opts(300)
    };
    let queue = open(&dir, &options);
    for i in 0..3u8 {
        push(&queue, &metrics(), &[i; 100]);
    }
    let checkpoint = Some(Checkpoint {
        source: "scrape",
        value: b"7",
    });
    let pushed = queue
        .push(
            &logs(),
            NewBatch {
                checkpoint,
                ..new_batch(&[9; 10], 4)
            },
        )
        .unwrap();
    assert_eq!(
        pushed,
        Pushed {
            id: None,
            dropped: vec![Dropped {
                id: None,
                lane: Some(logs()),
                items: 4,
                bytes: 10,
                reason: DropReason::QueueFull
            }]
        }
    );
    // The source dealt with its data (by policy): its checkpoint moves on.
    assert_eq!(
        queue.checkpoint("scrape").unwrap().as_deref(),
        Some(&b"7"[..])
    );
    assert_eq!(queue.stats().total().bytes, 300);

    let err = queue
        .push_with_policy(&logs(), new_batch(&[9; 10], 4), FullPolicy::Reject)
        .unwrap_err();
    assert!(
        matches!(err, QueueError::Full { bytes: 10, free: 0 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "queue full: batch of 10 bytes, 0 bytes free"
    );
    assert_eq!(payloads(&queue, &metrics()).len(), 3);
    assert_eq!(payloads(&queue, &logs()).len(), 0);
}

#[test]
fn over_long_destination_is_refused() {
    let dir = TempDir::new("lane");
    let queue = open(&dir, &opts(1000));
    let lane = Lane::new(Signal::Logs, &"x".repeat(Lane::MAX_DESTINATION_LEN + 1));
    let err = queue.push(&lane, new_batch(b"a", 1)).unwrap_err();
    assert!(
        matches!(err, QueueError::InvalidLane { len: 65536 }),
        "{err}"
    );
}

#[test]
fn reroute_moves_a_lane_in_order() {
    let dir = TempDir::new("reroute");
    let queue = open(&dir, &opts(1 << 20));
    let gw1 = Lane::new(Signal::Traces, "gw1");
    let gw2 = Lane::new(Signal::Traces, "gw2");
    let mut stale = None;
    for i in 0..10u8 {
        let id = push(&queue, if i % 2 == 0 { &gw1 } else { &gw2 }, &[i]);
        stale.get_or_insert(id);
    }
    let moved = queue.reroute(&gw1, "gw2").unwrap();
    assert_eq!((moved.batches, moved.bytes, moved.items), (5, 5, 5));
    let all: Vec<u8> = payloads(&queue, &gw2).iter().map(|p| p[0]).collect();
    assert_eq!(all, (0..10).collect::<Vec<u8>>());
    assert_eq!(payloads(&queue, &gw1).len(), 0);
    let stats = queue.stats();
    assert_eq!(lane_backlog(&stats, &gw1), Backlog::default());
    assert_eq!(lane_backlog(&stats, &gw2).batches, 10);
    assert_eq!(
        lane_backlog(&stats, &gw2).oldest_created,
        Some(at(1_700_000_000_001))
    );
    assert!(
        !queue.ack(stale.unwrap()).unwrap(),
        "ids of moved batches are stale"
    );

    // One batch back, atomically.
    let head = queue.peek(&gw2, 1).unwrap().batches.remove(0);
    let new_id = queue.move_batch(head.id, "gw1").unwrap().unwrap();
    assert_eq!(new_id.seq(), head.id.seq());
    assert_eq!(payloads(&queue, &gw1), vec![vec![0]]);
    assert_eq!(lane_backlog(&queue.stats(), &gw2).batches, 9);
    assert_eq!(queue.move_batch(head.id, "gw1").unwrap(), None);
    drop(queue);
    let queue = open(&dir, &opts(1 << 20));
    assert_eq!(payloads(&queue, &gw1), vec![vec![0]]);
    assert_eq!(payloads(&queue, &gw2).len(), 9);
}

/// Writes straight into the stopped queue's sled, as damage would.
fn tamper(dir: &TempDir, f: impl FnOnce(&sled::Db)) {
    let path = dir.path().join(DIR_NAME);
    let db = unlocked(|| open_db(&path, 1 << 20, None)).unwrap();
    f(&db);
    db.flush().unwrap();
}

#[test]
fn corrupt_records_are_dropped_not_returned() {
    let dir = TempDir::new("corrupt");
    let mut ids = Vec::new();
    {
        let queue = open(&dir, &opts(1 << 20));
        for i in 0..4u8 {
            ids.push(push(&queue, &logs(), &[i; 8]).seq());
        }
        push(&queue, &metrics(), b"in a segment of its own");
    }
    let data = dir.path().join(DIR_NAME).join("data");
    let logs_prefix = lane_prefix(&logs()).unwrap();
    let metrics_prefix = lane_prefix(&metrics()).unwrap();
    tamper(&dir, |db| {
        // Batch 0: a torn index record.
        db.insert(index_key(&logs_prefix, ids[0]), &b"\x01short"[..])
            .unwrap();
        // Batch 2: one payload bit flipped on disk.
        let value = db.get(index_key(&logs_prefix, ids[2])).unwrap().unwrap();
        let record = IndexRecord::decode(&value).unwrap();
        let file = data.join(format::segment_file_name(record.segment));
        let mut bytes = std::fs::read(&file).unwrap();
        let at = usize::try_from(record.offset).unwrap() + SEGMENT_HEADER_LEN;
        bytes[at] ^= 0x10;
        std::fs::write(&file, bytes).unwrap();
        // The metrics batch: its segment file is gone.
        let (_, value) = db.scan_prefix(&metrics_prefix).next().unwrap().unwrap();
        let record = IndexRecord::decode(&value).unwrap();
        std::fs::remove_file(data.join(format::segment_file_name(record.segment))).unwrap();
        // An index key that names no lane at all.
        db.insert(&b"\x02\x09junk-key-1234"[..], &b"x"[..]).unwrap();
    });
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
    assert_eq!(dropped.len(), 3, "{dropped:?}");
    assert!(dropped.iter().all(|d| d.reason == DropReason::Corrupt));
    assert!(dropped.iter().any(|d| d.lane == Some(logs())));
    assert!(dropped.iter().any(|d| d.lane == Some(metrics())));
    assert!(dropped.iter().any(|d| d.lane.is_none()));
    assert_eq!(queue.stats().total().batches, 3);

    let peeked = queue.peek(&logs(), 10).unwrap();
    let got: Vec<u8> = peeked.batches.iter().map(|b| b.payload[0]).collect();
    assert_eq!(got, vec![1, 3]);
    assert_eq!(peeked.dropped.len(), 1);
    assert_eq!(peeked.dropped[0].reason, DropReason::Corrupt);
    assert_eq!(peeked.dropped[0].id.map(BatchId::seq), Some(ids[2]));
    assert_eq!(peeked.dropped[0].bytes, 8);
    let total = queue.stats().total();
    assert_eq!((total.batches, total.bytes), (2, 16));
    drop(queue);

    // Nothing of the damage is left for the next start.
    let queue = open(&dir, &opts(1 << 20));
    assert_eq!(payloads(&queue, &logs()), vec![vec![1; 8], vec![3; 8]]);
    assert_eq!(payloads(&queue, &metrics()), Vec::<Vec<u8>>::new());
}

/// The index entries of `lane`, as (sequence number, value).
fn index_entries(dir: &TempDir, lane: &Lane) -> Vec<(u64, Vec<u8>)> {
    let path = dir.path().join(DIR_NAME);
    let db = unlocked(|| open_db(&path, 1 << 20, None)).unwrap();
    let prefix = lane_prefix(lane).unwrap();
    db.scan_prefix(&prefix)
        .map(|item| {
            let (key, value) = item.unwrap();
            let (_, seq) = format::split_index_key(&key).unwrap();
            (seq, value.to_vec())
        })
        .collect()
}

#[test]
fn lost_index_writes_are_recovered_from_the_segments() {
    let dir = TempDir::new("recover");
    let mut acked = Vec::new();
    // With fsync, large records start on a page boundary: a mix of sizes
    // reads back across packed and aligned records alike.
    let options = Options {
        fsync: true,
        ..opts(1 << 20)
    };
    let size = |i: u8| if i % 2 == 0 { 100 } else { 6000 };
    {
        let queue = open(&dir, &options);
        push(&queue, &metrics(), b"m0");
        push(&queue, &metrics(), b"m1");
        // Acked: must not come back, the newest one included.
        for batch in queue.peek(&metrics(), usize::MAX).unwrap().batches {
            acked.push(batch.id.seq());
            assert!(queue.ack(batch.id).unwrap());
        }
        for i in 0..6u8 {
            let checkpoint = format!("cursor-{i}");
            let payload = vec![i; size(i)];
            let batch = with_checkpoint(&payload, checkpoint.as_bytes());
            assert!(queue.push(&logs(), batch).unwrap().id.is_some());
        }
    }
    assert_eq!(index_entries(&dir, &metrics()), vec![]);
    // A crash that lost the index writes of the last three log batches (the
    // last writes made: sled keeps a prefix of them): sled flushes in the
    // background, the segment is what the push synced.
    let lost: Vec<(u64, Vec<u8>)> = index_entries(&dir, &logs()).split_off(3);
    let records: Vec<IndexRecord> = lost
        .iter()
        .map(|(_, value)| IndexRecord::decode(value).unwrap())
        .collect();
    let large: Vec<&IndexRecord> = records.iter().filter(|r| r.len >= 4096).collect();
    assert!(!large.is_empty() && large.iter().all(|r| r.offset % 4096 == 0));
    tamper(&dir, |db| {
        let prefix = lane_prefix(&logs()).unwrap();
        for (seq, _) in &lost {
            db.remove(index_key(&prefix, *seq)).unwrap();
        }
        // The checkpoint the index had then: batch 2's.
    });
    assert_eq!(Queue::inspect(dir.path()).unwrap().total().batches, 6);
    let queue = open(&dir, &opts(1 << 20));
    let want: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; size(i)]).collect();
    assert_eq!(payloads(&queue, &logs()), want);
    assert_eq!(payloads(&queue, &metrics()), Vec::<Vec<u8>>::new());
    assert_eq!(journald(&queue), Some(b"cursor-5".to_vec()));
    let stats = lane_backlog(&queue.stats(), &logs());
    assert_eq!((stats.batches, stats.bytes), (6, 3 * 6100));
    // Indexed again exactly as they were.
    drop(queue);
    assert_eq!(index_entries(&dir, &logs()).split_off(3), lost);
    let queue = open(&dir, &opts(1 << 20));
    let id = push(&queue, &metrics(), b"m2");
    assert!(acked.iter().all(|&seq| id.seq() > seq));
    assert_eq!(payloads(&queue, &metrics()), vec![b"m2".to_vec()]);
}

#[test]
fn torn_segment_tails_are_not_recovered() {
    let dir = TempDir::new("torn");
    {
        let queue = open(&dir, &opts(1 << 20));
        for i in 0..3u8 {
            push(&queue, &logs(), &[i; 5000]);
        }
    }
    let entries = index_entries(&dir, &logs());
    let last = IndexRecord::decode(&entries[2].1).unwrap();
    let file = dir
        .path()
        .join(DIR_NAME)
        .join("data")
        .join(format::segment_file_name(last.segment));
    let whole = std::fs::read(&file).unwrap();
    let prefix = lane_prefix(&logs()).unwrap();
    // Batch 1 and 2 lost from the index; batch 2's record cut short at every
    // length from its header on: 1 comes back, 2 never does, nothing panics.
    let start = usize::try_from(last.offset).unwrap();
    for cut in (start..whole.len()).step_by(331).chain([whole.len() - 1]) {
        std::fs::write(&file, &whole[..cut]).unwrap();
        // As the index was after batch 0's write, before the recovery that
        // the previous round's open wrote.
        tamper(&dir, |db| {
            for (seq, _) in &entries[1..] {
                db.remove(index_key(&prefix, *seq)).unwrap();
            }
            db.remove(format::NEXT_SEQ_KEY).unwrap();
        });
        let queue = open(&dir, &opts(1 << 20));
        assert_eq!(
            payloads(&queue, &logs()),
            vec![vec![0; 5000], vec![1; 5000]],
            "cut at {cut}"
        );
    }
    // A flipped payload bit in an unindexed record: not recovered either.
    let mut flipped = whole.clone();
    flipped[start + SEGMENT_HEADER_LEN + 10] ^= 1;
    std::fs::write(&file, &flipped).unwrap();
    tamper(&dir, |db| {
        db.remove(index_key(&prefix, entries[2].0)).unwrap();
        db.remove(format::NEXT_SEQ_KEY).unwrap();
    });
    // Its trailer still reads: the loss is counted with its lane and items.
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
    assert_eq!(payloads(&queue, &logs()).len(), 2);
    assert_eq!(
        dropped,
        vec![Dropped {
            id: None,
            lane: Some(logs()),
            items: 1,
            bytes: 5000,
            reason: DropReason::Corrupt,
        }]
    );
}

/// The segment file of a lane's only segment, read whole.
fn only_segment(dir: &TempDir) -> PathBuf {
    let names = segment_files(dir);
    assert_eq!(names.len(), 1, "{names:?}");
    dir.path().join(DIR_NAME).join("data").join(&names[0])
}

#[test]
fn damage_inside_a_segment_loses_only_the_damaged_record() {
    // The index lost whole (as after `rm -r index`), one segment of 40 records.
    let build = |name: &str| {
        let dir = TempDir::new(name);
        {
            let queue = open(&dir, &opts(1 << 20));
            for i in 0..40u8 {
                let pushed = queue.push(&logs(), new_batch(&[i; 700], 10)).unwrap();
                assert!(pushed.id.is_some());
            }
        }
        let entries = index_entries(&dir, &logs());
        let offsets: Vec<u64> = entries
            .iter()
            .map(|(_, v)| IndexRecord::decode(v).unwrap().offset)
            .collect();
        std::fs::remove_dir_all(dir.path().join(DIR_NAME).join(INDEX_DIR)).unwrap();
        (dir, offsets)
    };
    let want_without = |lost: u8| -> Vec<Vec<u8>> {
        (0..40u8)
            .filter(|&i| i != lost)
            .map(|i| vec![i; 700])
            .collect()
    };

    // A flipped payload byte in record 7: its trailer tells what was lost.
    let (dir, offsets) = build("damage-payload");
    let file = only_segment(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[usize::try_from(offsets[7]).unwrap() + SEGMENT_HEADER_LEN + 300] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
    assert_eq!(payloads(&queue, &logs()), want_without(7));
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(
        (dropped[0].lane.clone(), dropped[0].items, dropped[0].bytes),
        (Some(logs()), 10, 700)
    );
    drop(queue);

    // Record 20's header zeroed: nothing tells what it was, but it counts.
    let (dir, offsets) = build("damage-header");
    let file = only_segment(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = usize::try_from(offsets[20]).unwrap();
    bytes[at..at + SEGMENT_HEADER_LEN].fill(0);
    std::fs::write(&file, &bytes).unwrap();
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
    assert_eq!(payloads(&queue, &logs()), want_without(20));
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0].reason, DropReason::Corrupt);
    assert_eq!(dropped[0].bytes, offsets[21] - offsets[20]);
    drop(queue);

    // Every byte of record 3 flipped in turn, one at a time: never a panic,
    // never a damaged payload returned, and the other 39 always come back.
    let (dir, offsets) = build("damage-every-byte");
    let file = only_segment(&dir);
    let pristine = std::fs::read(&file).unwrap();
    let (start, end) = (
        usize::try_from(offsets[3]).unwrap(),
        usize::try_from(offsets[4]).unwrap(),
    );
    let index = dir.path().join(DIR_NAME).join(INDEX_DIR);
    for at in (start..end).step_by(37) {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let _ = std::fs::remove_dir_all(&index);
        let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
        let got = payloads(&queue, &logs());
        assert_eq!(got, want_without(3), "byte {at}");
        assert_eq!(dropped.len(), 1, "byte {at}: {dropped:?}");
        drop(queue);
    }
}

#[test]
fn truncated_or_deleted_segments_count_what_the_index_knew() {
    let dir = TempDir::new("truncated");
    {
        let queue = open(&dir, &opts(1 << 20));
        for i in 0..5u8 {
            assert!(queue
                .push(&logs(), new_batch(&[i; 1000], 25))
                .unwrap()
                .id
                .is_some());
        }
    }
    let file = only_segment(&dir);
    let len = std::fs::metadata(&file).unwrap().len();
    // Cut into the fourth record: the fourth and fifth are gone.
    let entries = index_entries(&dir, &logs());
    let fourth = IndexRecord::decode(&entries[3].1).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(fourth.offset + 100)
        .unwrap();
    assert!(fourth.offset + 100 < len);
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert!(dropped
        .iter()
        .all(|d| d.items == 25 && d.bytes == 1000 && d.lane == Some(logs())));
    assert_eq!(payloads(&queue, &logs()).len(), 3);
    drop(queue);

    // The file deleted: what the index knew of its three batches is counted.
    std::fs::remove_file(&file).unwrap();
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
    assert_eq!(dropped.iter().map(|d| d.items).sum::<u64>(), 75);
    assert_eq!(queue.stats().total().batches, 0);
}

#[test]
fn an_unreadable_segment_is_set_aside_and_the_rest_delivered() {
    let dir = TempDir::new("unreadable");
    {
        let queue = open(&dir, &opts(1 << 20));
        push(&queue, &logs(), b"in the logs segment");
        push(&queue, &metrics(), b"in the metrics segment");
    }
    let entries = index_entries(&dir, &logs());
    let record = IndexRecord::decode(&entries[0].1).unwrap();
    let data = dir.path().join(DIR_NAME).join("data");
    let file = data.join(format::segment_file_name(record.segment));
    // Tests may run as root, which reads a mode-000 file: a directory in the
    // file's place opens but fails every read, as an unreadable file does.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &opts(1 << 20))).unwrap();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(
        (dropped[0].lane.clone(), dropped[0].reason),
        (Some(logs()), DropReason::Corrupt)
    );
    assert_eq!(
        payloads(&queue, &metrics()),
        vec![b"in the metrics segment".to_vec()]
    );
    assert!(data
        .join(format!(
            "{}.unreadable",
            format::segment_file_name(record.segment)
        ))
        .exists());
    // Pushes go on.
    push(&queue, &logs(), b"after");
    assert_eq!(payloads(&queue, &logs()), vec![b"after".to_vec()]);
}

#[test]
fn format_1_queues_are_read_and_upgraded() {
    let dir = TempDir::new("format1");
    {
        let queue = open(&dir, &opts(1 << 20));
        push(&queue, &logs(), b"written by version 1");
    }
    // Make it what version 1 wrote: magic TQP1, no trailer, format key 1.
    let (_, value) = index_entries(&dir, &logs()).remove(0);
    let record = IndexRecord::decode(&value).unwrap();
    let file = dir
        .path()
        .join(DIR_NAME)
        .join("data")
        .join(format::segment_file_name(record.segment));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(usize::try_from(record.end().unwrap()).unwrap());
    bytes[..4].copy_from_slice(b"TQP1");
    std::fs::write(&file, bytes).unwrap();
    tamper(&dir, |db| {
        db.insert(format::FORMAT_KEY, &1u32.to_be_bytes()[..])
            .unwrap();
    });
    let queue = open(&dir, &opts(1 << 20));
    assert_eq!(
        payloads(&queue, &logs()),
        vec![b"written by version 1".to_vec()]
    );
    push(&queue, &logs(), b"written by version 2");
    drop(queue);
    tamper(&dir, |db| {
        let version = db.get(format::FORMAT_KEY).unwrap().unwrap();
        assert_eq!(format::decode_u32(&version), Some(format::FORMAT_VERSION));
    });
    let queue = open(&dir, &opts(1 << 20));
    assert_eq!(payloads(&queue, &logs()).len(), 2);
}

/// The segment files in the queue's data directory.
fn segment_files(dir: &TempDir) -> Vec<String> {
    let data = dir.path().join(DIR_NAME).join("data");
    let mut names: Vec<String> = std::fs::read_dir(data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn drained_segments_are_deleted() {
    let dir = TempDir::new("segments");
    let queue = open(&dir, &opts(1 << 30));
    let payload = vec![7u8; 100 * 1024];
    for _ in 0..30 {
        push(&queue, &logs(), &payload);
    }
    let files = segment_files(&dir);
    assert!(files.len() >= 3, "{files:?}");
    let full = queue.disk_usage().unwrap();
    for batch in queue.peek(&logs(), usize::MAX).unwrap().batches {
        assert!(queue.ack(batch.id).unwrap());
    }
    // Only the segment still being appended to remains.
    assert_eq!(segment_files(&dir).len(), 1, "{:?}", segment_files(&dir));
    assert!(queue.disk_usage().unwrap() < full / 2);
    drop(queue);

    // On open: files no record names are deleted, other files are left alone.
    let data = dir.path().join(DIR_NAME).join("data");
    std::fs::write(data.join(format::segment_file_name(0xffff)), b"orphan").unwrap();
    std::fs::write(data.join("notes.txt"), b"not ours").unwrap();
    let queue = open(&dir, &opts(1 << 30));
    assert_eq!(segment_files(&dir), vec!["notes.txt".to_string()]);
    push(&queue, &logs(), b"after");
    assert_eq!(payloads(&queue, &logs()), vec![b"after".to_vec()]);
}

#[test]
fn newer_format_is_refused_with_the_directory() {
    let dir = TempDir::new("format");
    drop(open(&dir, &opts(1000)));
    tamper(&dir, |db| {
        db.insert(format::FORMAT_KEY, &7u32.to_be_bytes()[..])
            .unwrap();
    });
    let err = unlocked(|| Queue::open(dir.path(), &opts(1000))).unwrap_err();
    assert!(
        matches!(err, QueueError::NewerFormat { found: 7, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains(&dir.path().join("queue").display().to_string()));
    // The failed open's sled threads may hold the lock a moment longer.
    assert!(matches!(
        unlocked(|| Queue::inspect(dir.path())),
        Err(QueueError::NewerFormat { .. })
    ));
}

#[test]
fn second_open_is_locked_and_inspect_reads_a_stopped_queue() {
    let dir = TempDir::new("locked");
    assert_eq!(Queue::inspect(dir.path()).unwrap(), Stats::default());
    let queue = open(&dir, &opts(1 << 20));
    push(&queue, &logs(), b"abc");
    push(&queue, &metrics(), b"de");
    let err = Queue::open(dir.path(), &opts(1 << 20)).unwrap_err();
    assert!(matches!(err, QueueError::Locked { .. }), "{err}");
    assert!(matches!(
        Queue::inspect(dir.path()),
        Err(QueueError::Locked { .. })
    ));
    let mut live = queue.stats();
    drop(queue);

    let mut stopped = unlocked(|| Queue::inspect(dir.path())).unwrap();
    live.lanes.sort_by(|a, b| a.lane.cmp(&b.lane));
    stopped.lanes.sort_by(|a, b| a.lane.cmp(&b.lane));
    assert_eq!(stopped.lanes, live.lanes);
    assert_eq!(stopped.total().bytes, 5);
    // What this process wrote is the live queue's figure alone.
    assert_eq!((live.written_bytes, stopped.written_bytes), (5, 0));
}

struct Flag(AtomicUsize);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn listeners_wake_on_push() {
    let dir = TempDir::new("listen");
    let queue = open(&dir, &opts(1 << 20));

    // As a future, on any executor.
    let flag = Arc::new(Flag(AtomicUsize::new(0)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut listener = queue.listen();
    assert_eq!(
        std::pin::Pin::new(&mut listener).poll(&mut cx),
        Poll::Pending
    );
    push(&queue, &logs(), b"a");
    assert_eq!(flag.0.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::pin::Pin::new(&mut listener).poll(&mut cx),
        Poll::Ready(())
    );

    // On a thread of its own.
    let listener = queue.listen();
    let pusher = queue.clone();
    let thread = std::thread::spawn(move || push(&pusher, &metrics(), b"b"));
    assert!(listener.wait_timeout(Duration::from_secs(10)));
    thread.join().unwrap();
    assert!(!queue.listen().wait_timeout(Duration::from_millis(1)));
}

#[test]
fn concurrent_pushes_and_acks_lose_and_double_nothing() {
    const PUSHERS: u8 = 4;
    const EACH: u32 = 300;
    let dir = TempDir::new("concurrent");
    let queue = open(&dir, &opts(1 << 30));
    let lanes = [metrics(), logs()];
    let pushers: Vec<_> = (0..PUSHERS)
        .map(|p| {
            let queue = queue.clone();
            let lane = lanes[usize::from(p % 2)].clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let mut payload = vec![p];
                    payload.extend_from_slice(&i.to_be_bytes());
                    payload.resize(64, 0);
                    push(&queue, &lane, &payload);
                }
            })
        })
        .collect();

    let consumer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            let mut seen: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
            let mut ids = BTreeSet::new();
            let total = usize::from(PUSHERS) * usize::try_from(EACH).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while ids.len() < total {
                assert!(
                    Instant::now() < deadline,
                    "consumer saw {} of {total}",
                    ids.len()
                );
                let listener = queue.listen();
                let mut got = 0;
                for lane in [metrics(), logs()] {
                    let peeked = queue.peek(&lane, 7).unwrap();
                    assert_eq!(peeked.dropped, vec![]);
                    for batch in peeked.batches {
                        got += 1;
                        assert!(ids.insert(batch.id.seq()), "batch {} read twice", batch.id);
                        let i = u32::from_be_bytes(batch.payload[1..5].try_into().unwrap());
                        seen.entry(batch.payload[0]).or_default().push(i);
                        assert!(queue.ack(batch.id).unwrap());
                    }
                }
                if got == 0 {
                    listener.wait_timeout(Duration::from_millis(100));
                }
            }
            seen
        })
    };
    for pusher in pushers {
        pusher.join().unwrap();
    }
    let seen = consumer.join().unwrap();
    for p in 0..PUSHERS {
        // Everything, once, in the order each pusher pushed it.
        assert_eq!(seen[&p], (0..EACH).collect::<Vec<_>>(), "pusher {p}");
    }
    assert_eq!(queue.stats().total(), Backlog::default());
}

#[test]
fn concurrent_eviction_reports_every_batch_exactly_once() {
    const PUSHERS: usize = 3;
    const EACH: usize = 200;
    let dir = TempDir::new("evict-concurrent");
    // Room for 20 batches of 100 bytes: pushers outrun the reader and evict.
    let queue = open(&dir, &opts(2000));
    let done = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = (0..PUSHERS)
        .map(|p| {
            let queue = queue.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let lane = if p == 0 { logs() } else { metrics() };
                let (mut pushed, mut dropped) = (Vec::new(), Vec::new());
                for _ in 0..EACH {
                    let result = queue.push(&lane, new_batch(&[1; 100], 1)).unwrap();
                    pushed.push(result.id.unwrap().seq());
                    dropped.extend(result.dropped.iter().map(|d| d.id.unwrap().seq()));
                }
                done.fetch_add(1, Ordering::SeqCst);
                (pushed, dropped)
            })
        })
        .collect();
    let reader = {
        let queue = queue.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut acked, mut lost_race) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                assert!(Instant::now() < deadline, "pushers did not finish");
                let finished = done.load(Ordering::SeqCst) == PUSHERS;
                let mut got = 0;
                for lane in [logs(), metrics()] {
                    for batch in queue.peek(&lane, 3).unwrap().batches {
                        got += 1;
                        if queue.ack(batch.id).unwrap() {
                            acked.push(batch.id.seq());
                        } else {
                            lost_race.push(batch.id.seq());
                        }
                    }
                }
                if finished && got == 0 {
                    return (acked, lost_race);
                }
            }
        })
    };
    let mut pushed = BTreeSet::new();
    let mut dropped = Vec::new();
    for pusher in pushers {
        let (p, d) = pusher.join().unwrap();
        pushed.extend(p);
        dropped.extend(d);
    }
    let (acked, lost_race) = reader.join().unwrap();
    assert_eq!(pushed.len(), PUSHERS * EACH);
    let dropped_set: BTreeSet<u64> = dropped.iter().copied().collect();
    assert_eq!(
        dropped_set.len(),
        dropped.len(),
        "a batch reported dropped twice"
    );
    let acked_set: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(acked_set.len(), acked.len(), "a batch acked twice");
    assert!(
        acked_set.is_disjoint(&dropped_set),
        "a batch both acked and dropped"
    );
    // A batch read just before it was evicted: its ack finds it gone.
    assert!(lost_race.iter().all(|seq| dropped_set.contains(seq)));
    let accounted: BTreeSet<u64> = acked_set.union(&dropped_set).copied().collect();
    assert_eq!(
        accounted, pushed,
        "every batch is either delivered or reported dropped"
    );
    assert!(!dropped.is_empty());
    assert_eq!(queue.stats().total(), Backlog::default());
}

/// Not a test: the child process of `crash_keeps_every_acknowledged_push`
/// and `crash_keeps_every_ack`, which run this test binary again with
/// `queue::tests::crash_child --exact --ignored` and `TERN_QUEUE_CRASH_DIR`
/// set; it pushes (and acks) until killed. Without that variable it returns.
#[test]
#[ignore = "a helper the crash tests run in a child process"]
fn crash_child() {
    let Some(state_dir) = std::env::var_os("TERN_QUEUE_CRASH_DIR") else {
        return;
    };
    // Memory first: batches without a checkpoint, held up to this many bytes.
    let memory_size = std::env::var("TERN_QUEUE_CRASH_MEMORY")
        .ok()
        .map(|bytes| bytes.parse::<u64>().unwrap());
    let options = Options {
        fsync: std::env::var_os("TERN_QUEUE_CRASH_FSYNC").is_some(),
        memory_size,
        ..Options::default()
    };
    let (queue, _) = unlocked(|| Queue::open(Path::new(&state_dir), &options)).unwrap();
    let start: u64 = match queue.checkpoint("counter").unwrap() {
        Some(value) => std::str::from_utf8(&value).unwrap().parse::<u64>().unwrap() + 1,
        None => 0,
    };
    // 20 KiB: a new segment file every 50 pushes, so kills land in rotations too.
    let payload = vec![0x5a; 20_000];
    let deadline = Instant::now() + Duration::from_secs(60);
    for counter in start.. {
        let lane = if counter % 2 == 0 { metrics() } else { logs() };
        let mut payload = payload.clone();
        payload[..8].copy_from_slice(&counter.to_be_bytes());
        let value = counter.to_string();
        let checkpoint = memory_size.is_none().then_some(Checkpoint {
            source: "counter",
            value: value.as_bytes(),
        });
        let pushed = queue
            .push(
                &lane,
                NewBatch {
                    checkpoint,
                    ..new_batch(&payload, 1)
                },
            )
            .unwrap();
        let id = pushed.id.unwrap();
        println!("pushed {counter}");
        // Two of three batches are delivered at once, as a keeping-up
        // gateway would; the ack's line is printed once `ack` returned.
        if std::env::var_os("TERN_QUEUE_CRASH_ACK").is_some() && counter % 3 != 0 {
            assert!(queue.ack(id).unwrap());
            println!("acked {counter}");
        }
        if Instant::now() > deadline {
            break;
        }
    }
}

/// Starts `crash_child` in a process of its own on `dir`, its stdout piped.
fn spawn_crash_child(exe: &Path, dir: &TempDir, fsync: bool, ack: bool) -> std::process::Child {
    crash_child_command(exe, dir, fsync, ack).spawn().unwrap()
}

fn crash_child_command(exe: &Path, dir: &TempDir, fsync: bool, ack: bool) -> Command {
    let mut command = Command::new(exe);
    command
        .args([
            "queue::tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TERN_QUEUE_CRASH_DIR", dir.path())
        .env(
            if fsync {
                "TERN_QUEUE_CRASH_FSYNC"
            } else {
                "TERN_QUEUE_CRASH_NO_FSYNC"
            },
            "1",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if ack {
        command.env("TERN_QUEUE_CRASH_ACK", "1");
    }
    command
}

#[test]
fn crash_keeps_every_acknowledged_push() {
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut printed = BTreeSet::new();
    for round in 0..6 {
        // A process crash loses nothing the kernel has, fsync or not: the
        // index entries sled had not written yet are rebuilt from the
        // segments on open.
        let mut child = spawn_crash_child(&exe, &dir, round % 2 == 0, false);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = fastrand::usize(1..120);
        let mut seen_this_round = 0;
        while seen_this_round < kill_after {
            let line = lines.next().expect("child exited early").unwrap();
            if let Some(counter) = line.strip_prefix("pushed ") {
                printed.insert(counter.parse::<u64>().unwrap());
                seen_this_round += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines already in the pipe were printed after their push returned too.
        for line in lines {
            if let Some(counter) = line.unwrap().strip_prefix("pushed ") {
                printed.insert(counter.parse::<u64>().unwrap());
            }
        }

        let (queue, dropped) = Queue::open(dir.path(), &Options::default()).unwrap();
        assert_eq!(dropped, vec![], "round {round}");
        let mut stored = BTreeSet::new();
        for lane in [metrics(), logs()] {
            for batch in queue.peek(&lane, usize::MAX).unwrap().batches {
                let counter = u64::from_be_bytes(batch.payload[..8].try_into().unwrap());
                assert!(
                    stored.insert(counter),
                    "round {round}: {counter} stored twice"
                );
            }
        }
        let missing: Vec<_> = printed.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged pushes lost: {missing:?}"
        );
        // The checkpoint names exactly the newest stored batch: no gap, no duplicate.
        let checkpoint = queue.checkpoint("counter").unwrap().unwrap();
        let checkpoint: u64 = std::str::from_utf8(&checkpoint).unwrap().parse().unwrap();
        assert_eq!(stored.last(), Some(&checkpoint), "round {round}");
        assert_eq!(
            stored.len(),
            usize::try_from(checkpoint + 1).unwrap(),
            "round {round}"
        );
    }
}

/// Reads `crash_child`'s "pushed N" and "acked N" lines into `pushed` and
/// `acked`, kills it after `kill_after` of them, and reads what it printed
/// before it died. Other lines (the test harness's own) do not count.
fn kill_after_lines(
    mut child: std::process::Child,
    kill_after: usize,
    pushed: &mut BTreeSet<u64>,
    acked: &mut BTreeSet<u64>,
) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut record = |line: &str| {
        if let Some(counter) = line.strip_prefix("pushed ") {
            pushed.insert(counter.parse::<u64>().unwrap());
        } else if let Some(counter) = line.strip_prefix("acked ") {
            acked.insert(counter.parse::<u64>().unwrap());
        } else {
            return false;
        }
        true
    };
    let mut seen = 0;
    while seen < kill_after {
        seen += usize::from(record(&lines.next().expect("child exited early").unwrap()));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for line in lines {
        record(&line.unwrap());
    }
}

#[test]
fn crash_keeps_every_ack() {
    // Acks are not flushed to the index at once; without the ack log every
    // ack of the last second came back after a SIGKILL and was sent again.
    let dir = TempDir::new("crash-acks");
    let exe = std::env::current_exe().unwrap();
    let (mut pushed, mut acked) = (BTreeSet::new(), BTreeSet::new());
    for round in 0..6 {
        let child = spawn_crash_child(&exe, &dir, round % 2 == 0, true);
        kill_after_lines(child, fastrand::usize(1..150), &mut pushed, &mut acked);

        let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &Options::default())).unwrap();
        assert_eq!(dropped, vec![], "round {round}");
        let mut stored = BTreeSet::new();
        for lane in [metrics(), logs()] {
            for batch in queue.peek(&lane, usize::MAX).unwrap().batches {
                stored.insert(u64::from_be_bytes(batch.payload[..8].try_into().unwrap()));
            }
        }
        let back: Vec<_> = stored.intersection(&acked).collect();
        assert!(
            back.is_empty(),
            "round {round}: acked batches came back: {back:?}"
        );
        let waiting: BTreeSet<u64> = pushed.difference(&acked).copied().collect();
        // At most the one batch whose ack was under way when the kill came.
        let lost: Vec<_> = waiting.difference(&stored).collect();
        assert!(
            lost.iter().all(|&&c| c % 3 != 0) && lost.len() <= 1,
            "round {round}: unacked batches lost: {lost:?}"
        );
        // The source resumes after the newest batch it pushed, acked or not:
        // a checkpoint older than that would read its input again.
        let checkpoint = queue.checkpoint("counter").unwrap().unwrap();
        let checkpoint: u64 = std::str::from_utf8(&checkpoint).unwrap().parse().unwrap();
        let newest = *pushed.last().unwrap();
        assert!(
            checkpoint == newest || checkpoint == newest + 1,
            "round {round}: checkpoint {checkpoint}, newest push printed {newest}"
        );
        // Leave only the unacked ones for the next round's bookkeeping.
        acked.extend(lost.into_iter().copied().collect::<Vec<_>>());
    }
}

/// Reads this process's `(wchar, write_bytes)` from `/proc/self/io`.
fn io_counters() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    (field("wchar:"), field("write_bytes:"))
}

/// One write-amplification scenario: `n` incompressible batches of `size` bytes,
/// acked by a reader that stays `backlog` batches behind.
struct Scenario {
    fsync: bool,
    n: u64,
    size: usize,
    backlog: u64,
    /// Whether every batch carries a journal-cursor-sized checkpoint.
    checkpoint: bool,
}

/// Runs `scenario` and prints pushes per second and bytes written per byte pushed:
/// `wchar` counts what the process asked to write, `write_bytes` what reached
/// the block layer (whole pages).
fn measure(scenario: &Scenario) {
    let Scenario {
        fsync,
        n,
        size,
        backlog,
        checkpoint,
    } = *scenario;
    let dir = TempDir::new("amplification");
    let options = Options {
        fsync,
        max_size: 1 << 30,
        ..Options::default()
    };
    let queue = open(&dir, &options);
    let lane = metrics();
    let mut payload = vec![0u8; size];
    let cursor = "s=4a5f0c0e2d3b4f8e9d1c2b3a4f5e6d7c;i=1a2b3c;b=9f8e7d6c5b4a39281706f5e4d3c2b1a0;\
                  m=1f2e3d4c;t=5f6e7d8c9b0a;x=0123456789abcdef";
    let (wchar0, written0) = io_counters();
    let start = Instant::now();
    let mut acked = 0u64;
    for i in 0..n {
        payload.iter_mut().for_each(|b| *b = fastrand::u8(..));
        let mut batch = new_batch(&payload, 1);
        if checkpoint {
            batch.checkpoint = Some(Checkpoint {
                source: "journald",
                value: cursor.as_bytes(),
            });
        }
        let _ = queue.push(&lane, batch).unwrap();
        while i + 1 - acked > backlog {
            let batch = queue.peek(&lane, 1).unwrap().batches.remove(0);
            assert!(queue.ack(batch.id).unwrap());
            acked += 1;
        }
    }
    let elapsed = start.elapsed();
    let on_disk = queue.disk_usage().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("")
        .to_owned();
    drop(queue);
    let (wchar1, written1) = io_counters();
    let pushed = (n * u64::try_from(size).unwrap()) as f64;
    println!(
        "fsync {}, {:>2} KiB{}, backlog {backlog:>4}: {:>6.0} pushes/s, wchar/pushed {:.2}, \
         write_bytes/pushed {:.2}, on disk {:.1} MiB for {:.1} MiB queued, {peak_rss}",
        if fsync { "on " } else { "off" },
        size / 1024,
        if checkpoint { " + checkpoint" } else { "" },
        n as f64 / elapsed.as_secs_f64(),
        (wchar1 - wchar0) as f64 / pushed,
        (written1 - written0) as f64 / pushed,
        on_disk as f64 / 1048576.0,
        (backlog * u64::try_from(size).unwrap()) as f64 / 1048576.0,
    );
}

/// Prints write amplification and throughput (see the module docs, "Limits").
/// `cargo test -p tern --release --lib queue::tests::write_amplification -- --ignored --nocapture --test-threads=1`
#[test]
#[ignore = "a measurement, not a check: run it alone, by name"]
fn write_amplification() {
    let kib = 1024;
    for (i, scenario) in [
        Scenario {
            fsync: false,
            n: 10_000,
            size: 20 * kib,
            backlog: 500,
            checkpoint: false,
        },
        Scenario {
            fsync: true,
            n: 2_000,
            size: 20 * kib,
            backlog: 500,
            checkpoint: false,
        },
        Scenario {
            fsync: true,
            n: 2_000,
            size: 20 * kib,
            backlog: 500,
            checkpoint: true,
        },
        Scenario {
            fsync: false,
            n: 10_000,
            size: 20 * kib,
            backlog: 5000,
            checkpoint: false,
        },
        Scenario {
            fsync: false,
            n: 20_000,
            size: 2 * kib,
            backlog: 500,
            checkpoint: true,
        },
        Scenario {
            fsync: true,
            n: 2_000,
            size: 2 * kib,
            backlog: 500,
            checkpoint: false,
        },
    ]
    .iter()
    .enumerate()
    {
        // TERN_QUEUE_SCENARIO=n runs only scenario n, for a peak RSS of its own.
        let only = std::env::var("TERN_QUEUE_SCENARIO").ok();
        if only.map_or(true, |only| only == i.to_string()) {
            measure(scenario);
        }
    }
}

/// Disk bytes an ack costs: the ack log's write and the index's removal at
/// the next flush. Run with `cargo test --release -p tern --lib ack_cost --
/// --ignored --nocapture`; figures in the module docs.
#[test]
#[ignore = "a measurement, not a check"]
fn ack_cost() {
    let dir = TempDir::new("ack-cost");
    let queue = open(&dir, &opts(1 << 30));
    let lane = logs();
    let n = 20_000u64;
    let mut ids = Vec::new();
    for i in 0..n {
        let payload = i.to_be_bytes().repeat(250);
        ids.push(push(&queue, &lane, &payload));
    }
    queue.flush().unwrap();
    let (wchar0, bytes0) = io_counters();
    let started = Instant::now();
    for id in ids {
        assert!(queue.ack(id).unwrap());
    }
    queue.flush().unwrap();
    let elapsed = started.elapsed();
    let (wchar1, bytes1) = io_counters();
    println!(
        "ack cost: {n} acks in {elapsed:?}: {:.1} bytes passed to write and {:.1} bytes reaching the disk per ack",
        (wchar1 - wchar0) as f64 / n as f64,
        (bytes1 - bytes0) as f64 / n as f64
    );
}

/// Options for memory-first tests: `memory` bytes held, no fsync.
fn memory_first(max_size: u64, memory: u64) -> Options {
    Options {
        memory_size: Some(memory),
        ..opts(max_size)
    }
}

#[test]
fn memory_first_writes_nothing_while_acks_keep_up() {
    let dir = TempDir::new("memory-keep-up");
    let queue = open(&dir, &memory_first(1 << 20, 1000));
    for n in 0..200u8 {
        let id = push(&queue, &metrics(), &[n; 100]);
        let peeked = queue.peek(&metrics(), 10).unwrap();
        assert_eq!(peeked.batches.len(), 1);
        assert_eq!(peeked.batches[0].id, id);
        assert_eq!(peeked.batches[0].payload, vec![n; 100]);
        assert_eq!(queue.stats().memory_bytes, 100);
        assert!(queue.ack(id).unwrap());
        assert!(!queue.ack(id).unwrap(), "acked twice");
    }
    let stats = queue.stats();
    assert_eq!((stats.memory_bytes, stats.written_bytes), (0, 0));
    assert_eq!(stats.total().batches, 0);
    drop(queue);
    assert_eq!(segment_files(&dir), Vec::<String>::new());
}

#[test]
fn memory_first_spills_the_oldest_and_reads_in_order() {
    let dir = TempDir::new("memory-spill");
    let options = memory_first(1 << 20, 1000);
    let queue = open(&dir, &options);
    let mut ids = Vec::new();
    for n in 0..25u8 {
        // Two lanes: the oldest of all lanes goes to disk first.
        let lane = if n % 5 == 4 { logs() } else { metrics() };
        ids.push((lane.clone(), push(&queue, &lane, &[n; 100])));
    }
    let stats = queue.stats();
    assert_eq!(stats.memory_bytes, 1000, "memory full, not over");
    assert_eq!(stats.written_bytes, 1500, "15 oldest spilled");
    assert_eq!(stats.total().batches, 25);
    assert_eq!(lane_backlog(&stats, &logs()).batches, 5);
    // The oldest batches are on disk, the newest in memory.
    assert_eq!(segment_files(&dir).len(), 2, "one segment per lane");
    let expect = |lane: &Lane| -> Vec<Vec<u8>> {
        ids.iter()
            .filter(|(l, _)| l == lane)
            .map(|(_, id)| vec![u8::try_from(id.seq).unwrap(); 100])
            .collect()
    };
    assert_eq!(payloads(&queue, &metrics()), expect(&metrics()));
    assert_eq!(payloads(&queue, &logs()), expect(&logs()));
    // peek_after goes from disk into memory without a gap or a repeat.
    let metric_ids: Vec<BatchId> = queue
        .peek(&metrics(), usize::MAX)
        .unwrap()
        .batches
        .iter()
        .map(|b| b.id)
        .collect();
    for (i, &after) in metric_ids.iter().enumerate() {
        let next = queue.peek_after(&metrics(), Some(after), 3).unwrap();
        let got: Vec<BatchId> = next.batches.iter().map(|b| b.id).collect();
        let end = (i + 4).min(metric_ids.len());
        assert_eq!(got, metric_ids[i + 1..end], "after {after:?}");
    }
    // Acks reach both: the newest (held) and the oldest (on disk).
    assert!(queue.ack(*metric_ids.last().unwrap()).unwrap());
    assert!(queue.ack(metric_ids[0]).unwrap());
    assert_eq!(queue.stats().memory_bytes, 900);
    let left: Vec<Vec<u8>> = payloads(&queue, &metrics());
    let mut want = expect(&metrics());
    want.pop();
    want.remove(0);
    assert_eq!(left, want);
    // Closing writes what memory holds; nothing is lost or doubled.
    drop(queue);
    let queue = open(&dir, &options);
    assert_eq!(payloads(&queue, &metrics()), want);
    assert_eq!(payloads(&queue, &logs()), expect(&logs()));
    assert_eq!(queue.stats().memory_bytes, 0);
}

#[test]
fn memory_first_writes_checkpoints_and_large_batches_to_disk() {
    let dir = TempDir::new("memory-checkpoint");
    let options = memory_first(1 << 20, 1000);
    let queue = open(&dir, &options);
    let held = push(&queue, &logs(), b"held");
    // A batch with a source's position goes to disk, after the lane's held
    // batch, so that a power cut can never leave the position ahead of it.
    let pushed = queue
        .push(&logs(), with_checkpoint(b"journal", b"c1"))
        .unwrap();
    let with_position = pushed.id.unwrap();
    assert_eq!(queue.stats().memory_bytes, 0);
    // Larger than memory: straight to disk, after the held ones.
    push(&queue, &metrics(), b"small");
    let big = push(&queue, &metrics(), &[9; 2000]);
    let stats = queue.stats();
    assert_eq!(stats.memory_bytes, 0);
    assert_eq!(stats.written_bytes, 4 + 7 + 5 + 2000);
    assert_eq!(
        payloads(&queue, &logs()),
        vec![b"held".to_vec(), b"journal".to_vec()]
    );
    assert_eq!(
        queue
            .peek(&metrics(), 9)
            .unwrap()
            .batches
            .last()
            .unwrap()
            .id,
        big
    );
    assert!(queue.ack(held).unwrap());
    assert!(queue.ack(with_position).unwrap());
    drop(queue);
    let queue = open(&dir, &options);
    assert_eq!(journald(&queue).as_deref(), Some(&b"c1"[..]));
    assert_eq!(
        payloads(&queue, &metrics()),
        vec![b"small".to_vec(), vec![9; 2000]]
    );
}

#[test]
fn memory_first_reroutes_and_evicts_held_batches() {
    let dir = TempDir::new("memory-reroute");
    let queue = open(&dir, &memory_first(3000, 1000));
    let other = Lane::new(Signal::Metrics, "https://gw2:4318");
    for n in 0..8u8 {
        let lane = if n % 2 == 0 { metrics() } else { other.clone() };
        push(&queue, &lane, &[n; 200]);
    }
    // 1600 bytes: 600 on disk, 1000 in memory.
    assert_eq!(queue.stats().memory_bytes, 1000);
    let moved = queue.reroute(&other, "https://gw1:4318").unwrap();
    assert_eq!(moved.batches, 4);
    assert_eq!(queue.stats().memory_bytes, 0);
    let all: Vec<Vec<u8>> = (0..8u8).map(|n| vec![n; 200]).collect();
    assert_eq!(payloads(&queue, &metrics()), all);
    // Over max_size, the oldest of disk and memory go first, each reported.
    let mut dropped = Vec::new();
    for n in 8..20u8 {
        let pushed = queue.push(&metrics(), new_batch(&[n; 200], 1)).unwrap();
        dropped.extend(pushed.dropped);
    }
    assert!(dropped.iter().all(|d| d.reason == DropReason::QueueFull));
    let dropped_seqs: Vec<u64> = dropped.iter().map(|d| d.id.unwrap().seq).collect();
    assert_eq!(dropped_seqs, (0..5).collect::<Vec<u64>>());
    let stats = queue.stats();
    assert!(stats.total().bytes <= 3000, "{stats:?}");
    assert_eq!(
        payloads(&queue, &metrics()),
        (5..20u8).map(|n| vec![n; 200]).collect::<Vec<_>>()
    );
    // Evicting held batches: they leave memory without a write.
    let dir = TempDir::new("memory-evict");
    let queue = open(&dir, &memory_first(1000, 4000));
    for n in 0..10u8 {
        let pushed = queue.push(&metrics(), new_batch(&[n; 200], 1)).unwrap();
        let dropped: Vec<u64> = pushed.dropped.iter().map(|d| d.id.unwrap().seq).collect();
        let want: Vec<u64> = (n >= 5).then(|| u64::from(n) - 5).into_iter().collect();
        assert_eq!(dropped, want, "push {n}");
    }
    let stats = queue.stats();
    assert_eq!((stats.memory_bytes, stats.written_bytes), (1000, 0));
    assert_eq!(
        payloads(&queue, &metrics()),
        (5..10u8).map(|n| vec![n; 200]).collect::<Vec<_>>()
    );
}

#[test]
fn memory_first_crash_loses_at_most_memory() {
    // SIGKILL with batches in memory: only the newest unacked ones, at most
    // memory_size of them, are lost; what went to disk and every ack hold.
    let exe = std::env::current_exe().unwrap();
    let memory: u64 = 100_000; // five batches of 20 KB
    for round in 0..4 {
        let dir = TempDir::new("memory-crash");
        let mut command = crash_child_command(&exe, &dir, round % 2 == 0, true);
        command.env("TERN_QUEUE_CRASH_MEMORY", memory.to_string());
        let (mut pushed, mut acked) = (BTreeSet::new(), BTreeSet::new());
        let child = command.spawn().unwrap();
        kill_after_lines(child, fastrand::usize(40..200), &mut pushed, &mut acked);

        let (queue, dropped) = unlocked(|| Queue::open(dir.path(), &Options::default())).unwrap();
        assert_eq!(dropped, vec![], "round {round}");
        let mut stored = BTreeSet::new();
        for lane in [metrics(), logs()] {
            for batch in queue.peek(&lane, usize::MAX).unwrap().batches {
                let counter = u64::from_be_bytes(batch.payload[..8].try_into().unwrap());
                assert!(stored.insert(counter), "round {round}: {counter} twice");
            }
        }
        let back: Vec<_> = stored.intersection(&acked).collect();
        assert!(back.is_empty(), "round {round}: acked came back: {back:?}");
        let waiting: BTreeSet<u64> = pushed.difference(&acked).copied().collect();
        // An ack under way when the kill came may look lost: its batch
        // was delivered. Every other loss is a batch memory held: the
        // newest unacked ones, at most `memory` bytes.
        let lost: Vec<u64> = waiting
            .difference(&stored)
            .copied()
            .filter(|&c| c % 3 == 0)
            .collect();
        assert!(
            lost.len() <= usize::try_from(memory / 20_000).unwrap(),
            "round {round}: lost {lost:?}"
        );
        let newest_stored = stored.last().copied();
        assert!(
            lost.iter().all(|&c| Some(c) > newest_stored),
            "round {round}: lost {lost:?} older than stored {newest_stored:?}"
        );
        // Enough was pushed that the disk took some.
        assert!(!stored.is_empty(), "round {round}: nothing spilled");
    }
}
