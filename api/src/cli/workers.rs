//! `tidemark workers`: the worker registry with each process's leases, and the scaling
//! signal per pool.

use std::time::Duration;
use tidemark_projections::workers;
use tidemark_store::EventStore;

pub async fn run(store: EventStore, worker_timeout: Duration) -> anyhow::Result<()> {
    let registry = workers::list(&store, worker_timeout).await?;
    if registry.is_empty() {
        println!("no worker has registered yet (start one with `serve`)");
        return Ok(());
    }
    println!(
        "{:<36}  {:<10}  {:<24}  {:<5}  {:>6}  {:>7}  {:>7}  {:<24}  LEASES",
        "ID", "POOL", "HOST:PID", "ALIVE", "CONC", "DESIRED", "LAG", "PROJECTIONS"
    );
    for worker in &registry {
        println!(
            "{:<36}  {:<10}  {:<24}  {:<5}  {:>6}  {:>7}  {:>7}  {:<24}  {}",
            worker.id,
            worker.pool,
            format!("{}:{}", worker.host, worker.pid),
            if worker.alive { "yes" } else { "no" },
            worker.concurrency,
            worker.desired_workers,
            worker.lag_events,
            if worker.projections.is_empty() {
                "-".to_string()
            } else {
                worker.projections.join(",")
            },
            if worker.leases.is_empty() {
                "-".to_string()
            } else {
                format!("{} ({})", worker.leases.len(), worker.leases.join(" "))
            }
        );
    }
    println!();
    for pool in workers::pool_scaling(&store, worker_timeout).await? {
        println!(
            "pool {}: {} live worker(s), desired {}, lag {} events",
            pool.pool, pool.live_workers, pool.desired_workers, pool.lag_events
        );
    }
    Ok(())
}
