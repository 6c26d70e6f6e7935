//! The dashboard at `/ui` in a real headless Chromium, against the bank example (real
//! projections, a worker, registered schemas): it shows the server's own figures and
//! follows the log live; the stream browser reads a stream; a rebuild started from the page
//! (after its confirmation) completes; parked events are replayed from it; a read-only key cannot press the admin buttons, and
//! the server refuses the call when the page is forced to make it. Everything the page loads
//! comes from the server's origin.
//!
//! `screenshot_of_the_dashboard` (ignored) writes the README's picture:
//! `cargo test -p tidemark-tests --test e2e -- --ignored screenshot_of_the_dashboard`.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it).

use crate::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::TidemarkApp;
use tidemark_projections::{
    ApplyContext, EventSelector, Projection, ProjectionError, RecordedEvent,
};
use tidemark_testkit::browser::{Browser, Page};

/// How long the page may take to show something, on a two-core machine running the rest
/// of the suite (it refreshes every 2 s).
const PAGE_WAIT: Duration = Duration::from_secs(60);

const BALANCES: &str = "account_balances";

/// The bank on a fresh database, with a logging alert sink.
async fn bank() -> TestApp {
    spawn_app_with(
        tidemark_example_bank::app(Arc::new(tidemark_example_bank::LogAlerts)),
        |_| {},
    )
    .await
}

/// Opens `account` and deposits `amount` through the bank's commands; returns the position
/// of the deposit.
async fn open_and_deposit(app: &TestApp, account: &str, amount: i64) -> i64 {
    app.graphql_data(
        "mutation($a: String!) { openAccount(accountId: $a, owner: \"ann\") { position } }",
        json!({ "a": account }),
        Some(APPEND_KEY),
    )
    .await;
    deposit(app, account, amount).await
}

async fn deposit(app: &TestApp, account: &str, amount: i64) -> i64 {
    let data = app
        .graphql_data(
            "mutation($a: String!, $n: Int!) { deposit(accountId: $a, amount: $n) { position } }",
            json!({ "a": account, "n": amount }),
            Some(APPEND_KEY),
        )
        .await;
    data["deposit"]["position"]
        .as_i64()
        .expect("a deposit's position")
}

/// Chromium on the dashboard, with `key` entered in the page's key form as an operator
/// would (none: the page is left asking for one).
async fn open_dashboard(app: &TestApp, key: Option<&str>) -> (Browser, Page) {
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.set_viewport(1400, 1000).await;
    page.navigate(&format!("{}/ui", app.address)).await;
    page.wait_for(
        "the page to ask for a key",
        // Null-safe: the tab may still show about:blank.
        "(() => { const panel = document.getElementById('key-panel'); return !!panel && !panel.hidden; })()",
        PAGE_WAIT,
    )
    .await;
    if let Some(key) = key {
        page.type_into("#key-input", key).await;
        page.click("#key-form button[type=submit]").await;
        page.wait_for(
            "the key's role in the header",
            "document.getElementById('identity').dataset.role",
            PAGE_WAIT,
        )
        .await;
    }
    (browser, page)
}

/// Waits until the page has drawn the server's figures and the live tail's history, so
/// what follows is not moved by them while a test clicks.
async fn settled(page: &Page) {
    page.wait_for(
        "the figures, the projections and the live tail",
        "document.querySelector('#fig-head .value').dataset.value !== undefined
            && document.querySelector('tr[data-projection]') !== null
            && document.querySelector('#tail tr[data-position]') !== null",
        PAGE_WAIT,
    )
    .await;
}

