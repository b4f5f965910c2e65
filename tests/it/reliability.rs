//! Reliability of run directories: atomic checkpoint sets under `kill -9` (a kill loop through
//! the test-only write-delay hook), fallback to the previous complete set, migration of the old
//! layout, one writer per run directory and per AutoAttack state file, cleanup of leftovers,
//! SIGTERM, and checkpoints that are refused (dtype, NaN, byte lengths).

use crate::common;

use advtrain::checkpoint::{self, CheckpointStore};
use advtrain::fsio::DirLock;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny data set and recipe in `dir`: returns the recipe path.
fn setup(dir: &Path, epochs: usize) -> PathBuf {
    common::tiny_recipe_file(dir, "tiny.toml", 160, 40, epochs)
}

/// `advtrain --threads 1 train --recipe R --out OUT [--resume] ARGS` as a child process.
fn spawn_train(recipe: &Path, out: &Path, resume: bool, delay_ms: Option<u64>) -> Child {
    let mut c = common::advtrain_cmd();
    c.args(["--threads", "1", "train", "--recipe"])
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .args(["--train-limit", "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    if let Some(ms) = delay_ms {
        c.env("ADVTRAIN_TEST_WRITE_DELAY_MS", ms.to_string());
    }
    c.spawn().unwrap()
}

fn finish(child: Child) -> (bool, String) {
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Epoch of the current `checkpoints/last` after checking that the whole current set is
/// complete and verifies (None before the first checkpoint).
fn check_current_set(out: &Path) -> Option<usize> {
    let last = out.join("checkpoints/last.safetensors");
    if std::fs::symlink_metadata(out.join("checkpoints")).is_err() {
        return None;
    }
    if !last.exists() {
        // A link may exist only once a set is complete; a plain empty folder is never made.
        panic!(
            "{}: a checkpoints link without last.safetensors",
            out.display()
        );
    }
    checkpoint::verify_checkpoint(&last).unwrap_or_else(|e| panic!("torn current set: {e:#}"));
    let side = checkpoint::read_sidecar(&last).unwrap();
    let best = out.join("checkpoints/best.safetensors");
    checkpoint::verify_checkpoint(&best).unwrap_or_else(|e| panic!("torn best: {e:#}"));
    let best_epoch = checkpoint::read_sidecar(&best).unwrap().epoch;
    assert!(
        best_epoch <= side.epoch,
        "best from epoch {best_epoch} > last {}",
        side.epoch
    );
    Some(side.epoch)
}

fn sha(p: &Path) -> String {
    checkpoint::sha256_file(p).unwrap()
}

/// Newest generation number under `.checkpoints`.
fn newest_generation(out: &Path) -> Option<u64> {
    std::fs::read_dir(out.join(".checkpoints"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix('g')?
                .parse()
                .ok()
        })
        .max()
}

/// 50 kills (at least 10 on a slow machine) at random moments inside checkpoint writes (the hook sleeps between the files of a
/// set, so each kill lands in the window after a new generation folder appears): after every
/// kill the current set is complete and verifies, its epoch never goes back, no generation
/// folders pile up, and the resumed run ends with the model an uninterrupted run writes.
#[test]
fn checkpoint_sets_survive_kill_9_during_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let epochs = 40;
    let recipe = setup(tmp.path(), epochs);
    let whole = tmp.path().join("whole");
    let (ok, err) = finish(spawn_train(&recipe, &whole, false, None));
    assert!(ok, "{err}");

    let out = tmp.path().join("killed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let delay = 15u64;
    let (mut kills, mut in_window, mut seen_epoch) = (0, 0, 0usize);
    // 50 kills, or as many as fit in 240 s on a slow or loaded machine (each costs a process
    // start and a save); at least 10 so that the checks below still mean something.
    let deadline = Instant::now() + Duration::from_secs(240);
    while kills < 50 && (kills < 10 || Instant::now() < deadline) {
        // The recovery every start runs (removes an interrupted save's folder), so that the
        // next save's folder is recognisably new.
        CheckpointStore::open(&out).unwrap();
        let before = newest_generation(&out);
        let mut child = spawn_train(&recipe, &out, kills > 0, Some(delay));
        // Wait for a new generation folder (a save has started), then kill after a random part
        // of the save window (~8 hook delays); give up waiting after 20 s.
        let t0 = Instant::now();
        let mut started = false;
        while t0.elapsed() < Duration::from_secs(20) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if newest_generation(&out) > before {
                started = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !started {
            let (_, err) = finish(child);
            panic!("no checkpoint save started: {err}");
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..9 * delay)));
        child.kill().unwrap();
        let _ = child.wait();
        kills += 1;
        in_window += 1;
        if let Some(e) = check_current_set(&out) {
            assert!(e >= seen_epoch, "epoch went back from {seen_epoch} to {e}");
            seen_epoch = e;
        }
        assert!(seen_epoch < epochs, "the run finished before 50 kills");
    }
    // The next start cleans up and resumes; the result equals the uninterrupted run.
    let (ok, err) = finish(spawn_train(&recipe, &out, true, None));
    assert!(ok, "{err}");
    let gens = std::fs::read_dir(out.join(".checkpoints")).unwrap().count();
    assert!(gens <= 2, "{gens} generations kept");
    assert_eq!(check_current_set(&out), Some(epochs));
    assert_eq!(
        sha(&out.join("checkpoints/last.safetensors")),
        sha(&whole.join("checkpoints/last.safetensors")),
        "resumed after {kills} kills ({in_window} inside a save) differs from the uninterrupted run"
    );
    assert_eq!(
        sha(&out.join("checkpoints/best.safetensors")),
        sha(&whole.join("checkpoints/best.safetensors"))
    );
    let rows = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&out), rows(&whole), "metrics.csv (times aside)");
}

