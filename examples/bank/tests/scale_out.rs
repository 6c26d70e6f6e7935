//! Scale-out (issue #6), with real OS processes against real Postgres: several `projector`
//! workers share the partitions of the bank's projections through leases. Each test checks
//! a rule from the outside — `projection_leases`, `workers` and `projection_checkpoints` as
//! an operator would read them — and ends by comparing every read model with a fresh fold
//! of the whole log.
//!
//! Workers run with 1.5 s leases renewed every 0.5 s (see `scale_out_support`). Timing
//! rules (takeover within lease expiry plus one renewal; rebalancing within a few lease
//! periods) are polls whose deadline is the rule's bound in lease periods plus
//! [`SCHEDULING`], also in lease periods; nothing compares a measured duration with a fixed
//! number of seconds. Quiet periods are never waited out: a test that must show something
//! did not happen appends a sentinel after it and waits for that instead.
//!
//! A test binary of its own, not a module of `tests/projections`: its tests measure
//! takeovers in lease periods of separate processes and run one at a time
//! ([`one_at_a_time`]); in a shared binary the other tests would run beside them on the
//! two cores of CI and stretch every lease period they measure.

mod scale_out_support;

use scale_out_support::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tidemark_example_bank::projections::{AccountBalances, CategoryTotals};
use tidemark_projections::{
    ApplyContext, EngineConfig, Projection, ProjectionEngine, ProjectionError, RecordedEvent,
    Registry,
};
use tidemark_store::{AppendRequest, ExpectedVersion, NewEvent};
use uuid::Uuid;

/// Three workers: 16 partitions split 6/5/5, each held by exactly one live worker for the
/// whole run, and the read models equal a fresh fold afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_sixteen_partitions_each_held_by_one_live_worker() {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::new().await;
    for name in ["w1", "w2", "w3"] {
        cluster.start_worker(name, &[]).await;
    }
    let load = cluster.start_load(8, Duration::from_millis(20), 1);
    let took = cluster.wait_for_split(&BOTH, &[6, 5, 5]).await;
    println!("even split 6/5/5 after {took:?}");

    // While the load runs, every partition keeps exactly one live holder among the three
    // (one lease row per partition is the primary key; its owner must be alive, running
    // and unexpired), and no partition changes hands in a steady state.
    let mut watch = Watch::default();
    let until = load.appended() + 600;
    while load.appended() < until {
        watch.sample(&cluster, &BOTH).await;
    }
    println!(
        "{} samples; longest unheld {:?}",
        watch.samples, watch.longest_unheld
    );
    assert_eq!(
        watch.longest_unheld.1, None,
        "in a steady state every partition is always held by a live worker"
    );
    let moved: Vec<_> = watch.owners.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(
        moved.is_empty(),
        "no partition moves in a steady state: {moved:?}"
    );

    // The registry lists the same ownership, and every live worker appears alive.
    let listed = tidemark_projections::workers::list(&cluster.store, WORKER_TIMEOUT)
        .await
        .expect("listing workers");
    assert_eq!(listed.len(), 3);
    for projection in BOTH {
        let split = cluster.split(projection).await;
        for info in &listed {
            assert!(info.alive, "{} is alive", info.id);
            assert_eq!(info.pool, "default");
            let listed_here: Vec<i16> = info
                .leases
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("{projection}#")))
                .map(|p| p.parse().expect("a partition number"))
                .collect();
            assert_eq!(
                listed_here, split[&info.id],
                "the registry lists what {} holds",
                info.id
            );
        }
    }

    let appended = load.finish().await;
    cluster.wait_caught_up(&BOTH).await;
    cluster.assert_read_models_equal_fold(&BOTH).await;
    println!("{appended} events appended under load");
}

