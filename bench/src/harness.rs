//! Measurement plumbing shared by every workload: the timed window clients count in,
//! latency percentiles, the payload generator, process RSS, and the progress display.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A measurement window: clients run through a warm-up, then count the work they complete
/// during `measure`, then stop. Work finishing outside the window is not counted, and
/// latencies are kept only for operations that started inside it.
#[derive(Clone)]
pub struct Window {
    inner: Arc<WindowInner>,
}

struct WindowInner {
    warm_end: Instant,
    end: Instant,
    counted: AtomicU64,
    /// Everything completed, warm-up included (for the live display).
    total: AtomicU64,
    stopped: AtomicBool,
}

impl Window {
    /// A window whose warm-up starts now.
    pub fn starting_now(warmup: Duration, measure: Duration) -> Window {
        let now = Instant::now();
        Window {
            inner: Arc::new(WindowInner {
                warm_end: now + warmup,
                end: now + warmup + measure,
                counted: AtomicU64::new(0),
                total: AtomicU64::new(0),
                stopped: AtomicBool::new(false),
            }),
        }
    }

    /// Should clients start another operation?
    pub fn running(&self) -> bool {
        !self.inner.stopped.load(Ordering::Relaxed) && Instant::now() < self.inner.end
    }

    /// Ends the window early (a client failed).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
    }

    /// Records an operation that started at `started` and just completed `units` of work
    /// (rows, events). Returns its latency if it counts toward the percentiles.
    pub fn record(&self, started: Instant, units: u64) -> Option<Duration> {
        let now = Instant::now();
        self.inner.total.fetch_add(units, Ordering::Relaxed);
        if now >= self.inner.warm_end && now <= self.inner.end {
            self.inner.counted.fetch_add(units, Ordering::Relaxed);
            if started >= self.inner.warm_end {
                return Some(now - started);
            }
        }
        None
    }

    /// Work completed so far, warm-up included.
    pub fn total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Units per second over the measured part of the window.
    pub fn rate(&self) -> f64 {
        let measured = self.inner.end - self.inner.warm_end;
        self.inner.counted.load(Ordering::Relaxed) as f64 / measured.as_secs_f64()
    }
}

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    micros: Vec<u32>,
    sorted: bool,
}

impl Latencies {
    pub fn push(&mut self, latency: Duration) {
        self.micros
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// The `p`-th percentile (0..=100) in milliseconds, `None` without samples.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        Some(f64::from(self.micros[rank.min(self.micros.len() - 1)]) / 1000.0)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.micros.iter().max().map(|m| f64::from(*m) / 1000.0)
    }
}

/// A per-task random source (`ThreadRng` cannot be held across `.await`).
pub fn task_rng() -> SmallRng {
    SmallRng::from_rng(&mut rand::rng())
}

/// Payload of a typical business event: a JSON object of about 200 bytes when serialised.
pub fn payload(rng: &mut SmallRng) -> Value {
    json!({
        "order_id": format!("ord-{:016x}", rng.random::<u64>()),
        "customer_id": format!("cus-{:08}", rng.random_range(0..10_000_000u32)),
        "amount_cents": rng.random_range(100..1_000_000u32),
        "currency": "EUR",
        "items": [
            {"sku": format!("SKU-{:05}", rng.random_range(0..100_000u32)), "qty": rng.random_range(1..10u32)},
            {"sku": format!("SKU-{:05}", rng.random_range(0..100_000u32)), "qty": rng.random_range(1..10u32)}
        ],
        "channel": "web",
        "placed_at": "2026-11-25T12:00:00Z"
    })
}

/// Stream ids for "random stream" workloads: `bench-<n>` over this many streams.
pub const RANDOM_STREAMS: u32 = 100_000;

pub fn random_stream(rng: &mut SmallRng) -> String {
    format!("bench-{}", rng.random_range(0..RANDOM_STREAMS))
}

/// The process's resident set size in bytes (VmRSS from /proc/self/status).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The progress display: one bar over all phases and one line for the running phase.
/// When stderr is not a terminal the bars are hidden and each result is printed as a line.
pub struct Progress {
    started: Instant,
    multi: MultiProgress,
    overall: ProgressBar,
    phase: ProgressBar,
}