/// `cp -a from to` (keeps the `checkpoints` link and hard-linked sets as they are).
fn copy_run(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A damaged current set: `--resume` and `eval` fall back to the previous complete set with a
/// message, and the resumed run still ends with the uninterrupted run's model.
#[test]
fn damaged_current_set_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), 3);
    let whole = tmp.path().join("whole");
    assert!(finish(spawn_train(&recipe, &whole, false, None)).0);
    let run = tmp.path().join("run");
    copy_run(&whole, &run);
    // Damage epoch 3's last.safetensors in place (epoch 2's set is the previous generation).
    let last = run.join("checkpoints/last.safetensors");
    let mut bytes = std::fs::read(&last).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();

    // Read-only fallback (eval/analyze path).
    let resolved = checkpoint::resolve_verified(&last).unwrap();
    assert_ne!(resolved, last);
    assert_eq!(checkpoint::read_sidecar(&resolved).unwrap().epoch, 2);
    let o = common::advtrain(&[
        "--threads",
        "1",
        "eval",
        "--checkpoint",
        last.to_str().unwrap(),
        "--attack",
        "fgsm",
        "--eps",
        "0.05",
        "--test-limit",
        "20",
    ]);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is damaged") && err.contains("previous complete checkpoint set"),
        "{err}"
    );

    // Resume falls back to epoch 2 and replays epoch 3.
    let (ok, err) = finish(spawn_train(&recipe, &run, true, None));
    assert!(ok, "{err}");
    assert!(
        err.contains("falling back to the previous complete checkpoint set"),
        "{err}"
    );
    assert!(err.contains("epoch 2"), "{err}");
    assert_eq!(
        sha(&run.join("checkpoints/last.safetensors")),
        sha(&whole.join("checkpoints/last.safetensors"))
    );
}

/// A run written by the previous layout (`checkpoints` a plain folder) resumes; its set becomes
/// generation 0 and `checkpoints` a link.
#[test]
fn previous_layout_resumes_and_migrates() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), 2);
    let whole = tmp.path().join("whole");
    assert!(finish(spawn_train(&recipe, &whole, false, None)).0);
    // The old layout after epoch 1: a plain folder with epoch 1's files, no generations.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    for f in ["recipe.toml", "metrics.csv"] {
        std::fs::copy(whole.join(f), run.join(f)).unwrap();
    }
    let store = CheckpointStore::open(&whole).unwrap();
    let gens = store.complete_generations().unwrap();
    let epoch1 = &gens[gens.len() - 2].1;
    let link = run.join("checkpoints");
    std::fs::create_dir(&link).unwrap();
    for e in std::fs::read_dir(epoch1).unwrap().flatten() {
        if e.file_name() != "COMPLETE" {
            std::fs::copy(e.path(), link.join(e.file_name())).unwrap();
        }
    }
    assert_eq!(
        checkpoint::read_sidecar(&link.join("last.safetensors"))
            .unwrap()
            .epoch,
        1
    );

    let (ok, err) = finish(spawn_train(&recipe, &run, true, None));
    assert!(ok, "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        sha(&run.join("checkpoints/last.safetensors")),
        sha(&whole.join("checkpoints/last.safetensors"))
    );
    let store = CheckpointStore::open(&run).unwrap();
    let gens: Vec<u64> = store
        .complete_generations()
        .unwrap()
        .into_iter()
        .map(|g| g.0)
        .collect();
    assert_eq!(
        gens,
        vec![0, 1],
        "the old set kept as g000000 beside the new one"
    );
}

