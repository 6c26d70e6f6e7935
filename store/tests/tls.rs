//! TLS to PostgreSQL: a private cluster with `ssl=on`, a certificate no client trusts and a
//! `pg_hba.conf` that refuses unencrypted TCP. `sslmode=require` must then work for every
//! connection the store opens (pool and LISTEN), `sslmode=disable` must be refused, and a CA
//! file must make the client check the server.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::DEADLINE;
use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tidemark_store::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tidemark_store::{
    Direction, EventStore, ExpectedVersion, StoreConfig, SubscribeOptions, TlsOptions,
};

const DATABASE: &str = "tls";

/// A running cluster that accepts TCP connections only over TLS.
struct TlsCluster {
    _temp: tempfile::TempDir,
    pg: EmbeddedPostgres,
    port: u16,
    /// The CA that issued the server's certificate (PEM).
    ca_file: PathBuf,
    /// A CA that did not.
    other_ca_file: PathBuf,
}

impl TlsCluster {
    async fn start() -> TlsCluster {
        let temp = tempfile::tempdir().expect("test setup: temp dir");
        let data_dir = temp.path().join("pg");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup: port");
            listener.local_addr().expect("test setup: port").port()
        };
        let options = EmbeddedOptions {
            data_dir: data_dir.clone(),
            port: Some(port),
            fsync: false,
            ..Default::default()
        };
        // The first start creates the cluster; the certificate, key and pg_hba.conf then go
        // into its data directory, owned as the server wants them.
        EmbeddedPostgres::start(options.clone())
            .await
            .expect("test setup: initdb and first start")
            .stop()
            .await
            .expect("test setup: stop");

        let (ca_pem, server_pem, server_key_pem) = issue_certificates();
        let (other_ca_pem, _, _) = issue_certificates();
        write_owned_like(&data_dir, "server.crt", &server_pem, 0o600);
        write_owned_like(&data_dir, "server.key", &server_key_pem, 0o600);
        // Unix socket (the launcher's readiness check) in the clear; TCP only with TLS.
        write_owned_like(
            &data_dir,
            "pg_hba.conf",
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            0o600,
        );
        let ca_file = temp.path().join("ca.crt");
        std::fs::write(&ca_file, ca_pem).expect("test setup: CA file");
        let other_ca_file = temp.path().join("other-ca.crt");
        std::fs::write(&other_ca_file, other_ca_pem).expect("test setup: CA file");

        let pg = EmbeddedPostgres::start(EmbeddedOptions {
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "server.crt".into()),
                ("ssl_key_file".into(), "server.key".into()),
            ],
            ..options
        })
        .await
        .expect("test setup: start with ssl=on");
        pg.ensure_database(DATABASE)
            .await
            .expect("test setup: database");
        TlsCluster {
            _temp: temp,
            pg,
            port,
            ca_file,
            other_ca_file,
        }
    }

    /// Connection settings over TCP with `sslmode`.
    fn tcp_config(&self, sslmode: &str) -> tokio_postgres::Config {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{DATABASE}?sslmode={sslmode}",
            self.port
        )
        .parse()
        .expect("a valid URL")
    }

    /// A connection over the unix socket (no TLS there), outside the store.
    async fn observer(&self) -> tokio_postgres::Client {
        let (client, connection) = self
            .pg
            .connection_config(DATABASE)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("the unix socket accepts plain connections");
        tokio::spawn(connection);
        client
    }
}

/// A CA certificate, and a server certificate for 127.0.0.1 / localhost it issued with its
/// key, all PEM.
fn issue_certificates() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

