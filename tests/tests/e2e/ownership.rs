//! Partitions nobody owns are reported: a projection of the application whose worker pool
//! has no live process shows its partitions in GraphQL (`unownedPartitions`) and as the
//! `tidemark_projection_unowned_partitions` gauge once a lease period has passed, instead of
//! saying `running` while its lag grows.

use crate::common;

use async_trait::async_trait;
use common::*;
use serde_json::json;
use std::time::Duration;
use tidemark_api::TidemarkApp;
use tidemark_projections::{ApplyContext, Projection, ProjectionError, RecordedEvent};

/// Lease lifetime of the test server: unowned partitions are reported after one of these.
const LEASE_TTL: Duration = Duration::from_millis(600);

/// Counts events per stream, in pool `pool`.
struct Counts {
    name: &'static str,
    pool: &'static str,
}

#[async_trait]
impl Projection for Counts {
    fn name(&self) -> &str {
        self.name
    }

    fn pool(&self) -> &str {
        self.pool
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table(
            "counts",
            "stream_id text PRIMARY KEY, events bigint NOT NULL",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let sql = format!(
            "INSERT INTO {} AS c VALUES ($1, 1) ON CONFLICT (stream_id) DO UPDATE SET events = c.events + 1",
            ctx.table("counts")
        );
        for event in events {
            ctx.tx.execute(&sql, &[&event.stream_id]).await?;
        }
        Ok(())
    }
}

const QUERY: &str = "query($name: String!) { projection(name: $name) { status lagEvents unownedPartitions { partition unownedSeconds } } }";

#[tokio::test]
async fn partitions_of_a_projection_no_live_worker_runs_are_reported_in_graphql_and_metrics() {
    let app = spawn_app_with(
        TidemarkApp::builder()
            .projection(Counts {
                name: "served_counts",
                pool: "default",
            })
            .projection(Counts {
                name: "orphan_counts",
                pool: "nobody_runs_this_pool",
            })
            .build(),
        |config| {
            config.lease_ttl = LEASE_TTL;
            config.worker_timeout = LEASE_TTL;
        },
    )
    .await;
    app.append("s-1", json!([{ "type": "E", "data": {} }]))
        .await;

    let unowned = eventually("the orphan's partitions reported unowned", WAIT, || async {
        let data = app
            .graphql_data(QUERY, json!({ "name": "orphan_counts" }), Some(READ_KEY))
            .await;
        let unowned = data["projection"]["unownedPartitions"].as_array()?.clone();
        (unowned.len() == 4).then_some(unowned)
    })
    .await;
    let partitions: Vec<i64> = unowned
        .iter()
        .map(|u| u["partition"].as_i64().expect("a partition number"))
        .collect();
    assert_eq!(partitions, [0, 1, 2, 3]);
    for u in &unowned {
        let seconds = u["unownedSeconds"].as_f64().expect("a known time");
        assert!(seconds >= LEASE_TTL.as_secs_f64(), "{u}");
    }

    // The projection this process runs has an owner for every partition.
    let data = app
        .graphql_data(QUERY, json!({ "name": "served_counts" }), Some(READ_KEY))
        .await;
    assert_eq!(data["projection"]["unownedPartitions"], json!([]), "{data}");

    eventually("the unowned-partitions gauge", WAIT, || async {
        let (_, metrics) = app.get("/metrics").await;
        metrics
            .lines()
            .any(|l| l == "tidemark_projection_unowned_partitions{projection=\"orphan_counts\"} 4")
            .then_some(())
    })
    .await;
}
