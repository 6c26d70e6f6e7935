//! The results of one run and their Markdown rendering: the main table (every Tidemark
//! figure beside its baseline from the same run), the issue's goals, COPY vs UNNEST, the
//! pipeline knobs, memory under overload, and schema evolution's costs (validation, JSON
//! against Avro payloads).

use crate::env::{MachineInfo, ServerInfo};
use crate::harness::{group, mib, Latencies};
use crate::probe::Batches;
use crate::workloads::OverloadRun;
use std::fmt::Write as _;

/// A throughput figure with its latency percentiles (per operation).
#[derive(Debug, Clone, Default)]
pub struct Rate {
    pub per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Rate {
    pub fn new(per_sec: f64, mut latencies: Latencies) -> Rate {
        Rate {
            per_sec,
            p50_ms: latencies.percentile_ms(50.0),
            p99_ms: latencies.percentile_ms(99.0),
        }
    }

    fn latency(&self) -> String {
        match (self.p50_ms, self.p99_ms) {
            (Some(p50), Some(p99)) => format!("{} / {} ms", ms(p50), ms(p99)),
            _ => "—".into(),
        }
    }
}

/// A run at a number of clients; `requested` differs from `clients` when the server's
/// connection limit capped it.
#[derive(Debug, Clone)]
pub struct AtClients {
    pub requested: usize,
    pub clients: usize,
    pub rate: Rate,
    /// Group-commit figures, for Tidemark appends.
    pub batches: Option<Batches>,
}

#[derive(Debug, Clone)]
pub struct HotStream {
    pub callers: usize,
    pub per_sec: f64,
    pub conflicts_per_success: f64,
}

/// A catch-up compared with another: a keyed or windowed projection with the same fold
/// work grouped by stream.
#[derive(Debug, Clone)]
pub struct GroupedCatchUp {
    pub catch_up: Scan,
    pub baseline: Scan,
    /// Listed among the goals of issue #12 (the baselines themselves are not).
    pub is_goal: bool,
}

#[derive(Debug, Clone)]
pub struct Scan {
    pub label: String,
    pub events: u64,
    pub per_sec: f64,
}

#[derive(Debug, Clone)]
pub struct DeliveryFigures {
    pub label: String,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone)]
pub struct CopyVsUnnest {
    pub rows: usize,
    pub unnest_rows_per_sec: f64,
    pub copy_rows_per_sec: f64,
    pub unnest_statement_us: f64,
    pub copy_statement_us: f64,
}

#[derive(Debug, Clone)]
pub struct Knob {
    pub setting: String,
    pub callers: usize,
    pub rate: Rate,
    pub batches: Batches,
    pub default: bool,
}

/// Appends with validation OFF and ENFORCE (issue #11), with the raw 1-row insert at the
/// same concurrency for the single-event run (the floor of issue #3: ≥ 3× it).
#[derive(Debug, Clone)]
pub struct ValidationRun {
    pub events_per_append: usize,
    pub callers: usize,
    pub off: Rate,
    pub enforce: Rate,
    pub raw: Option<Rate>,
}

/// The same events stored in one encoding: on disk, on append, on catch-up.
#[derive(Debug, Clone)]
pub struct EncodingRun {
    pub encoding: &'static str,
    pub footprint: crate::evolution::Footprint,
    /// Events per second, 64 callers appending single events.
    pub append_single_64: f64,
    /// Events per second, 8 callers appending 100-event batches.
    pub append_batch_8: f64,
    pub read_log_per_sec: f64,
    pub subscribe_per_sec: f64,
}

/// One kind of append run at one concurrency (issue #15), means over the rounds.
#[derive(Debug, Clone)]
pub struct ApiFigures {
    pub rate: Rate,
    /// CPU time per append of the process that served it (the server, or for the library
    /// the benchmark process).
    pub process_cpu_us: Option<f64>,
    /// CPU time per append of the embedded PostgreSQL (all its processes).
    pub postgres_cpu_us: Option<f64>,
    /// The writer's group commits: (appends per transaction, ms per transaction).
    pub batches: Option<(f64, f64)>,
}

impl ApiFigures {
    fn cpu(&self) -> String {
        let us = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0}"));
        format!(
            "{} + {} µs",
            us(self.process_cpu_us),
            us(self.postgres_cpu_us)
        )
    }

    fn per_tx(&self) -> String {
        self.batches.map_or("—".to_string(), |(requests, millis)| {
            format!("{requests:.1}, {} ms", ms(millis))
        })
    }
}

