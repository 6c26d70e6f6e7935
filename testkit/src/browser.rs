//! A real headless Chromium, driven over the Chrome DevTools Protocol (CDP), for tests of the
//! pages the server serves: they load in a browser as a person would see them, scripts run,
//! and the test reads the DOM and every request the page made. It acts as a person does too:
//! [`Page::click`] is a real mouse click (a disabled button ignores it), [`Page::type_into`]
//! types, and [`Page::screenshot`] saves what the page looks like.
//!
//! ```ignore
//! let browser = Browser::launch().await;
//! let page = browser.new_page().await;
//! page.navigate("http://127.0.0.1:8080/").await;
//! page.wait_for("the editor", "document.querySelector('.CodeMirror') !== null", WAIT).await;
//! assert!(page.requested_urls().iter().all(|url| url.starts_with("http://127.0.0.1:8080/")));
//! page.click("button.run").await;
//! page.screenshot(Path::new("page.png")).await;
//! browser.close().await;
//! ```
//!
//! Chromium is Debian's `chromium` package (`/usr/bin/chromium`, or `TIDEMARK_CHROMIUM`),
//! started with `--remote-debugging-port=0`; it prints the WebSocket URL of its DevTools
//! endpoint on stderr. Each page is a target attached in flat mode, so one WebSocket carries
//! every page's commands and events. The browser runs in a process group of its own, which
//! is killed when the [`Browser`] is dropped, so a failing test leaves no browser behind.

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Names the Chromium executable to use instead of the default.
pub const CHROMIUM_ENV: &str = "TIDEMARK_CHROMIUM";

/// Where Debian's `chromium` package puts it.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// How long Chromium may take to open its DevTools endpoint.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one protocol command may take (a navigation answers once the request is sent).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How many lines of Chromium's stderr are kept, to explain a failure.
const STDERR_LINES: usize = 40;

/// The Chromium executable: `TIDEMARK_CHROMIUM` if set, else Debian's, else `chromium` on
/// `PATH`; an error telling how to install it when there is none.
pub fn chromium_path() -> Result<PathBuf, String> {
    find_chromium(
        std::env::var_os(CHROMIUM_ENV).map(PathBuf::from),
        Path::new(DEFAULT_CHROMIUM),
        std::env::var_os("PATH"),
    )
}

fn find_chromium(
    configured: Option<PathBuf>,
    default: &Path,
    search_path: Option<std::ffi::OsString>,
) -> Result<PathBuf, String> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{CHROMIUM_ENV} names {}, which is not a file; point it at a Chromium \
                 executable or unset it to use {DEFAULT_CHROMIUM}",
                path.display()
            ))
        };
    }
    let on_path = search_path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"));
    std::iter::once(default.to_path_buf())
        .chain(on_path)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "the browser tests need headless Chromium, which is not installed (no \
                 {DEFAULT_CHROMIUM}, no `chromium` on PATH): install it with \
                 `apt-get install -y chromium` (as root; `.ci/run` does this on a fresh \
                 machine), or set {CHROMIUM_ENV} to a Chromium executable"
            )
        })
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    /// The process group Chromium and its helpers run in (Chromium's pid).
    group: Option<i32>,
    connection: Arc<Connection>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Deleted after the browser is gone.
    _profile: tempfile::TempDir,
}

/// One protocol connection: commands waiting for their answers, and every event so far.
struct Connection {
    outgoing: mpsc::UnboundedSender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    events: Mutex<Vec<Value>>,
    next_id: AtomicU64,
}

