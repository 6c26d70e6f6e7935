use futures::StreamExt;
use serde_json::json;
use tidemark_store::*;

async fn fresh() -> EventStore {
    let name = format!("smoke_{}", uuid::Uuid::new_v4().simple());
    let (admin, conn) = tokio_postgres::connect(
        "host=127.0.0.1 user=postgres dbname=postgres",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let cfg: tokio_postgres::Config = format!("host=127.0.0.1 user=postgres dbname={name}")
        .parse()
        .unwrap();
    EventStore::open(cfg, StoreConfig::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke() {
    let store = fresh().await;
    let out = store
        .append(AppendRequest::new(
            "acct-1",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new("Opened", json!({"a":1})),
                NewEvent::new("Dep", json!({"x":2})),
            ],
        ))
        .await
        .unwrap();
    println!("{out:?}");
    let again = store
        .append(AppendRequest::new(
            "acct-1",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new("Opened", json!({"a":1})),
                NewEvent::new("Dep", json!({"x":2})),
            ],
        ))
        .await
        .unwrap();
    println!("{again:?}");
    assert!(again.all_duplicates());
    let err = store
        .append(AppendRequest::new(
            "acct-1",
            ExpectedVersion::Exact(5),
            vec![NewEvent::new("Dep", json!({"x":3}))],
        ))
        .await
        .unwrap_err();
    println!("{err}");
    let mut handles = vec![];
    for i in 0..200 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            s.append(AppendRequest::new(
                format!("s-{}", i % 7),
                ExpectedVersion::Any,
                vec![NewEvent::new("E", json!({"i": i}))],
            ))
            .await
            .unwrap()
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let evs = store.read_log(0, &LogFilter::all(), 10000).await.unwrap();
    assert_eq!(evs.len(), 202);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.position, i as i64 + 1);
    }
    let sub: Vec<_> = store
        .subscribe(SubscribeOptions::default())
        .take(202)
        .collect()
        .await;
    assert_eq!(sub.len(), 202);
    let s = store
        .read_stream("acct-1", None, Direction::Backward, 10)
        .await
        .unwrap();
    println!(
        "{:?}",
        s.iter().map(|e| e.stream_version).collect::<Vec<_>>()
    );
    store.shutdown().await;
}
