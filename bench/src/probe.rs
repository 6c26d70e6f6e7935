//! A `metrics` recorder that keeps the store's group-commit histograms, so the report can
//! say how many appends each transaction carried and how long it took.

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use std::sync::{Arc, Mutex, OnceLock};

/// Requests per group-commit transaction (recorded by the writer for every batch).
const BATCH_REQUESTS: &str = "tidemark_append_batch_requests";
/// Seconds per group-commit transaction.
const BATCH_SECONDS: &str = "tidemark_append_batch_seconds";

#[derive(Default)]
struct Sums {
    batches: u64,
    requests: f64,
    seconds: f64,
}

#[derive(Default)]
struct Store {
    sums: Mutex<Sums>,
}

struct Field {
    store: Arc<Store>,
    requests: bool,
}

impl HistogramFn for Field {
    fn record(&self, value: f64) {
        let mut sums = match self.store.sums.lock() {
            Ok(sums) => sums,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.requests {
            sums.batches += 1;
            sums.requests += value;
        } else {
            sums.seconds += value;
        }
    }
}

struct BatchRecorder {
    store: Arc<Store>,
}

impl Recorder for BatchRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let requests = match key.name() {
            BATCH_REQUESTS => true,
            BATCH_SECONDS => false,
            _ => return Histogram::noop(),
        };
        Histogram::from_arc(Arc::new(Field {
            store: self.store.clone(),
            requests,
        }))
    }
}

static STORE: OnceLock<Arc<Store>> = OnceLock::new();

/// Installs the recorder (once per process).
pub fn install() {
    let store = STORE.get_or_init(Arc::default).clone();
    // Fails only if a recorder is already installed, which this binary never does.
    let _ = metrics::set_global_recorder(BatchRecorder { store });
}

/// Group-commit figures since the last [`take`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Batches {
    pub mean_requests: f64,
    pub mean_millis: f64,
}

impl Batches {
    /// The mean of several runs' figures.
    pub fn mean(runs: &[Batches]) -> Batches {
        let n = runs.len().max(1) as f64;
        Batches {
            mean_requests: runs.iter().map(|b| b.mean_requests).sum::<f64>() / n,
            mean_millis: runs.iter().map(|b| b.mean_millis).sum::<f64>() / n,
        }
    }
}

/// Returns the figures recorded since the previous call and starts afresh.
pub fn take() -> Batches {
    let Some(store) = STORE.get() else {
        return Batches::default();
    };
    let mut sums = match store.sums.lock() {
        Ok(sums) => sums,
        Err(poisoned) => poisoned.into_inner(),
    };
    let taken = std::mem::take(&mut *sums);
    let n = taken.batches.max(1) as f64;
    Batches {
        mean_requests: taken.requests / n,
        mean_millis: taken.seconds * 1000.0 / n,
    }
}