/// Interrupted writes leave `*.tmp` files and an incomplete generation; the next start removes
/// them (and says so) and keeps the complete set.
#[test]
fn leftovers_of_interrupted_writes_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), 2);
    let run = tmp.path().join("run");
    let r1 = tmp.path().join("one.toml");
    std::fs::write(
        &r1,
        std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("epochs = 2", "epochs = 1"),
    )
    .unwrap();
    assert!(finish(spawn_train(&r1, &run, false, None)).0);
    let junk = [
        run.join("metrics.csv.tmp"),
        run.join("checkpoints/last.safetensors.tmp"),
        run.join(".checkpoints/g000009/last.safetensors"),
    ];
    for j in &junk {
        std::fs::create_dir_all(j.parent().unwrap()).unwrap();
        std::fs::write(j, b"partial").unwrap();
    }
    let (ok, err) = finish(spawn_train(&recipe, &run, true, None));
    assert!(ok, "{err}");
    for j in &junk {
        assert!(!j.exists(), "{} left", j.display());
    }
    assert!(
        err.contains("removing the incomplete checkpoint generation"),
        "{err}"
    );
    assert!(err.contains("removed the leftover temporary file"), "{err}");
    assert_eq!(check_current_set(&run), Some(2));
}

/// Two writers: a second training into a locked run directory fails at once naming the
/// holder; a lock left by a dead process is taken over with a message; a second AutoAttack on
/// the same state file is refused.
#[test]
fn one_writer_per_run_directory_and_state_file() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), 1);
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    {
        let held = DirLock::acquire(&run.join(".lock"), "run directory").unwrap();
        let (ok, err) = finish(spawn_train(&recipe, &run, false, None));
        assert!(!ok);
        assert!(
            err.contains("is in use by another advtrain process"),
            "{err}"
        );
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(!run.join("metrics.csv").exists(), "the second writer wrote");
        // In-process too (flock conflicts between two opens of the same file).
        assert!(DirLock::acquire(&run.join(".lock"), "run directory").is_err());
        drop(held);
    }
    // A stale lock: contents left by a process that no longer holds the flock.
    std::fs::write(
        run.join(".lock"),
        r#"{"pid":999999,"host":"elsewhere","since":"unix time 0","command":"advtrain train"}"#,
    )
    .unwrap();
    let (ok, err) = finish(spawn_train(&recipe, &run, false, None));
    assert!(ok, "{err}");
    assert!(
        err.contains("taking over the stale lock") && err.contains("pid 999999"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join(".lock")).unwrap(),
        "",
        "released cleanly"
    );

    // AutoAttack state file.
    let state = tmp.path().join("aa.state.json");
    let _held =
        DirLock::acquire(&PathBuf::from(format!("{}.lock", state.display())), "state").unwrap();
    let o = common::advtrain(&[
        "--threads",
        "1",
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--attack",
        "autoattack",
        "--eps",
        "0.1",
        "--test-limit",
        "10",
        "--state",
        state.to_str().unwrap(),
    ]);
    let err = common::stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("the AutoAttack state file") && err.contains("in use"),
        "{err}"
    );
}

