//! Connection settings of an embedded cluster, and `postgresql://` URLs for any settings
//! (a unix socket directory percent-encoded into the host, as libpq and tokio-postgres accept).

use std::path::Path;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use crate::SUPERUSER;

/// Settings for database `dbname` as the superuser: over the unix socket in `socket_dir` when
/// there is one, else over TCP on 127.0.0.1.
pub(crate) fn superuser_config(socket_dir: Option<&Path>, port: u16, dbname: &str) -> Config {
    let mut config = Config::new();
    config.user(SUPERUSER).dbname(dbname).port(port);
    match socket_dir {
        Some(socket_dir) => config.host_path(socket_dir),
        None => config.host("127.0.0.1"),
    };
    config
}

/// A libpq-style `postgresql://` URL for `config`: user, password, hosts, ports and database
/// carry over; other parameters do not. Unix socket directories are percent-encoded.
pub fn connection_url(config: &Config) -> String {
    let mut url = String::from("postgresql://");
    if let Some(user) = config.get_user() {
        url.push_str(&percent_encode(user.as_bytes()));
        if let Some(password) = config.get_password() {
            url.push(':');
            url.push_str(&percent_encode(password));
        }
        url.push('@');
    }
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let host = match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                Host::Tcp(name) => percent_encode(name.as_bytes()),
                Host::Unix(path) => percent_encode(path.as_os_str().as_encoded_bytes()),
            };
            match ports.get(index).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    url.push_str(&hosts.join(","));
    url.push('/');
    if let Some(dbname) = config.get_dbname() {
        url.push_str(&percent_encode(dbname.as_bytes()));
    }
    url
}

/// Encodes everything but RFC 3986 unreserved characters.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
