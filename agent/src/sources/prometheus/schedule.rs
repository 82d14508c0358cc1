//! The scrape scheduler: a fixed set of worker threads (`tern-scrape-<n>`)
//! that scrape every target of every job on its interval.
//!
//! A thread per target cost a thread, a deflate state and a batch buffer per
//! target: 2,000 targets took 1.46 GB and 2,013 threads. Here the targets
//! wait in one plan, ordered by when each is due; a free worker takes the
//! earliest one that is due, scrapes it with its own buffers and puts it back
//! with its next time. A target keeps only what outlives a scrape (its series
//! identities for staleness, a few counters), so memory and threads follow
//! the configuration, not the load.
//!
//! A target that hangs holds one worker for at most its job's `timeout`;
//! the other workers go on. Each target keeps its phase within the interval
//! (a hash of its URL, see [`Target::offset`]) and skips the ticks it missed
//! rather than bunching them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::config::ScrapeConfig;
use crate::lifecycle;
use crate::sources::Sink;
use crate::telemetry::Metrics;

use super::scrape::{Job, Scratch, Target};

/// The running scrape workers and the targets they share.
#[derive(Debug)]
pub struct Scheduler {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    plan: Mutex<Plan>,
    /// Woken when a target is put back or the scheduler stops.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Plan {
    stopped: bool,
    /// Every target; `None` while a worker scrapes it.
    targets: Vec<Option<Target>>,
    /// When each target not being scraped is due next, earliest first.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
}

/// The targets of a stopped scheduler, for the next one to adopt (a reload).
#[derive(Debug, Default)]
pub struct Targets(Vec<Target>);

impl Scheduler {
    /// Starts `workers` threads scraping the targets of `jobs`. Targets that
    /// were in `previous` (the same URL of the same job, with the same
    /// resource) keep their memory of the last scrape; the others of
    /// `previous` were removed, and their series get staleness markers now.
    pub fn start(
        jobs: &[ScrapeConfig],
        resource: &[(String, String)],
        workers: usize,
        sink: Sink,
        metrics: Arc<Metrics>,
        previous: Targets,
    ) -> std::io::Result<Scheduler> {
        let mut old: HashMap<(String, String), Target> = previous
            .0
            .into_iter()
            .map(|t| ((t.job.config.job.clone(), t.target.url.clone()), t))
            .collect();
        let now = Instant::now();
        let mut plan = Plan::default();
        for config in jobs {
            let job = Arc::new(Job::new(config, resource)?);
            for (t, label) in config.targets.iter().zip(self_metric_labels(config)) {
                let mut target = Target::new(job.clone(), t, label);
                if let Some(before) = old.remove(&(config.job.clone(), t.url.clone())) {
                    if let Some(gone) = target.adopt(before) {
                        gone.retire(&sink);
                    }
                }
                plan.due
                    .push(Reverse((now + target.offset(), plan.targets.len())));
                plan.targets.push(Some(target));
            }
        }
        for (_, gone) in old {
            gone.retire(&sink);
        }
        let workers = if plan.targets.is_empty() {
            0
        } else {
            workers.clamp(1, plan.targets.len())
        };
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            wake: Condvar::new(),
        });
        let mut scheduler = Scheduler {
            shared: shared.clone(),
            workers: Vec::new(),
        };
        for n in 0..workers {
            let (shared, sink, metrics) = (shared.clone(), sink.clone(), metrics.clone());
            let spawned = lifecycle::spawn(
                format!("tern-scrape-{n}"),
                &format!("scrape worker {} of {workers}", n + 1),
                move || work(&shared, &sink, &metrics),
            );
            match spawned {
                Ok(handle) => scheduler.workers.push(handle),
                Err(e) => {
                    scheduler.stop();
                    return Err(e);
                }
            }
        }
        Ok(scheduler)
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Tells the workers to stop after the scrape they are in, and gives
    /// their threads for the caller to join.
    pub fn stop(&mut self) -> Vec<JoinHandle<()>> {
        lock(&self.shared.plan).stopped = true;
        self.shared.wake.notify_all();
        std::mem::take(&mut self.workers)
    }

    /// The targets, once the workers are stopped and joined; a target whose
    /// worker was abandoned mid-scrape is missing (its memory is lost, and a
    /// next scheduler scrapes it afresh).
    pub fn into_targets(self) -> Targets {
        let mut plan = lock(&self.shared.plan);
        Targets(plan.targets.drain(..).flatten().collect())
    }
}

/// A worker: takes the earliest due target, scrapes it, puts it back.
fn work(shared: &Shared, sink: &Sink, metrics: &Metrics) {
    let mut scratch = Scratch::new();
    let mut plan = lock(&shared.plan);
    loop {
        if plan.stopped {
            return;
        }
        let Some(&Reverse((due, i))) = plan.due.peek() else {
            plan = wait(&shared.wake, plan, None);
            continue;
        };
        let now = Instant::now();
        if due > now {
            plan = wait(&shared.wake, plan, Some(due - now));
            continue;
        }
        plan.due.pop();
        let Some(mut target) = plan.targets.get_mut(i).and_then(Option::take) else {
            continue;
        };
        drop(plan);
        target.scrape(&mut scratch, sink, metrics);
        let interval = target.interval();
        let mut next = due + interval;
        let now = Instant::now();
        while next <= now {
            // Missed ticks (a slow scrape, a suspended box) are skipped, not bunched.
            next += interval;
        }
        plan = lock(&shared.plan);
        if let Some(slot) = plan.targets.get_mut(i) {
            *slot = Some(target);
        }
        plan.due.push(Reverse((next, i)));
        // Another worker may be asleep until a later target.
        shared.wake.notify_one();
    }
}

fn lock(plan: &Mutex<Plan>) -> MutexGuard<'_, Plan> {
    match plan.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn wait<'a>(
    wake: &Condvar,
    plan: MutexGuard<'a, Plan>,
    timeout: Option<std::time::Duration>,
) -> MutexGuard<'a, Plan> {
    match timeout {
        Some(t) => match wake.wait_timeout(plan, t) {
            Ok((g, _)) => g,
            Err(poisoned) => poisoned.into_inner().0,
        },
        None => match wake.wait(plan) {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        },
    }
}

/// The `instance` label of each target's self metrics, in the order of
/// `job.targets`: `host:port`, or `host:port/path` when another target of
/// the job has the same `host:port`, so that each keeps its own series.
pub fn self_metric_labels(job: &ScrapeConfig) -> Vec<String> {
    let mut per_hostport: HashMap<&str, usize> = HashMap::new();
    for t in &job.targets {
        *per_hostport.entry(t.instance.as_str()).or_default() += 1;
    }
    job.targets
        .iter()
        .map(|t| {
            if per_hostport.get(t.instance.as_str()).copied() > Some(1) {
                path_label(&t.url, &t.instance)
            } else {
                t.instance.clone()
            }
        })
        .collect()
}

/// `host:port/path` for a target that shares its `host:port` with another
/// of its job, so that each keeps its own self metrics.
fn path_label(url: &str, instance: &str) -> String {
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .strip_prefix(instance)
        .unwrap_or("");
    format!("{instance}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_sharing_host_port_are_told_apart_by_path() {
        assert_eq!(
            path_label("http://127.0.0.1:9100/metrics/a?x=1", "127.0.0.1:9100"),
            "127.0.0.1:9100/metrics/a?x=1"
        );
        assert_eq!(
            path_label("https://[::1]:8443/m", "[::1]:8443"),
            "[::1]:8443/m"
        );
    }
}
