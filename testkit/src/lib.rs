//! Test support: one fresh PostgreSQL database per test, so tests never share state, and
//! the helpers every test suite of the workspace uses.
//!
//! [`TestDatabase::create`] makes a database named `tidemark_test_<uuid>` on the server named
//! by `TIDEMARK_TEST_DATABASE_URL` (an admin database, e.g.
//! `postgresql://postgres@127.0.0.1:5432/postgres`), or else on an embedded cluster that this
//! test process starts on first use, in `<temp dir>/tidemark-test-clusters/<pid>`, with fsync
//! off. Dropping the `TestDatabase` drops the database. A test binary runs many tests, so
//! it starts one cluster for all of them, each test in its own database.
//!
//! Each `#[tokio::test]` has its own runtime, and a tokio-postgres connection dies with the
//! runtime that drives it. So nothing shared here is tied to a test's runtime: the embedded
//! cluster is a plain child process (stopped by a parent-death signal when the test process
//! exits), and each connection this crate opens lives only within one call.
//!
//! - [`connect`]: a raw connection to a test database, as another process would have;
//!   [`read_all`]: the whole log, which tests fold to check read models against.
//! - [`wait`]: polling a condition until it holds, failing the test at a deadline.
//! - [`aggregate`]: given/when/then for aggregates, without a database.
//! - [`proxy::FaultProxy`] sits between a store and its database and breaks append
//!   transactions around COMMIT, to test what clients are told when the connection dies.
//! - [`replica::ReplicatedCluster`] is a primary and its hot standby (`pg_basebackup -R`),
//!   whose replay a test can pause, for the tests of reads from a replica.
//! - [`tls::TlsCluster`] is a cluster that refuses unencrypted TCP, for the TLS tests.
//! - [`nats::NatsServer`] is a real `nats-server -js` on a free port (the relay's tests);
//!   tests skip, saying why, when it is not installed.
//! - [`browser::Browser`] is a real headless Chromium driven over the DevTools protocol, for
//!   tests of the pages the server serves (GraphiQL).

pub mod aggregate;
pub mod browser;
pub mod nats;
pub mod proxy;
pub mod replica;
pub mod tls;
pub mod wait;

pub use wait::{eventually, wait_until};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidemark_pg_embedded::process;
use tidemark_pg_embedded::{connection_url, EmbeddedOptions, EmbeddedPostgres};
use tidemark_store::{EventStore, LogFilter, RecordedEvent};
use tokio::sync::OnceCell;
use tokio_postgres::{Config, NoTls};

/// Names an existing server's admin database to create test databases on, instead of
/// starting an embedded cluster.
pub const TEST_DATABASE_URL_ENV: &str = "TIDEMARK_TEST_DATABASE_URL";

/// Under `std::env::temp_dir()`: one embedded cluster per test process, named by its pid.
const CLUSTERS_DIR_NAME: &str = "tidemark-test-clusters";

/// The database administrative connections use.
const ADMIN_DATABASE: &str = "postgres";

/// Bounds each administrative step, so a stuck server fails a test instead of hanging it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The embedded cluster of this test process, started by the first test that needs it.
/// A failure to start is kept too, so every test reports it without retrying initdb.
static EMBEDDED_CLUSTER: OnceCell<Result<EmbeddedPostgres, String>> = OnceCell::const_new();

/// A database of its own for one test, dropped (with `WITH (FORCE)`) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    admin_config: Config,
    config: Config,
}

impl TestDatabase {
    /// Creates a fresh, empty database. Panics, saying why, when no server is available.
    pub async fn create() -> TestDatabase {
        let admin_config = admin_config().await;
        let name = format!("tidemark_test_{}", uuid::Uuid::new_v4().simple());
        let statement = format!("CREATE DATABASE {name}");
        if let Err(error) = run_admin_statement(&admin_config, &statement).await {
            panic!("could not create test database {name}: {error}");
        }
        let mut config = admin_config.clone();
        config.dbname(&name);
        TestDatabase {
            name,
            admin_config,
            config,
        }
    }

    /// Connection settings for this test's database.
    pub fn pg_config(&self) -> Config {
        self.config.clone()
    }

    /// A `postgresql://` URL for this test's database, e.g. a `DATABASE_URL` for a child
    /// process. Carries hosts, ports, user, password and database name.
    pub fn url(&self) -> String {
        connection_url(&self.config)
    }

    /// The database's name (`tidemark_test_<uuid>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection settings for the server's admin database (`postgres`, or the database
    /// named by `TIDEMARK_TEST_DATABASE_URL`).
    pub fn admin_config(&self) -> Config {
        self.admin_config.clone()
    }

    /// A connection pool on this test's database, its connections driven by the calling
    /// test's runtime.
    pub fn pool(&self, max_size: usize) -> deadpool_postgres::Pool {
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let manager =
            deadpool_postgres::Manager::from_config(self.pg_config(), NoTls, manager_config);
        deadpool_postgres::Pool::builder(manager)
            .max_size(max_size)
            .build()
            .expect("a pool without timeouts needs no runtime to build")
    }
}

