//! The shared tier's connections: the client of `[shared]` (its credentials set from the
//! environment or a file, never from the URL), redis-rs's `ConnectionManager`s, which reconnect
//! by themselves, and the bounded label of what went wrong.

use super::SharedSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// A manager connecting on its first operation. redis-rs spawns on the current runtime: called
/// from one.
pub(super) fn manager(
    client: &redis::Client,
    settings: &SharedSettings,
) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        // Each operation has its own budget; this only ends a reply that never comes.
        .set_response_timeout(Some(settings.connect_timeout))
        // A lost connection is reopened at once, and retried twice at random delays of up to
        // 50 ms × 2^attempt (at most 1 s); past that, the next operation starts over.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

pub(super) fn client(settings: &SharedSettings) -> Result<redis::Client, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let info = settings.url.as_str().into_connection_info()?;
    let mut redis_settings = info.redis_settings().clone();
    if let Some(user) = &settings.username {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(password) = &settings.password {
        redis_settings = redis_settings.set_password(password.expose());
    }
    // Nagle off (redis-rs leaves it on): a small command sent while the previous one is not
    // acknowledged yet goes at once rather than after the ACK.
    // And data unacknowledged past the connect timeout (a peer gone without a reset) ends
    // the connection, for the manager to make a new one.
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_user_timeout(settings.connect_timeout.max(Duration::from_secs(1)));
    let info = info
        .set_redis_settings(redis_settings)
        .set_tcp_settings(tcp);
    match &settings.ca_file {
        None => redis::Client::open(info),
        Some(path) => {
            let root_cert = std::fs::read(path).map_err(redis::RedisError::from)?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
        }
    }
}

/// A bounded label for what went wrong; never the error's text, which may quote a key.
pub(super) fn error_kind(e: &redis::RedisError) -> &'static str {
    use redis::ErrorKind;
    if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() {
        "refused"
    } else if e.is_connection_dropped() || e.is_io_error() {
        "io"
    } else {
        match e.kind() {
            ErrorKind::AuthenticationFailed => "auth",
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => "protocol",
            ErrorKind::Server(_) | ErrorKind::Extension => "server",
            _ => "other",
        }
    }
}
