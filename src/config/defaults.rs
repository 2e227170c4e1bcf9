//! The defaults of `file`'s fields, one function each (serde's `default = "..."` names them);
//! `conf/p13n-edge.toml` shows each.

pub(super) fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
pub(super) fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
pub(super) fn default_threads() -> usize {
    2
}
pub(super) fn default_grace() -> u64 {
    5
}
pub(super) fn default_upgrade_sock() -> String {
    "/tmp/p13n-edge-upgrade.sock".into()
}
pub(super) fn default_pid_file() -> String {
    "/tmp/p13n-edge.pid".into()
}
pub(super) fn default_max_body() -> usize {
    65536
}
pub(super) fn default_max_upstream_body() -> usize {
    1 << 20
}
pub(super) fn default_connect_ms() -> u64 {
    1000
}
pub(super) fn default_upstream_ms() -> u64 {
    2000
}
pub(super) fn default_client_body_ms() -> u64 {
    10_000
}
pub(super) fn default_client_header_ms() -> u64 {
    10_000
}
pub(super) fn default_client_idle_ms() -> u64 {
    20_000
}
pub(super) fn default_max_header() -> usize {
    32 << 10
}
pub(super) fn default_address_burst() -> f64 {
    20.0
}
pub(super) fn default_identifier_burst() -> f64 {
    10.0
}
pub(super) fn default_max_tracked() -> usize {
    100_000
}
pub(super) fn default_upstream_idle_ms() -> u64 {
    30_000
}
pub(super) fn default_dns_ttl_ms() -> u64 {
    30_000
}
pub(super) fn default_dns_max_stale_ms() -> u64 {
    300_000
}
pub(super) fn default_dns_timeout_ms() -> u64 {
    5_000
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_max_age() -> u64 {
    600
}
pub(super) fn default_cache_entries() -> usize {
    1_000_000
}
pub(super) fn default_cache_bytes() -> usize {
    512 << 20
}
pub(super) fn default_spool_dir() -> String {
    "/var/lib/p13n-edge/spool".into()
}
pub(super) fn default_replay_concurrency() -> usize {
    512
}
pub(super) fn default_replay_nice() -> i64 {
    10
}
pub(super) fn default_spool_bytes() -> u64 {
    1 << 30
}
pub(super) fn default_max_lag_ms() -> u64 {
    30_000
}
pub(super) fn default_on_lag() -> String {
    "serve-cached".into()
}
pub(super) fn default_dead_letter_bytes() -> u64 {
    64 << 20
}
pub(super) fn default_route_wait_seconds() -> u64 {
    600
}
pub(super) fn default_segment_bytes() -> u64 {
    4 << 20
}
pub(super) fn default_cache_mode() -> String {
    "pass-through".into()
}
pub(super) fn default_fresh_ms() -> u64 {
    60_000
}
pub(super) fn default_stale_ms() -> u64 {
    3_600_000
}
pub(super) fn default_background_deadline_ms() -> u64 {
    30_000
}
pub(super) fn default_deadline_ms() -> u64 {
    3000
}
pub(super) fn default_max_retries() -> u32 {
    3
}
pub(super) fn default_backoff_base_ms() -> u64 {
    25
}
pub(super) fn default_backoff_cap_ms() -> u64 {
    1000
}
pub(super) fn default_budget_ratio() -> f64 {
    0.2
}
pub(super) fn default_budget_floor() -> f64 {
    10.0
}
pub(super) fn default_window_ms() -> u64 {
    10_000
}
pub(super) fn default_consecutive_failures() -> u32 {
    5
}
pub(super) fn default_failure_rate() -> f64 {
    0.5
}
pub(super) fn default_min_calls() -> u32 {
    20
}
pub(super) fn default_open_ms() -> u64 {
    5000
}
pub(super) fn default_identifiers() -> Vec<String> {
    vec!["td_client_id".into()]
}
pub(super) fn default_identity_mode() -> super::file::IdentityMode {
    super::file::IdentityMode::Body
}
pub(super) fn default_identity_cookie() -> String {
    "p13n_vid".into()
}
pub(super) fn default_same_site() -> String {
    "Lax".into()
}
pub(super) fn default_identity_max_age_days() -> u64 {
    365
}
pub(super) fn default_identity_refresh_days() -> u64 {
    7
}
