//! The load swarm's correctness oracle, against a real server: a clean run passes, and a run in
//! which one delivery is deliberately dropped is caught and fails.

use std::sync::Arc;

use tidings_loadtest::report;
use tidings_loadtest::scenario;
use tidings_loadtest::swarm::{self, Behaviour, Faults, Progress, Target};

use crate::harness::*;

/// The streams a device got fewer messages of than were acknowledged: where a failure is.
fn shortfalls(result: &swarm::ShardResult) -> Vec<(u64, u64, u64, u64, u64)> {
    let sent: std::collections::HashMap<(u64, u64), u64> = result.sent.iter().copied().collect();
    let mut short = Vec::new();
    for (rooms, log) in &result.devices {
        for (&(room, sender), &count) in sent.iter().filter(|((room, _), _)| rooms.contains(room)) {
            let seen = log.iter().find(|(key, _)| *key == (room, sender)).map(|(_, l)| (l.next, l.delivered));
            let (next, delivered) = seen.unwrap_or((0, 0));
            if delivered < count {
                short.push((room, sender, count, next, delivered));
            }
        }
    }
    short
}

fn behaviour() -> Behaviour {
    Behaviour {
        rate_per_sec: 100.0,
        duration_secs: 1.0,
        body_bytes: 64,
        churn_per_sec: 4.0,
        typing: true,
        read_receipts: true,
        drain_secs: 3.0,
        phase: 0,
    }
}

#[tokio::test]
async fn the_oracle_passes_a_clean_run_and_catches_an_injected_loss() {
    let server = TestServer::start();
    let target = Target { servers: vec![server.addr.to_string()], source_ips: vec![] };
    let roster = swarm::setup(&target, &scenario::fanout(3, 3, 2), "sw", &Progress::default()).await.unwrap();

    let clean =
        swarm::run_shard(&roster, &target, &behaviour(), 0, 1, Faults::default(), Arc::default()).await.unwrap();
    let shortfalls = shortfalls(&clean);
    let (report, _) = report::merge("fanout", 0, 100.0, 1.0, &[clean], None);
    assert!(report.acked_messages >= 90, "{report:?}");
    // Every message reaches both devices of the room's three members.
    assert_eq!(report.verdict.expected, report.acked_messages * 6);
    assert!(report.passed, "{report:?}\nshort streams (room, sender, acked, next seen, delivered): {shortfalls:?}");

    let mut lossy_behaviour = behaviour();
    lossy_behaviour.phase = 1;
    let faults = Faults { drop_delivery: Some(5) };
    let lossy = swarm::run_shard(&roster, &target, &lossy_behaviour, 0, 1, faults, Arc::default()).await.unwrap();
    let (report, _) = report::merge("fanout", 1, 100.0, 1.0, &[lossy], None);
    assert_eq!(report.verdict.lost, 1, "{:?}", report.verdict);
    assert!(!report.passed);
}