/// SIGTERM during training: the step is abandoned, the last complete checkpoint stays, the
/// message says how to resume, the exit status is 143; the resumed run ends as an
/// uninterrupted one.
#[test]
fn sigterm_stops_training_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), 30);
    let whole = tmp.path().join("whole");
    assert!(finish(spawn_train(&recipe, &whole, false, None)).0);
    let run = tmp.path().join("run");
    let child = spawn_train(&recipe, &run, false, None);
    let t0 = Instant::now();
    while !run.join("checkpoints/last.safetensors").exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    let pid = child.id() as i32;
    assert_eq!(unsafe { libc_kill(pid, 15) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(
        err.contains("stopped by SIGTERM") && err.contains("--resume"),
        "{err}"
    );
    let e = check_current_set(&run).unwrap();
    assert!(e < 30, "finished before the signal");
    let (ok, err) = finish(spawn_train(&recipe, &run, true, None));
    assert!(ok, "{err}");
    assert_eq!(
        sha(&run.join("checkpoints/last.safetensors")),
        sha(&whole.join("checkpoints/last.safetensors"))
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Write a tiny valid checkpoint (model of the tiny recipe) with `edit` applied to its tensors.
fn tiny_checkpoint(dir: &Path, edit: impl Fn(&mut Vec<(String, tch::Tensor)>)) -> PathBuf {
    let _g = common::rng_lock();
    let net = common::confident_small_cnn();
    let run = dir.join("ck");
    common::save_run(&run, &dir.join("data"), &net);
    let file = run.join("checkpoints/last.safetensors");
    let side = checkpoint::read_sidecar(&file).unwrap();
    let mut t = net.named_tensors();
    edit(&mut t);
    checkpoint::save(&file, &t, None, side).unwrap();
    file
}

fn eval_err(file: &Path) -> String {
    let o = common::advtrain(&[
        "--threads",
        "1",
        "eval",
        "--checkpoint",
        file.to_str().unwrap(),
        "--attack",
        "fgsm",
        "--eps",
        "0.05",
        "--test-limit",
        "20",
    ]);
    assert!(!o.status.success(), "evaluated: {}", common::stderr(&o));
    common::stderr(&o)
}

/// NaN weights, integer weights and a byte length that disagrees with the shape are refused
/// with the tensor named; float64 weights are converted with a message.
#[test]
fn bad_checkpoints_are_refused_with_the_tensor_named() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&tmp.path().join("data"), 40, 40);
    let nan = tiny_checkpoint(tmp.path(), |t| {
        let w = t.iter_mut().find(|(n, _)| n == "fc.weight").unwrap();
        let mut c = w.1.copy();
        let _ = c.fill_(f64::NAN);
        w.1 = c;
    });
    let err = eval_err(&nan);
    assert!(err.contains("fc.weight") && err.contains("NaN"), "{err}");

    let int = tiny_checkpoint(tmp.path(), |t| {
        let w = t.iter_mut().find(|(n, _)| n == "conv1.weight").unwrap();
        w.1 = w.1.to_kind(tch::Kind::Int);
    });
    let err = eval_err(&int);
    assert!(
        err.contains("conv1.weight") && err.contains("Int") && err.contains("Float"),
        "{err}"
    );

    let f64_file = tiny_checkpoint(tmp.path(), |t| {
        for (_, v) in t.iter_mut() {
            if v.kind() == tch::Kind::Float {
                *v = v.to_kind(tch::Kind::Double);
            }
        }
    });
    let o = common::advtrain(&[
        "--threads",
        "1",
        "eval",
        "--checkpoint",
        f64_file.to_str().unwrap(),
        "--attack",
        "fgsm",
        "--eps",
        "0.05",
        "--test-limit",
        "20",
    ]);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("converting") && err.contains("Double"),
        "{err}"
    );

    // Byte length vs shape: shrink the header's claimed shape of one tensor.
    let file = tiny_checkpoint(tmp.path(), |_| {});
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let mut j: serde_json::Value = serde_json::from_str(&header).unwrap();
    let shape = j["fc.weight"]["shape"].as_array().unwrap().clone();
    j["fc.weight"]["shape"] = serde_json::json!([shape[0], shape[1].as_u64().unwrap() - 1]);
    let mut h = j.to_string().into_bytes();
    while h.len() < n {
        h.push(b' ');
    }
    assert_eq!(h.len(), n, "header grew");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    let bad = tmp.path().join("bytes.safetensors");
    std::fs::write(&bad, &out).unwrap();
    let err = checkpoint::read_tensors(&bad).unwrap_err().to_string();
    assert!(
        err.contains("fc.weight") && err.contains("F32") && err.contains("bytes"),
        "{err}"
    );
}