/// Writes `name` in `dir` with `mode`, owned by `dir`'s owner (the server refuses a key it
/// does not own, or that others may read).
fn write_owned_like(dir: &Path, name: &str, contents: &str, mode: u32) {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("test setup: write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .expect("test setup: chmod");
    let owner = std::fs::metadata(dir).expect("test setup: stat");
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))
        .expect("test setup: chown");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_encrypts_every_store_connection_and_accepts_an_untrusted_certificate() {
    let cluster = TlsCluster::start().await;

    // Plain TCP is refused by this server: what a client without TLS support would get.
    let refused = tidemark_store::tls::connect(
        &cluster.tcp_config("disable"),
        &tidemark_store::PgTls::new(&TlsOptions::default()).expect("connector"),
    )
    .await
    .err()
    .expect("sslmode=disable must be refused by a hostssl-only server");
    let message = tidemark_store::error::describe_postgres_error(&refused);
    assert!(
        message.contains("no encryption"),
        "the refusal says why: {message}"
    );

    // The polling fallback is pushed out of reach: a live event can only arrive through the
    // LISTEN connection.
    let config = StoreConfig {
        poll_interval: Duration::from_secs(3600),
        ..StoreConfig::default()
    };
    let store = EventStore::open(cluster.tcp_config("require"), config)
        .await
        .expect("the store opens with sslmode=require");

    let client = store.pool().get().await.expect("a pooled connection");
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(encrypted, "the pooled connection is encrypted");
    drop(client);

    store
        .append(common::request(
            "tls-1",
            ExpectedVersion::NoStream,
            vec![common::event("Opened", 1)],
        ))
        .await
        .expect("append over TLS");
    let read = store
        .read_stream("tls-1", None, Direction::Forward, 10)
        .await
        .expect("read over TLS");
    assert_eq!(read.len(), 1);

    // Another writer (as another process would be): its commit reaches this store only
    // through NOTIFY on the LISTEN connection, as polling is an hour away.
    let mut live = Box::pin(store.subscribe(SubscribeOptions {
        after: 1,
        ..SubscribeOptions::default()
    }));
    let other = EventStore::open(cluster.tcp_config("require"), StoreConfig::default())
        .await
        .expect("a second store opens with sslmode=require");
    other
        .append(common::request(
            "tls-2",
            ExpectedVersion::NoStream,
            vec![common::event("Opened", 2)],
        ))
        .await
        .expect("append over TLS");
    other.shutdown().await;
    let event = tokio::time::timeout(DEADLINE, live.next())
        .await
        .expect("the LISTEN connection wakes the subscription")
        .expect("the subscription goes on")
        .expect("a live event");
    assert_eq!(event.stream_id, "tls-2");

    // Every connection the store holds (pool and LISTEN) is encrypted.
    let observer = cluster.observer().await;
    let row = observer
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.backend_type = 'client backend' \
               AND a.pid <> pg_backend_pid()",
            &[&DATABASE],
        )
        .await
        .expect("pg_stat_activity");
    let (total, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        total >= 2,
        "the pooled and the LISTEN connection at least: {total}"
    );
    assert_eq!(
        encrypted, total,
        "every store connection is encrypted ({encrypted} of {total})"
    );

    store.shutdown().await;
    cluster.pg.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_file_makes_the_client_check_the_server_certificate() {
    let cluster = TlsCluster::start().await;

    let trusted = TlsOptions {
        ca_file: Some(cluster.ca_file.clone()),
    };
    let store = EventStore::open(
        cluster.tcp_config("require"),
        StoreConfig {
            tls: trusted,
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the server's certificate chains to the CA file");
    store
        .append(common::request(
            "ca-1",
            ExpectedVersion::NoStream,
            vec![common::event("Opened", 1)],
        ))
        .await
        .expect("append over a checked connection");
    store.shutdown().await;

    let untrusted = tidemark_store::PgTls::new(&TlsOptions {
        ca_file: Some(cluster.other_ca_file.clone()),
    })
    .expect("connector");
    let error = tidemark_store::tls::connect(&cluster.tcp_config("require"), &untrusted)
        .await
        .err()
        .expect("a certificate from another CA must be refused");
    let message = tidemark_store::error::describe_postgres_error(&error);
    assert!(
        message.contains("certificate"),
        "the refusal names the certificate: {message}"
    );

    let missing = tidemark_store::PgTls::new(&TlsOptions {
        ca_file: Some(cluster.ca_file.with_extension("missing")),
    })
    .expect_err("a missing CA file is a configuration error");
    assert!(missing.to_string().contains("CA file"), "{missing}");

    cluster.pg.stop().await.expect("stop");
}