/// SIGKILL a worker mid-run: the survivors hold all its partitions within lease expiry plus
/// one renewal period, and no event is lost or applied twice. (Here the survivors run on
/// the same machine, so they see its process is gone and take over sooner; the paused
/// worker below, alive but silent, is the case that waits for lease expiry.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_partitions_are_taken_over_within_lease_expiry_plus_one_renewal() {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::new().await;
    let mut ids = Vec::new();
    for name in ["w1", "w2", "w3"] {
        ids.push(cluster.start_worker(name, &[]).await);
    }
    let load = cluster.start_load(8, Duration::from_millis(20), 2);
    cluster.wait_for_split(&BOTH, &[6, 5, 5]).await;
    load.wait_for_more(300).await;

    let victim = ids[0];
    let mut orphaned = Vec::new();
    for projection in BOTH {
        for lease in cluster.leases(projection).await {
            if lease.owner == Some(victim) {
                orphaned.push((projection, lease.partition, lease.epoch));
            }
        }
    }
    assert!(!orphaned.is_empty(), "the victim held partitions");
    cluster.kill(victim);
    let killed_at = Instant::now();

    let deadline = Deadline::new(
        "the survivors to hold every partition (lease expiry plus one renewal)",
        LEASE_TTL + RENEWAL + SCHEDULING,
    );
    let takeover = loop {
        let mut unheld = Vec::new();
        for projection in BOTH {
            for (partition, holder) in cluster.holders(projection).await {
                if holder.is_none() {
                    unheld.push((projection, partition));
                }
            }
        }
        if unheld.is_empty() {
            break killed_at.elapsed();
        }
        deadline.wait(unheld).await;
    };
    println!("takeover after SIGKILL: {takeover:?}");
    // Each orphaned partition was claimed anew (a higher epoch) by a survivor.
    for (projection, partition, epoch) in &orphaned {
        let lease = cluster
            .leases(projection)
            .await
            .into_iter()
            .find(|l| l.partition == *partition)
            .expect("a lease row per partition");
        assert!(
            lease.epoch > *epoch && lease.owner != Some(victim),
            "{lease:?}"
        );
    }
    cluster.wait_for_split(&BOTH, &[8, 8]).await;

    load.wait_for_more(300).await;
    load.finish().await;
    cluster.wait_caught_up(&BOTH).await;
    cluster.assert_read_models_equal_fold(&BOTH).await;
}

/// SIGSTOP a worker inside its batch transactions, past its lease expiry, then SIGCONT: the
/// others claim its partitions with higher epochs, its pending commits are refused by the
/// lease check, and the read models stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_cannot_commit_after_its_lease_is_taken() {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::new().await;
    let mut ids = Vec::new();
    for name in ["w1", "w2", "w3"] {
        ids.push(cluster.start_worker(name, &[]).await);
    }
    // A slow read model: each totals batch spends ~0.1 s per statement inside its
    // transaction, so under load a worker is nearly always in the middle of a batch.
    cluster
        .slow_down("rm_category_totals.totals", Duration::from_millis(100))
        .await;
    let load = cluster.start_load(6, Duration::from_millis(20), 3);
    cluster.wait_for_split(&BOTH, &[6, 5, 5]).await;
    load.wait_for_more(200).await;

    let victim = ids[1];
    // It has work pending: some of its totals partitions are behind.
    let deadline = Deadline::new("the victim to have pending work", DEADLINE);
    loop {
        let heads = cluster.partition_heads().await;
        let checkpoints = cluster.checkpoints(TOTALS).await;
        let mine = cluster
            .split(TOTALS)
            .await
            .remove(&victim)
            .unwrap_or_default();
        if mine.iter().any(|p| checkpoints[p] < heads[p]) {
            break;
        }
        deadline.wait((mine, checkpoints, heads)).await;
    }
    let mut held: BTreeMap<(&str, i16), i64> = BTreeMap::new();
    for projection in BOTH {
        for lease in cluster.leases(projection).await {
            if lease.owner == Some(victim) {
                held.insert((projection, lease.partition), lease.epoch);
            }
        }
    }
    let log_before = cluster.worker(victim).log().len();
    cluster.pause(victim);
    let paused_at = Instant::now();

    // Appends go on; the others claim every partition of the paused worker with a higher
    // epoch once its leases expire (its open transactions do not block the claim).
    let deadline = Deadline::new(
        "the paused worker's partitions to be claimed (lease expiry plus one renewal)",
        LEASE_TTL + RENEWAL + SCHEDULING,
    );
    let takeover = loop {
        let mut pending = Vec::new();
        for ((projection, partition), epoch) in &held {
            let lease = cluster
                .leases(projection)
                .await
                .into_iter()
                .find(|l| l.partition == *partition)
                .expect("a lease row per partition");
            let running = cluster.running();
            let claimed = lease.epoch > *epoch
                && lease.unexpired
                && lease
                    .owner
                    .is_some_and(|o| o != victim && running.contains(&o));
            if !claimed {
                pending.push(lease);
            }
        }
        if pending.is_empty() {
            break paused_at.elapsed();
        }
        deadline.wait(pending).await;
    };
    println!("takeover after SIGSTOP: {takeover:?}");
    load.wait_for_more(100).await;
    cluster.resume(victim);

    // Resumed, it finishes the batch it was in and tries to commit: the lease check before
    // COMMIT finds a newer epoch and refuses.
    let deadline = Deadline::new(
        format!("the resumed worker to log {FENCED_LOG:?}"),
        DEADLINE,
    );
    loop {
        let log = cluster.worker(victim).log();
        if log[log_before..].iter().any(|l| l.contains(FENCED_LOG)) {
            break;
        }
        deadline.wait(&log[log_before..]).await;
    }
    // None of its old leases came back to it under the old epoch.
    for ((projection, partition), epoch) in &held {
        let lease = cluster
            .leases(projection)
            .await
            .into_iter()
            .find(|l| l.partition == *partition)
            .expect("a lease row per partition");
        assert!(lease.epoch > *epoch, "{projection}#{partition}: {lease:?}");
    }
    // Alive again, it gets its share back.
    cluster.wait_for_split(&BOTH, &[6, 5, 5]).await;

    cluster.speed_up("rm_category_totals.totals").await;
    load.finish().await;
    cluster.wait_caught_up(&BOTH).await;
    cluster.assert_read_models_equal_fold(&BOTH).await;
}

