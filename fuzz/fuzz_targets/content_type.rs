//! Content-type parsing: never a panic, and only the three accepted types (any case, any
//! parameters) pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p13n_edge::event::content_type_ok;

fuzz_target!(|data: &[u8]| {
    if content_type_ok(Some(data)) {
        let essence = data.split(|b| *b == b';').next().unwrap_or_default();
        let essence = String::from_utf8_lossy(essence.trim_ascii()).to_ascii_lowercase();
        assert!(
            [
                "application/json",
                "text/plain",
                "application/vnd.treasuredata.v1+json"
            ]
            .contains(&essence.as_str()),
            "{essence:?} was accepted"
        );
    }
});