/// Training refuses to checkpoint non-finite parameters (the current set stays).
#[test]
fn non_finite_parameters_are_not_saved() {
    let ok = vec![("a".to_string(), tch::Tensor::from_slice(&[1.0f32, 2.0]))];
    assert!(checkpoint::check_finite(&ok, 3).is_ok());
    let bad = vec![
        ("a".to_string(), tch::Tensor::from_slice(&[1.0f32, 2.0])),
        (
            "layer.b".to_string(),
            tch::Tensor::from_slice(&[1.0f32, f32::INFINITY]),
        ),
    ];
    let err = checkpoint::check_finite(&bad, 3).unwrap_err().to_string();
    assert!(err.contains("layer.b") && err.contains("epoch 3"), "{err}");
    let counts = vec![("n".to_string(), tch::Tensor::from_slice(&[7i64]))];
    assert!(checkpoint::check_finite(&counts, 1).is_ok());
}

/// What a mutation did to a file (for the failure message).
fn mutate(rng: &mut rand_chacha::ChaCha8Rng, bytes: &[u8], header_len: usize) -> (Vec<u8>, String) {
    let mut b = bytes.to_vec();
    match rng.gen_range(0..5) {
        0 => {
            let n = rng.gen_range(0..b.len());
            b.truncate(n);
            (b, format!("truncated to {n}"))
        }
        1 => {
            let k = rng.gen_range(1..6);
            for _ in 0..k {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            (b, format!("{k} bit flips"))
        }
        2 => {
            // A flip inside the header (length field or JSON).
            let i = rng.gen_range(0..header_len.min(b.len()));
            b[i] = rng.gen();
            (b, format!("header byte {i}"))
        }
        3 => {
            // The header length field itself.
            let v: u64 = match rng.gen_range(0..3) {
                0 => rng.gen(),
                1 => rng.gen_range(0..header_len as u64 * 2),
                _ => u64::MAX - rng.gen_range(0..16),
            };
            b[..8].copy_from_slice(&v.to_le_bytes());
            (b, format!("header length {v}"))
        }
        _ => {
            let n = rng.gen_range(1..64);
            let at = rng.gen_range(0..b.len());
            let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            b.splice(at..at, junk);
            (b, format!("{n} bytes inserted at {at}"))
        }
    }
}

/// Thousands of mutated checkpoint files (safetensors and sidecar): every read returns a
/// result or an error that names the file, never a panic; a mutated checkpoint never
/// evaluates (its sha256 no longer matches).
#[test]
fn fuzz_checkpoint_readers() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&tmp.path().join("data"), 40, 40);
    let good = tiny_checkpoint(tmp.path(), |_| {});
    let bytes = std::fs::read(&good).unwrap();
    let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let side_text = std::fs::read(good.with_extension("json")).unwrap();
    let net = {
        let _g = common::rng_lock();
        common::confident_small_cnn()
    };
    let vars = net.variables();
    let dir = tmp.path().join("fuzz/checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut errors, mut oks) = (0, 0);
    for case in 0..1500 {
        let file = dir.join("last.safetensors");
        let (m, what) = mutate(&mut rng, &bytes, header_len);
        std::fs::write(&file, &m).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            checkpoint::read_tensors(&file).and_then(|t| checkpoint::load_into(&vars, &t, &file))
        }));
        match r {
            Err(_) => panic!("case {case} ({what}): the safetensors reader panicked"),
            Ok(Err(e)) => {
                errors += 1;
                assert!(
                    format!("{e:#}").contains("last.safetensors"),
                    "case {case} ({what}): {e:#}"
                );
            }
            Ok(Ok(())) => oks += 1,
        }
    }
    // The sidecar: mutated JSON with the model intact (each that parses builds a network).
    let _rng = common::rng_shared();
    std::fs::write(dir.join("last.safetensors"), &bytes).unwrap();
    for case in 0..1500 {
        let (m, what) = mutate(&mut rng, &side_text, side_text.len());
        std::fs::write(dir.join("last.json"), &m).unwrap();
        let file = dir.join("last.safetensors");
        let r = std::panic::catch_unwind(|| {
            advtrain::nn::Network::from_checkpoint(&file, tch::Device::Cpu).map(|_| ())
        });
        match r {
            Err(_) => panic!("sidecar case {case} ({what}): panicked"),
            Ok(Err(e)) => {
                let s = format!("{e:#}");
                assert!(
                    s.contains("last.json") || s.contains("last.safetensors"),
                    "sidecar case {case} ({what}): {s}"
                );
            }
            Ok(Ok(())) => {}
        }
    }
    assert!(errors > 1000, "{errors} errors, {oks} loads");
}
