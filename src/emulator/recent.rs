//! The `uuid`s the emulator remembers, to count an event delivered twice: the newest `limit`,
//! the oldest forgotten first, so that its memory stays bounded however long it ingests.
//! A canonical UUID is kept as its 128 bits, any other string as a 128-bit hash of it: 16 bytes
//! a `uuid` in the set and 16 in the order, instead of a `String` each.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// `uuid`s remembered by default: at most about 53 MiB (a set of 2^21 slots of 17 bytes, an
/// order of 2^20 keys; 52.6 MiB of RSS measured, full). A redelivery follows the first delivery
/// within a replay window, not a million events later.
pub const UUIDS: usize = 1 << 20;

pub struct Recent {
    limit: usize,
    seen: Mutex<Seen>,
    forgotten: AtomicU64,
}

#[derive(Default)]
struct Seen {
    set: HashSet<u128, ahash::RandomState>,
    /// The same keys, oldest first.
    order: VecDeque<u128>,
}

impl Recent {
    /// Remembering the newest `limit` (at least one).
    pub fn new(limit: usize) -> Recent {
        Recent {
            limit: limit.max(1),
            seen: Mutex::default(),
            forgotten: AtomicU64::new(0),
        }
    }

    /// `uuid` ingested now: whether it is one still remembered (a repeat).
    pub fn repeat(&self, uuid: &str) -> bool {
        let key = key(uuid);
        let mut seen = crate::lock(&self.seen);
        if seen.set.contains(&key) {
            return true;
        }
        // The oldest out before the new one in: never more than `limit`, even for a moment.
        if seen.order.len() >= self.limit {
            if let Some(oldest) = seen.order.pop_front() {
                seen.set.remove(&oldest);
                self.forgotten.fetch_add(1, Ordering::Relaxed);
            }
        }
        seen.set.insert(key);
        seen.order.push_back(key);
        false
    }

    /// How many are remembered now.
    pub fn len(&self) -> usize {
        crate::lock(&self.seen).order.len()
    }

    /// How many were forgotten to stay within the limit (a repeat of one is not counted).
    pub fn forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        *crate::lock(&self.seen) = Seen::default();
        self.forgotten.store(0, Ordering::Relaxed);
    }
}

impl Default for Recent {
    fn default() -> Recent {
        Recent::new(UUIDS)
    }
}

/// A canonical UUID (`8-4-4-4-12` hex digits, either case) as its value; anything else hashed,
/// with fixed seeds so that the same string always gives the same key.
fn key(uuid: &str) -> u128 {
    canonical(uuid.as_bytes()).unwrap_or_else(|| {
        let hash = |seed: u64| ahash::RandomState::with_seeds(seed, 1, 2, 3).hash_one(uuid);
        (u128::from(hash(0x5eed)) << 64) | u128::from(hash(0xfeed))
    })
}

fn canonical(text: &[u8]) -> Option<u128> {
    if text.len() != 36 {
        return None;
    }
    let mut value = 0u128;
    for (i, &c) in text.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = char::from(c).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_counted_while_remembered_and_the_oldest_go_first() {
        let recent = Recent::new(3);
        let ids = [
            "42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16",
            "42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e17",
            "not a uuid",
            "42A508E2-D9B1-4BAA-9EB2-6C3FB8BD5E18",
        ];
        for id in &ids[..3] {
            assert!(!recent.repeat(id));
        }
        assert!(recent.repeat(ids[2]), "a repeat of any string is seen");
        assert!(recent.repeat(ids[0]));
        assert_eq!((recent.len(), recent.forgotten()), (3, 0));
        // A fourth pushes the oldest out: never more than the limit, however many come.
        assert!(!recent.repeat(ids[3]));
        assert_eq!((recent.len(), recent.forgotten()), (3, 1));
        assert!(!recent.repeat(ids[0]), "forgotten, so not a repeat");
        assert!(
            recent.repeat(&ids[3].to_lowercase()),
            "case does not matter"
        );
        for n in 0..1000 {
            recent.repeat(&format!("event {n}"));
        }
        assert_eq!(recent.len(), 3);
        recent.clear();
        assert_eq!((recent.len(), recent.forgotten()), (0, 0));
    }

    #[test]
    fn canonical_uuids_are_their_value_and_others_are_hashed_apart() {
        assert_eq!(
            canonical(b"00000000-0000-0000-0000-0000000000ff"),
            Some(0xff)
        );
        for other in [
            "00000000-0000-0000-0000-0000000000f",
            "00000000x0000-0000-0000-0000000000ff",
            "0000000g-0000-0000-0000-0000000000ff",
            "",
        ] {
            assert_eq!(canonical(other.as_bytes()), None, "{other:?}");
        }
        assert_eq!(key("a"), key("a"));
        assert_ne!(key("a"), key("b"));
    }
}
