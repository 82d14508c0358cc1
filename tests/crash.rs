//! SIGKILL at random moments while a client posts numbered spans to the
//! receiver and the gateway flaps: every span whose request got 200 arrives,
//! and a kill sends again at most the batch that was in flight.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::spans::{free_port, post, receiver_config_at, span_names, spans};
use crate::harness::{wait_for, Agent, FakeGateway, Reply};

#[test]
fn a_sigkill_storm_loses_no_acknowledged_span() {
    const KILLS: usize = 20;
    let receiver = free_port();
    let gateway = Arc::new(FakeGateway::start());
    let config = receiver_config_at(receiver, &gateway.url());
    let mut agent = Agent::start(&config);

    // The gateway flaps: up and down in turns of 150 to 600 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (stop, gateway) = (stop.clone(), gateway.clone());
        std::thread::spawn(move || {
            let mut up = true;
            while !stop.load(Ordering::Relaxed) {
                gateway.set_default(if up {
                    Reply::Ok
                } else {
                    Reply::Status(503, None)
                });
                up = !up;
                std::thread::sleep(Duration::from_millis(fastrand::u64(150..600)));
            }
            gateway.set_default(Reply::Ok);
        })
    };
    // The client: numbered spans, five a request; a 200 means accepted.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let client = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match post(receiver, &spans(next)) {
                    Some(200) => acked.lock().unwrap().extend(next..next + 5),
                    Some(_) => {}
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
                next += 5;
            }
        })
    };
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(fastrand::u64(200..900)));
        agent.restart();
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    flapper.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too few spans accepted: {}", acked.len());
    let arrived = |g: &FakeGateway| span_names(&g.received());
    wait_for(
        Duration::from_secs(60),
        || {
            let seen = arrived(&gateway);
            acked
                .iter()
                .all(|n| seen.contains_key(&format!("span-{n}")))
                .then_some(())
        },
        || {
            let seen = arrived(&gateway);
            let missing: Vec<_> = acked
                .iter()
                .filter(|n| !seen.contains_key(&format!("span-{n}")))
                .take(20)
                .collect();
            format!("missing spans {missing:?}\n{}", agent.diagnostics())
        },
    );
    // Requests the gateway took twice: a kill between its 200 and the ack.
    let mut digests: HashMap<u64, usize> = HashMap::new();
    for r in gateway.received().iter().filter(|r| r.answered == 200) {
        *digests.entry(r.digest).or_insert(0) += 1;
    }
    let doubled: usize = digests.values().map(|n| n - 1).sum();
    let spans_doubled: usize = arrived(&gateway).values().map(|n| n - 1).sum();
    eprintln!(
        "SIGKILL storm: {KILLS} kills, {} spans acked, all arrived; {doubled} batches sent twice ({spans_doubled} spans)",
        acked.len()
    );
    assert!(
        doubled <= KILLS,
        "{doubled} batches sent twice over {KILLS} kills (one lane: at most one a kill)"
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
}
