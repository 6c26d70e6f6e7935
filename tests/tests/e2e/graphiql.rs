//! GraphiQL in a real headless Chromium: the page the server serves at `/` renders from the
//! binary alone (no request leaves the server's origin, and its Content-Security-Policy
//! refuses other origins), and a query run from the page, as a person would (key in the
//! Headers editor, press the run button), shows the server's data in the result pane.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it).

use crate::common::{spawn_app, READ_KEY};
use serde_json::{json, Value};
use std::time::Duration;
use tidemark_testkit::browser::{Browser, Page};

/// How long the page may take to show something: loading and compiling a megabyte of
/// GraphiQL takes seconds on a two-core machine that runs the rest of the suite meanwhile.
const WAIT: Duration = Duration::from_secs(60);

/// The result pane's text: GraphiQL's response editor is CodeMirror 5, whose element
/// carries the editor (`.CodeMirror`), so the whole text is read, not just what is visible.
const RESPONSE_TEXT: &str = "(() => {
    const element = document.querySelector('.graphiql-response .CodeMirror');
    return element && element.CodeMirror ? element.CodeMirror.getValue() : null;
})()";

#[tokio::test]
async fn graphiql_renders_from_the_binary_and_runs_a_query_from_the_page() {
    let app = spawn_app().await;
    let stream = format!("browser-{}", uuid::Uuid::new_v4().simple());
    let marker = format!("seen-in-graphiql-{}", uuid::Uuid::new_v4().simple());
    app.append(
        &stream,
        json!([{ "type": "PageVisited", "data": { "marker": marker } }]),
    )
    .await;

    let query = format!("{{ stream(id: \"{stream}\") {{ streamId events {{ type data }} }} }}");
    let (browser, page) = open_graphiql(&app.address, &query).await;
    run_with_key(&page, READ_KEY).await;
    let response = response_containing(&page, &marker).await;
    assert_eq!(
        response,
        json!({ "data": { "stream": {
            "streamId": stream,
            "events": [{ "type": "PageVisited", "data": { "marker": marker } }],
        } } })
    );

    assert_only_own_origin(&page, app.port);
    let problems = page.problems();
    assert!(problems.is_empty(), "the page had problems: {problems:?}");

    // The policy is enforced by the browser: a script on the page cannot reach another
    // origin, and the attempt is one of the page's problems (so the check above would
    // have seen any request the page itself made elsewhere).
    let blocked = page
        .evaluate(
            "new Promise(resolve => {
                document.addEventListener('securitypolicyviolation',
                    event => resolve(event.violatedDirective + ' ' + event.blockedURI), { once: true });
                fetch('http://127.0.0.2:9/elsewhere').catch(() => {});
            })",
        )
        .await;
    assert_eq!(blocked, "connect-src http://127.0.0.2:9/elsewhere");
    tidemark_testkit::wait_until("the violation among the page's problems", WAIT, || async {
        page.problems()
            .iter()
            .any(|problem| problem.contains("127.0.0.2:9"))
    })
    .await;

    browser.close().await;
}

#[tokio::test]
async fn a_subscription_started_in_graphiql_shows_history_then_live_events() {
    let app = spawn_app().await;
    let category = format!("watch{}", uuid::Uuid::new_v4().simple());
    let first = format!("{category}-1");
    app.append(&first, json!([{ "type": "Opened", "data": {} }]))
        .await;

    let query = format!(
        "subscription {{ events(after: 0, category: \"{category}\") {{ streamId type }} }}"
    );
    let (browser, page) = open_graphiql(&app.address, &query).await;
    run_with_key(&page, READ_KEY).await;
    let history = response_containing(&page, "Opened").await;
    assert_eq!(
        history,
        json!({ "data": { "events": { "streamId": first, "type": "Opened" } } })
    );

    // Appended after the subscription started: it arrives over the page's WebSocket.
    let second = format!("{category}-2");
    app.append(&second, json!([{ "type": "Deposited", "data": {} }]))
        .await;
    let live = response_containing(&page, "Deposited").await;
    assert_eq!(
        live,
        json!({ "data": { "events": { "streamId": second, "type": "Deposited" } } })
    );

    let websocket = format!("ws://127.0.0.1:{}/graphql", app.port);
    assert!(
        page.requested_urls().contains(&websocket),
        "the subscription ran over {websocket}: {:?}",
        page.requested_urls()
    );
    assert_only_own_origin(&page, app.port);
    let problems = page.problems();
    assert!(problems.is_empty(), "the page had problems: {problems:?}");
    browser.close().await;
}

