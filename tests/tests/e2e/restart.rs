//! Restarting the server on the same database: the events are all there, and projections
//! resume from their checkpoints (no event applied twice, none skipped).

use crate::common;

use async_trait::async_trait;
use common::*;
use serde_json::json;
use tidemark_api::TidemarkApp;
use tidemark_projections::{ApplyContext, Projection, ProjectionError, RecordedEvent};

/// Counts applications per stream: applying an event twice would show.
struct AppliedCounts;

#[async_trait]
impl Projection for AppliedCounts {
    fn name(&self) -> &str {
        "applied_counts"
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table(
            "counts",
            "stream_id text PRIMARY KEY, applied bigint NOT NULL",
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
            "INSERT INTO {} AS c VALUES ($1, 1) ON CONFLICT (stream_id) DO UPDATE SET applied = c.applied + 1",
            ctx.table("counts")
        );
        for event in events {
            ctx.tx.execute(&sql, &[&event.stream_id]).await?;
        }
        Ok(())
    }
}

async fn applied(app: &TestApp) -> i64 {
    let client = app.tidemark.store().pool().get().await.unwrap();
    client
        .query_one(
            "SELECT coalesce(sum(applied), 0)::bigint FROM rm_applied_counts.counts",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_for(app: &TestApp, position: i64) {
    let body = app
        .graphql(
            "query($p: Int64!) { waitFor(projection: \"applied_counts\", position: $p, timeoutMs: 10000) { reached } }",
            json!({ "p": position }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(body["data"]["waitFor"]["reached"], true, "{body}");
}

#[tokio::test]
async fn after_a_restart_events_remain_and_projections_resume_from_checkpoints() {
    let builder = || TidemarkApp::builder().projection(AppliedCounts).build();
    let app = spawn_app_with(builder(), |_| {}).await;
    for i in 0..12 {
        app.append(
            &format!("r-{}", i % 5),
            json!([{ "type": "E", "data": { "i": i } }]),
        )
        .await;
    }
    wait_for(&app, 12).await;
    assert_eq!(applied(&app).await, 12);
    let before = app
        .graphql(
            "{ projection(name: \"applied_counts\") { checkpoint head lagEvents } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(before["data"]["projection"]["lagEvents"], 0, "{before}");

    let app = app.restart().await;

    // Everything appended is still there.
    let body = app
        .graphql(
            "{ events(first: 100) { events { position } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(
        body["data"]["events"]["events"].as_array().unwrap().len(),
        12
    );
    let body = app
        .graphql(
            "{ stream(id: \"r-0\") { version } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(body["data"]["stream"]["version"], 2);

    // The projection went on from its checkpoints: new events are applied once, old ones
    // are not applied again.
    app.append(
        "r-9",
        json!([{ "type": "E", "data": {} }, { "type": "E", "data": {} }]),
    )
    .await;
    // Once the read model reflects position 14 it has committed everything up to it; a
    // projection that had lost its checkpoints would have re-applied the old events first.
    wait_for(&app, 14).await;
    assert_eq!(applied(&app).await, 14);
    let after = app
        .graphql(
            "{ projection(name: \"applied_counts\") { checkpoint lagEvents status } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(after["data"]["projection"]["lagEvents"], 0, "{after}");
    assert_eq!(after["data"]["projection"]["status"], "running");
}

#[tokio::test]
async fn an_admin_rebuild_runs_in_the_background_and_reports_progress() {
    let app = spawn_app_with(
        TidemarkApp::builder().projection(AppliedCounts).build(),
        |_| {},
    )
    .await;
    for i in 0..30 {
        app.append(
            &format!("b-{}", i % 3),
            json!([{ "type": "E", "data": {} }]),
        )
        .await;
    }
    wait_for(&app, 30).await;
    let mut progress = app
        .subscribe(
            "subscription { projectionProgress(name: \"applied_counts\", intervalMs: 50) { status lastBuild { status eventsDone eventsTotal } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    let first = progress.next().await;
    assert_eq!(first["projectionProgress"]["status"], "running");

    let body = app
        .graphql(
            "mutation { rebuildProjection(name: \"applied_counts\") { kind projection } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(
        body["data"]["rebuildProjection"]["kind"], "REBUILD",
        "{body}"
    );
    let done = eventually("the rebuild to finish", WAIT, || async {
        let body = app
            .graphql(
                "{ projection(name: \"applied_counts\") { lastBuild { status eventsDone } } }",
                json!({}),
                Some(READ_KEY),
            )
            .await;
        let build = &body["data"]["projection"]["lastBuild"];
        (build["status"] == "done").then(|| build["eventsDone"].as_i64().unwrap())
    })
    .await;
    assert_eq!(done, 30);
    assert_eq!(applied(&app).await, 30);
    // The subscription saw the build.
    loop {
        let data = progress.next().await;
        if !data["projectionProgress"]["lastBuild"].is_null() {
            break;
        }
    }
}

/// A build already running anywhere (here: its build lock held by another session, as
/// another server process holds it) refuses a second at once with `BUILD_RUNNING`; a build
/// from a position must be confirmed, since it discards what the earlier events built.
#[tokio::test]
async fn a_second_rebuild_is_refused_while_a_build_holds_the_lock() {
    let app = spawn_app_with(
        TidemarkApp::builder().projection(AppliedCounts).build(),
        |_| {},
    )
    .await;
    for i in 0..5 {
        app.append(&format!("c-{i}"), json!([{ "type": "E", "data": {} }]))
            .await;
    }
    let unconfirmed = app
        .graphql(
            "mutation { rebuildProjection(name: \"applied_counts\", from: 3) { kind } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    let error = assert_error(&unconfirmed, "BAD_INPUT");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("discardEarlierEvents")),
        "{unconfirmed}"
    );

    let other_process = tidemark_testkit::connect(app.database()).await;
    other_process
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('tidemark.build.applied_counts.shadow', 0))",
            &[],
        )
        .await
        .expect("holding the build lock");
    for mutation in [
        "mutation { rebuildProjection(name: \"applied_counts\") { kind } }",
        "mutation { rebuildProjection(name: \"applied_counts\", from: 3, discardEarlierEvents: true) { kind } }",
    ] {
        let refused = app.graphql(mutation, json!({}), Some(ADMIN_KEY)).await;
        assert_error(&refused, "BUILD_RUNNING");
    }
    other_process
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended('tidemark.build.applied_counts.shadow', 0))",
            &[],
        )
        .await
        .expect("releasing the build lock");
    let started = app
        .graphql(
            "mutation { rebuildProjection(name: \"applied_counts\", from: 3, discardEarlierEvents: true) { kind fromPosition } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(
        started["data"]["rebuildProjection"]["kind"], "REPLAY",
        "{started}"
    );
    assert_eq!(started["data"]["rebuildProjection"]["fromPosition"], 3);
}

#[tokio::test]
async fn shutdown_drains_in_flight_appends() {
    let mut app = spawn_app().await;
    let appends: Vec<_> = (0..40)
        .map(|i| {
            let client = app.client.clone();
            let url = format!("{}/graphql", app.address);
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("authorization", format!("Bearer {APPEND_KEY}"))
                    .json(&json!({
                        "query": "mutation($s: String!) { appendEvents(streamId: $s, events: [{type: \"E\", data: {}}]) { lastPosition } }",
                        "variables": { "s": format!("drain-{i}") },
                    }))
                    .send()
                    .await
                    .ok()?;
                response.json::<serde_json::Value>().await.ok()
            })
        })
        .collect();
    // Stop as soon as one append has committed, with the others in flight.
    let store = app.tidemark.store().clone();
    eventually("a first append", WAIT, || async {
        (store.head_position().await.ok()? >= 1).then_some(())
    })
    .await;
    app.stop().await;
    let mut acknowledged = Vec::new();
    for append in appends {
        // A request the server never accepted fails to connect; one it accepted is answered.
        if let Some(body) = append.await.unwrap() {
            match body["data"]["appendEvents"]["lastPosition"].as_i64() {
                Some(position) => acknowledged.push(position),
                None => assert!(
                    matches!(error_code(&body), Some("OVERLOADED")),
                    "an accepted append failed: {body}"
                ),
            }
        }
    }
    // The committed one was answered: the drain waited for it.
    assert!(!acknowledged.is_empty());
    let app = app.restart().await;
    for position in acknowledged {
        let body = app
            .graphql(
                "query($a: Int64!) { events(after: $a, first: 1) { events { position } } }",
                json!({ "a": position - 1 }),
                Some(READ_KEY),
            )
            .await;
        assert_eq!(body["data"]["events"]["events"][0]["position"], position);
    }
}
