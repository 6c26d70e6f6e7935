//! Pinned by stream: under concurrency, each stream's events reach consumers in stream
//! order, and never to two consumers at once.

use crate::common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_consumers::{GroupSettings, GroupSpec, Strategy};
use tidemark_testkit::TestDatabase;

/// Per stream: who holds messages of it now (and how many), and the next version due.
#[derive(Default)]
struct Streams {
    holder: HashMap<String, (String, usize)>,
    next_version: HashMap<String, i64>,
    done: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_by_stream_keeps_each_streams_order_and_one_consumer_at_a_time() {
    let db = TestDatabase::create().await;
    let a = process(&db).await;
    let b = process(&db).await;
    a.create(
        &GroupSpec::new("pinned")
            .strategy(Strategy::PinnedByStream)
            .settings(GroupSettings {
                max_in_flight: 6,
                ..GroupSettings::default()
            }),
    )
    .await
    .unwrap();
    let (streams, per_stream) = (8, 20);
    let mut writers = Vec::new();
    for s in 0..streams {
        let store = a.store().clone();
        writers.push(tokio::spawn(async move {
            append(&store, &format!("account-{s}"), "Moved", per_stream).await;
        }));
    }
    let total = streams * per_stream;
    let state: Arc<Mutex<Streams>> = Arc::default();
    let mut consumers = Vec::new();
    for c in 0..4 {
        let groups = if c % 2 == 0 { a.clone() } else { b.clone() };
        let state = state.clone();
        consumers.push(tokio::spawn(async move {
            let me = format!("c{c}");
            let give_up = tokio::time::Instant::now() + DEADLINE * 2;
            while state.lock().unwrap().done < total {
                assert!(tokio::time::Instant::now() < give_up, "all acked in time");
                let batch = groups
                    .fetch("pinned", &me, 4, Duration::from_millis(200))
                    .await
                    .expect("fetch");
                {
                    let mut st = state.lock().unwrap();
                    for m in &batch {
                        let stream = m.event.stream_id.clone();
                        let holder = st.holder.entry(stream.clone()).or_insert((me.clone(), 0));
                        assert_eq!(
                            holder.0, me,
                            "{stream} handed to {me} while {} held some of it",
                            holder.0
                        );
                        holder.1 += 1;
                        let next = st.next_version.entry(stream.clone()).or_insert(0);
                        assert_eq!(m.event.stream_version, *next, "{stream}'s events in order");
                        *next += 1;
                    }
                }
                // Process one stream's messages at a time, with pauses so others compete.
                for m in &batch {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    {
                        let mut st = state.lock().unwrap();
                        let stream = m.event.stream_id.clone();
                        let holder = st.holder.get_mut(&stream).expect("held");
                        holder.1 -= 1;
                        if holder.1 == 0 {
                            // Released before the ack commits: another consumer taking the
                            // stream before it does is what the assertion above catches.
                            st.holder.remove(&stream);
                        }
                        st.done += 1;
                    }
                    let o = groups
                        .ack("pinned", &me, &[m.position()])
                        .await
                        .expect("ack");
                    assert_eq!(o.done, [m.position()]);
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
    let st = state.lock().unwrap();
    assert_eq!(st.next_version.len(), streams);
    assert!(st.next_version.values().all(|v| *v == per_stream as i64));
}
