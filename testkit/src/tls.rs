//! A private PostgreSQL cluster that accepts TCP only over TLS (`hostssl` in pg_hba.conf),
//! with a server certificate from a throwaway CA no client trusts unless told: for the
//! tests of `sslmode` and of CA checking.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tidemark_pg_embedded::{EmbeddedOptions, EmbeddedPostgres};

/// The database [`TlsCluster::start`] creates.
pub const TLS_DATABASE: &str = "tls";

/// A running cluster that accepts TCP connections only over TLS.
pub struct TlsCluster {
    _temp: tempfile::TempDir,
    pub pg: EmbeddedPostgres,
    pub port: u16,
    /// The CA that issued the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// A CA that did not.
    pub other_ca_file: PathBuf,
}

impl TlsCluster {
    /// Creates and starts the cluster (about as long as an `initdb`).
    pub async fn start() -> TlsCluster {
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
        pg.ensure_database(TLS_DATABASE)
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

    /// `DATABASE_URL` over TCP with `sslmode`.
    pub fn tcp_url(&self, sslmode: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{TLS_DATABASE}?sslmode={sslmode}",
            self.port
        )
    }

    /// Connection settings over TCP with `sslmode`.
    pub fn tcp_config(&self, sslmode: &str) -> tokio_postgres::Config {
        self.tcp_url(sslmode).parse().expect("a valid URL")
    }

    /// A connection over the unix socket (no TLS there), outside the store.
    pub async fn observer(&self) -> tokio_postgres::Client {
        let (client, connection) = self
            .pg
            .connection_config(TLS_DATABASE)
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
