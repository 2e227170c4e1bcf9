//! The disk's floor under `fast` mode's answers: the clients of `benches/load.sh`'s rates
//! section (each waits 10 ms, random or fixed, sends, and waits for its answer), with no network
//! and no proxy, each "answer" given once its record is durable. One thread group-commits what
//! is pending as the spool's writer does (one `pwrite` after the records, space set aside ahead,
//! one `fdatasync`), so what it prints is what that disk alone allows an answer that waits for
//! its commit: a hit's time, less everything else a request costs.
//!
//! Usage: `commit_floor DIR CONNECTIONS SECONDS poisson|fixed [RECORD_BYTES]` (256 by default,
//! about a bench event's frame). Prints one line:
//! `answers=N commits=N p50_ms=X p99_ms=X commit_mean_us=X commits_over_1ms_pct=X`.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the clients have sent and the writer has not yet committed, (client, sent at), and
/// whether the run has ended.
type Pending = Arc<(Mutex<(Vec<(usize, Instant)>, bool)>, Condvar)>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: commit_floor DIR CONNECTIONS SECONDS poisson|fixed [RECORD_BYTES]";
    assert!(args.len() >= 5, "{usage}");
    let dir = std::path::PathBuf::from(&args[1]);
    let clients: usize = args[2].parse().expect(usage);
    let run = Duration::from_secs(args[3].parse().expect(usage));
    let poisson = match args[4].as_str() {
        "poisson" => true,
        "fixed" => false,
        _ => panic!("{usage}"),
    };
    let record = args.get(5).map_or(256, |b| b.parse().expect(usage));

    let pending: Pending = Arc::default();
    let (answered, answers) = mpsc::channel::<(usize, Duration)>();
    let path = dir.join(format!("commit-floor-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .unwrap();
    let writer = {
        let pending = pending.clone();
        std::thread::spawn(move || write_loop(&file, record, &pending, &answered))
    };

    // The clients: each waits, sends, and waits again only once answered (a closed loop), as
    // wrk's paced connections do (benches/load/paced.lua: whole milliseconds, mean 10).
    let wait = |rng: &mut fastrand::Rng| {
        let ms = if poisson {
            (-10.0 * (1.0 - rng.f64()).ln() + 0.5).floor()
        } else {
            10.0
        };
        Duration::from_millis(ms as u64)
    };
    let mut rng = fastrand::Rng::with_seed(1);
    let start = Instant::now();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..clients)
        .map(|c| Reverse((start + wait(&mut rng), c)))
        .collect();
    let mut latencies = Vec::new();
    while start.elapsed() < run {
        let next = due.peek().map(|Reverse((at, _))| *at);
        let timeout = next.map_or(Duration::from_millis(1), |at| {
            at.saturating_duration_since(Instant::now())
        });
        match answers.recv_timeout(timeout) {
            Ok((client, took)) => {
                latencies.push(took);
                due.push(Reverse((Instant::now() + wait(&mut rng), client)));
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the writer stopped"),
        }
        let now = Instant::now();
        let mut sent = Vec::new();
        while let Some(Reverse((at, client))) = due.peek().copied() {
            if at > now {
                break;
            }
            due.pop();
            sent.push((client, now));
        }
        if !sent.is_empty() {
            pending.0.lock().unwrap().0.extend(sent);
            pending.1.notify_one();
        }
    }
    pending.0.lock().unwrap().1 = true;
    pending.1.notify_one();
    drop(answers);
    let (commits, commit_total, slow) = writer.join().unwrap();
    std::fs::remove_file(&path).unwrap();

    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    println!(
        "answers={} commits={} p50_ms={:.3} p99_ms={:.3} commit_mean_us={:.0} commits_over_1ms_pct={:.1}",
        latencies.len(),
        commits,
        pct(0.50),
        pct(0.99),
        commit_total.as_secs_f64() * 1e6 / commits.max(1) as f64,
        slow as f64 * 100.0 / commits.max(1) as f64,
    );
}

/// Commit what is pending until the clients stop listening: returns the commits, their total
/// time and how many took over 1 ms.
fn write_loop(
    file: &std::fs::File,
    record: usize,
    pending: &Pending,
    answered: &mpsc::Sender<(usize, Duration)>,
) -> (u64, Duration, u64) {
    const SET_ASIDE: u64 = 1 << 20;
    let (mut size, mut allocated) = (0u64, 0u64);
    let (mut commits, mut total, mut slow) = (0u64, Duration::ZERO, 0u64);
    let frame = vec![0x5a_u8; record];
    loop {
        let batch = {
            let mut queue = pending.0.lock().unwrap();
            while queue.0.is_empty() && !queue.1 {
                queue = pending.1.wait(queue).unwrap();
            }
            if queue.1 {
                return (commits, total, slow);
            }
            std::mem::take(&mut queue.0)
        };
        let started = Instant::now();
        let buf = frame.repeat(batch.len());
        let end = size + buf.len() as u64;
        if end > allocated {
            allocated = end + SET_ASIDE;
            // As the spool does: where the file system cannot allocate, the size alone.
            #[cfg(target_os = "linux")]
            let set = rustix::fs::fallocate(
                file,
                rustix::fs::FallocateFlags::empty(),
                size,
                allocated - size,
            )
            .map_err(std::io::Error::from);
            #[cfg(not(target_os = "linux"))]
            let set: std::io::Result<()> = Err(std::io::ErrorKind::Unsupported.into());
            set.or_else(|_| file.set_len(allocated)).unwrap();
        }
        file.write_all_at(&buf, size).unwrap();
        file.sync_data().unwrap();
        size = end;
        let done = Instant::now();
        let took = done - started;
        commits += 1;
        total += took;
        slow += u64::from(took > Duration::from_millis(1));
        for (client, sent) in batch {
            if answered.send((client, done - sent)).is_err() {
                return (commits, total, slow);
            }
        }
    }
}