/// Chromium on GraphiQL with `query` in the URL, once the editor shows it.
async fn open_graphiql(address: &str, query: &str) -> (Browser, Page) {
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.navigate(&format!("{address}/?query={}", percent_encode(query)))
        .await;
    let shown = page
        .wait_for(
            "GraphiQL's query editor with the query from the URL",
            "(() => {
                const element = document.querySelector('.graphiql-container .graphiql-query-editor .CodeMirror');
                return element && element.CodeMirror ? element.CodeMirror.getValue() : null;
            })()",
            WAIT,
        )
        .await;
    assert_eq!(shown, Value::String(query.to_string()));
    (browser, page)
}

/// Types the key into the Headers editor, as an operator would, and presses run.
async fn run_with_key(page: &Page, key: &str) {
    page.evaluate(
        "[...document.querySelectorAll('.graphiql-editor-tools button')]
            .find(button => button.textContent.trim() === 'Headers').click()",
    )
    .await;
    let headers = json!({ "Authorization": format!("Bearer {key}") }).to_string();
    page.wait_for(
        "the Headers editor",
        &format!(
            "(() => {{
                const element = document.querySelector('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror');
                if (!element || !element.CodeMirror) return false;
                element.CodeMirror.setValue({headers});
                return true;
            }})()",
            headers = serde_json::to_string(&headers).expect("a JSON string")
        ),
        WAIT,
    )
    .await;
    page.evaluate("document.querySelector('.graphiql-execute-button').click()")
        .await;
}

/// The result pane as JSON, once its text contains `needle`.
async fn response_containing(page: &Page, needle: &str) -> Value {
    let text = page
        .wait_for(
            &format!("the result pane to show {needle}"),
            &format!(
                "(() => {{ const text = {RESPONSE_TEXT}; return text && text.includes({needle:?}) ? text : null; }})()"
            ),
            WAIT,
        )
        .await;
    serde_json::from_str(text.as_str().expect("text")).expect("the result pane is JSON")
}

#[tokio::test]
async fn the_graphiql_page_and_its_assets_carry_policy_types_and_cache_headers() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII")
        .to_string();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.expect("a body");

    let assets: Vec<&str> = html
        .split("\"assets/")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').expect("a closed attribute")])
        .collect();
    assert_eq!(assets.len(), 6, "{html}");
    for asset in assets {
        let response = app
            .client
            .get(format!("{}/assets/{asset}", app.address))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.status(), 200, "{asset}");
        let expected_type = if asset.contains(".css?") {
            "text/css; charset=utf-8"
        } else {
            "text/javascript; charset=utf-8"
        };
        assert_eq!(response.headers()["content-type"], expected_type, "{asset}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{asset}"
        );
        assert!(!response.bytes().await.expect("a body").is_empty());
    }

    let (status, body) = app.get("/assets/nope.js").await;
    assert_eq!(status, 404, "{body}");
}

/// Every request of the page went to the server itself (HTTP or WebSocket), or was a
/// `data:` URL; none to a CDN or anywhere else.
fn assert_only_own_origin(page: &Page, port: u16) {
    let urls = page.requested_urls();
    assert!(
        urls.iter()
            .any(|url| url.contains("/assets/graphiql.min.js?v=")),
        "GraphiQL's script was loaded: {urls:?}"
    );
    let own = [
        format!("http://127.0.0.1:{port}/"),
        format!("ws://127.0.0.1:{port}/"),
    ];
    let elsewhere: Vec<&String> = urls
        .iter()
        .filter(|url| !url.starts_with("data:") && !own.iter().any(|o| url.starts_with(o)))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the page requested other origins: {elsewhere:?}"
    );
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
