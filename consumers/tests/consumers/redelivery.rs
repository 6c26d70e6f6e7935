//! What happens to a message that is not acked: redelivery after the ack timeout (with its
//! delivery count), parking after max deliveries and replay, retry with backoff, skip, and
//! a single active consumer's takeover.

use crate::common::*;
use std::time::Duration;
use tidemark_consumers::{GroupSettings, GroupSpec, NackAction, Strategy};
use tidemark_testkit::{wait_until, TestDatabase};

#[tokio::test]
async fn a_message_not_acked_in_time_goes_to_another_consumer_with_its_delivery_count() {
    let db = TestDatabase::create().await;
    let a = process(&db).await;
    let b = process(&db).await;
    a.create(&GroupSpec::new("g").settings(quick(300, 5)))
        .await
        .unwrap();
    append(a.store(), "order-1", "OrderPlaced", 5).await;

    // The killed consumer: takes a batch and never acks.
    let first = fetch_n(&a, "g", "dies", 5).await;
    assert!(first.iter().all(|m| m.delivery_count == 1));
    // The other gets them once they time out, each on its second delivery.
    let second = fetch_n(&b, "g", "lives", 5).await;
    let positions: Vec<i64> = second.iter().map(|m| m.position()).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5]);
    assert!(second.iter().all(|m| m.delivery_count == 2), "{second:?}");
    assert_eq!(
        second.iter().map(|m| m.event.event_id).collect::<Vec<_>>(),
        first.iter().map(|m| m.event.event_id).collect::<Vec<_>>()
    );
    // A late ack of the first delivery is stale, and loses nothing.
    let late = a.ack("g", "dies", &positions).await.unwrap();
    assert_eq!(late.stale, positions);
    assert!(late.done.is_empty());
    let status = a.status("g").await.unwrap();
    assert_eq!((status.in_flight, status.redelivered_total), (5, 5));
    let ok = b.ack("g", "lives", &positions).await.unwrap();
    assert_eq!(ok.done, positions);
    let status = a.status("g").await.unwrap();
    assert_eq!((status.in_flight, status.lag_events), (0, 0));
}

#[tokio::test]
async fn a_poison_message_is_parked_after_max_deliveries_and_replayed() {
    let db = TestDatabase::create().await;
    let groups = process(&db).await;
    groups
        .create(&GroupSpec::new("g").settings(quick(30_000, 3)))
        .await
        .unwrap();
    append(groups.store(), "order-1", "OrderPlaced", 3).await;
    let poison = 2;
    let mut deliveries_of_poison = 0;
    let mut acked = Vec::new();
    // The consumer fails on the poison event every time and acks the others.
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while groups.status("g").await.unwrap().parked == 0 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the poison message is parked in time"
        );
        for m in groups
            .fetch("g", "c", 10, Duration::from_millis(100))
            .await
            .unwrap()
        {
            if m.position() == poison {
                deliveries_of_poison += 1;
                assert_eq!(m.delivery_count, deliveries_of_poison);
                let o = groups
                    .nack("g", "c", &[poison], NackAction::Retry, Some("bad payload"))
                    .await
                    .unwrap();
                assert_eq!(o.done, [poison]);
                if m.delivery_count == 3 {
                    assert_eq!(o.parked, [poison], "parked on its third failure");
                }
            } else {
                groups.ack("g", "c", &[m.position()]).await.unwrap();
                acked.push(m.position());
            }
        }
    }
    assert_eq!(deliveries_of_poison, 3, "delivered max deliveries times");
    assert_eq!(acked, [1, 3], "the others went on");
    let parked = groups.parked("g", 0, 100).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].position, parked[0].deliveries), (poison, 3));
    assert!(
        parked[0].reason.contains("bad payload"),
        "{}",
        parked[0].reason
    );
    let status = groups.status("g").await.unwrap();
    assert_eq!(
        (status.lag_events, status.acked_through),
        (0, 3),
        "parked is settled"
    );
    assert!(groups
        .fetch("g", "c", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());

    // Fixed: replay it; it comes back as a first delivery.
    assert_eq!(groups.replay_parked("g", None).await.unwrap(), 1);
    let again = fetch_n(&groups, "g", "c", 1).await;
    assert_eq!((again[0].position(), again[0].delivery_count), (poison, 1));
    groups.ack("g", "c", &[poison]).await.unwrap();
    let status = groups.status("g").await.unwrap();
    assert_eq!(
        (status.parked, status.lag_events, status.parked_total),
        (0, 0, 1)
    );
}