/// A fourth worker joins three: the partitions rebalance to 4/4/4/4 within a few lease
/// periods, only partitions the newcomer ends up with move, and no partition goes unheld or
/// stops making progress for more than a lease period meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_worker_gets_an_even_share_without_pausing_the_others() {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::new().await;
    for name in ["w1", "w2", "w3"] {
        cluster.start_worker(name, &[]).await;
    }
    let load = cluster.start_load(8, Duration::from_millis(20), 4);
    cluster.wait_for_split(&BOTH, &[6, 5, 5]).await;
    load.wait_for_more(200).await;

    let mut watch = Watch::default();
    watch.sample(&cluster, &BOTH).await;
    let before: BTreeMap<&str, BTreeMap<i16, Option<Uuid>>> = {
        let mut before = BTreeMap::new();
        for projection in BOTH {
            before.insert(projection, cluster.holders(projection).await);
        }
        before
    };
    let newcomer = cluster.start_worker("w4", &[]).await;
    let joined_at = Instant::now();
    let deadline = Deadline::new(
        "an even 4/4/4/4 split (within a few lease periods)",
        LEASE_TTL * 3 + SCHEDULING,
    );
    let rebalance = loop {
        watch.sample(&cluster, &BOTH).await;
        let mut shares = Vec::new();
        for projection in BOTH {
            let mut counts: Vec<usize> = cluster
                .split(projection)
                .await
                .values()
                .map(Vec::len)
                .collect();
            counts.sort_unstable();
            shares.push(counts);
        }
        if shares.iter().all(|s| s == &[4, 4, 4, 4]) {
            break joined_at.elapsed();
        }
        deadline.wait(shares).await;
    };
    // Keep watching for a while with the new split, load still running.
    load.wait_for_more(300).await;
    watch.sample(&cluster, &BOTH).await;

    println!(
        "rebalanced in {rebalance:?}; longest unheld {:?}; longest stall {:?}; {} samples",
        watch.longest_unheld, watch.longest_stall, watch.samples
    );
    // Both stretches are measured between samples that saw the partition unheld (or
    // stalled), so they can only under-estimate: a slow sampler cannot make them fail.
    assert!(
        watch.longest_unheld.0 <= LEASE_TTL + SCHEDULING,
        "no partition is without a live holder for more than a lease period (+ scheduling): {:?}",
        watch.longest_unheld
    );
    assert!(
        watch.longest_stall.0 <= LEASE_TTL + SCHEDULING,
        "no partition with events waiting stops advancing for more than a lease period \
         (+ scheduling): {:?}",
        watch.longest_stall
    );
    // Bounded moves: a partition changed hands only to go to the newcomer.
    for projection in BOTH {
        let after = cluster.holders(projection).await;
        for (partition, holder) in &after {
            let was = before[projection][partition];
            if *holder != was {
                assert_eq!(
                    *holder,
                    Some(newcomer),
                    "{projection}#{partition} moved from {was:?} to {holder:?}, not to the newcomer"
                );
            }
        }
        for ((p, partition), owners) in &watch.owners {
            if p == projection {
                assert!(
                    owners.len() <= 2,
                    "{p}#{partition} moved more than once: {owners:?}"
                );
            }
        }
    }

    load.finish().await;
    cluster.wait_caught_up(&BOTH).await;
    cluster.assert_read_models_equal_fold(&BOTH).await;
}