/// Waits until `expression` (JavaScript) equals `expected`; returns it.
async fn wait_equal(page: &Page, what: &str, expression: &str, expected: Value) {
    let check = format!(
        "(() => {{ try {{ return JSON.stringify({expression}) === {wanted}; }} catch (e) {{ return false; }} }})()",
        wanted = serde_json::to_string(&expected.to_string()).expect("a JSON string"),
    );
    if tokio::time::timeout(PAGE_WAIT, async {
        while page.evaluate(&check).await != json!(true) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_err()
    {
        let seen = page.evaluate(expression).await;
        panic!(
            "timed out waiting for {what}: `{expression}` is {seen}, not {expected}; the page's \
             problems: {:?}",
            page.problems()
        );
    }
}

/// A figure's raw value (`data-value`) as a number.
fn figure(id: &str) -> String {
    format!("Number(document.querySelector('#{id} .value').dataset.value)")
}

/// A projection row's cell's raw value.
fn projection_cell(name: &str, class: &str) -> String {
    format!(
        "Number(document.querySelector('tr[data-projection=\"{name}\"] td.{class}').dataset.value)"
    )
}

fn rebuild_button(name: &str) -> String {
    format!("tr[data-projection=\"{name}\"] button[data-action=\"rebuild\"]")
}

/// The latest build of a projection, from the API (not the page).
async fn last_build(app: &TestApp, name: &str) -> Value {
    let data = app
        .graphql_data(
            "query($n: String!) { projection(name: $n) { lastBuild { id kind status } } }",
            json!({ "n": name }),
            Some(READ_KEY),
        )
        .await;
    data["projection"]["lastBuild"].clone()
}

/// Every request of the page went to the server itself (HTTP or WebSocket), or was a
/// `data:` URL, and the page had no problems (exceptions, console errors, CSP violations).
fn assert_clean_and_same_origin(page: &Page, port: u16) {
    let own = [
        format!("http://127.0.0.1:{port}/"),
        format!("ws://127.0.0.1:{port}/"),
    ];
    let urls = page.requested_urls();
    assert!(
        urls.iter().any(|url| url.contains("/ui/dashboard.js?v=")),
        "the dashboard's script was loaded: {urls:?}"
    );
    let elsewhere: Vec<&String> = urls
        .iter()
        .filter(|url| !url.starts_with("data:") && !own.iter().any(|o| url.starts_with(o)))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the page requested other origins: {elsewhere:?}"
    );
    let problems = page.problems();
    assert!(problems.is_empty(), "the page had problems: {problems:?}");
}

#[tokio::test]
async fn the_dashboard_shows_the_servers_figures_and_follows_the_log_live() {
    let app = bank().await;
    open_and_deposit(&app, "ui-1", 10_000).await;
    let head = deposit(&app, "ui-1", 2_500).await;

    let (browser, page) = open_dashboard(&app, Some(READ_KEY)).await;
    wait_equal(&page, "the log head", &figure("fig-head"), json!(head)).await;
    wait_equal(
        &page,
        "the balances' checkpoint at the head",
        &projection_cell(BALANCES, "checkpoint"),
        json!(head),
    )
    .await;
    wait_equal(
        &page,
        "no lag",
        &projection_cell(BALANCES, "lag-events"),
        json!(0),
    )
    .await;
    let identity = page
        .evaluate("document.getElementById('identity').textContent")
        .await;
    assert_eq!(identity, "read key “configured”");
    // The partitions the server was started with, the worker that is this server holding
    // leases, and the bank's registered schemas.
    wait_equal(&page, "the partitions", &figure("fig-partitions"), json!(4)).await;
    page.wait_for(
        "this server among the workers, with leases",
        "(() => { const row = [...document.querySelectorAll('#workers tr[data-worker]')]
              .find(r => r.textContent.includes('this node'));
            return row && row.querySelectorAll('.leases .chip').length > 0; })()",
        PAGE_WAIT,
    )
    .await;
    page.wait_for(
        "MoneyDeposited among the schemas",
        "document.querySelector('#schemas tr[data-event-type=\"MoneyDeposited\"]') !== null",
        PAGE_WAIT,
    )
    .await;
    // The live tail holds the history it started from...
    page.wait_for(
        "the last deposit in the live tail",
        &format!("document.querySelector('#tail tr[data-position=\"{head}\"]') !== null"),
        PAGE_WAIT,
    )
    .await;

    // ...and what is appended after the page loaded arrives over its WebSocket.
    let live = deposit(&app, "ui-1", 100).await;
    page.wait_for(
        "a deposit made after the page loaded, in the live tail",
        &format!(
            "(() => {{ const row = document.querySelector('#tail tr[data-position=\"{live}\"]');
                return row && row.textContent.includes('account-ui-1')
                    && row.textContent.includes('MoneyDeposited'); }})()"
        ),
        PAGE_WAIT,
    )
    .await;
    wait_equal(&page, "the new head", &figure("fig-head"), json!(live)).await;
    wait_equal(
        &page,
        "the balances' checkpoint at the new head",
        &projection_cell(BALANCES, "checkpoint"),
        json!(live),
    )
    .await;
    let websocket = format!("ws://127.0.0.1:{}/graphql", app.port);
    assert!(
        page.requested_urls().contains(&websocket),
        "the tail followed over {websocket}: {:?}",
        page.requested_urls()
    );
    assert_clean_and_same_origin(&page, app.port);
    browser.close().await;
}