#[tokio::test]
async fn a_message_that_keeps_timing_out_is_parked_after_max_deliveries() {
    let db = TestDatabase::create().await;
    let groups = process(&db).await;
    groups
        .create(&GroupSpec::new("g").settings(quick(200, 2)))
        .await
        .unwrap();
    append(groups.store(), "order-1", "OrderPlaced", 1).await;
    let first = fetch_n(&groups, "g", "c1", 1).await;
    let second = fetch_n(&groups, "g", "c2", 1).await;
    assert_eq!((first[0].delivery_count, second[0].delivery_count), (1, 2));
    wait_until("the message is parked", DEADLINE, || {
        let groups = groups.clone();
        async move {
            // Timeouts are settled by fetches.
            let got = groups
                .fetch("g", "c3", 1, Duration::from_millis(100))
                .await
                .unwrap();
            assert!(got.is_empty(), "not delivered a third time: {got:?}");
            groups.status("g").await.unwrap().parked == 1
        }
    })
    .await;
    let parked = groups.parked("g", 0, 10).await.unwrap();
    assert_eq!(parked[0].consumer.as_deref(), Some("c2"));
    assert!(
        parked[0].reason.contains("ack timeout"),
        "{}",
        parked[0].reason
    );
}

#[tokio::test]
async fn retry_waits_its_backoff_and_skip_settles_without_redelivery() {
    let db = TestDatabase::create().await;
    let groups = process(&db).await;
    let settings = |backoff: Duration| GroupSettings {
        retry_backoff: backoff,
        retry_backoff_max: backoff,
        ..quick(30_000, 5)
    };
    groups
        .create(&GroupSpec::new("slow").settings(settings(Duration::from_secs(3600))))
        .await
        .unwrap();
    groups
        .create(&GroupSpec::new("fast").settings(settings(Duration::from_millis(100))))
        .await
        .unwrap();
    append(groups.store(), "order-1", "OrderPlaced", 2).await;

    // An hour's backoff: not handed out again meanwhile, still outstanding.
    let m = fetch_n(&groups, "slow", "c", 1).await;
    groups
        .nack("slow", "c", &[m[0].position()], NackAction::Retry, None)
        .await
        .unwrap();
    let next = fetch_n(&groups, "slow", "c", 1).await;
    assert_eq!(next[0].position(), 2, "the next one instead");
    assert!(groups
        .fetch("slow", "c", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    let status = groups.status("slow").await.unwrap();
    assert_eq!((status.waiting, status.in_flight), (1, 1));

    // A short backoff: back, on its second delivery.
    let m = fetch_n(&groups, "fast", "c", 1).await;
    groups
        .nack("fast", "c", &[m[0].position()], NackAction::Retry, None)
        .await
        .unwrap();
    let back = fetch_n(&groups, "fast", "c", 2).await;
    let got: Vec<(i64, u32)> = back
        .iter()
        .map(|m| (m.position(), m.delivery_count))
        .collect();
    assert!(got.contains(&(1, 2)), "{got:?}");

    // Skip: settled, counted, never delivered again.
    let skipped = groups
        .nack("fast", "c", &[1, 2], NackAction::Skip, None)
        .await
        .unwrap();
    assert_eq!(skipped.done, [1, 2]);
    let status = groups.status("fast").await.unwrap();
    assert_eq!(
        (status.skipped_total, status.lag_events, status.parked),
        (2, 0, 0)
    );
    assert!(groups
        .fetch("fast", "c", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    // A nack of what this consumer does not hold is stale.
    let stale = groups
        .nack("fast", "other", &[1], NackAction::Park, None)
        .await
        .unwrap();
    assert_eq!(stale.stale, [1]);
}

#[tokio::test]
async fn a_single_active_consumer_is_taken_over_once_it_stops_fetching() {
    let db = TestDatabase::create().await;
    let a = process(&db).await;
    let b = process(&db).await;
    a.create(
        &GroupSpec::new("g")
            .strategy(Strategy::SingleActive)
            .settings(quick(2_000, 5)),
    )
    .await
    .unwrap();
    append(a.store(), "order-1", "OrderPlaced", 3).await;
    append(a.store(), "order-2", "OrderPlaced", 3).await;

    let first = a
        .fetch("g", "one", 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|m| m.position()).collect::<Vec<_>>(),
        [1, 2]
    );
    // While "one" holds the group, "two" gets nothing, though messages wait.
    assert!(b
        .fetch("g", "two", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        a.status("g").await.unwrap().active_consumer.as_deref(),
        Some("one")
    );
    a.ack("g", "one", &[1]).await.unwrap();
    // "one" stops (2 unacked); "two" takes over after the lease lapses, from position 2 on.
    let rest = fetch_n(&b, "g", "two", 5).await;
    assert_eq!(
        rest.iter().map(|m| m.position()).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6],
        "in log order, the unacked one first"
    );
    assert_eq!(
        a.status("g").await.unwrap().active_consumer.as_deref(),
        Some("two")
    );
    // Now "one" is the one waiting.
    assert!(a
        .fetch("g", "one", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}