impl Browser {
    /// Starts Chromium headless with a fresh profile; panics, saying how to install it, when
    /// it is not installed, and with its stderr when it does not start.
    pub async fn launch() -> Browser {
        let executable = chromium_path().unwrap_or_else(|message| panic!("{message}"));
        let profile = tempfile::tempdir().expect("a temporary profile directory");
        let mut child = Command::new(&executable)
            .args([
                "--headless",
                // Tests run as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                // Nothing but the page's own requests: no updates, no safe browsing lookups.
                "--disable-background-networking",
                // A container's /dev/shm is often too small for Chromium's shared memory.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--mute-audio",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", executable.display()));
        let group = child.id().and_then(|pid| i32::try_from(pid).ok());
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let endpoint = tokio::time::timeout(LAUNCH_TIMEOUT, devtools_url(&mut lines, &stderr))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "Chromium printed no DevTools URL within {LAUNCH_TIMEOUT:?}; its stderr:\n{}",
                    tail(&stderr)
                )
            })
            .unwrap_or_else(|| {
                panic!(
                    "Chromium exited before opening its DevTools endpoint; its stderr:\n{}",
                    tail(&stderr)
                )
            });
        // Keep reading stderr: a full pipe would stall the browser.
        let drain = tokio::spawn(keep_tail(lines, stderr.clone()));
        let (socket, _) =
            tokio::time::timeout(LAUNCH_TIMEOUT, tokio_tungstenite::connect_async(&endpoint))
                .await
                .expect("the DevTools endpoint answers in time")
                .unwrap_or_else(|e| panic!("could not connect to Chromium at {endpoint}: {e}"));
        let (mut sink, mut source) = socket.split();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<String>();
        let connection = Arc::new(Connection {
            outgoing,
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let writer = tokio::spawn(async move {
            while let Some(text) = to_send.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });
        let reader = {
            let connection = connection.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = source.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    match value["id"].as_u64() {
                        Some(id) => {
                            let waiting = lock(&connection.pending).remove(&id);
                            if let Some(waiting) = waiting {
                                let _ = waiting.send(value);
                            }
                        }
                        None => lock(&connection.events).push(value),
                    }
                }
                // Whoever still waits learns the connection is gone.
                lock(&connection.pending).clear();
            })
        };
        Browser {
            child,
            group,
            connection,
            stderr,
            tasks: vec![drain, writer, reader],
            _profile: profile,
        }
    }

    /// A new tab on `about:blank`, recording its network, console and runtime events.
    pub async fn new_page(&self) -> Page {
        let created = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = created["targetId"]
            .as_str()
            .expect("Target.createTarget returns a targetId")
            .to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session_id = attached["sessionId"]
            .as_str()
            .expect("Target.attachToTarget returns a sessionId")
            .to_string();
        let page = Page {
            connection: self.connection.clone(),
            stderr: self.stderr.clone(),
            session_id,
        };
        for domain in ["Page", "Runtime", "Network", "Log"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        call(&self.connection, &self.stderr, session, method, params).await
    }

    /// Asks Chromium to quit and waits for it; kills its process group if it does not.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            CALL_TIMEOUT,
            send(&self.connection, None, "Browser.close", json!({})),
        )
        .await;
        let _ = tokio::time::timeout(CALL_TIMEOUT, self.child.wait()).await;
        // Drop kills what is left of the group.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            // Chromium's helpers (renderer, GPU, zygote) are in its group, which is ours alone.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.start_kill();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One tab, attached to the browser's connection.
pub struct Page {
    connection: Arc<Connection>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    session_id: String,
}