/// Single-event appends at one concurrency (issue #15): GraphQL over HTTP against `tidemark
/// serve`, the library's `append` of the same event, and the raw 1-row insert.
#[derive(Debug, Clone)]
pub struct ApiAppends {
    pub connections: usize,
    /// The raw insert's clients (capped by the server's free connections).
    pub raw_clients: usize,
    pub http: ApiFigures,
    /// Answers refused with `OVERLOADED` over HTTP.
    pub refused: u64,
    pub library: ApiFigures,
    pub raw: Rate,
}

/// The bank server's appends over HTTP with its projections running and without.
#[derive(Debug, Clone)]
pub struct BankAppends {
    pub connections: usize,
    pub with: ApiFigures,
    pub without: ApiFigures,
    pub refused: u64,
    /// The projections and handlers that ran.
    pub projections: Vec<String>,
}

/// The catch-up of the bank's projections over a log of its own events.
#[derive(Debug, Clone)]
pub struct BankCatchUp {
    pub raw: Scan,
    /// Events per second from the server's start until every projection applied the log.
    pub bank: Scan,
    pub projections: Vec<String>,
    /// Part of `took_secs` before `/ready` answered (the projections run during it too).
    pub ready_after_secs: f64,
    pub took_secs: f64,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub mode: String,
    pub command: String,
    pub started_at: String,
    pub duration_secs: f64,
    pub machine: Option<MachineInfo>,
    pub server: Option<ServerInfo>,
    pub pipeline_defaults: String,
    pub raw_single: Vec<AtClients>,
    pub raw_batch: Vec<AtClients>,
    pub raw_scan: Option<Scan>,
    pub appends: Vec<AtClients>,
    /// 64 single-event callers on a store created a moment ago (no table statistics).
    pub cold_appends: Option<AtClients>,
    pub batch_appends: Vec<AtClients>,
    pub hot: Vec<HotStream>,
    pub scans: Vec<Scan>,
    pub delivery: Vec<DeliveryFigures>,
    pub delivery_rate: u32,
    /// (raw scan of the projection's log, the counting projection's catch-up over it).
    pub projection_catch_up: Option<(Scan, Scan)>,
    /// Keyed and windowed projections' catch-up over the same log, each compared with the
    /// counting projection's (issue #12).
    pub grouped_catch_ups: Vec<GroupedCatchUp>,
    /// The relay's catch-up to NATS JetStream over the same log (issue #13), compared with
    /// the counting projection's.
    pub relay_catch_up: Option<Scan>,
    /// Append→read-model latency at `delivery_rate`.
    pub projection_latency: Option<DeliveryFigures>,
    pub overload: Option<OverloadRun>,
    pub copy_vs_unnest: Vec<CopyVsUnnest>,
    pub knobs: Vec<Knob>,
    pub validation: Vec<ValidationRun>,
    /// JSON first, then Avro.
    pub encodings: Vec<EncodingRun>,
    /// Issue #15: the API path.
    pub api_appends: Vec<ApiAppends>,
    pub bank_appends: Vec<BankAppends>,
    pub bank_catch_up: Option<BankCatchUp>,
    /// (library `read_log`, GraphQL `events`) over the same log, pages of 1,000.
    pub graphql_paging: Option<(Scan, Scan)>,
    pub notes: Vec<String>,
}

fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

fn ratio(value: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!("{:.2}×", value / baseline)
    } else {
        "—".into()
    }
}

/// Writes one table row.
fn row<S: AsRef<str>, const N: usize>(out: &mut String, cells: [S; N]) {
    out.push('|');
    for cell in cells {
        out.push(' ');
        out.push_str(cell.as_ref());
        out.push_str(" |");
    }
    out.push('\n');
}

/// A main-table row of a Tidemark append run: its figures, then the baseline it is
/// `compared` with (the baseline's description and the ratio to it), or `—` without one.
fn append_row(out: &mut String, label: &str, r: &AtClients, compared: Option<(String, String)>) {
    let none = || "—".to_string();
    let (baseline, ratios) = compared.unwrap_or_else(|| (none(), none()));
    row(
        out,
        [
            label.to_string(),
            r.clients.to_string(),
            format!("{} events/s", group(r.rate.per_sec)),
            r.rate.latency(),
            r.batches.as_ref().map_or_else(none, per_tx),
            baseline,
            ratios,
        ],
    );
}