#[tokio::test]
async fn the_stream_browser_lists_categories_and_streams_and_reads_a_stream() {
    let app = bank().await;
    open_and_deposit(&app, "browse-1", 700).await;
    open_and_deposit(&app, "browse-2", 900).await;

    let (browser, page) = open_dashboard(&app, Some(READ_KEY)).await;
    settled(&page).await;
    page.wait_for(
        "the account category",
        "document.querySelector('#categories [data-category=\"account\"]') !== null",
        PAGE_WAIT,
    )
    .await;
    page.click("#categories [data-category=\"account\"]").await;
    page.wait_for(
        "the account streams",
        "document.querySelector('#streams [data-stream=\"account-browse-2\"]') !== null",
        PAGE_WAIT,
    )
    .await;
    let listed = page
        .evaluate("[...document.querySelectorAll('#streams [data-stream]')].map(b => b.dataset.stream).sort()")
        .await;
    assert_eq!(listed, json!(["account-browse-1", "account-browse-2"]));

    page.click("#streams [data-stream=\"account-browse-2\"]")
        .await;
    wait_equal(
        &page,
        "the stream's events",
        "[...document.querySelectorAll('#stream-events .event')].map(e => [Number(e.dataset.version), e.querySelector('strong').textContent])",
        json!([[0, "AccountOpened"], [1, "MoneyDeposited"]]),
    )
    .await;
    let deposited = page
        .evaluate("JSON.parse(document.querySelectorAll('#stream-events .event pre.data')[1].textContent)")
        .await;
    assert_eq!(deposited["amount"], 900, "{deposited}");

    // A stream id typed in reads the same way.
    page.evaluate("document.getElementById('stream-input').value = ''")
        .await;
    page.type_into("#stream-input", "account-browse-1").await;
    page.click("#stream-form button[type=submit]").await;
    page.wait_for(
        "the typed stream's deposit",
        "(() => { const head = document.querySelector('#stream-events .stream-head');
            return head && head.textContent.includes('account-browse-1')
                && document.querySelectorAll('#stream-events .event').length === 2; })()",
        PAGE_WAIT,
    )
    .await;
    assert_clean_and_same_origin(&page, app.port);
    browser.close().await;
}