/// A projection pinned to the `critical` pool runs only in a `--pool critical` process; the
/// default pool's process never touches it, and vice versa.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_projection_runs_only_in_processes_of_its_pool() {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::new().await;
    let pins = ("TIDEMARK_PINNED_PROJECTION", "category_totals=critical");
    let bulk = cluster.start_worker("bulk", &[pins]).await;
    let load = cluster.start_load(8, Duration::from_millis(20), 5);
    cluster.wait_for_split(&[BALANCES], &[16]).await;
    load.wait_for_more(200).await;
    cluster.wait_caught_up(&[BALANCES]).await;

    // With no process of its pool, the pinned projection does not run at all.
    let leases = cluster.leases(TOTALS).await;
    assert_eq!(leases.len(), PARTITIONS, "a lease row per partition");
    assert!(
        leases.iter().all(|l| l.owner.is_none()),
        "nobody holds {TOTALS} without a critical worker"
    );
    assert!(
        cluster.checkpoints(TOTALS).await.values().all(|c| *c == 0),
        "{TOTALS} did not advance without a critical worker"
    );
    // ... and that is reported, not silent: once a lease period has passed, its status
    // lists every partition as unowned and the running worker warns about it.
    let observer = ProjectionEngine::new(
        cluster.store.clone(),
        Registry::new()
            .projection(AccountBalances)
            .projection(CategoryTotals),
        EngineConfig {
            lease_ttl: LEASE_TTL,
            worker_timeout: WORKER_TIMEOUT,
            ..EngineConfig::default()
        },
    );
    let deadline = Deadline::new(format!("{TOTALS} reported unowned"), DEADLINE);
    loop {
        let status = observer.projection_status(TOTALS).await.expect("a status");
        let unowned: Vec<i16> = status
            .unowned_partitions
            .iter()
            .map(|u| u.partition)
            .collect();
        if unowned == (0..PARTITIONS as i16).collect::<Vec<_>>() {
            break;
        }
        deadline.wait(unowned).await;
    }
    let status = observer
        .projection_status(BALANCES)
        .await
        .expect("a status");
    assert!(
        status.unowned_partitions.is_empty(),
        "{BALANCES} is owned: {:?}",
        status.unowned_partitions
    );
    let deadline = Deadline::new("the bulk worker to warn about unowned partitions", DEADLINE);
    loop {
        let log = cluster.worker(bulk).log();
        if log
            .iter()
            .any(|l| l.contains("WARN") && l.contains(UNOWNED_LOG) && l.contains(TOTALS))
        {
            break;
        }
        deadline.wait(&log[log.len().saturating_sub(20)..]).await;
    }

    let critical = cluster
        .start_worker("critical", &[pins, ("TIDEMARK_POOL", "critical")])
        .await;
    // Each pool has one live worker, so each holds all of its own projection.
    cluster.wait_for_split(&[TOTALS], &[16, 0]).await;
    let status = observer.projection_status(TOTALS).await.expect("a status");
    assert!(
        status.unowned_partitions.is_empty(),
        "{TOTALS} is owned once a critical worker runs: {:?}",
        status.unowned_partitions
    );
    let mut watch = Watch::default();
    let until = load.appended() + 300;
    while load.appended() < until {
        watch.sample(&cluster, &BOTH).await;
    }
    for ((projection, partition), owners) in &watch.owners {
        let expected = if projection == TOTALS { critical } else { bulk };
        assert_eq!(
            owners,
            &vec![expected],
            "{projection}#{partition} is held only by its pool's worker"
        );
    }
    assert_eq!(
        watch.owners.len(),
        2 * PARTITIONS,
        "every partition was held"
    );

    let pools: BTreeMap<Uuid, String> =
        tidemark_projections::workers::list(&cluster.store, WORKER_TIMEOUT)
            .await
            .expect("listing workers")
            .into_iter()
            .map(|w| (w.id, w.pool))
            .collect();
    assert_eq!(pools[&critical], "critical");
    assert_eq!(pools[&bulk], "default");

    load.finish().await;
    cluster.wait_caught_up(&BOTH).await;
    cluster.assert_read_models_equal_fold(&BOTH).await;
}