impl Page {
    /// Sends a protocol command to this tab; panics on a protocol error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        call(
            &self.connection,
            &self.stderr,
            Some(&self.session_id),
            method,
            params,
        )
        .await
    }

    /// Loads `url`; panics when the browser cannot (e.g. connection refused). It does not
    /// wait for scripts: wait for what the page should show with [`Page::wait_for`].
    pub async fn navigate(&self, url: &str) {
        let answer = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = answer["errorText"].as_str() {
            panic!("the browser could not load {url}: {error}");
        }
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise) and returns its
    /// value as JSON; panics when it throws.
    pub async fn evaluate(&self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(details) = answer.get("exceptionDetails") {
            panic!("`{expression}` threw in the page: {details}");
        }
        answer["result"]["value"].clone()
    }

    /// Evaluates `expression` until its value is truthy (not null, false, 0 or ""), and
    /// returns that value; panics naming `what` after `within`, with what the page logged.
    pub async fn wait_for(&self, what: &str, expression: &str, within: Duration) -> Value {
        let give_up = tokio::time::Instant::now() + within;
        let mut pause = Duration::from_millis(10);
        loop {
            let value = self.evaluate(expression).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "timed out after {within:?} waiting for {what} (`{expression}`); the page's \
                 problems: {:?}; its requests: {:?}",
                self.problems(),
                self.requested_urls()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Clicks the element `selector` names as a person would: scrolled into view, then a
    /// real mouse press and release at its centre (so a disabled button ignores it, and an
    /// element covered by another is not reached). Waits, up to `CALL_TIMEOUT`, until the
    /// element is there, has kept its place for 50 ms and is what is at its centre
    /// (a page still laying out would move it under the pointer); panics otherwise.
    pub async fn click(&self, selector: &str) {
        let selector_js = serde_json::to_string(selector).expect("a JSON string");
        let centre = self
            .wait_for(
                &format!("{selector} to be clickable"),
                &format!(
                    "(async () => {{
                        const element = document.querySelector({selector_js});
                        if (!element) return null;
                        element.scrollIntoView({{ block: 'center', inline: 'center' }});
                        const frame = () => new Promise(resolve => setTimeout(resolve, 50));
                        const place = () => {{
                            const box = element.getBoundingClientRect();
                            return [box.left + box.width / 2, box.top + box.height / 2];
                        }};
                        await frame();
                        const first = place();
                        await frame();
                        const second = place();
                        if (first[0] !== second[0] || first[1] !== second[1]) return null;
                        const hit = document.elementFromPoint(second[0], second[1]);
                        return hit && (hit === element || element.contains(hit)) ? second : null;
                    }})()"
                ),
                CALL_TIMEOUT,
            )
            .await;
        let (Some(x), Some(y)) = (centre[0].as_f64(), centre[1].as_f64()) else {
            panic!("{selector} has no centre: {centre}");
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Types `text` into the element `selector` names (focused first), one key event per
    /// character as a keyboard would. Panics when nothing matches.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let selector_js = serde_json::to_string(selector).expect("a JSON string");
        let found = self
            .evaluate(&format!(
                "(() => {{
                    const element = document.querySelector({selector_js});
                    if (!element) return false;
                    element.focus();
                    return document.activeElement === element;
                }})()"
            ))
            .await;
        assert_eq!(found, json!(true), "nothing focusable matches {selector}");
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Sets the tab's viewport (CSS pixels, at scale 1).
    pub async fn set_viewport(&self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    }

    /// A PNG of the whole page (not only the viewport), written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let answer = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let encoded = answer["data"]
            .as_str()
            .expect("Page.captureScreenshot returns data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("the screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("could not create {}: {e}", dir.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
    }

    /// The `params` of every event `method` this tab has had so far.
    pub fn events(&self, method: &str) -> Vec<Value> {
        lock(&self.connection.events)
            .iter()
            .filter(|event| event["sessionId"] == self.session_id.as_str())
            .filter(|event| event["method"] == method)
            .map(|event| event["params"].clone())
            .collect()
    }

    /// Every URL this tab requested or opened a WebSocket to, in order.
    pub fn requested_urls(&self) -> Vec<String> {
        lock(&self.connection.events)
            .iter()
            .filter(|event| event["sessionId"] == self.session_id.as_str())
            .filter_map(|event| match event["method"].as_str() {
                Some("Network.requestWillBeSent") => event["params"]["request"]["url"].as_str(),
                Some("Network.webSocketCreated") => event["params"]["url"].as_str(),
                _ => None,
            })
            .map(str::to_string)
            .collect()
    }

    /// What went wrong in the page so far: uncaught exceptions, console errors, browser log
    /// errors (failed loads, Content-Security-Policy violations) and failed requests.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for params in self.events("Runtime.exceptionThrown") {
            problems.push(format!("exception: {}", params["exceptionDetails"]));
        }
        for params in self.events("Runtime.consoleAPICalled") {
            if params["type"] == "error" {
                problems.push(format!("console.error: {}", params["args"]));
            }
        }
        for params in self.events("Log.entryAdded") {
            if params["entry"]["level"] == "error" {
                problems.push(format!(
                    "log: {} ({})",
                    params["entry"]["text"], params["entry"]["url"]
                ));
            }
        }
        for params in self.events("Network.loadingFailed") {
            problems.push(format!(
                "request failed: {} {}",
                params["errorText"], params["blockedReason"]
            ));
        }
        problems
    }
}