#[tokio::test]
async fn a_rebuild_started_from_the_page_after_confirmation_completes() {
    let app = bank().await;
    let head = open_and_deposit(&app, "rb-1", 4_200).await;
    let before = last_build(&app, BALANCES).await;

    let (browser, page) = open_dashboard(&app, Some(ADMIN_KEY)).await;
    wait_equal(
        &page,
        "the balances' checkpoint",
        &projection_cell(BALANCES, "checkpoint"),
        json!(head),
    )
    .await;
    let disabled = page
        .evaluate(&format!(
            "document.querySelector('{}').disabled",
            rebuild_button(BALANCES)
        ))
        .await;
    assert_eq!(disabled, json!(false), "an admin key may rebuild");

    // Cancelling the confirmation does nothing.
    page.click(&rebuild_button(BALANCES)).await;
    page.wait_for(
        "the confirmation",
        "!document.getElementById('confirm').hidden",
        PAGE_WAIT,
    )
    .await;
    let title = page
        .evaluate("document.getElementById('confirm-title').textContent")
        .await;
    assert_eq!(title, format!("Rebuild {BALANCES}?"));
    page.click("#confirm-cancel").await;
    page.wait_for(
        "the confirmation to close",
        "document.getElementById('confirm').hidden",
        PAGE_WAIT,
    )
    .await;
    assert_eq!(
        page.evaluate("document.getElementById('notice').hidden")
            .await,
        json!(true),
        "a cancelled rebuild sends nothing"
    );

    page.click(&rebuild_button(BALANCES)).await;
    page.wait_for(
        "the confirmation",
        "!document.getElementById('confirm').hidden",
        PAGE_WAIT,
    )
    .await;
    page.click("#confirm-ok").await;
    page.wait_for(
        "the rebuild's notice",
        &format!(
            "document.getElementById('notice-text').textContent === 'Rebuild of {BALANCES} started; its progress shows under Last build.'"
        ),
        PAGE_WAIT,
    )
    .await;

    // The server ran it to the end: a new build, done.
    let done = eventually_build_done(&app, &before).await;
    assert_eq!(done["kind"], "rebuild", "{done}");
    page.wait_for(
        "the finished rebuild in the projection's row",
        &format!(
            "(() => {{ const build = document.querySelector('tr[data-projection=\"{BALANCES}\"] .build');
                return build && build.classList.contains('build-done')
                    && build.textContent.startsWith('rebuild'); }})()"
        ),
        PAGE_WAIT,
    )
    .await;
    // The rebuilt read model answers as before.
    let data = app
        .graphql_data(
            "query($p: Int64!) { account(id: \"rb-1\") @waitFor(projection: \"account_balances\", position: $p) { balance } }",
            json!({ "p": head }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(data["account"]["balance"], 4_200);
    assert_clean_and_same_origin(&page, app.port);
    browser.close().await;
}

/// Waits for a build of the balances newer than `before` to be done; returns it.
async fn eventually_build_done(app: &TestApp, before: &Value) -> Value {
    let give_up = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        let build = last_build(app, BALANCES).await;
        let newer = !build.is_null() && build["id"] != before["id"];
        if newer {
            assert_ne!(build["status"], "failed", "the rebuild failed: {build}");
            if build["status"] == "done" {
                return build;
            }
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no rebuild finished within {PAGE_WAIT:?}; the last build is {build}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_read_only_key_cannot_press_admin_buttons_and_a_forced_call_is_refused() {
    let app = bank().await;
    let head = open_and_deposit(&app, "ro-1", 300).await;
    let before = last_build(&app, BALANCES).await;

    // Without a key the page asks for one and shows nothing of the server.
    let (browser, page) = open_dashboard(&app, None).await;
    let problem = page
        .evaluate("document.getElementById('key-problem').textContent")
        .await;
    assert_eq!(problem, "This server needs an API key.");
    assert_eq!(
        page.evaluate("document.querySelector('tr[data-projection]') === null")
            .await,
        json!(true)
    );

    page.type_into("#key-input", READ_KEY).await;
    page.click("#key-form button[type=submit]").await;
    wait_equal(
        &page,
        "the balances' checkpoint",
        &projection_cell(BALANCES, "checkpoint"),
        json!(head),
    )
    .await;
    let buttons = page
        .evaluate(
            "[...document.querySelectorAll('#projections button.admin')].map(b => [b.dataset.action, b.disabled, b.title])",
        )
        .await;
    let buttons = buttons.as_array().expect("a list");
    assert!(buttons.len() >= 2, "{buttons:?}");
    for button in buttons {
        assert_eq!(
            button[1],
            json!(true),
            "every admin button is disabled: {button}"
        );
        assert_eq!(button[2], "needs an API key with the admin role");
    }
    // Pressing it as a person would does nothing (the same click opens the confirmation
    // for an admin key, see the rebuild test).
    page.click(&rebuild_button(BALANCES)).await;
    assert_eq!(
        page.evaluate("document.getElementById('confirm').hidden")
            .await,
        json!(true),
        "a disabled button opens no confirmation"
    );

    // Forced: enabled by hand and pressed, the page sends the mutation and the server
    // refuses it, which the page shows.
    page.evaluate(&format!(
        "(() => {{ const b = document.querySelector('{}'); b.disabled = false; b.click(); }})()",
        rebuild_button(BALANCES)
    ))
    .await;
    page.wait_for(
        "the confirmation",
        "!document.getElementById('confirm').hidden",
        PAGE_WAIT,
    )
    .await;
    page.click("#confirm-ok").await;
    let notice = page
        .wait_for(
            "the refusal in the page",
            "(() => { const n = document.getElementById('notice');
                return !n.hidden && n.classList.contains('error') ? n.textContent : null; })()",
            PAGE_WAIT,
        )
        .await;
    let notice = notice.as_str().expect("text");
    assert!(
        notice.starts_with("FORBIDDEN: this needs the admin role; the API key has the read role"),
        "{notice}"
    );
    assert_eq!(
        last_build(&app, BALANCES).await["id"],
        before["id"],
        "nothing was rebuilt"
    );
    assert_clean_and_same_origin(&page, app.port);
    browser.close().await;
}

/// A projection of the `fragile` category that refuses `Poison` events while `broken`:
/// they are retried, then parked; once fixed, a replay applies them.
struct Fragile {
    broken: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Projection for Fragile {
    fn name(&self) -> &str {
        "fragile"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::categories(["fragile"])
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table("applied", "position bigint PRIMARY KEY")
            .await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let insert = format!(
            "INSERT INTO {} (position) VALUES ($1)",
            ctx.table("applied")
        );
        for event in events {
            if event.event_type == "Poison" && self.broken.load(Ordering::SeqCst) {
                return Err(ProjectionError::failed("refusing a poison event"));
            }
            ctx.tx.execute(&insert, &[&event.position]).await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn parked_events_are_replayed_from_the_page_after_confirmation() {
    let broken = Arc::new(AtomicBool::new(true));
    let app = spawn_app_with(
        TidemarkApp::builder()
            .projection(Fragile {
                broken: broken.clone(),
            })
            .build(),
        |_| {},
    )
    .await;
    app.append("fragile-1", json!([{ "type": "Fine", "data": {} }]))
        .await;
    let poison = app
        .append("fragile-1", json!([{ "type": "Poison", "data": {} }]))
        .await["lastPosition"]
        .as_i64()
        .expect("a position");

    let (browser, page) = open_dashboard(&app, Some(ADMIN_KEY)).await;
    wait_equal(
        &page,
        "the parked poison event",
        &projection_cell("fragile", "parked"),
        json!(1),
    )
    .await;
    wait_equal(&page, "the parked figure", &figure("fig-parked"), json!(1)).await;
    broken.store(false, Ordering::SeqCst);

    let replay = "tr[data-projection=\"fragile\"] button[data-action=\"replay\"]";
    page.click(replay).await;
    page.wait_for(
        "the confirmation",
        "!document.getElementById('confirm').hidden",
        PAGE_WAIT,
    )
    .await;
    let text = page
        .evaluate("document.getElementById('confirm-text').textContent")
        .await;
    assert!(
        text.as_str()
            .is_some_and(|t| t.starts_with("1 parked event of fragile will be applied again")),
        "{text}"
    );
    page.click("#confirm-ok").await;
    page.wait_for(
        "the replay's notice",
        "document.getElementById('notice-text').textContent === 'Replayed 1 parked event of fragile.'",
        PAGE_WAIT,
    )
    .await;
    wait_equal(
        &page,
        "nothing parked any more",
        &projection_cell("fragile", "parked"),
        json!(0),
    )
    .await;
    // The read model now holds the poison event, applied by the replay.
    let rows = app
        .tidemark
        .store()
        .pool()
        .get()
        .await
        .expect("a connection")
        .query_one(
            "SELECT count(*) FROM rm_fragile.applied WHERE position = $1",
            &[&poison],
        )
        .await
        .expect("the read model");
    assert_eq!(rows.get::<_, i64>(0), 1);
    assert_clean_and_same_origin(&page, app.port);
    browser.close().await;
}

#[tokio::test]
async fn the_dashboard_and_its_assets_are_served_under_the_pages_policy() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(format!("{}/ui", app.address))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII")
        .to_string();
    let graphiql = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(
        graphiql.headers()["content-security-policy"],
        policy.as_str(),
        "the same policy as GraphiQL's"
    );
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await.expect("a body");
    let assets: Vec<&str> = html
        .split("\"ui/")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').expect("a closed attribute")])
        .collect();
    assert_eq!(assets.len(), 2, "{html}");
    for asset in assets {
        let response = app
            .client
            .get(format!("{}/ui/{asset}", app.address))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{asset}"
        );
    }
    let (status, body) = app.get("/ui/nope.js").await;
    assert_eq!(status, 404, "{body}");

    // `/ui/` would resolve the page's relative URLs under `/ui/ui/`: it is sent to `/ui`.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let slash = no_redirects
        .get(format!("{}/ui/", app.address))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(slash.status(), 308);
    assert_eq!(slash.headers()["location"], "../ui");
}

/// Writes `docs/images/ui-dashboard.png`, the README's picture of the dashboard: the bank
/// with some accounts and orders, a finished rebuild, and the log followed live.
#[tokio::test]
#[ignore = "writes docs/images/ui-dashboard.png; run when the page changes"]
async fn screenshot_of_the_dashboard() {
    let app = bank().await;
    for n in 1..=6 {
        let account = format!("acc-{n}");
        open_and_deposit(&app, &account, 10_000 * n).await;
        for k in 0..n {
            deposit(&app, &account, 250 * (k + 1)).await;
        }
    }
    app.graphql_data(
        "mutation { rebuildProjection(name: \"category_totals\") { projection } }",
        json!({}),
        Some(ADMIN_KEY),
    )
    .await;
    let (browser, page) = open_dashboard(&app, Some(ADMIN_KEY)).await;
    let head = deposit(&app, "acc-1", 999).await;
    wait_equal(
        &page,
        "the balances at the head",
        &projection_cell(BALANCES, "checkpoint"),
        json!(head),
    )
    .await;
    page.click("#categories [data-category=\"account\"]").await;
    page.wait_for(
        "the account streams",
        "document.querySelector('#streams [data-stream=\"account-acc-3\"]') !== null",
        PAGE_WAIT,
    )
    .await;
    page.click("#streams [data-stream=\"account-acc-3\"]").await;
    page.wait_for(
        "the stream's events",
        "document.querySelectorAll('#stream-events .event').length > 2",
        PAGE_WAIT,
    )
    .await;
    page.click(&format!("[data-expand=\"{BALANCES}\"]")).await;
    page.wait_for(
        "the balances' partitions",
        "document.querySelector('.partitions-row') !== null",
        PAGE_WAIT,
    )
    .await;
    page.evaluate("window.scrollTo(0, 0)").await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("docs/images/ui-dashboard.png");
    page.screenshot(&path).await;
    browser.close().await;
}
