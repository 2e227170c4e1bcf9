//! The per-visitor limit on the shared tier: one atomic script per check, so that the rate
//! configured holds for every instance together. `None` from a check means the tier did not
//! answer, and the local limiter decides.

use super::{limit_key, Op, SharedTier};
use crate::guard::rate::{BucketSpec, Verdict};
use crate::metrics;
use std::time::Duration;

/// GCRA over the server's clock (`TIME`: instances' clocks need not agree): the key holds the
/// theoretical arrival time in microseconds. ARGV: the emission interval (1 / rate) and the
/// tolerance (interval × (burst − 1)), in microseconds. Returns {1, 0} when allowed, {0, µs
/// until a request would be}.
pub(super) const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then
  return {0, math.ceil(tat - tolerance - now)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {1, 0}
";

impl SharedTier {
    /// The visitor's limit checked for every instance together; `None` means the tier did not
    /// answer (or is off for limits) and the local limiter decides.
    pub async fn limit(&self, service: &str, visitor: &str, spec: BucketSpec) -> Option<Verdict> {
        if !self.settings.rate_limits {
            return None;
        }
        let counted = |r: &str| metrics::SHARED_LIMITS.with_label_values(&[r]).inc();
        let key = limit_key(&self.settings.key_prefix, service, visitor);
        let Some((lease, mut conn)) = self.connection(&key) else {
            counted("local");
            return None;
        };
        let interval = 1e6 / spec.per_second;
        let tolerance = interval * (spec.burst - 1.0);
        let mut invocation = self.limiter.prepare_invoke();
        invocation.key(key).arg(interval).arg(tolerance);
        let answer: Option<(i64, i64)> = self
            .run(Op::Limit, lease, async move {
                invocation.invoke_async(&mut conn).await
            })
            .await;
        match answer {
            Some((1, _)) => {
                counted("allowed");
                Some(Verdict::Allowed)
            }
            Some((_, wait_us)) => {
                counted("limited");
                Some(Verdict::Limited(Duration::from_micros(
                    wait_us.max(1) as u64
                )))
            }
            None => {
                counted("local");
                None
            }
        }
    }
}