/// Reads stderr until Chromium names its DevTools endpoint; `None` when stderr closes first.
async fn devtools_url(
    lines: &mut tokio::io::Lines<BufReader<ChildStderr>>,
    stderr: &Mutex<VecDeque<String>>,
) -> Option<String> {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(url) = line.strip_prefix("DevTools listening on ") {
            return Some(url.trim().to_string());
        }
        remember(stderr, line);
    }
    None
}

async fn keep_tail(
    mut lines: tokio::io::Lines<BufReader<ChildStderr>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        remember(&stderr, line);
    }
}

fn remember(stderr: &Mutex<VecDeque<String>>, line: String) {
    let mut lines = lock(stderr);
    if lines.len() == STDERR_LINES {
        lines.pop_front();
    }
    lines.push_back(line);
}

fn tail(stderr: &Mutex<VecDeque<String>>) -> String {
    lock(stderr).iter().cloned().collect::<Vec<_>>().join("\n")
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends a command; the answer (`{"id", "result"}` or `{"id", "error"}`), or `None` when
/// the connection closed first.
async fn send(
    connection: &Connection,
    session: Option<&str>,
    method: &str,
    params: Value,
) -> Option<Value> {
    let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
    let mut message = json!({ "id": id, "method": method, "params": params });
    if let Some(session) = session {
        message["sessionId"] = session.into();
    }
    let (answer, answered) = oneshot::channel();
    lock(&connection.pending).insert(id, answer);
    connection.outgoing.send(message.to_string()).ok()?;
    answered.await.ok()
}

async fn call(
    connection: &Connection,
    stderr: &Mutex<VecDeque<String>>,
    session: Option<&str>,
    method: &str,
    params: Value,
) -> Value {
    let answer = tokio::time::timeout(CALL_TIMEOUT, send(connection, session, method, params))
        .await
        .unwrap_or_else(|_| panic!("Chromium did not answer {method} within {CALL_TIMEOUT:?}"))
        .unwrap_or_else(|| {
            panic!(
                "Chromium closed the connection during {method}; its stderr:\n{}",
                tail(stderr)
            )
        });
    if let Some(error) = answer.get("error") {
        panic!("Chromium refused {method}: {error}");
    }
    answer["result"].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_chromium_is_reported_with_how_to_install_it() {
        let empty = tempfile::tempdir().expect("a temporary directory");
        let message = find_chromium(
            None,
            &empty.path().join("chromium"),
            Some(empty.path().as_os_str().to_owned()),
        )
        .expect_err("no chromium anywhere");
        assert!(message.contains("apt-get install -y chromium"), "{message}");
        let configured = find_chromium(Some(empty.path().join("nope")), Path::new("/"), None)
            .expect_err("a configured path that is not a file");
        assert!(configured.contains(CHROMIUM_ENV), "{configured}");
    }

    #[test]
    fn chromium_on_path_is_found_when_the_default_is_missing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("chromium"), "").expect("a stand-in file");
        let found = find_chromium(
            None,
            &dir.path().join("missing"),
            Some(dir.path().as_os_str().to_owned()),
        );
        assert_eq!(found, Ok(dir.path().join("chromium")));
    }
}
