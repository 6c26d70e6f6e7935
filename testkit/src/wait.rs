//! Waiting for something that happens in the background (a projection catching up, a
//! server restarting, a writer stalling): poll a check until it holds, fail the test with
//! what it waited for once a deadline has passed. Nothing sleeps a fixed time and hopes.
//!
//! Checks are polled often at first (most conditions hold within milliseconds) and then
//! less often, so a long wait does not busy a two-core machine.

use std::future::Future;
use std::time::Duration;

/// The first pause between two checks.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause between two checks.
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Polls `check` until it holds; panics naming `what` once `within` has passed.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, within, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Polls `check` until it returns `Some`, and returns that; panics naming `what` once
/// `within` has passed.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_condition_that_comes_true_is_waited_for() {
        let checks = AtomicU32::new(0);
        let value = eventually("the third check", Duration::from_secs(5), || async {
            let n = checks.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for: never")]
    async fn a_condition_that_never_holds_fails_at_the_deadline() {
        wait_until("never", Duration::from_millis(50), || async { false }).await;
    }
}
