//! Competing consumers in two processes: every event is delivered, none to two consumers
//! at once, none skipped; acked ones are never delivered again.

use crate::common::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_consumers::{GroupSettings, GroupSpec, StartFrom, Strategy};
use tidemark_testkit::TestDatabase;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_consumers_in_two_processes_get_every_event_once_never_two_at_once() {
    let db = TestDatabase::create().await;
    let a = process(&db).await;
    let b = process(&db).await;
    let spec = GroupSpec::new("mail")
        .categories(["order"])
        .strategy(Strategy::RoundRobin)
        .settings(GroupSettings {
            max_in_flight: 7,
            ..GroupSettings::default()
        });
    assert!(a.create(&spec).await.unwrap(), "created");
    assert!(
        !b.create(&spec).await.unwrap(),
        "the same definition again is no error"
    );

    // Events the selector leaves out are interleaved with the ones it reads.
    let streams = 12;
    let per_stream = 25;
    let mut writers = Vec::new();
    for s in 0..streams {
        let store = a.store().clone();
        writers.push(tokio::spawn(async move {
            append(&store, &format!("order-{s}"), "OrderPlaced", per_stream).await;
            append(&store, &format!("audit-{s}"), "Audited", 2).await;
        }));
    }
    let total = streams * per_stream;

    let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<i64, String>>> = Arc::default();
    let mut consumers = Vec::new();
    for c in 0..6 {
        let groups = if c % 2 == 0 { a.clone() } else { b.clone() };
        let (in_flight, acked) = (in_flight.clone(), acked.clone());
        consumers.push(tokio::spawn(async move {
            let me = format!("consumer-{c}");
            let give_up = tokio::time::Instant::now() + DEADLINE * 2;
            while acked.lock().unwrap().len() < total {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "all events acked in time"
                );
                let batch = groups
                    .fetch("mail", &me, 5, Duration::from_millis(200))
                    .await
                    .expect("fetch");
                let positions: Vec<i64> = batch.iter().map(|m| m.position()).collect();
                for m in &batch {
                    assert_eq!(m.event.category(), "order", "the selector's events only");
                    assert_eq!(m.delivery_count, 1, "no timeout, so no redelivery");
                    assert!(
                        in_flight.lock().unwrap().insert(m.position()),
                        "position {} handed to {me} while another consumer held it",
                        m.position()
                    );
                }
                if positions.is_empty() {
                    continue;
                }
                tokio::task::yield_now().await;
                // Out of the in-flight set only once the ack committed: a second delivery
                // before then is caught above.
                let outcome = groups.ack("mail", &me, &positions).await.expect("ack");
                assert_eq!(outcome.done.len(), positions.len(), "{outcome:?}");
                let mut set = in_flight.lock().unwrap();
                let mut done = acked.lock().unwrap();
                for p in positions {
                    set.remove(&p);
                    assert!(
                        done.insert(p, me.clone()).is_none(),
                        "position {p} acked twice"
                    );
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for c in consumers {
        c.await.unwrap();
    }

    let log = tidemark_testkit::read_all(a.store()).await;
    let expected: Vec<i64> = log
        .iter()
        .filter(|e| e.category() == "order")
        .map(|e| e.position)
        .collect();
    let got: Vec<i64> = acked.lock().unwrap().keys().copied().collect();
    assert_eq!(
        got, expected,
        "every selected event delivered and acked exactly once"
    );
    let served_by: HashSet<String> = acked.lock().unwrap().values().cloned().collect();
    assert!(served_by.len() > 1, "the work was shared: {served_by:?}");

    let status = a.status("mail").await.unwrap();
    assert_eq!(
        status.in_flight + status.waiting + status.parked,
        0,
        "{status:?}"
    );
    assert_eq!(status.lag_events, 0, "{status:?}");
    assert_eq!(status.delivered_total, total as i64);
    assert_eq!(status.redelivered_total, 0);
    assert_eq!(status.acked_through, status.frontier);
    // Nothing more to hand out, to anyone.
    let more = b.fetch("mail", "late", 10, Duration::ZERO).await.unwrap();
    assert!(
        more.is_empty(),
        "acked events are not delivered again: {more:?}"
    );
}

#[tokio::test]
async fn a_group_starting_at_the_end_or_after_a_position_reads_only_later_events() {
    let db = TestDatabase::create().await;
    let groups = process(&db).await;
    append(groups.store(), "order-1", "OrderPlaced", 3).await;
    groups
        .create(&GroupSpec::new("tail").start(StartFrom::End))
        .await
        .unwrap();
    groups
        .create(&GroupSpec::new("after2").start(StartFrom::After(2)))
        .await
        .unwrap();
    append(groups.store(), "order-1", "OrderPlaced", 1).await;
    let tail = fetch_n(&groups, "tail", "c", 1).await;
    assert_eq!(tail[0].position(), 4);
    let after = fetch_n(&groups, "after2", "c", 2).await;
    let positions: Vec<i64> = after.iter().map(|m| m.position()).collect();
    assert_eq!(positions, [3, 4]);
    let other = GroupSpec::new("tail").strategy(Strategy::SingleActive);
    assert!(matches!(
        groups.create(&other).await,
        Err(tidemark_consumers::ConsumerError::GroupExists(_))
    ));
    groups.delete("tail").await.unwrap();
    assert!(matches!(
        groups.fetch("tail", "c", 1, Duration::ZERO).await,
        Err(tidemark_consumers::ConsumerError::GroupNotFound(_))
    ));
}