/// A main-table row of a projection's catch-up over the projection log, compared with
/// `baseline` (described by `baseline_label`) measured on the same log in the same run.
fn catch_up_row(out: &mut String, catch_up: &Scan, baseline_label: &str, baseline: &Scan) {
    let none = || "—".to_string();
    row(
        out,
        [
            format!(
                "{} catch-up over {} events",
                catch_up.label,
                group(catch_up.events as f64)
            ),
            "16 partitions".into(),
            format!("{} events/s", group(catch_up.per_sec)),
            none(),
            none(),
            format!("{baseline_label}: {}/s", group(baseline.per_sec)),
            ratio(catch_up.per_sec, baseline.per_sec),
        ],
    );
}

fn per_tx(batches: &Batches) -> String {
    format!(
        "{:.1} appends, {} ms",
        batches.mean_requests,
        ms(batches.mean_millis)
    )
}

fn clients(run: &AtClients) -> String {
    if run.requested == run.clients {
        run.clients.to_string()
    } else {
        format!("{} (capped from {})", run.clients, run.requested)
    }
}

impl Report {
    /// Raw single-row insert at the run closest to `clients` (same or capped).
    fn raw_single_at(&self, requested: usize) -> Option<&AtClients> {
        self.raw_single.iter().find(|r| r.requested == requested)
    }

    fn raw_batch_at(&self, requested: usize) -> Option<&AtClients> {
        self.raw_batch.iter().find(|r| r.requested == requested)
    }

    fn raw_batch_best(&self) -> Option<&AtClients> {
        self.raw_batch
            .iter()
            .max_by(|a, b| a.rate.per_sec.total_cmp(&b.rate.per_sec))
    }

    fn tidemark_at(&self, callers: usize) -> Option<&AtClients> {
        self.appends.iter().find(|r| r.requested == callers)
    }

    fn scan(&self, label: &str) -> Option<&Scan> {
        self.scans.iter().find(|s| s.label == label)
    }

