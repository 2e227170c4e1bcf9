//! The tier's settings, as the config builds them (`config/shared.rs` checks the file's
//! `[shared]` table into these).

use crate::secret::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// The validated `[shared]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedSettings {
    /// The URL as written: it holds no credentials.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub budget: Duration,
    pub connect_timeout: Duration,
    pub connections: usize,
    pub key_prefix: String,
    pub max_writes_in_flight: usize,
    pub offers: bool,
    pub rate_limits: bool,
    /// The longest stored body read back (`limits.max_upstream_body_bytes`): a longer one is
    /// not an answer this edge stored.
    pub max_body: usize,
}

impl SharedSettings {
    /// The settings a reload cannot change, for comparing: all but `max_body`, which a reload
    /// reports under its own name.
    pub fn restart_view(&self) -> SharedSettings {
        SharedSettings {
            max_body: 0,
            ..self.clone()
        }
    }
}
