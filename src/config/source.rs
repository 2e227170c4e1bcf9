//! Where a secret is read from: an environment variable or a file, one of the two, never the
//! TOML. One reader for the API key, the shared tier's password and the visitor-id secrets; each
//! caller says what having neither or both means for it.

use std::path::Path;

/// What `read` found.
pub(super) enum Picked {
    /// Neither source is set.
    Neither,
    /// Both are set.
    Both,
    /// The one source set, read.
    Read(Vec<u8>),
    /// The one source set could not be read (`problems` says why).
    Failed,
}

/// The bytes of environment variable `env` or of file `file` (relative to `base_dir`), named in
/// messages by their config keys `env_key` and `file_key`. No message quotes a value.
pub(super) fn read(
    at: &str,
    (env_key, env): (&str, Option<&String>),
    (file_key, file): (&str, Option<&String>),
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Picked {
    match (env, file) {
        (None, None) => Picked::Neither,
        (Some(_), Some(_)) => Picked::Both,
        (Some(var), None) => match std::env::var(var) {
            Ok(v) => Picked::Read(v.into_bytes()),
            Err(_) => {
                problems.push(format!(
                    "{at}: environment variable {var} ({env_key}) is not set"
                ));
                Picked::Failed
            }
        },
        (None, Some(file)) => {
            let path = base_dir.join(file);
            match std::fs::read(&path) {
                Ok(bytes) => Picked::Read(bytes),
                Err(e) => {
                    problems.push(format!("{at}: {file_key} {}: {e}", path.display()));
                    Picked::Failed
                }
            }
        }
    }
}

/// `bytes` as text, or a problem that says the file (or variable) `what` is not.
pub(super) fn text(
    at: &str,
    what: &str,
    bytes: Vec<u8>,
    problems: &mut Vec<String>,
) -> Option<String> {
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(_) => {
            problems.push(format!("{at}: {what}: stream did not contain valid UTF-8"));
            None
        }
    }
}
