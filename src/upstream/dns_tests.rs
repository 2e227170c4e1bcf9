//! The DNS cache's policy, and the cache itself on a scripted resolver under tokio's paused clock.

use super::*;
use std::collections::VecDeque;

const TTL: Duration = Duration::from_secs(30);
const MAX_STALE: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(5);

fn policy() -> DnsPolicy {
    DnsPolicy::try_new(TTL, MAX_STALE, TIMEOUT).unwrap()
}

#[test]
fn answers_are_fresh_then_stale_then_expired() {
    let p = policy();
    let t0 = Instant::now();
    assert_eq!(p.judge(None, t0), Freshness::Missing);
    assert_eq!(p.judge(Some(t0), t0), Freshness::Fresh);
    assert_eq!(
        p.judge(Some(t0), t0 + TTL - Duration::from_millis(1)),
        Freshness::Fresh
    );
    assert_eq!(p.judge(Some(t0), t0 + TTL), Freshness::Stale);
    assert_eq!(
        p.judge(Some(t0), t0 + TTL + MAX_STALE - Duration::from_millis(1)),
        Freshness::Stale
    );
    assert_eq!(p.judge(Some(t0), t0 + TTL + MAX_STALE), Freshness::Expired);
    // A clock that went backwards makes an answer fresh, not a panic.
    assert_eq!(p.judge(Some(t0 + TTL), t0), Freshness::Fresh);
    let no_stale = DnsPolicy::try_new(TTL, Duration::ZERO, TIMEOUT).unwrap();
    assert_eq!(no_stale.judge(Some(t0), t0 + TTL), Freshness::Expired);
    assert!(DnsPolicy::try_new(TTL, MAX_STALE, Duration::ZERO).is_err());
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Answer with this address after this long.
    Answer(Duration, [u8; 4]),
    Fail,
}

/// Plays its script, one step a lookup; once it runs out, every lookup hangs.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Step>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

struct InFlight<'a>(&'a Scripted);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Scripted {
    fn new(steps: &[Step]) -> Arc<Self> {
        let s = Scripted::default();
        s.then(steps);
        Arc::new(s)
    }

    fn then(&self, steps: &[Step]) {
        lock(&self.script).extend(steps.iter().copied());
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Resolve for Scripted {
    async fn lookup(&self, _: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let _guard = InFlight(self);
        let step = lock(&self.script).pop_front();
        match step {
            Some(Step::Answer(after, ip)) => {
                tokio::time::sleep(after).await;
                Ok(vec![SocketAddr::from((ip, port))])
            }
            Some(Step::Fail) => Err(std::io::Error::other("scripted failure")),
            None => std::future::pending().await,
        }
    }
}

const A: [u8; 4] = [192, 0, 2, 1];
const B: [u8; 4] = [192, 0, 2, 2];

fn addr(ip: [u8; 4]) -> Vec<SocketAddr> {
    vec![SocketAddr::from((ip, 443))]
}

/// Let the spawned lookups run until `n` have started.
async fn until_started(r: &Scripted, n: usize) {
    while r.calls() < n {
        tokio::task::yield_now().await;
    }
}

/// Let the spawned lookups run until none is in flight.
async fn settle(r: &Scripted) {
    while r.in_flight.load(Ordering::SeqCst) > 0 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_lookup_is_waited_for_and_shared() {
    let r = Scripted::new(&[Step::Answer(Duration::from_secs(1), A)]);
    let dns = Arc::new(DnsCache::new(policy(), r.clone()));
    let started = tokio::time::Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let dns = dns.clone();
            tokio::spawn(async move { dns.resolve("upstream.test", 443).await.unwrap() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), addr(A));
    }
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(r.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_resolver_costs_no_call_anything_while_the_answer_is_stale() {
    let r = Scripted::new(&[Step::Answer(Duration::ZERO, A)]);
    let dns = DnsCache::new(policy(), r.clone());
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(A));
    tokio::time::advance(TTL).await;
    // Every later lookup hangs: calls are answered at once from the stale answer.
    let started = tokio::time::Instant::now();
    for _ in 0..100 {
        assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(A));
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    until_started(&r, 2).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(r.calls(), 2, "one refresh, however many calls");
    // The hung lookup times out and frees the slot; the next stale call starts another.
    tokio::time::advance(TIMEOUT).await;
    settle(&r).await;
    r.then(&[Step::Answer(Duration::ZERO, B)]);
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(A));
    until_started(&r, 3).await;
    settle(&r).await;
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(B));
    assert_eq!(r.calls(), 3);
    assert_eq!(r.most_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn past_max_stale_calls_wait_and_a_failure_keeps_the_last_answer() {
    let r = Scripted::new(&[Step::Answer(Duration::ZERO, A)]);
    let dns = DnsCache::new(policy(), r.clone());
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(A));
    tokio::time::advance(TTL + MAX_STALE).await;

    r.then(&[Step::Fail]);
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(A));
    assert_eq!(r.calls(), 2);

    // A hanging lookup is waited for up to its timeout, then the last answer serves.
    let started = tokio::time::Instant::now();
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(A));
    assert_eq!(started.elapsed(), TIMEOUT);

    r.then(&[Step::Answer(Duration::from_secs(2), B)]);
    let started = tokio::time::Instant::now();
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(B));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn without_any_answer_a_failure_is_an_error_and_the_next_call_tries_again() {
    let r = Scripted::new(&[Step::Fail, Step::Answer(Duration::ZERO, A)]);
    let dns = DnsCache::new(policy(), r.clone());
    let e = dns.resolve("upstream.test", 443).await.unwrap_err();
    assert!(e.reason.contains("scripted failure"), "{e}");
    assert_eq!(dns.resolve("upstream.test", 443).await.unwrap(), addr(A));
    assert_eq!(r.calls(), 2);
}

#[tokio::test]
async fn literals_and_localhost_resolve_without_network() {
    let dns = DnsCache::new(policy(), Arc::new(SystemResolver));
    let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
    assert_eq!(dns.resolve("127.0.0.1", 80).await.unwrap(), [v4]);
    let v6: SocketAddr = "[::1]:80".parse().unwrap();
    assert_eq!(dns.resolve("::1", 80).await.unwrap(), [v6]);
    let local = dns.resolve("localhost", 8081).await.unwrap();
    assert!(local
        .iter()
        .all(|a| a.ip().is_loopback() && a.port() == 8081));
    assert!(dns.resolve("no-such-host.invalid", 80).await.is_err());
}
