//! TLS for every PostgreSQL connection Tidemark opens: one connector type ([`PgTls`]) that
//! honours the connection string's `sslmode` the way libpq does.
//!
//! - `sslmode=disable`: plain TCP (the connector is never used).
//! - `sslmode=prefer` (the default when the string names none): TLS when the server offers
//!   it, plain otherwise.
//! - `sslmode=require`: TLS or no connection.
//!
//! As with libpq, `prefer` and `require` encrypt but do not check who the server is: any
//! certificate, self-signed included, is accepted (the handshake signature is still checked
//! against it). tokio-postgres does not parse `verify-ca` / `verify-full`; to check the
//! server, give a CA file ([`TlsOptions::ca_file`], `--pg-ca-file` / `TIDEMARK_PG_CA_FILE`):
//! the server's certificate must then chain to it and name the host connected to (what libpq
//! calls `verify-full`).
//!
//! Unix-socket connections never use TLS: the server declines it there, and `prefer` then
//! goes on in plain text.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Result, StoreError};

/// How TLS connections check the server. The default checks nothing (libpq's `require`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) the server's certificate must chain to; the
    /// certificate must also name the host connected to. `None`: encrypt without checking.
    pub ca_file: Option<PathBuf>,
}

/// The TLS connector of every connection: pools, the LISTEN connection, the projection
/// coordinator, migrations. Cheap to clone (the configuration is shared).
#[derive(Clone)]
pub struct PgTls {
    inner: MakeRustlsConnect,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").finish_non_exhaustive()
    }
}

/// A connection driven by [`connect`]; poll it (or spawn it) for the client to make progress.
pub type PgConnection =
    tokio_postgres::Connection<Socket, <PgTls as MakeTlsConnect<Socket>>::Stream>;

impl PgTls {
    /// A connector checking the server as `options` say. Fails when the CA file cannot be
    /// read or holds no certificate.
    pub fn new(options: &TlsOptions) -> Result<PgTls> {
        // An explicit provider: no process-wide default has to be installed first.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Config(format!("TLS setup failed: {e}")))?;
        let config = match &options.ca_file {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly { provider }))
                .with_no_client_auth(),
            Some(path) => builder
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth(),
        };
        Ok(PgTls {
            inner: MakeRustlsConnect::new(config),
        })
    }
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, domain)
    }
}

/// Opens one connection described by `config` (its `sslmode` included) through `tls`.
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: &PgTls,
) -> std::result::Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
    config.connect(tls.clone()).await
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore> {
    let unreadable = |e: &dyn std::fmt::Display| {
        StoreError::Config(format!(
            "cannot read the PostgreSQL CA file {}: {e}",
            path.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
        let cert = cert.map_err(|e| unreadable(&e))?;
        roots.add(cert).map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(StoreError::Config(format!(
            "the PostgreSQL CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// Accepts any server certificate, as libpq's `require` does, but still checks that the
/// server holds the certificate's key (the handshake signature), so channel binding means
/// something.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