impl Drop for TestDatabase {
    /// Drops the database on a thread of its own with its own runtime: the test's runtime
    /// may be single-threaded (blocked here) or shutting down, and the test may be
    /// panicking. Never panics; a failure is only reported.
    fn drop(&mut self) {
        let admin_config = self.admin_config.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropper = std::thread::Builder::new()
            .name("tidemark-test-db-drop".into())
            .spawn(move || -> Result<(), String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| format!("could not start a runtime: {error}"))?;
                runtime.block_on(run_admin_statement(&admin_config, &statement))
            });
        let outcome = match dropper {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|_| Err("the drop thread panicked".into())),
            Err(error) => Err(format!("could not start a thread: {error}")),
        };
        if let Err(error) = outcome {
            eprintln!(
                "warning: could not drop test database {}: {error}",
                self.name
            );
        }
    }
}

/// A raw connection to `db`, outside any store (as another process, or a reader of read
/// models, would have), driven by the calling test's runtime.
pub async fn connect(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = db
        .pg_config()
        .connect(NoTls)
        .await
        .expect("a raw connection to the test database");
    tokio::spawn(async move {
        // The connection ends when the client is dropped; errors then are expected.
        let _ = connection.await;
    });
    client
}

/// The whole log of `store`, in position order, read in pages.
pub async fn read_all(store: &EventStore) -> Vec<RecordedEvent> {
    const PAGE: usize = 5000;
    let mut all: Vec<RecordedEvent> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.position);
        let page = store
            .read_log(after, &LogFilter::all(), PAGE)
            .await
            .expect("reading the log");
        let short = page.len() < PAGE;
        all.extend(page);
        if short {
            return all;
        }
    }
}

/// Settings for the admin database: from `TIDEMARK_TEST_DATABASE_URL`, or the embedded
/// cluster of this process (started on first call).
async fn admin_config() -> Config {
    if let Some(url) = std::env::var_os(TEST_DATABASE_URL_ENV) {
        let url = url.to_string_lossy();
        return url.parse().unwrap_or_else(|error| {
            panic!("{TEST_DATABASE_URL_ENV} is not a valid connection string ({url}): {error}")
        });
    }
    let cluster = EMBEDDED_CLUSTER
        .get_or_init(|| async {
            start_embedded_cluster()
                .await
                .map_err(|error| error.to_string())
        })
        .await;
    match cluster {
        Ok(cluster) => cluster.connection_config(ADMIN_DATABASE),
        Err(error) => panic!(
            "could not start an embedded PostgreSQL for tests ({error}); or set {TEST_DATABASE_URL_ENV} \
             to an existing server's admin database"
        ),
    }
}

async fn start_embedded_cluster() -> Result<EmbeddedPostgres, tidemark_pg_embedded::EmbeddedError> {
    let clusters_dir = clusters_dir();
    remove_abandoned_clusters(&clusters_dir);
    let data_dir = clusters_dir
        .join(std::process::id().to_string())
        .join("data");
    EmbeddedPostgres::start(EmbeddedOptions {
        data_dir,
        fsync: false,
        ..EmbeddedOptions::default()
    })
    .await
}

/// The shared parent of all test clusters, created world-writable and sticky (like /tmp)
/// so that test runs by different users can share it.
fn clusters_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(CLUSTERS_DIR_NAME);
    if std::fs::create_dir(&dir).is_ok() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    dir
}

/// Removes clusters whose test process is gone and whose server has stopped. Our own pid's
/// directory, if present, is from an earlier process that had the same pid. Best effort.
fn remove_abandoned_clusters(clusters_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(clusters_dir) else {
        return;
    };
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let owner_gone = pid == own_pid || !is_alive(pid);
        if owner_gone && !server_running(&entry.path().join("data")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether the `postmaster.pid` in `data_dir` names a live process.
fn server_running(data_dir: &Path) -> bool {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|contents| contents.lines().next()?.trim().parse::<u32>().ok())
        .is_some_and(is_alive)
}

fn is_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(process::is_alive)
}

/// Runs one statement on the admin database over a connection that lives only for this call.
async fn run_admin_statement(admin_config: &Config, statement: &str) -> Result<(), String> {
    let work = async {
        let (client, connection) = admin_config.connect(NoTls).await?;
        let connection = tokio::spawn(connection);
        let result = client.batch_execute(statement).await;
        drop(client);
        let _ = connection.await;
        result
    };
    match tokio::time::timeout(ADMIN_TIMEOUT, work).await {
        Ok(result) => result.map_err(|error| match error.as_db_error() {
            Some(db_error) => db_error.to_string(),
            None => error.to_string(),
        }),
        Err(_) => Err(format!(
            "no answer from the server within {} s",
            ADMIN_TIMEOUT.as_secs()
        )),
    }
}
