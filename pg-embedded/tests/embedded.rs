//! The embedded PostgreSQL launcher: persistent data, clear errors, clean stops, and the
//! supervisor that restarts a killed server. Each test runs its own throwaway cluster from
//! the installed binaries.

use std::time::Duration;

use tidemark_pg_embedded::{
    find_binaries, process, ClusterHealth, ClusterState, EmbeddedError, EmbeddedOptions,
    EmbeddedPostgres, RestartPolicy, RunningCluster, SupervisedPostgres,
};
use tokio_postgres::NoTls;

async fn connect(config: tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

#[test]
fn an_empty_binaries_directory_gives_one_clear_error() {
    let empty = tempfile::tempdir().expect("launcher step");
    let error = find_binaries(Some(empty.path())).expect_err("must fail");
    assert!(
        matches!(error, EmbeddedError::BinariesNotFound { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("install"),
        "says what to install: {message}"
    );
    assert!(
        message.contains("DATABASE_URL"),
        "says which variable to set: {message}"
    );
}

#[test]
fn the_default_search_finds_the_installed_binaries() {
    let dir = find_binaries(None).expect("the PostgreSQL server package is installed");
    assert!(
        dir.join("initdb").is_file() && dir.join("postgres").is_file(),
        "{}",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_keeps_its_data_across_a_restart() {
    let temp = tempfile::tempdir().expect("launcher step");
    let data_dir = temp.path().join("nested/dirs/pg");
    let options = EmbeddedOptions {
        data_dir: data_dir.clone(),
        fsync: false,
        ..Default::default()
    };

    let started = std::time::Instant::now();
    let pg = EmbeddedPostgres::start(options.clone())
        .await
        .expect("launcher step");
    println!(
        "first start (with initdb): {:?}, url {}",
        started.elapsed(),
        pg.url("app")
    );
    pg.ensure_database("app").await.expect("launcher step");
    pg.ensure_database("app").await.expect("launcher step");
    let client = connect(pg.connection_config("app")).await;
    client
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
        .await
        .expect("launcher step");
    drop(client);
    // The URL form works too.
    let from_url: tokio_postgres::Config = pg.url("app").parse().expect("launcher step");
    let client = connect(from_url).await;
    let owner: String = client
        .query_one("SELECT current_user", &[])
        .await
        .expect("launcher step")
        .get(0);
    assert_eq!(owner, "postgres");
    drop(client);
    let pid = pg.pid().expect("launcher step");
    pg.stop().await.expect("launcher step");
    assert!(!process::is_alive(pid as i32));

    let started = std::time::Instant::now();
    let pg = EmbeddedPostgres::start(options)
        .await
        .expect("launcher step");
    println!("restart: {:?}", started.elapsed());
    let client = connect(pg.connection_config("app")).await;
    let value: String = client
        .query_one("SELECT v FROM t", &[])
        .await
        .expect("launcher step")
        .get(0);
    assert_eq!(value, "kept");
    drop(client);
    pg.stop().await.expect("launcher step");
}

#[tokio::test]
async fn a_data_dir_too_deep_for_a_socket_path_falls_back_to_loopback_tcp() {
    let temp = tempfile::tempdir().expect("launcher step");
    let data_dir = temp.path().join("a".repeat(60)).join("b".repeat(40));
    let options = EmbeddedOptions {
        data_dir,
        fsync: false,
        ..Default::default()
    };
    let pg = EmbeddedPostgres::start(options)
        .await
        .expect("launcher step");
    assert!(pg.socket_dir().is_none());
    assert_ne!(pg.port(), 5432);
    println!("url {}", pg.url("postgres"));
    let client = connect(pg.url("postgres").parse().expect("launcher step")).await;
    client
        .batch_execute("SELECT 1")
        .await
        .expect("launcher step");
    drop(client);
    pg.stop().await.expect("launcher step");
}

#[tokio::test]
async fn a_stale_pid_file_is_removed_a_second_server_is_refused_and_drop_stops_the_server() {
    let temp = tempfile::tempdir().expect("launcher step");
    let options = EmbeddedOptions {
        data_dir: temp.path().join("pg"),
        fsync: false,
        ..Default::default()
    };
    let pg = EmbeddedPostgres::start(options.clone())
        .await
        .expect("launcher step");
    let pid = pg.pid().expect("launcher step") as i32;
    // Simulate a killed server: SIGKILL leaves postmaster.pid behind.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("launcher step");
    // No pause for its orphaned children to exit: the next start waits for them itself.
    // Write a pid file naming a dead pid.
    std::fs::write(temp.path().join("pg/postmaster.pid"), "999999\n").expect("launcher step");
    drop(pg);
    let pg = EmbeddedPostgres::start(options.clone())
        .await
        .expect("launcher step");
    let pid = pg.pid().expect("launcher step") as i32;
    // A second server on the same directory is refused (after a grace period).
    let error = EmbeddedPostgres::start(EmbeddedOptions {
        startup_timeout: Duration::from_secs(1),
        ..options.clone()
    })
    .await
    .expect_err("must fail");
    println!("{error}");
    assert!(
        matches!(error, EmbeddedError::AlreadyRunning { .. }),
        "{error:?}"
    );
    drop(pg);
    for _ in 0..100 {
        if !process::is_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("drop did not stop the server");
}

#[tokio::test]
async fn a_directory_that_is_not_a_cluster_is_refused_and_a_failed_start_shows_the_log() {
    let temp = tempfile::tempdir().expect("launcher step");
    std::fs::write(temp.path().join("something"), "x").expect("launcher step");
    let error = EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: temp.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .expect_err("must fail");
    println!("{error}");
    assert!(matches!(error, EmbeddedError::NotACluster { .. }));

    let options = EmbeddedOptions {
        data_dir: temp.path().join("pg"),
        fsync: false,
        settings: vec![("shared_buffers".into(), "nonsense".into())],
        ..Default::default()
    };
    let error = EmbeddedPostgres::start(options)
        .await
        .expect_err("must fail");
    println!("{error}");
    assert!(matches!(error, EmbeddedError::StartFailed { .. }));
    assert!(error.to_string().contains("shared_buffers"));
}

#[tokio::test]
async fn a_cluster_of_another_major_version_is_refused() {
    let temp = tempfile::tempdir().expect("launcher step");
    std::fs::write(temp.path().join("PG_VERSION"), "14\n").expect("launcher step");
    let error = EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: temp.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .expect_err("must fail");
    println!("{error}");
    assert!(
        matches!(error, EmbeddedError::VersionMismatch { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_data_dir_the_postgres_user_cannot_reach_is_reported() {
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().expect("launcher step");
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o700))
        .expect("launcher step");
    let error = EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: temp.path().join("pg"),
        ..Default::default()
    })
    .await
    .expect_err("must fail");
    println!("{error}");
    assert!(
        matches!(error, EmbeddedError::DataDirUnreachable { .. }),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ensure_database_tolerates_concurrent_callers() {
    let temp = tempfile::tempdir().expect("launcher step");
    let options = EmbeddedOptions {
        data_dir: temp.path().join("pg"),
        fsync: false,
        ..Default::default()
    };
    let pg = std::sync::Arc::new(
        EmbeddedPostgres::start(options)
            .await
            .expect("launcher step"),
    );
    for round in 0..5 {
        let name = format!("race \"{round}\"");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pg = pg.clone();
                let name = name.clone();
                tokio::spawn(async move { pg.ensure_database(&name).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("launcher step").expect("launcher step");
        }
        let client = connect(pg.connection_config(&name)).await;
        client
            .batch_execute("SELECT 1")
            .await
            .expect("launcher step");
    }
    std::sync::Arc::into_inner(pg)
        .expect("launcher step")
        .stop()
        .await
        .expect("launcher step");
}

/// Polls the supervisor's reports until `done` holds, failing after a deadline far beyond
/// any restart (the backoffs used here are at most a second).
async fn wait_for_health(
    supervised: &SupervisedPostgres,
    what: &str,
    done: impl Fn(&ClusterHealth) -> bool,
) -> ClusterHealth {
    let mut reports = supervised.subscribe();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        reports.wait_for(|health| done(health)),
    )
    .await;
    match waited {
        Ok(Ok(health)) => health.clone(),
        _ => panic!(
            "timed out waiting for {what}; last report: {:?}",
            supervised.health()
        ),
    }
}

fn kill_postmaster(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the postmaster");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_postmaster_is_restarted_and_committed_data_survives() {
    let temp = tempfile::tempdir().expect("temp dir");
    let pg = EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: temp.path().join("pg"),
        fsync: false,
        ..Default::default()
    })
    .await
    .expect("start");
    let first_pid = pg.pid().expect("running");
    let supervised = SupervisedPostgres::spawn(pg, RestartPolicy::default());
    let client = connect(supervised.connection_config("postgres")).await;
    client
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('committed')")
        .await
        .expect("write");
    // A backend busy computing does not notice that its postmaster died until it next
    // waits, and keeps the old shared memory meanwhile, which blocks a new server. This one
    // would compute for hours.
    let busy = connect(supervised.connection_config("postgres")).await;
    let busy_pid: i32 = busy
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let long_query = tokio::spawn(async move {
        busy.query_one("SELECT count(*) FROM generate_series(1, 100000000000)", &[])
            .await
            .map(|_| ())
    });
    let state_of = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(") ")?.1.chars().next()? == 'R'))
    };
    for _ in 0..200 {
        if state_of(busy_pid) == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill_postmaster(first_pid);

    let health = wait_for_health(&supervised, "the restart", |health| {
        health.restarts == 1 && health.state == ClusterState::Running
    })
    .await;
    assert_ne!(health.pid, Some(first_pid));
    assert!(health.is_healthy());
    assert!(
        client.batch_execute("SELECT 1").await.is_err(),
        "a session of the dead server cannot work on"
    );
    assert!(
        long_query.await.expect("the query task").is_err(),
        "the busy backend was ended"
    );
    let client = connect(supervised.connection_config("postgres")).await;
    let value: String = client
        .query_one("SELECT v FROM t", &[])
        .await
        .expect("read after the restart")
        .get(0);
    assert_eq!(value, "committed");
    drop(client);
    supervised.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_fails_while_restarts_keep_failing_and_recovers_when_they_succeed() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("pg");
    let pg = EmbeddedPostgres::start(EmbeddedOptions {
        data_dir: data_dir.clone(),
        fsync: false,
        ..Default::default()
    })
    .await
    .expect("start");
    let pid = pg.pid().expect("running");
    let supervised = SupervisedPostgres::spawn(
        pg,
        RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            unhealthy_after_restarts: 3,
            ..RestartPolicy::default()
        },
    );
    // Without its configuration file the server cannot start again.
    let conf = data_dir.join("postgresql.conf");
    let away = data_dir.join("postgresql.conf.away");
    std::fs::rename(&conf, &away).expect("hide the configuration");
    kill_postmaster(pid);

    let down = wait_for_health(&supervised, "a failing cluster", |health| {
        health.state == ClusterState::Failing
    })
    .await;
    println!("{}", down.describe());
    assert!(!down.is_healthy());
    assert!(down.restarts_in_a_row >= 3, "{down:?}");
    assert!(
        down.last_error
            .as_deref()
            .is_some_and(|error| error.contains("postgresql.conf")),
        "says why: {down:?}"
    );

    std::fs::rename(&away, &conf).expect("restore the configuration");
    let up = wait_for_health(&supervised, "the cluster back", |health| {
        health.state == ClusterState::Running
    })
    .await;
    assert!(up.is_healthy());
    assert_eq!(up.restarts, 1);
    let client = connect(supervised.connection_config("postgres")).await;
    client.batch_execute("SELECT 1").await.expect("query");
    drop(client);
    let reports = supervised.subscribe();
    supervised.stop().await.expect("stop");
    assert_eq!(reports.borrow().state, ClusterState::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_process_finds_a_running_cluster_until_it_stops_or_dies() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("pg");
    let options = EmbeddedOptions {
        data_dir: data_dir.clone(),
        fsync: false,
        ..Default::default()
    };
    let find = || RunningCluster::find(&data_dir, Duration::from_secs(10));
    assert_eq!(find().await.expect("no cluster yet"), None);

    let pg = EmbeddedPostgres::start(options.clone())
        .await
        .expect("start");
    let running = find().await.expect("found").expect("a running cluster");
    assert_eq!(Some(running.pid()), pg.pid());
    assert_eq!(running.owner_pid(), std::process::id());
    assert_eq!(running.url("postgres"), pg.url("postgres"));
    running.ensure_database("attached").await.expect("create");
    let client = connect(running.connection_config("attached")).await;
    let answer: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(answer, 1);
    drop(client);

    // A stopped cluster is no longer found.
    pg.stop().await.expect("stop");
    assert_eq!(find().await.expect("no error"), None);

    // Nor is one whose postmaster was killed (its record stays behind).
    let mut pg = EmbeddedPostgres::start(options).await.expect("start again");
    let pid = pg.pid().expect("running");
    assert!(find().await.expect("found").is_some());
    kill_postmaster(pid);
    for _ in 0..400 {
        if pg.exited().expect("checked").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(pg.pid(), None, "the killed postmaster was reaped");
    assert_eq!(find().await.expect("no error"), None);
    drop(pg);
}