/// Counts events per stream, slowly: 5 ms per event, so a load generator can outpace it.
struct SlowCounter;

#[async_trait::async_trait]
impl Projection for SlowCounter {
    fn name(&self) -> &str {
        "slow_counter"
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.tx
            .batch_execute(&format!(
                "CREATE TABLE {} (stream_id text PRIMARY KEY, events bigint NOT NULL)",
                ctx.table("counts")
            ))
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        tokio::time::sleep(Duration::from_millis(5) * events.len() as u32).await;
        let upsert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {} AS c VALUES ($1, 1) ON CONFLICT (stream_id) DO UPDATE SET events = c.events + 1",
                ctx.table("counts")
            ))
            .await?;
        for event in events {
            ctx.tx.execute(&upsert, &[&event.stream_id]).await?;
        }
        Ok(())
    }
}

/// The scaling signal (in one process): `desired_workers` and the adaptive concurrency rise
/// while appends outpace a slow projection, and fall back to 1 and the minimum once it has
/// caught up and appends stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_signal_rises_under_load_and_falls_when_idle() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new().await;
    let config = EngineConfig {
        lease_ttl: Duration::from_millis(600),
        worker_timeout: Duration::from_secs(5),
        min_concurrency: 1,
        max_concurrency: 3,
        batch_size: 50,
        drain_target: Duration::from_secs(2),
        assumed_worker_rate: 100.0,
        ..EngineConfig::default()
    };
    let (min, max) = (config.min_concurrency, config.max_concurrency);
    let engine = ProjectionEngine::new(
        cluster.store.clone(),
        Registry::new().projection(SlowCounter),
        config,
    );
    engine.start().await.expect("the engine starts");

    // Idle first: the signal settles at one worker with no lag.
    let deadline = Deadline::new("an idle signal", DEADLINE);
    loop {
        let signal = engine.scaling_signal();
        if signal.live_workers == 1 && signal.lag_events == 0 && signal.desired_workers == 1 {
            break;
        }
        deadline.wait(signal).await;
    }

    // Load: up to ~16 appends per 10 ms, far beyond 3 lanes × 200 events/s.
    let load = cluster.start_load(16, Duration::from_millis(10), 6);
    let deadline = Deadline::new("the signal to rise under load", DEADLINE);
    let busy = loop {
        let signal = engine.scaling_signal();
        assert!(
            signal.concurrency <= max,
            "concurrency within limits: {signal:?}"
        );
        if signal.desired_workers > 1 && signal.lag_events > 0 && signal.concurrency > min {
            break signal;
        }
        deadline.wait(signal).await;
    };
    println!("under load: {busy:?}");
    let appended = load.finish().await;

    // Idle again: caught up, the signal falls back to one worker and minimum concurrency.
    assert!(
        engine
            .run_until_caught_up("slow_counter", DEADLINE * 2)
            .await
            .expect("waiting for the projection"),
        "the slow projection catches up once the load stops"
    );
    let deadline = Deadline::new("the signal to fall when idle", DEADLINE);
    let idle = loop {
        let signal = engine.scaling_signal();
        if signal.desired_workers == 1 && signal.lag_events == 0 && signal.concurrency == min {
            break signal;
        }
        deadline.wait(signal).await;
    };
    println!("idle: {idle:?}");
    assert!(busy.desired_workers > idle.desired_workers);
    assert!(busy.lag_events > idle.lag_events);
    let counted: i64 = cluster
        .sql
        .query_one(
            "SELECT sum(events)::bigint FROM rm_slow_counter.counts",
            &[],
        )
        .await
        .expect("reading the counts")
        .get(0);
    let logged = cluster.read_all().await.len() as u64;
    assert_eq!(logged, appended + 64, "64 openings and the load");
    assert_eq!(counted as u64, logged, "every event applied exactly once");
    engine.shutdown().await;
}

/// Lease lifetime and heartbeat timeout of the crash-restart tests: long, so that a restarted
/// process that waited for its previous life's leases to expire, or for its heartbeat to
/// age, could not apply anything before their deadline.
const LONG_TTL: Duration = Duration::from_secs(60);

/// The process a crash-restart test kills and starts again.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Server,
    Projector,
}

