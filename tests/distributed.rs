//! Data-parallel training on c10d (Gloo on 127.0.0.1, real processes): the collectives over
//! several dtypes and sizes (guards Debian's gloo headers against the wheel's gloo), launch
//! errors, a dead worker, and training equivalence with one process.
//!
//! Worker processes are this test binary run again on one `#[ignore]`d test (`worker_*`), with
//! the launch variables and `ADVTRAIN_TEST_WORKER=1` set; they exit non-zero on a mismatch.

mod common;

use advtrain::dist::{Backend, LaunchEnv, ProcessGroup};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// This test binary, running only `test` as worker `rank` of `world`.
fn spawn_worker(test: &str, rank: usize, world: usize, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([test, "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("ADVTRAIN_TEST_WORKER", "1")
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Wait for `c` at most `limit`; kill it and fail the test when it takes longer.
fn wait_output(c: Child, limit: Duration, what: &str) -> std::process::Output {
    let id = c.id();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("{what} still running after {:?}", start.elapsed());
        }
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn is_worker() -> bool {
    std::env::var_os("ADVTRAIN_TEST_WORKER").is_some()
}

fn group(timeout_s: u64) -> ProcessGroup {
    let env = LaunchEnv::from_env().unwrap().expect("launch variables set");
    ProcessGroup::new(&env, Backend::Gloo, Duration::from_secs(timeout_s)).unwrap()
}

/// Values of element i on rank r: (r + 1) * (i mod 97 - 40), exact in every dtype used.
fn values(kind: Kind, n: i64, rank: usize) -> Tensor {
    let base = (Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(97) - 40).to_kind(kind);
    base * (rank as i64 + 1)
}

#[test]
#[ignore = "worker process of collectives_between_two_processes"]
fn worker_collectives() {
    if !is_worker() {
        return;
    }
    let pg = group(30);
    let w = pg.world_size as i64;
    let tri = w * (w + 1) / 2; // sum of (r + 1) over ranks
    for kind in [Kind::Float, Kind::Double, Kind::Int64] {
        for n in [1i64, 7, 1000, 300_001] {
            let t = values(kind, n, pg.rank);
            pg.allreduce_sum(&t).unwrap();
            let want = values(kind, n, 0) * tri;
            assert!(t.equal(&want), "allreduce {kind:?} n={n} on rank {}", pg.rank);
            let b = values(kind, n, pg.rank);
            pg.broadcast(&b, 0).unwrap();
            assert!(b.equal(&values(kind, n, 0)), "broadcast {kind:?} n={n}");
            let b = values(kind, n, pg.rank);
            pg.broadcast(&b, 1).unwrap();
            assert!(b.equal(&values(kind, n, 1)), "broadcast from 1 {kind:?} n={n}");
            pg.barrier().unwrap();
        }
    }
    // Bucketed over a list of mixed dtypes and shapes (non-contiguous one included).
    let ts = vec![
        values(Kind::Float, 12, pg.rank).reshape([3, 4]),
        values(Kind::Int64, 5, pg.rank),
        values(Kind::Double, 6, pg.rank).reshape([2, 3]),
        values(Kind::Float, 20, pg.rank).reshape([4, 5]).transpose(0, 1),
    ];
    pg.allreduce_sum_all(&ts).unwrap();
    assert!(ts[0].equal(&(values(Kind::Float, 12, 0).reshape([3, 4]) * tri)));
    assert!(ts[1].equal(&(values(Kind::Int64, 5, 0) * tri)));
    assert!(ts[2].equal(&(values(Kind::Double, 6, 0).reshape([2, 3]) * tri)));
    assert!(ts[3].equal(&(values(Kind::Float, 20, 0).reshape([4, 5]).transpose(0, 1) * tri)));
    let s = pg.stats();
    assert!(s.calls > 0 && s.bytes > 0);
    println!("worker {} ok: {} collectives, {} bytes", pg.rank, s.calls, s.bytes);
}

#[test]
fn collectives_between_two_processes() {
    if is_worker() {
        return;
    }
    let port = free_port();
    let kids: Vec<Child> = (0..2)
        .map(|r| spawn_worker("worker_collectives", r, 2, port, &[]))
        .collect();
    for (r, k) in kids.into_iter().enumerate() {
        let o = wait_output(k, Duration::from_secs(120), "collectives worker");
        assert!(o.status.success(), "worker {r} failed:\n{}", text(&o));
        assert!(text(&o).contains(&format!("worker {r} ok")), "{}", text(&o));
    }
}

#[test]
#[ignore = "worker process of a_killed_worker_fails_the_other_within_the_timeout"]
fn worker_dies() {
    if !is_worker() {
        return;
    }
    let pg = group(8);
    let t = Tensor::ones([10], (Kind::Float, Device::Cpu));
    pg.allreduce_sum(&t).unwrap();
    if pg.rank == 1 {
        // Killed by the parent after this line.
        println!("rank 1 ready");
        std::thread::sleep(Duration::from_secs(60));
    }
    pg.barrier().unwrap(); // rank 0 waits here for the second collective
    let e = pg.allreduce_sum(&t).unwrap_err();
    println!("rank 0 error: {e:#}");
    std::process::exit(3);
}

#[test]
fn a_killed_worker_fails_the_other_within_the_timeout() {
    if is_worker() {
        return;
    }
    let port = free_port();
    let r0 = spawn_worker("worker_dies", 0, 2, port, &[]);
    let mut r1 = spawn_worker("worker_dies", 1, 2, port, &[]);
    // Wait for rank 1 to pass the first collective, then SIGKILL it.
    let mut out = r1.stdout.take().unwrap();
    let mut seen = String::new();
    use std::io::Read;
    let mut buf = [0u8; 256];
    let start = Instant::now();
    while !seen.contains("rank 1 ready") && start.elapsed() < Duration::from_secs(60) {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(seen.contains("rank 1 ready"), "rank 1 never got ready: {seen}");
    r1.kill().unwrap();
    let _ = r1.wait();
    let killed_at = Instant::now();
    // The barrier fails (peer gone) or times out after 8 s: well inside 40 s either way.
    let o = wait_output(r0, Duration::from_secs(40), "rank 0 after its peer was killed");
    let t = text(&o);
    assert!(!o.status.success(), "rank 0 succeeded:\n{t}");
    assert!(
        t.contains("distributed barrier failed") || t.contains("distributed all-reduce failed"),
        "no clear error:\n{t}"
    );
    assert!(killed_at.elapsed() < Duration::from_secs(40));
}

#[test]
fn launch_errors_are_clear() {
    if is_worker() {
        return;
    }
    // A port in use: rank 0 cannot host the store.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let env = LaunchEnv {
        rank: 0,
        world_size: 2,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
    };
    let e = ProcessGroup::new(&env, Backend::Gloo, Duration::from_secs(3))
        .err()
        .expect("port in use must fail");
    let msg = format!("{e:#}");
    assert!(msg.contains("rendezvous") && msg.contains(&port.to_string()), "{msg}");
    // No master at the address (a client of a store nobody hosts) fails within the timeout.
    let env = LaunchEnv {
        rank: 1,
        master_port: free_port(),
        ..env
    };
    let start = Instant::now();
    let e = ProcessGroup::new(&env, Backend::Gloo, Duration::from_secs(3))
        .err()
        .expect("no master must fail");
    let msg = format!("{e:#}");
    assert!(msg.contains("MASTER_ADDR"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    // Malformed variables.
    let get = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(LaunchEnv::from_vars(get(&[])).unwrap(), None);
    let e = LaunchEnv::from_vars(get(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err();
    assert!(format!("{e:#}").contains("RANK=2 WORLD_SIZE=2"), "{e:#}");
    let e = LaunchEnv::from_vars(get(&[("RANK", "0"), ("WORLD_SIZE", "2")])).unwrap_err();
    assert!(format!("{e:#}").contains("MASTER_ADDR"), "{e:#}");
    let e = LaunchEnv::from_vars(get(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "70000"),
    ]))
    .unwrap_err();
    assert!(format!("{e:#}").contains("MASTER_PORT=70000"), "{e:#}");
    let ok = LaunchEnv::from_vars(get(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!((ok.rank, ok.local_rank, ok.agent_store), (1, 1, true));
}