    /// A main-table row of latencies measured with one appender at `delivery_rate`.
    fn delivery_row(&self, out: &mut String, label: String, d: &DeliveryFigures) {
        row(
            out,
            [
                label,
                format!("1 appender @ {} ev/s", group(f64::from(self.delivery_rate))),
                format!(
                    "max {} ms ({} events)",
                    ms(d.max_ms),
                    group(d.samples as f64)
                ),
                format!("{} / {} ms", ms(d.p50_ms), ms(d.p99_ms)),
                "—".into(),
                "—".into(),
                "—".into(),
            ],
        );
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        self.header(&mut out);
        self.main_table(&mut out);
        self.goals(&mut out);
        self.copy_table(&mut out);
        self.knob_table(&mut out);
        self.overload_table(&mut out);
        self.evolution_tables(&mut out);
        self.api_tables(&mut out);
        if !self.notes.is_empty() {
            out.push_str("\n### Notes\n\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    /// Issue #15: the API path.
    fn api_tables(&self, out: &mut String) {
        if !self.api_appends.is_empty() {
            out.push_str(
                "\n### The API path (issue #15)\n\nSingle-event `appendEvents` (~200-byte \
                 request, `bench/http/append.lua`) to random streams out of 100,000, over HTTP/1.1 \
                 keep-alive connections against the release `tidemark serve` (a child process, \
                 authentication off), beside the library's `append` of the same event and the raw \
                 1-row insert, alternating at each concurrency. CPU per append: the server \
                 process (or, for the library, the benchmark process) and PostgreSQL's.\n\n",
            );
            row(
                out,
                [
                    "Connections",
                    "GraphQL over HTTP",
                    "p50 / p99",
                    "CPU/append server + PostgreSQL",
                    "appends/tx, ms/tx",
                    "Library `append`",
                    "p50 / p99",
                    "CPU/append process + PostgreSQL",
                    "appends/tx, ms/tx",
                    "Raw INSERT 1 row/tx",
                    "HTTP / library",
                    "HTTP / raw",
                ],
            );
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for a in &self.api_appends {
                let refused = if a.refused > 0 {
                    format!(" ({} refused)", group(a.refused as f64))
                } else {
                    String::new()
                };
                let raw_clients = if a.raw_clients == a.connections {
                    String::new()
                } else {
                    format!(" ({} clients)", a.raw_clients)
                };
                row(
                    out,
                    [
                        a.connections.to_string(),
                        format!("{}/s{refused}", group(a.http.rate.per_sec)),
                        a.http.rate.latency(),
                        a.http.cpu(),
                        a.http.per_tx(),
                        format!("{}/s", group(a.library.rate.per_sec)),
                        a.library.rate.latency(),
                        a.library.cpu(),
                        a.library.per_tx(),
                        format!("{}/s{raw_clients}", group(a.raw.per_sec)),
                        ratio(a.http.rate.per_sec, a.library.rate.per_sec),
                        ratio(a.http.rate.per_sec, a.raw.per_sec),
                    ],
                );
            }
        }
        if !self.bank_appends.is_empty() {
            out.push_str(
                "\nThe same appends against the bank example's server, with its projections \
                 and handler running (each run starts once they have caught up) and with \
                 `--no-projections`, alternating.\n\n",
            );
            row(
                out,
                [
                    "Connections",
                    "bank, projections running",
                    "p50 / p99",
                    "CPU/append server + PostgreSQL",
                    "appends/tx, ms/tx",
                    "bank, --no-projections",
                    "p50 / p99",
                    "CPU/append server + PostgreSQL",
                    "appends/tx, ms/tx",
                    "with / without",
                ],
            );
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for b in &self.bank_appends {
                row(
                    out,
                    [
                        b.connections.to_string(),
                        format!("{}/s", group(b.with.rate.per_sec)),
                        b.with.rate.latency(),
                        b.with.cpu(),
                        b.with.per_tx(),
                        format!("{}/s", group(b.without.rate.per_sec)),
                        b.without.rate.latency(),
                        b.without.cpu(),
                        b.without.per_tx(),
                        ratio(b.with.rate.per_sec, b.without.rate.per_sec),
                    ],
                );
            }
            if let Some(b) = self.bank_appends.first() {
                let _ = writeln!(
                    out,
                    "\nProjections and handlers running: {}.{}",
                    b.projections.join(", "),
                    if self.bank_appends.iter().any(|b| b.refused > 0) {
                        " Some appends were refused with OVERLOADED (not counted)."
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some((library, graphql)) = &self.graphql_paging {
            let _ = writeln!(
                out,
                "\nPaging the whole log ({} events): {} {}/s, {} {}/s: {} of the library.",
                group(library.events as f64),
                graphql.label,
                group(graphql.per_sec),
                library.label,
                group(library.per_sec),
                ratio(graphql.per_sec, library.per_sec)
            );
        }
        if let Some(c) = &self.bank_catch_up {
            let _ = writeln!(
                out,
                "\nCatch-up of the bank's projections ({}) over {} events of its own types: \
                 {}/s from the server's start ({:.1} s, of which {:.1} s before `/ready`), \
                 against the raw scan of the same log at {}/s: {}.",
                c.projections.join(", "),
                group(c.bank.events as f64),
                group(c.bank.per_sec),
                c.took_secs,
                c.ready_after_secs,
                group(c.raw.per_sec),
                ratio(c.bank.per_sec, c.raw.per_sec)
            );
        }
        let at_64 = self.api_appends.iter().find(|a| a.connections == 64);
        let bank_64 = self.bank_appends.iter().find(|b| b.connections == 64);
        if at_64.is_none() && bank_64.is_none() {
            return;
        }
        out.push_str("\nIssue #15, goal 1 (API appends at 64 connections):\n\n");
        let verdict = |value: f64, goal: f64| if value >= goal { "met" } else { "not met" };
        if let Some(a) = at_64 {
            let to_library = a.http.rate.per_sec / a.library.rate.per_sec.max(1e-9);
            let to_raw = a.http.rate.per_sec / a.raw.per_sec.max(1e-9);
            let _ = writeln!(
                out,
                "- GraphQL over HTTP ≥ 70 % of the library's `append`: {:.0} % — {}",
                100.0 * to_library,
                verdict(to_library, 0.70)
            );
            let _ = writeln!(
                out,
                "- GraphQL over HTTP ≥ 1.5× the raw 1-row insert: {to_raw:.2}× — {}",
                verdict(to_raw, 1.5)
            );
        }
        if let Some(b) = bank_64 {
            let share = b.with.rate.per_sec / b.without.rate.per_sec.max(1e-9);
            let _ = writeln!(
                out,
                "- With the bank's projections running ≥ 60 % of the rate without them: {:.0} % — {}",
                100.0 * share,
                verdict(share, 0.60)
            );
        }
    }

    /// Issue #11: validation's cost, and JSON against Avro on the same events.
    fn evolution_tables(&self, out: &mut String) {
        if !self.validation.is_empty() {
            out.push_str(
                "\n### Validation on append (issue #11)\n\n`OrderPlaced` (the payload of every \
                 phase, ~200 bytes) registered with a JSON Schema; validation `OFF` vs `ENFORCE`, \
                 each run on a fresh store.\n\n",
            );
            row(
                out,
                [
                    "Appends",
                    "OFF",
                    "ENFORCE",
                    "ENFORCE / OFF",
                    "p50 / p99 OFF",
                    "p50 / p99 ENFORCE",
                    "vs raw 1-row insert, same run: ENFORCE (OFF)",
                ],
            );
            out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            for v in &self.validation {
                // Issue #3's floor compares appends with this baseline; validation must not
                // move the ratio, so both modes are shown against it.
                let floor = v.raw.as_ref().map_or("—".to_string(), |raw| {
                    format!(
                        "{} ({}) of {}/s",
                        ratio(v.enforce.per_sec, raw.per_sec),
                        ratio(v.off.per_sec, raw.per_sec),
                        group(raw.per_sec)
                    )
                });
                row(
                    out,
                    [
                        format!("{} event(s) × {} callers", v.events_per_append, v.callers),
                        format!("{}/s", group(v.off.per_sec)),
                        format!("{}/s", group(v.enforce.per_sec)),
                        ratio(v.enforce.per_sec, v.off.per_sec),
                        v.off.latency(),
                        v.enforce.latency(),
                        floor,
                    ],
                );
            }
        }
        if self.encodings.is_empty() {
            return;
        }
        out.push_str(
            "\n### JSON vs Avro payloads (issue #11)\n\nThe same events stored as `jsonb` and \
             as Avro datums (`payload_avro`), validation `OFF`; sizes after `VACUUM ANALYZE`.\n\n",
        );
        row(
            out,
            [
                "Encoding",
                "Payload bytes/event",
                "Heap bytes/event",
                "Total bytes/event (with indexes)",
                "Append 1 × 64",
                "Append 100 × 8",
                "read_log catch-up",
                "subscribe catch-up",
            ],
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        let json = self.encodings.first();
        for e in &self.encodings {
            let vs = |value: f64, of: fn(&EncodingRun) -> f64| match json {
                Some(json) if e.encoding != json.encoding => {
                    format!(" ({})", ratio(value, of(json)))
                }
                _ => String::new(),
            };
            let f = &e.footprint;
            row(
                out,
                [
                    e.encoding.to_string(),
                    format!(
                        "{:.0}{}",
                        f.payload_bytes,
                        vs(f.payload_bytes, |j| j.footprint.payload_bytes)
                    ),
                    format!(
                        "{:.0}{}",
                        f.heap_bytes,
                        vs(f.heap_bytes, |j| j.footprint.heap_bytes)
                    ),
                    format!(
                        "{:.0}{}",
                        f.total_bytes,
                        vs(f.total_bytes, |j| j.footprint.total_bytes)
                    ),
                    format!(
                        "{}/s{}",
                        group(e.append_single_64),
                        vs(e.append_single_64, |j| j.append_single_64)
                    ),
                    format!(
                        "{}/s{}",
                        group(e.append_batch_8),
                        vs(e.append_batch_8, |j| j.append_batch_8)
                    ),
                    format!(
                        "{}/s{}",
                        group(e.read_log_per_sec),
                        vs(e.read_log_per_sec, |j| j.read_log_per_sec)
                    ),
                    format!(
                        "{}/s{}",
                        group(e.subscribe_per_sec),
                        vs(e.subscribe_per_sec, |j| j.subscribe_per_sec)
                    ),
                ],
            );
        }
    }

    fn header(&self, out: &mut String) {
        let _ = writeln!(out, "## Tidemark benchmark results ({} run)\n", self.mode);
        let _ = writeln!(out, "- Command: `{}`", self.command);
        let _ = writeln!(
            out,
            "- Started: {}; took {:.0} s",
            self.started_at, self.duration_secs
        );
        if let Some(m) = &self.machine {
            let _ = writeln!(
                out,
                "- Machine: {} cores ({}), {} RAM; the benchmark client and PostgreSQL share it",
                m.cores, m.cpu, m.memory
            );
        }
        if let Some(s) = &self.server {
            let _ = writeln!(out, "- Server: {} ({})", s.version, s.origin);
            let _ = writeln!(
                out,
                "- Settings: shared_buffers={}, synchronous_commit={}, fsync={}, wal_level={}, max_connections={}",
                s.shared_buffers, s.synchronous_commit, s.fsync, s.wal_level, s.max_connections
            );
        }
        let _ = writeln!(out, "- Store pipeline defaults: {}", self.pipeline_defaults);
        out.push('\n');
    }

    fn main_table(&self, out: &mut String) {
        out.push_str("### Results\n\n");
        row(
            out,
            [
                "Measurement",
                "Clients",
                "Result",
                "p50 / p99 per op",
                "Per transaction",
                "Baseline (same run)",
                "Ratio",
            ],
        );
        out.push_str("|---|---:|---:|---:|---:|---|---:|\n");
        let none = || "—".to_string();
        for (label, runs, per_transaction) in [
            ("Raw INSERT, 1 row/tx", &self.raw_single, "1 row"),
            (
                "Raw INSERT, 100 rows/tx (UNNEST)",
                &self.raw_batch,
                "100 rows",
            ),
        ] {
            for r in runs {
                row(
                    out,
                    [
                        label.into(),
                        clients(r),
                        format!("{} rows/s", group(r.rate.per_sec)),
                        r.rate.latency(),
                        per_transaction.into(),
                        none(),
                        none(),
                    ],
                );
            }
        }
        if let Some(scan) = &self.raw_scan {
            row(
                out,
                [
                    format!("Raw SELECT scan of {} events", group(scan.events as f64)),
                    "1".into(),
                    format!("{} events/s", group(scan.per_sec)),
                    none(),
                    none(),
                    none(),
                    none(),
                ],
            );
        }
        let best_batch = self.raw_batch_best();
        for r in &self.appends {
            let compared = self
                .raw_single_at(r.requested)
                .zip(best_batch)
                .map(|(s, b)| {
                    (
                        format!(
                            "raw 1-row @{}: {}/s; raw 100-row best (@{}): {}/s",
                            s.clients,
                            group(s.rate.per_sec),
                            b.clients,
                            group(b.rate.per_sec)
                        ),
                        format!(
                            "{} ; {}",
                            ratio(r.rate.per_sec, s.rate.per_sec),
                            ratio(r.rate.per_sec, b.rate.per_sec)
                        ),
                    )
                });
            append_row(
                out,
                "Tidemark `append`, 1 event, random streams",
                r,
                compared,
            );
        }
        if let Some(r) = &self.cold_appends {
            let compared = self.tidemark_at(r.requested).map(|s| {
                (
                    format!("same on the seeded store: {}/s", group(s.rate.per_sec)),
                    ratio(r.rate.per_sec, s.rate.per_sec),
                )
            });
            let label = "Tidemark `append`, 1 event, on a new store without table statistics";
            append_row(out, label, r, compared);
        }
        for r in &self.batch_appends {
            let compared = self.raw_batch_at(r.requested).map(|b| {
                (
                    format!("raw 100-row @{}: {}/s", b.clients, group(b.rate.per_sec)),
                    ratio(r.rate.per_sec, b.rate.per_sec),
                )
            });
            append_row(out, "Tidemark `append`, 100 events per append", r, compared);
        }
        let raw_one = self.raw_single_at(1);
        for h in &self.hot {
            row(
                out,
                [
                    format!(
                        "Tidemark hot stream, `Exact` + retry ({:.1} conflicts per success)",
                        h.conflicts_per_success
                    ),
                    h.callers.to_string(),
                    format!("{} events/s", group(h.per_sec)),
                    none(),
                    none(),
                    raw_one.map_or_else(none, |b| {
                        format!("raw 1-row @1: {}/s", group(b.rate.per_sec))
                    }),
                    raw_one.map_or_else(none, |b| ratio(h.per_sec, b.rate.per_sec)),
                ],
            );
        }
        for s in &self.scans {
            row(
                out,
                [
                    s.label.clone(),
                    "1".into(),
                    format!("{} events/s", group(s.per_sec)),
                    none(),
                    none(),
                    self.raw_scan
                        .as_ref()
                        .map_or_else(none, |r| format!("raw scan: {}/s", group(r.per_sec))),
                    self.raw_scan
                        .as_ref()
                        .map_or_else(none, |r| ratio(s.per_sec, r.per_sec)),
                ],
            );
        }
        for d in &self.delivery {
            self.delivery_row(out, format!("Append→subscriber delivery, {}", d.label), d);
        }
        if let Some((raw, counting)) = &self.projection_catch_up {
            catch_up_row(out, counting, "raw scan of the same log", raw);
            for grouped in &self.grouped_catch_ups {
                let label = format!("{}, same log", grouped.baseline.label);
                catch_up_row(out, &grouped.catch_up, &label, &grouped.baseline);
            }
            if let Some(relay) = &self.relay_catch_up {
                catch_up_row(out, relay, "counting projection, same log", counting);
            }
        }
        if let Some(d) = &self.projection_latency {
            let label = "Append→read-model latency (counting projection)";
            self.delivery_row(out, label.into(), d);
        }
        if let Some(o) = &self.overload {
            row(
                out,
                [
                    "Peak RSS under overload".into(),
                    format!("{} callers", group(o.callers as f64)),
                    format!(
                        "{} at queue full → {} at end (peak {})",
                        o.rss_at_full.map_or_else(|| "queue never full".into(), mib),
                        mib(o.rss_end),
                        mib(o.rss_peak)
                    ),
                    none(),
                    none(),
                    format!("RSS idle: {}", mib(o.rss_idle)),
                    none(),
                ],
            );
        }
        out.push('\n');
    }

    fn goals(&self, out: &mut String) {
        out.push_str("### Goals (issues #3, #4 and #12)\n\n");
        out.push_str("| Goal | Target | Reached | Met |\n|---|---|---|---|\n");
        let yes = |ok: bool| if ok { "yes" } else { "**no**" };
        if let (Some(t), Some(s)) = (self.tidemark_at(64), self.raw_single_at(64)) {
            let x = t.rate.per_sec / s.rate.per_sec;
            let _ = writeln!(
                out,
                "| 64 single-event appenders vs raw 1-row insert @{} | ≥ 3× | {x:.2}× ({} vs {}/s) | {} |",
                s.clients,
                group(t.rate.per_sec),
                group(s.rate.per_sec),
                yes(x >= 3.0)
            );
        }
        if let (Some(t), Some(b)) = (self.tidemark_at(64), self.raw_batch_best()) {
            let x = t.rate.per_sec / b.rate.per_sec;
            let _ = writeln!(
                out,
                "| 64 single-event appenders vs raw 100-row batches (best, @{}) | ≥ 50 % | {:.0} % ({} vs {}/s) | {} |",
                b.clients,
                x * 100.0,
                group(t.rate.per_sec),
                group(b.rate.per_sec),
                yes(x >= 0.5)
            );
        }
        if let Some(raw) = &self.raw_scan {
            for label in [SCAN_READ_LOG, SCAN_SUBSCRIBE] {
                if let Some(s) = self.scan(label) {
                    let x = s.per_sec / raw.per_sec;
                    let _ = writeln!(
                        out,
                        "| {label} vs raw scan | ≥ 70 % | {:.0} % | {} |",
                        x * 100.0,
                        yes(x >= 0.7)
                    );
                }
            }
        }
        for d in &self.delivery {
            let _ = writeln!(
                out,
                "| Delivery p99 at {} ev/s, {} | ≤ 50 ms | {} ms | {} |",
                group(f64::from(self.delivery_rate)),
                d.label,
                ms(d.p99_ms),
                yes(d.p99_ms <= 50.0)
            );
        }
        if let Some((raw, counting)) = &self.projection_catch_up {
            let issue_4 = "Projection catch-up vs raw scan (issue #4)".to_string();
            let goals = std::iter::once((issue_4, counting, raw)).chain(
                self.grouped_catch_ups
                    .iter()
                    .filter(|g| g.is_goal)
                    .map(|g| {
                        let label = format!(
                            "{} catch-up vs {} (issue #12)",
                            g.catch_up.label, g.baseline.label
                        );
                        (label, &g.catch_up, &g.baseline)
                    }),
            );
            let relay = self.relay_catch_up.iter().map(|r| {
                let label = format!("{} vs counting projection catch-up (issue #13)", r.label);
                (label, r, counting)
            });
            let goals = goals.chain(relay);
            for (label, catch_up, baseline) in goals {
                let x = catch_up.per_sec / baseline.per_sec;
                let _ = writeln!(
                    out,
                    "| {label} | ≥ 50 % | {:.0} % ({} vs {}/s) | {} |",
                    x * 100.0,
                    group(catch_up.per_sec),
                    group(baseline.per_sec),
                    yes(x >= 0.5)
                );
            }
        }
        if let Some(d) = &self.projection_latency {
            let _ = writeln!(
                out,
                "| Append→read-model p99 at {} ev/s (issue #4) | ≤ 100 ms | {} ms | {} |",
                group(f64::from(self.delivery_rate)),
                ms(d.p99_ms),
                yes(d.p99_ms <= 100.0)
            );
        }
        if let Some(o) = &self.overload {
            match o.rss_saturated {
                Some(saturated) => {
                    // Flat over the second half of the phase: what the queue bound promises.
                    // (RSS rises by some percent in the first seconds after saturation while
                    // the allocator settles into the callers' alloc/free churn.)
                    let late = o.rss_end as f64 / o.rss_half.max(1) as f64 - 1.0;
                    let _ = writeln!(
                        out,
                        "| Memory bounded under overload | no growth once the queue is full | {} once every caller was waiting, {} half-way, {} at the end: {:+.1} % over the second half | {} |",
                        mib(saturated),
                        mib(o.rss_half),
                        mib(o.rss_end),
                        late * 100.0,
                        yes(late <= 0.05)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| Memory bounded under overload | no growth once the queue is full | the queue never filled with every caller waiting | **no** |"
                    );
                }
            }
        }
        out.push('\n');
    }

    fn copy_table(&self, out: &mut String) {
        if self.copy_vs_unnest.is_empty() {
            return;
        }
        out.push_str("### Batch insert: `COPY FROM STDIN BINARY` vs `INSERT ... SELECT FROM unnest(...)`\n\n");
        out.push_str("One connection, one transaction per batch (BEGIN, insert, COMMIT), into the raw copy of `events`.\n\n");
        out.push_str("| Rows per batch | UNNEST rows/s | COPY rows/s | COPY / UNNEST | UNNEST statement | COPY statement |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.copy_vs_unnest {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} µs | {} µs |",
                c.rows,
                group(c.unnest_rows_per_sec),
                group(c.copy_rows_per_sec),
                ratio(c.copy_rows_per_sec, c.unnest_rows_per_sec),
                group(c.unnest_statement_us),
                group(c.copy_statement_us)
            );
        }
        out.push('\n');
    }

    fn knob_table(&self, out: &mut String) {
        if self.knobs.is_empty() {
            return;
        }
        out.push_str("### Pipeline settings (single-event appends, random streams)\n\n");
        out.push_str(
            "| Setting | Callers | events/s | p50 / p99 per append | Per transaction |\n|---|---:|---:|---:|---:|\n",
        );
        for k in &self.knobs {
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {} | {} |",
                k.setting,
                if k.default { " (default)" } else { "" },
                k.callers,
                group(k.rate.per_sec),
                k.rate.latency(),
                per_tx(&k.batches)
            );
        }
        out.push('\n');
    }

    fn overload_table(&self, out: &mut String) {
        let Some(o) = &self.overload else { return };
        out.push_str("### Memory under overload\n\n");
        row(
            out,
            [
                "Callers",
                "Appends ok",
                "Overloaded",
                "ok events/s (saturated)",
                "RSS idle",
                "RSS callers ready",
                "RSS queue first full",
                "RSS all callers waiting",
                "RSS half-way",
                "RSS peak",
                "RSS at end",
            ],
        );
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let at = |rss: Option<u64>, after: Option<std::time::Duration>| match (rss, after) {
            (Some(rss), Some(after)) => format!("{} (at {:.2} s)", mib(rss), after.as_secs_f64()),
            _ => "never".into(),
        };
        row(
            out,
            [
                group(o.callers as f64),
                group(o.ok as f64),
                group(o.overloaded as f64),
                group(o.ok_events_per_sec),
                mib(o.rss_idle),
                mib(o.rss_ready),
                at(o.rss_at_full, o.full_after),
                at(o.rss_saturated, o.saturated_after),
                mib(o.rss_half),
                mib(o.rss_peak),
                mib(o.rss_end),
            ],
        );
        out.push('\n');
    }
}

pub const SCAN_READ_LOG: &str = "`read_log`, pages of 1,000";
pub const SCAN_READ_LOG_BIG: &str = "`read_log`, pages of 10,000";
pub const SCAN_SUBSCRIBE: &str = "`subscribe` catch-up from 0";