impl Progress {
    pub fn new(phases: u64) -> Progress {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(phases));
        overall.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let phase = multi.add(ProgressBar::new_spinner());
        phase.set_style(
            ProgressStyle::with_template("  {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        phase.enable_steady_tick(Duration::from_millis(120));
        Progress {
            started: Instant::now(),
            multi,
            overall,
            phase,
        }
    }

    /// Starts a phase (one step of the overall bar).
    pub fn begin(&self, name: &str) {
        self.overall.set_message(name.to_string());
        self.phase.set_message(String::new());
    }

    /// Live detail about the running phase.
    pub fn detail(&self, message: String) {
        self.phase.set_message(message);
    }

    /// Waits for the writer `tasks`, showing `written` of `total` events every 250 ms as
    /// "`doing`: written/total events". The first task error (or panic) is returned.
    pub async fn await_writers(
        &self,
        tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
        written: &std::sync::atomic::AtomicU64,
        total: u64,
        doing: &str,
    ) -> anyhow::Result<()> {
        let all = futures::future::try_join_all(tasks);
        tokio::pin!(all);
        loop {
            tokio::select! {
                results = &mut all => {
                    for result in results.map_err(|e| anyhow::anyhow!("a writer task panicked: {e}"))? {
                        result?;
                    }
                    return Ok(());
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {
                    self.detail(format!(
                        "{doing}: {}/{total} events",
                        written.load(std::sync::atomic::Ordering::Relaxed)
                    ));
                }
            }
        }
    }

    /// Ends a phase, printing its result line above the bars.
    pub fn done(&self, line: &str) {
        self.overall.inc(1);
        self.phase.set_message(String::new());
        self.log(line);
    }

    pub fn log(&self, line: &str) {
        let line = format!("[{:6.1}s] {line}", self.started.elapsed().as_secs_f64());
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(&line);
        }
    }

    pub fn finish(&self) {
        self.phase.finish_and_clear();
        self.overall.finish_and_clear();
    }

    /// Shows the live rate of `window` until it ends.
    pub async fn watch(&self, label: &str, window: &Window) {
        let started = Instant::now();
        let mut last = (started, 0u64);
        while window.running() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            let total = window.total();
            let rate = (total - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
            last = (now, total);
            self.detail(format!(
                "{label}: {} done, {}/s, {:.1}s",
                group(total as f64),
                group(rate),
                (now - started).as_secs_f64()
            ));
        }
    }
}

/// `12345.6` -> `"12,346"`.
pub fn group(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    // The leading group has 1 to 3 digits; every later group has 3.
    let head = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        n => n,
    };
    let mut out = digits[..head].to_string();
    let mut i = head;
    while i < digits.len() {
        out.push(',');
        out.push_str(&digits[i..i + 3]);
        i += 3;
    }
    if rounded < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_inserts_thousands_separators() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(123456.0), "123,456");
        assert_eq!(group(1234567.0), "1,234,567");
        assert_eq!(group(-45678.0), "-45,678");
    }

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let mut latencies = Latencies::default();
        assert_eq!(latencies.percentile_ms(50.0), None);
        for micros in (1..=100).rev() {
            latencies.push(Duration::from_micros(micros * 1000));
        }
        assert_eq!(latencies.percentile_ms(0.0), Some(1.0));
        assert_eq!(latencies.percentile_ms(50.0), Some(51.0));
        assert_eq!(latencies.percentile_ms(99.0), Some(99.0));
        assert_eq!(latencies.percentile_ms(100.0), Some(100.0));
        assert_eq!(latencies.max_ms(), Some(100.0));
    }

    #[test]
    fn payloads_are_about_two_hundred_bytes() {
        let mut rng = task_rng();
        for _ in 0..100 {
            let size = serde_json::to_string(&payload(&mut rng))
                .map(|s| s.len())
                .unwrap_or_default();
            assert!((180..=240).contains(&size), "payload of {size} bytes");
        }
    }

    #[test]
    fn a_window_counts_only_work_inside_it() {
        let window = Window::starting_now(Duration::from_secs(3600), Duration::from_secs(1));
        assert!(window.running());
        assert_eq!(window.record(Instant::now(), 5), None);
        assert_eq!(window.total(), 5);
        assert_eq!(window.rate(), 0.0);
        window.stop();
        assert!(!window.running());
    }
}