/// Starts `kind` with [`LONG_TTL`] leases and heartbeat timeout; for a server, waits until
/// `/ready` answers 200 (within `within`).
async fn start_long_lived(cluster: &mut Cluster, kind: Kind, name: &str, within: Duration) -> Uuid {
    let ttl = LONG_TTL.as_millis().to_string();
    let env = [
        ("TIDEMARK_LEASE_TTL_MS", ttl.as_str()),
        ("TIDEMARK_WORKER_TIMEOUT_MS", ttl.as_str()),
    ];
    match kind {
        Kind::Projector => cluster.start_worker(name, &env).await,
        Kind::Server => {
            let (id, address) = cluster.start_server(name, &env).await;
            wait_ready(&address, within).await;
            id
        }
    }
}

/// Kill -9 a process that holds every partition, start it again: the new process must not
/// wait for its previous life. It sees that the registry entry of this host's dead pid is
/// dead, retires it and claims its partitions at once (under new epochs), so a new event is
/// applied long before the dead process's leases could have expired by themselves.
async fn restarted_process_does_not_wait_for_its_previous_life(kind: Kind) {
    let _serial = one_at_a_time().await;
    let mut cluster = Cluster::new().await;
    let first = start_long_lived(&mut cluster, kind, "first", DEADLINE).await;
    let deadline = Deadline::new("the first process to hold every partition", DEADLINE);
    loop {
        let mut leases = Vec::new();
        for projection in BOTH {
            leases.extend(cluster.leases(projection).await);
        }
        if leases.iter().all(|l| l.owner == Some(first) && l.unexpired) {
            break;
        }
        deadline.wait(leases).await;
    }
    cluster.wait_caught_up(&BOTH).await;
    let mut epochs = BTreeMap::new();
    for projection in BOTH {
        for lease in cluster.leases(projection).await {
            epochs.insert((projection, lease.partition), lease.epoch);
        }
    }

    cluster.kill(first);
    // Its leases were renewed at most a third of the TTL before the kill, so none of them
    // expires by itself before two thirds of the TTL after it: the deadline of everything
    // below. Waiting for the leases (or for the heartbeat to age) would miss it.
    let before_expiry = Deadline::new(
        format!(
            "a new event applied after the {kind:?} restarted, before the dead one's leases expire"
        ),
        LONG_TTL * 2 / 3,
    );
    for projection in BOTH {
        for lease in cluster.leases(projection).await {
            assert!(
                lease.owner == Some(first) && lease.unexpired,
                "the killed process still holds {projection}#{}: {lease:?}",
                lease.partition
            );
        }
    }

    let second = start_long_lived(&mut cluster, kind, "second", LONG_TTL / 2).await;
    let ready_at = Instant::now();
    let deposit = cluster
        .store
        .append(AppendRequest::new(
            "account-0",
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "MoneyDeposited",
                serde_json::json!({ "amount": 2500 }),
            )],
        ))
        .await
        .expect("a deposit after the restart")
        .last_position();
    loop {
        let heads = cluster.partition_heads().await;
        let mut behind = Vec::new();
        for projection in BOTH {
            let checkpoints = cluster.checkpoints(projection).await;
            behind.extend(
                heads
                    .iter()
                    .filter(|(p, head)| checkpoints[p] < **head)
                    .map(|(p, head)| (projection, *p, checkpoints[p], *head)),
            );
        }
        if behind.is_empty() {
            break;
        }
        before_expiry.wait((deposit, behind)).await;
    }
    println!(
        "{kind:?}: deposit at {deposit} applied {:?} after the restarted process was up",
        ready_at.elapsed()
    );

    // The new life took every partition over with a higher epoch, and the old one is
    // retired in the registry.
    for projection in BOTH {
        for lease in cluster.leases(projection).await {
            assert_eq!(lease.owner, Some(second), "{projection}: {lease:?}");
            assert!(
                lease.epoch > epochs[&(projection, lease.partition)],
                "{lease:?}"
            );
        }
    }
    let retired: bool = cluster
        .sql
        .query_one(
            "SELECT stopped_at IS NOT NULL FROM workers WHERE id = $1",
            &[&first],
        )
        .await
        .expect("reading the registry")
        .get(0);
    assert!(retired, "the killed process's entry is marked stopped");
    cluster.assert_read_models_equal_fold(&BOTH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_sigkill_applies_new_events_at_once_after_restart() {
    restarted_process_does_not_wait_for_its_previous_life(Kind::Server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_with_sigkill_applies_new_events_at_once_after_restart() {
    restarted_process_does_not_wait_for_its_previous_life(Kind::Projector).await;
}

/// Counts the events of each stream (a projection only the second application has).
struct StreamCounter;

#[async_trait::async_trait]
impl Projection for StreamCounter {
    fn name(&self) -> &str {
        "stream_counter"
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.tx
            .batch_execute(&format!(
                "CREATE TABLE {} (stream_id text PRIMARY KEY, events bigint NOT NULL)",
                ctx.table("counts")
            ))
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let upsert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {} AS c VALUES ($1, 1) ON CONFLICT (stream_id) DO UPDATE SET events = c.events + 1",
                ctx.table("counts")
            ))
            .await?;
        for event in events {
            ctx.tx.execute(&upsert, &[&event.stream_id]).await?;
        }
        Ok(())
    }
}

/// Owner of each partition of `projection` by lease row (expired or not).
async fn lease_owners(cluster: &Cluster, projection: &str) -> BTreeMap<i16, Option<Uuid>> {
    cluster
        .leases(projection)
        .await
        .into_iter()
        .map(|l| (l.partition, l.owner.filter(|_| l.unexpired)))
        .collect()
}

/// Two applications on one database with different projections (as during a rolling
/// deploy): one runs balances and totals, the other totals and a stream counter. Each
/// projection's partitions are shared only among the workers that run it — balances and
/// the counter wholly by their one worker, totals half and half — and all three reach the
/// head. Sharing every projection among all workers would leave half of the balances and
/// of the counter partitions to a worker that never runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_running_different_projections_each_bring_theirs_to_the_head() {
    let _serial = one_at_a_time().await;
    let cluster = Cluster::new().await;
    let config = EngineConfig {
        lease_ttl: LEASE_TTL,
        worker_timeout: WORKER_TIMEOUT,
        ..EngineConfig::default()
    };
    let bank = ProjectionEngine::new(
        cluster.store.clone(),
        Registry::new()
            .projection(AccountBalances)
            .projection(CategoryTotals),
        config.clone(),
    );
    let other = ProjectionEngine::new(
        cluster.store.clone(),
        Registry::new()
            .projection(CategoryTotals)
            .projection(StreamCounter),
        config,
    );
    bank.start().await.expect("the bank's engine starts");
    other
        .start()
        .await
        .expect("the other application's engine starts");
    let load = cluster.start_load(8, Duration::from_millis(20), 7);
    load.wait_for_more(300).await;

    let deadline = Deadline::new(
        "each projection split over the workers that run it",
        DEADLINE,
    );
    loop {
        let balances = lease_owners(&cluster, BALANCES).await;
        let counter = lease_owners(&cluster, "stream_counter").await;
        let totals = lease_owners(&cluster, TOTALS).await;
        let count = |owners: &BTreeMap<i16, Option<Uuid>>, who: Uuid| {
            owners.values().filter(|o| **o == Some(who)).count()
        };
        if count(&balances, bank.worker_id()) == PARTITIONS
            && count(&counter, other.worker_id()) == PARTITIONS
            && count(&totals, bank.worker_id()) == PARTITIONS / 2
            && count(&totals, other.worker_id()) == PARTITIONS / 2
        {
            break;
        }
        deadline.wait((balances, counter, totals)).await;
    }
    load.finish().await;
    for (engine, name) in [
        (&bank, BALANCES),
        (&bank, TOTALS),
        (&other, TOTALS),
        (&other, "stream_counter"),
    ] {
        assert!(
            engine
                .run_until_caught_up(name, DEADLINE)
                .await
                .expect("waiting for a projection"),
            "{name} reaches the head"
        );
        let status = engine.projection_status(name).await.expect("a status");
        assert!(
            status.unowned_partitions.is_empty(),
            "every partition of {name} has an owner: {:?}",
            status.unowned_partitions
        );
    }
    cluster.assert_read_models_equal_fold(&BOTH).await;
    let counted: i64 = cluster
        .sql
        .query_one(
            "SELECT sum(events)::bigint FROM rm_stream_counter.counts",
            &[],
        )
        .await
        .expect("reading the counts")
        .get(0);
    assert_eq!(counted as usize, cluster.read_all().await.len());
    bank.shutdown().await;
    other.shutdown().await;
}
