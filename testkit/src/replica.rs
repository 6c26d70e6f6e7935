//! A primary and its hot standby, for the tests of reads from a replica: both are private
//! embedded clusters this test starts (the standby copied from the primary with
//! `pg_basebackup -R`, streaming from it), so nothing depends on servers already running
//! on the machine. The test can pause the standby's replay to make it lag as long as it
//! likes, and wait until it has replayed everything.

use std::time::Duration;

use tidemark_pg_embedded::{connection_url, EmbeddedOptions, EmbeddedPostgres};
use tokio_postgres::{Config, NoTls};

use crate::wait::wait_until;

/// The database [`ReplicatedCluster::start`] creates on the primary (and so on the standby).
pub const REPLICATED_DATABASE: &str = "replicated";

/// How long a helper waits for the standby before failing the test.
const STANDBY_WAIT: Duration = Duration::from_secs(30);

/// A running primary and its standby, stopped when dropped.
pub struct ReplicatedCluster {
    pub primary: EmbeddedPostgres,
    pub standby: EmbeddedPostgres,
    /// Last, so the servers are asked to stop before their directories go.
    _dir: tempfile::TempDir,
}

impl ReplicatedCluster {
    /// Creates a primary with database [`REPLICATED_DATABASE`], copies it into a standby
    /// and starts that; returns once the standby answers queries (a few seconds: an initdb,
    /// a base backup and two starts).
    pub async fn start() -> ReplicatedCluster {
        let dir = tempfile::Builder::new()
            .prefix("replica-")
            .tempdir_in(crate::clusters_dir())
            .expect("test setup: a directory for the clusters");
        // Under root the servers run as `postgres`, which must enter it.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("test setup: chmod");
        }
        let primary = EmbeddedPostgres::start(EmbeddedOptions {
            data_dir: dir.path().join("primary"),
            fsync: false,
            ..EmbeddedOptions::default()
        })
        .await
        .expect("test setup: start the primary");
        primary
            .ensure_database(REPLICATED_DATABASE)
            .await
            .expect("test setup: create the database");
        let standby = primary
            .start_standby(EmbeddedOptions {
                data_dir: dir.path().join("standby"),
                fsync: false,
                ..EmbeddedOptions::default()
            })
            .await
            .expect("test setup: copy the primary and start the standby");
        let cluster = ReplicatedCluster {
            primary,
            standby,
            _dir: dir,
        };
        let standby = cluster.standby_client().await;
        let in_recovery: bool = standby
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("test setup: ask the standby")
            .get(0);
        assert!(
            in_recovery,
            "the standby is not in recovery: it is no replica"
        );
        cluster
    }

    /// Connection settings of the test database on the primary.
    pub fn primary_config(&self) -> Config {
        self.primary.connection_config(REPLICATED_DATABASE)
    }

    /// Connection settings of the test database on the standby.
    pub fn standby_config(&self) -> Config {
        self.standby.connection_config(REPLICATED_DATABASE)
    }

    /// `DATABASE_URL` of the primary.
    pub fn primary_url(&self) -> String {
        connection_url(&self.primary_config())
    }

    /// The read database URL: the standby.
    pub fn standby_url(&self) -> String {
        connection_url(&self.standby_config())
    }

    /// A connection to the test database on the primary, driven by the calling test's runtime.
    pub async fn primary_client(&self) -> tokio_postgres::Client {
        connect(self.primary_config()).await
    }

    /// A connection to the test database on the standby, driven by the calling test's runtime.
    pub async fn standby_client(&self) -> tokio_postgres::Client {
        connect(self.standby_config()).await
    }

    /// A pool on the standby's test database (what a store reads from).
    pub fn standby_pool(&self, max_size: usize) -> deadpool_postgres::Pool {
        let manager = deadpool_postgres::Manager::from_config(
            self.standby_config(),
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(max_size)
            .build()
            .expect("a pool without timeouts needs no runtime to build")
    }

    /// Stops the standby's replay (it still receives WAL, and lags until
    /// [`ReplicatedCluster::resume_replay`]); returns once replay is paused.
    pub async fn pause_replay(&self) {
        let standby = self.standby_client().await;
        standby
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await
            .expect("pausing replay on the standby");
        wait_until("the standby's replay to pause", STANDBY_WAIT, || async {
            standby
                .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                .await
                .expect("asking the standby")
                .get::<_, String>(0)
                == "paused"
        })
        .await;
    }

    /// Lets the standby replay again.
    pub async fn resume_replay(&self) {
        self.standby_client()
            .await
            .execute("SELECT pg_wal_replay_resume()", &[])
            .await
            .expect("resuming replay on the standby");
    }

    /// Stops both servers and removes their directories (dropping only asks them to stop).
    pub async fn stop(self) {
        let ReplicatedCluster {
            primary,
            standby,
            _dir,
        } = self;
        standby.stop().await.expect("stopping the standby");
        primary.stop().await.expect("stopping the primary");
    }

    /// Waits until the standby has replayed everything the primary had written when called.
    pub async fn wait_for_replay(&self) {
        let written: String = self
            .primary_client()
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("asking the primary")
            .get(0);
        let standby = self.standby_client().await;
        wait_until(
            "the standby to replay the primary's WAL",
            STANDBY_WAIT,
            || async {
                standby
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                        &[&written],
                    )
                    .await
                    .expect("asking the standby")
                    .get::<_, bool>(0)
            },
        )
        .await;
    }
}

async fn connect(config: Config) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("a connection to the test cluster");
    tokio::spawn(async move {
        // The connection ends when the client is dropped; errors then are expected.
        let _ = connection.await;
    });
    client
}
