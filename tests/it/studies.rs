//! Studies end to end (`advtrain study run|plan|report`, `advtrain report`): a 2-recipe x
//! 2-seed study of tiny runs with one lane killed and resumed, the report's aggregates against
//! a hand computation, the printed plan run as printed, the HTML parsed (tl) with every
//! embedded image decoded and every table's rows counted, and the bad inputs.

use crate::common;

use advtrain::study::report::{mean_sd, StudyReport};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    common::advtrain_cmd()
}

fn run_ok(args: &[&str], cwd: &Path) -> Output {
    let o = bin().args(args).current_dir(cwd).output().unwrap();
    assert!(
        o.status.success(),
        "advtrain {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Run a shell command line (a command of `study plan`) in `cwd`; it must succeed.
fn run_ok_sh(line: &str, cwd: &Path) {
    let o = Command::new("bash")
        .arg("-c")
        .arg(line)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{line} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run_err(args: &[&str], cwd: &Path) -> String {
    let o = bin().args(args).current_dir(cwd).output().unwrap();
    assert!(!o.status.success(), "advtrain {args:?} should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Tiny data and two recipes in `dir`: `single.toml` (PGD-AT, single BN) and `dual.toml`
/// (hybrid, Dual BN: routes clean and adv).
fn setup(dir: &Path) {
    common::write_tiny_mnist(&dir.join("data"), 200, 40);
    let single = common::tiny_recipe_toml(&dir.join("data"), 2);
    std::fs::write(dir.join("single.toml"), &single).unwrap();
    let dual = single
        .replace("objective = \"pgd-at\"", "objective = \"hybrid\"")
        .replace(
            "in_channels = 1\n",
            "in_channels = 1\n[model.norm]\nkind = \"batch\"\nns_domains = 2\nap_domains = 2\n",
        )
        .replace(
            "[train.attack]",
            "[train.hybrid]\nclean_weight = 0.5\nclean_route = \"clean\"\nadv_route = \"adv\"\n[train.attack]",
        );
    std::fs::write(dir.join("dual.toml"), dual).unwrap();
}

const STUDY: &str = r#"
name = "tiny"
out = "runs/tiny"
recipes = ["single.toml", "dual.toml"]
seeds = [0, 1]
set = { "data.train_limit" = 96 }

[eval.pgd]
attack = "pgd"
eps = 0.1
steps = 2
test-limit = 40
batch_size = 20
device = "cpu"
routes = "all-branches"

[eval.fgsm-frozen]
attack = "fgsm"
eps = 0.1
bn_mode = "train-frozen"
test-limit = 40
device = "cpu"

[analysis.div]
kind = "bn-divergence"
cells = ["dual*"]

[report]
compare = [["dual@adv", "single"]]
"#;

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// The pid in a run's train lock file while a training holds it.
fn lock_pid(run: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(run.join(".lock")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_i64().map(|p| p as i32)
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Every `<img>` of the page decodes as a PNG; every table's body rows, by caption.
fn check_html(html: &str) -> Vec<(String, usize)> {
    let dom = tl::parse(html, tl::ParserOptions::default()).expect("the HTML parses");
    let parser = dom.parser();
    let mut images = 0;
    for img in dom.query_selector("img").unwrap() {
        let tag = img.get(parser).unwrap().as_tag().unwrap();
        let src = tag.attributes().get("src").flatten().unwrap().as_utf8_str();
        let b64 = src
            .strip_prefix("data:image/png;base64,")
            .expect("embedded PNG");
        let bytes = decode_base64(b64);
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).expect("the PNG decodes");
        assert!(info.width >= 200 && info.height >= 150);
        images += 1;
    }
    assert!(images > 0, "no image in the page");
    let mut tables = vec![];
    for t in dom.query_selector("table").unwrap() {
        let tag = t.get(parser).unwrap().as_tag().unwrap();
        let caption = tag
            .query_selector(parser, "caption")
            .and_then(|mut c| c.next())
            .map(|c| c.get(parser).unwrap().inner_text(parser).into_owned())
            .unwrap_or_default();
        // Body rows: every row but the header's (tl has no descendant combinator).
        let headers = tag.query_selector(parser, "th").unwrap().count();
        assert!(headers > 0, "table {caption} has no header");
        let rows = tag.query_selector(parser, "tr").unwrap().count() - 1;
        tables.push((caption, rows));
    }
    tables
}

/// Standard base64 decoding (independent of the encoder under test).
fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 byte {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = vec![];
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn base64_matches_an_independent_decoder() {
    for len in 0..40usize {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let enc = advtrain::report::html::base64(&bytes);
        assert_eq!(enc.len(), len.div_ceil(3) * 4);
        assert_eq!(decode_base64(&enc), bytes);
    }
    assert_eq!(advtrain::report::html::base64(b"Man"), "TWFu");
    assert_eq!(advtrain::report::html::base64(b"Ma"), "TWE=");
}

/// 2 recipes x 2 seeds: run with 2 lanes, one training killed (-9) mid-run: the others finish,
/// the failure is reported with its log; `--resume` finishes it; the report's tables hold the
/// JSONs' values, its HTML parses with every image decoding; a changed recipe is refused.
#[test]
fn study_runs_survives_a_killed_lane_resumes_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    std::fs::write(dir.join("tiny.study.toml"), STUDY).unwrap();
    let out = dir.join("runs/tiny");

    let child = bin()
        .args([
            "study",
            "run",
            "tiny.study.toml",
            "--jobs",
            "2",
            "--threads-per-job",
            "1",
        ])
        .current_dir(dir)
        .env("ADVTRAIN_TEST_WRITE_DELAY_MS", "150")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the first training seen after its first checkpoint, before it finishes.
    let t0 = Instant::now();
    let killed = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no training to kill"
        );
        let found = ["single-seed0", "single-seed1", "dual-seed0", "dual-seed1"]
            .iter()
            .map(|r| (r, out.join(r)))
            .find(|(_, d)| {
                d.join("checkpoints/last.safetensors").exists() && !d.join("summary.json").exists()
            });
        if let Some((name, d)) = found {
            if let Some(pid) = lock_pid(&d) {
                if unsafe { libc_kill(pid, 9) } == 0 {
                    break name.to_string();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success(),
        "the study should report a failure:\n{stdout}"
    );
    let log = out.join("logs").join(&killed).join("train.log");
    assert!(
        stdout.contains(&format!("FAILED {killed} at train"))
            && stdout.contains("killed by signal 9")
            && stdout.contains(&format!("runs/tiny/logs/{killed}/train.log")),
        "{stdout}"
    );
    // The other runs went on to the end.
    for r in ["single-seed0", "single-seed1", "dual-seed0", "dual-seed1"] {
        if r != killed {
            assert!(
                out.join(r).join("eval/fgsm-frozen.json").is_file(),
                "{r} did not finish"
            );
        }
    }
    assert!(!out.join(&killed).join("summary.json").exists());

    // Without --resume the folder is refused; with it the killed run resumes and the rest is
    // skipped.
    let err = run_err(&["study", "run", "tiny.study.toml"], dir);
    assert!(err.contains("pass --resume"), "{err}");
    let o = bin()
        .args(["study", "run", "tiny.study.toml", "--jobs", "2", "--resume"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("3 already done, 1 completed now, 0 failed"),
        "{stdout}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("resuming"), "{log_text}");

    // Every output is there: routes per model, the analysis only for the dual cell.
    for s in [0, 1] {
        let single = out.join(format!("single-seed{s}"));
        let dual = out.join(format!("dual-seed{s}"));
        for f in [
            "eval/pgd-clean.json",
            "eval/fgsm-frozen.json",
            "curves.png",
            "report.html",
        ] {
            assert!(single.join(f).is_file(), "{f}");
        }
        assert!(!single.join("eval/pgd-adv.json").exists());
        assert!(!single.join("analysis").exists());
        for f in [
            "eval/pgd-clean.json",
            "eval/pgd-adv.json",
            "analysis/div/bn-divergence.json",
        ] {
            assert!(dual.join(f).is_file(), "{f}");
        }
        assert_eq!(
            read_json(&dual.join("eval/pgd-adv.json"))["route"],
            "ns=adv,ap=adv"
        );
        assert_eq!(
            read_json(&single.join("eval/fgsm-frozen.json"))["bn_mode"],
            "train-frozen"
        );
    }

    // The report.
    run_ok(&["study", "report", "runs/tiny"], dir);
    let rep = read_json(&out.join("report.json"));
    assert_eq!(rep["study"], "tiny");
    let pgd = rep["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "pgd")
        .unwrap();
    let rows = pgd["rows"].as_array().unwrap();
    let keys: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}@{}",
                r["cell"].as_str().unwrap(),
                r["route"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(keys, ["single@clean", "dual@clean", "dual@adv"]);
    for r in rows {
        let (cell, route) = (r["cell"].as_str().unwrap(), r["route"].as_str().unwrap());
        let vals: Vec<f64> = [0, 1]
            .iter()
            .map(|s| {
                read_json(&out.join(format!("{cell}-seed{s}/eval/pgd-{route}.json")))
                    ["robust_accuracy"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        // Two values: mean (a + b) / 2, sample sd |a - b| / sqrt(2).
        let st = &r["robust"];
        assert_eq!(st["n"], 2);
        assert!((st["mean"].as_f64().unwrap() - (vals[0] + vals[1]) / 2.0).abs() < 1e-12);
        let sd = (vals[0] - vals[1]).abs() / 2f64.sqrt();
        assert!((st["sd"].as_f64().unwrap() - sd).abs() < 1e-12);
        assert_eq!(st["values"]["1"].as_f64().unwrap(), vals[1]);
    }
    let diffs = rep["differences"].as_array().unwrap();
    assert!(diffs
        .iter()
        .any(|d| d["evaluation"] == "pgd" && d["a"] == "dual@adv" && d["b"] == "single@clean"));

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let tables = check_html(&html);
    let rows_of = |prefix: &str| {
        tables
            .iter()
            .find(|(c, _)| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no table {prefix}: {tables:?}"))
            .1
    };
    assert_eq!(rows_of("pgd:"), 3);
    assert_eq!(rows_of("fgsm-frozen:"), 2);
    assert_eq!(
        rows_of("paired differences"),
        1,
        "pgd only: fgsm-frozen has no adv route"
    );
    assert_eq!(rows_of("training"), 2);
    let csv_rows = std::fs::read_to_string(out.join("report.csv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(csv_rows, 1 + 3 + 2 + 1);
    // One run's own report.
    let run_html = std::fs::read_to_string(out.join("dual-seed0/report.html")).unwrap();
    let tables = check_html(&run_html);
    let evals = tables
        .iter()
        .find(|(c, _)| c.starts_with("every JSON"))
        .unwrap();
    assert_eq!(evals.1, 3, "pgd-clean, pgd-adv, fgsm-frozen");
    assert!(run_html.contains("analysis/div/bn-divergence.png"));

    // A finished run is never reused with another recipe.
    let changed = STUDY.replace("\"data.train_limit\" = 96", "\"data.train_limit\" = 80");
    std::fs::write(
        dir.join("changed.toml"),
        changed.replace("name = \"tiny\"", "name = \"tiny\"\n"),
    )
    .unwrap();
    let err = run_err(&["study", "run", "changed.toml", "--resume"], dir);
    assert!(
        err.contains("another recipe than the study's")
            && err.contains("single-seed0")
            && err.contains("train_limit"),
        "{err}"
    );
    // A second study run on a locked folder fails at once, naming the holder.
    let _lock = advtrain::fsio::DirLock::acquire(&out.join(".study.lock"), "test").unwrap();
    let err = run_err(&["study", "run", "tiny.study.toml", "--resume"], dir);
    assert!(err.contains("in use by another advtrain process"), "{err}");
}

/// The shell plan, run line by line as printed, makes what `study run` expects: afterwards
/// `study run --resume` finds every step done. The Slurm plan holds the same commands.
#[test]
fn study_plan_runs_as_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let study = STUDY
        .replace(
            "recipes = [\"single.toml\", \"dual.toml\"]",
            "recipes = [\"single.toml\"]",
        )
        .replace("seeds = [0, 1]", "seeds = [3]")
        .replace("[report]\ncompare = [[\"dual@adv\", \"single\"]]", "")
        .replace(
            "[analysis.div]\nkind = \"bn-divergence\"\ncells = [\"dual*\"]",
            "",
        );
    std::fs::write(dir.join("p.toml"), &study).unwrap();
    let exe = env!("CARGO_BIN_EXE_advtrain");
    let o = run_ok(&["study", "plan", "p.toml", "--bin", exe], dir);
    let plan = String::from_utf8(o.stdout).unwrap();
    let commands: Vec<&str> = plan.lines().filter(|l| l.starts_with(exe)).collect();
    assert_eq!(commands.len(), 4, "train, 2 evals, report: {plan}");
    assert!(commands[0].contains(" train ") && commands[0].contains("--seed 3"));
    let st = Command::new("bash")
        .arg("-c")
        .arg(&plan)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let run = dir.join("runs/tiny/single-seed3");
    assert!(run.join("eval/pgd-clean.json").is_file());
    assert!(run.join("eval/fgsm-frozen.json").is_file());
    assert!(std::fs::read_to_string(run.join("report.html"))
        .unwrap()
        .contains("fgsm-frozen"));
    let o = run_ok(&["study", "run", "p.toml"], dir);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("1 already done, 0 completed now"),
        "{stdout}"
    );

    // scripts/results: saved without weights, restored on a "new machine" (runs/ removed), the
    // study finds the run done; an unfinished run is not saved.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/results");
    let sh = |args: &[&str]| {
        let o = Command::new(&script)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        text
    };
    // (a shell plan writes no logs: one stands in for `study run`'s)
    let logs = dir.join("runs/tiny/logs/single-seed3");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("train.log"), "log").unwrap();
    assert!(sh(&["save", "runs/tiny", "saved"]).contains("saved 1 finished runs"));
    let saved = dir.join("saved/single-seed3");
    assert!(saved.join("eval/pgd-clean.json").is_file() && saved.join("metrics.csv").is_file());
    for gone in ["checkpoints", ".checkpoints", "report.html", "curves.png"] {
        assert!(!saved.join(gone).exists(), "{gone} was saved");
    }
    assert!(
        run.join(".checkpoints").is_dir(),
        "the store moved: update scripts/results"
    );
    assert!(dir.join("saved/logs/single-seed3/train.log").is_file());
    // With --weights the evaluated checkpoint travels too: a table added to the study after
    // the restore evaluates the same model.
    let best = std::fs::read(run.join("checkpoints/best.safetensors")).unwrap();
    let text = sh(&["save", "runs/tiny", "saved-w", "--weights", "single-*"]);
    assert!(text.contains("weights of 1 kept"), "{text}");
    std::fs::remove_dir_all(dir.join("runs")).unwrap();
    assert!(sh(&["restore", "saved"]).contains("restored 1 runs"));
    let o = run_ok(&["study", "run", "p.toml", "--resume"], dir);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("1 already done"), "{stdout}");
    std::fs::remove_dir_all(dir.join("runs")).unwrap();
    assert!(sh(&["restore", "saved-w"]).contains("restored 1 runs"));
    assert_eq!(
        std::fs::read(run.join("checkpoints/best.safetensors")).unwrap(),
        best
    );
    let more = format!("{study}\n[eval.fgsm-later]\nattack = \"fgsm\"\neps = 0.05\ntest-limit = 40\ndevice = \"cpu\"\n");
    std::fs::write(dir.join("p.toml"), more).unwrap();
    let o = run_ok(&["study", "run", "p.toml", "--resume"], dir);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("1 completed now"), "{stdout}");
    assert!(run.join("eval/fgsm-later.json").is_file());
    std::fs::remove_file(run.join("eval/fgsm-frozen.json")).unwrap();
    assert!(sh(&["save", "runs/tiny", "saved2"]).contains("saved 0 finished runs"));
    std::fs::write(dir.join("p.toml"), &study).unwrap();
    assert!(!dir.join("saved2/single-seed3").exists());

    // AutoAttack added later on the saved weights and cut off (the end of a session): the saved
    // run stays as it was plus the attack's resumable state; restored, the study continues it.
    run_ok(&["study", "run", "p.toml", "--resume"], dir);
    let text = sh(&["save", "runs/tiny", "saved-aa", "--weights", "single-*"]);
    assert!(text.contains("saved 1 finished runs"), "{text}");
    let with_aa = format!(
        "{study}\n[eval.aa]\nattack = \"autoattack\"\npreset = \"fast\"\neps = 0.1\ntest-limit = 20\nbatch_size = 5\ndevice = \"cpu\"\n"
    );
    std::fs::write(dir.join("p.toml"), &with_aa).unwrap();
    let o = run_ok(&["study", "plan", "p.toml", "--bin", exe], dir);
    let aa_line = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .find(|l| l.contains("--attack autoattack"))
        .expect("the aa command")
        .to_string();
    run_ok_sh(&format!("{aa_line} --max-batches 1"), dir);
    let (aa_json, aa_state) = (run.join("eval/aa.json"), run.join("eval/aa.state.json"));
    assert!(aa_state.is_file(), "no state file after --max-batches 1");
    // A kill leaves the state file and no report.
    std::fs::remove_file(&aa_json).unwrap();
    let o = run_ok(&["study", "plan", "p.toml", "--format", "json"], dir);
    std::fs::write(dir.join("runs/tiny/study.json"), &o.stdout).unwrap();
    let text = sh(&["save", "runs/tiny", "saved-aa"]);
    assert!(
        text.contains("saved 0 finished runs") && text.contains("1 unfinished evaluation states"),
        "{text}"
    );
    let saved = dir.join("saved-aa/single-seed3");
    assert_eq!(
        std::fs::read(saved.join("eval/aa.state.json")).unwrap(),
        std::fs::read(&aa_state).unwrap()
    );
    assert!(
        saved.join("checkpoints/best.safetensors").is_file()
            && !saved.join("eval/aa.json").exists()
    );
    std::fs::remove_dir_all(dir.join("runs")).unwrap();
    assert!(sh(&["restore", "saved-aa"]).contains("restored 1 runs"));
    assert!(aa_state.is_file(), "the state file was not restored");
    let o = run_ok(&["study", "run", "p.toml", "--resume"], dir);
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 completed now"));
    let report = read_json(&aa_json);
    assert_eq!(report["complete"], true, "{report}");
    let logs: String = std::fs::read_dir(dir.join("runs/tiny/logs/single-seed3"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("continuing"),
        "the restored AutoAttack started over:\n{logs}"
    );
    std::fs::write(dir.join("p.toml"), &study).unwrap();

    let o = run_ok(
        &["study", "plan", "p.toml", "--bin", exe, "--format", "slurm"],
        dir,
    );
    let slurm = String::from_utf8(o.stdout).unwrap();
    assert!(slurm.contains("#SBATCH --array=0-0"));
    for c in &commands {
        assert!(slurm.contains(c), "{c} not in\n{slurm}");
    }
    let o = run_ok(&["study", "plan", "p.toml", "--format", "json"], dir);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["runs"][0]["steps"].as_array().unwrap().len(), 3);
}

/// Mean and sample sd of the report against values computed by hand; per-seed pairing of
/// differences; run folders of the earlier script layout (`<cell>-seed<S>`, no study.json).
#[test]
fn aggregates_match_a_hand_computation() {
    // 0.70, 0.72, 0.77: mean 0.73; deviations -0.03, -0.01, 0.04; squares sum 0.0026;
    // sample variance 0.0013; sd 0.0360555.
    let (m, sd) = mean_sd(&[0.70, 0.72, 0.77]);
    assert!((m - 0.73).abs() < 1e-12);
    assert!((sd.unwrap() - 0.0013f64.sqrt()).abs() < 1e-12);
    assert!((sd.unwrap() - 0.036055512754639).abs() < 1e-12);
    assert_eq!(mean_sd(&[0.5]), (0.5, None));

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("old");
    let write = |run: &str, file: &str, clean: f64, robust: f64, route: &str| {
        let d = dir.join(run);
        std::fs::create_dir_all(d.join("eval")).unwrap();
        std::fs::write(d.join("recipe.toml"), "name = \"x\"\n").unwrap();
        let v = serde_json::json!({
            "clean_accuracy": clean, "robust_accuracy": robust, "attack": "pgd-20", "eps": 0.1,
            "norm": "linf", "bn_mode": "eval", "n": 500, "route": route, "flags": []
        });
        std::fs::write(d.join("eval").join(file), v.to_string()).unwrap();
    };
    for (s, c, r) in [(0, 0.80, 0.70), (1, 0.82, 0.72), (2, 0.81, 0.77)] {
        write(&format!("a-seed{s}"), "adv-pgd.json", c, r, "ns=adv,ap=adv");
    }
    for (s, c, r) in [(0, 0.84, 0.60), (1, 0.86, 0.66), (5, 0.9, 0.1)] {
        write(
            &format!("b-seed{s}"),
            "adv-pgd.json",
            c,
            r,
            "ns=clean,ap=clean",
        );
    }
    let rep = StudyReport::build(&dir, &[["a".into(), "b".into()]]).unwrap();
    assert_eq!(rep.study, "old");
    assert_eq!(rep.seeds, [0, 1, 2, 5]);
    let t = &rep.evaluations[0];
    assert_eq!(t.name, "adv-pgd");
    let a = &t.rows[0];
    assert_eq!((a.cell.as_str(), a.route.as_str()), ("a", "adv"));
    let robust = a.robust.as_ref().unwrap();
    assert_eq!(robust.n, 3);
    assert!((robust.mean - 0.73).abs() < 1e-12);
    assert!((robust.sd.unwrap() - 0.036055512754639).abs() < 1e-12);
    // Paired over seeds 0 and 1 only: robust differences 0.10 and 0.06: mean 0.08, sd
    // |0.10 - 0.06| / sqrt(2) = 0.0282843.
    let d = &rep.differences[0];
    assert_eq!((d.a.as_str(), d.b.as_str()), ("a@adv", "b@clean"));
    let dr = d.robust.as_ref().unwrap();
    assert_eq!(dr.n, 2);
    assert!((dr.mean - 0.08).abs() < 1e-12);
    assert!((dr.sd.unwrap() - 0.028284271247462).abs() < 1e-12);

    // A cell without results yet postpones its pair; cells with results that never meet in
    // one table (here a's route is adv, not clean) are an error.
    std::fs::create_dir_all(dir.join("c-seed0")).unwrap();
    std::fs::write(dir.join("c-seed0/recipe.toml"), "name = \"x\"\n").unwrap();
    let rep = StudyReport::build(&dir, &[["a".into(), "c".into()]]).unwrap();
    assert!(rep.differences.is_empty());
    assert_eq!(rep.pending_differences, ["a - c"]);
    let err = StudyReport::build(&dir, &[["a@clean".into(), "b".into()]]).unwrap_err();
    assert!(
        format!("{err:#}").contains("no evaluation has both"),
        "{err:#}"
    );
    advtrain::study::report::write_report(&dir, &[["a".into(), "c".into()]]).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("Not compared yet (a side has no results): a - c."),
        "{md}"
    );
    std::fs::remove_dir_all(dir.join("c-seed0")).unwrap();

    advtrain::study::report::write_report(&dir, &[]).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("| a | adv | 3 | 81.00 ± 1.00 | 73.00 ± 3.61 |"),
        "{md}"
    );
    // Run data is untouched: only report files at the top and report-figures/.
    assert_eq!(
        std::fs::read_dir(dir.join("a-seed0/eval")).unwrap().count(),
        1
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let tables = check_html(&html);
    assert_eq!(
        tables
            .iter()
            .find(|(c, _)| c.starts_with("adv-pgd"))
            .unwrap()
            .1,
        2
    );
}

/// Bad study files and report folders: clear errors naming the file and the key.
#[test]
fn bad_input_gives_errors_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "steps = 2",
            "stepz = 2",
            &["[eval.pgd]", "unknown key `stepz`", "step-size, steps"],
        ),
        (
            "seeds = [0, 1]",
            "seedz = [0, 1]",
            &["bad.toml", "unknown field `seedz`"],
        ),
        (
            "bn_mode = \"train-frozen\"",
            "bn_mode = \"frozen\"",
            &["[eval.fgsm-frozen]", "frozen", "--bn-mode"],
        ),
        (
            "set = { \"data.train_limit\" = 96 }",
            "grid = { \"train.nonsense\" = [1, 2] }",
            &["bad.toml", "cell `single-nonsense1`", "nonsense"],
        ),
        (
            "set = { \"data.train_limit\" = 96 }",
            "grid = { \"train.trades_beta\" = [1.0] }",
            &[
                "bad.toml",
                "override `train.trades_beta`",
                "not used by objective pgd-at",
            ],
        ),
        (
            "routes = \"all-branches\"",
            "routes = \"every\"",
            &["[eval.pgd]", "key `routes`"],
        ),
        (
            "kind = \"bn-divergence\"",
            "kind = \"bn-diverge\"",
            &["[analysis.div]", "unknown analysis `bn-diverge`"],
        ),
        (
            "cells = [\"dual*\"]",
            "cells = [\"duel*\"]",
            &["[analysis.div]", "pattern `duel*` matches no cell"],
        ),
        (
            "device = \"cpu\"\nroutes",
            "json = \"x.json\"\nroutes",
            &["[eval.pgd]", "key `json` cannot be set"],
        ),
        (
            "\"single.toml\", \"dual.toml\"",
            "\"single.toml\", \"nope*.toml\"",
            &["recipes: `nope*.toml` matches no file"],
        ),
        (
            "[report]",
            "[reprt]",
            &["bad.toml", "unknown field `reprt`"],
        ),
    ];
    for (from, to, want) in cases {
        assert!(STUDY.contains(from), "{from}");
        std::fs::write(dir.join("bad.toml"), STUDY.replacen(from, to, 1)).unwrap();
        let err = run_err(&["study", "plan", "bad.toml"], dir);
        for w in *want {
            assert!(err.contains(w), "{to}: expected `{w}` in:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    // Reports: no runs; mixed studies.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let err = run_err(&["study", "report", "empty"], dir);
    assert!(err.contains("holds no run folders"), "{err}");
    std::fs::write(dir.join("ok.toml"), STUDY).unwrap();
    let o = run_ok(&["study", "plan", "ok.toml", "--format", "json"], dir);
    let mixed = dir.join("mixed");
    std::fs::create_dir_all(mixed.join("single-seed0")).unwrap();
    std::fs::create_dir_all(mixed.join("other-seed0")).unwrap();
    std::fs::write(mixed.join("study.json"), &o.stdout).unwrap();
    for r in ["single-seed0", "other-seed0"] {
        std::fs::write(mixed.join(r).join("recipe.toml"), "name = \"x\"\n").unwrap();
    }
    let err = run_err(&["study", "report", "mixed"], dir);
    assert!(
        err.contains("mixes runs of different studies") && err.contains("other-seed0"),
        "{err}"
    );
    let err = run_err(
        &["study", "report", "mixed", "--compare", "single,nope"],
        dir,
    );
    assert!(err.contains("mixes runs"), "{err}");
}

/// `routes = "all-branches"` from the shipped recipes' domains (no per-recipe lists), the
/// output route tags and the cell patterns.
#[test]
fn all_branches_follow_the_model_domains() {
    use advtrain::study::spec::{all_branches, robust_branch, route_tag, wildcard};
    let recipe = |name: &str| {
        advtrain::train::Recipe::load(Path::new(&format!("recipes/fmnist/{name}.toml")), &[])
            .unwrap()
    };
    let routes = |name: &str| -> Vec<String> {
        all_branches(&recipe(name))
            .into_iter()
            .map(route_tag)
            .collect()
    };
    // `routes = "robust-branch"`: the branch each recipe validates on, tagged as above.
    for (name, want) in [
        ("pgd-at", "clean"),
        ("e7-single-cat", "clean"),
        ("e7-dual-bn", "adv"),
        ("e7-dual-ap", "adv"),
        ("e7-cross-bn", "ns-clean-ap-adv"),
        ("arat", "adv"),
        ("e12-inv", "clean"),
    ] {
        assert_eq!(route_tag(robust_branch(&recipe(name))), want, "{name}");
    }
    assert_eq!(routes("pgd-at"), ["clean"]);
    assert_eq!(
        routes("e7-single-cat"),
        ["clean"],
        "single BN: both routes are one"
    );
    assert_eq!(routes("e7-dual-bn"), ["clean", "adv"]);
    assert_eq!(routes("e7-dual-ap"), ["clean", "adv"]);
    assert_eq!(
        routes("e10-dual-linear"),
        ["clean", "adv"],
        "heads count as affine sets"
    );
    assert_eq!(routes("e7-cross-bn"), ["clean", "ns-clean-ap-adv"]);
    assert_eq!(routes("trades-dual-bn"), ["clean", "adv"]);
    for (p, n, want) in [
        ("e7-*", "e7-dual-bn", true),
        ("e7-*", "e1-single-r0", false),
        ("*-r50", "e3-mbn-r50", true),
        ("e*-r*0", "e1-single-r50", true),
        ("advprop", "advprop", true),
        ("advprop", "advprop-x", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "acb", false),
    ] {
        assert_eq!(wildcard(p, n), want, "{p} vs {n}");
    }
}

#[test]
fn run_seeds_limit_a_job_to_some_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let study = STUDY.replace(
        "[analysis.div]",
        "[eval.aa]\nattack = \"autoattack\"\npreset = \"fast\"\neps = 0.1\ntest-limit = 20\nrun-seeds = [0]\n\n[analysis.div]",
    );
    std::fs::write(dir.join("s.toml"), &study).unwrap();
    let o = run_ok(&["study", "plan", "s.toml", "--format", "json"], dir);
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut with_aa = vec![];
    for r in plan["runs"].as_array().unwrap() {
        let has = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["eval"] == "aa");
        with_aa.push((
            r["cell"].as_str().unwrap().to_string(),
            r["seed"].as_u64().unwrap(),
            has,
        ));
    }
    assert_eq!(with_aa.len(), 4, "{with_aa:?}");
    for (cell, seed, has) in &with_aa {
        assert_eq!(*has, *seed == 0, "{cell} seed {seed}");
    }
    // The other jobs still run on every seed.
    let pgd_runs = plan["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["steps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["eval"] == "pgd")
        })
        .count();
    assert_eq!(pgd_runs, 4);
    // A seed the study does not have is refused, naming the table and the key.
    std::fs::write(
        dir.join("bad.toml"),
        study.replace("run-seeds = [0]", "run-seeds = [5]"),
    )
    .unwrap();
    let err = run_err(&["study", "plan", "bad.toml"], dir);
    for part in ["[eval.aa]", "key `run-seeds`", "seed 5", "[0, 1]"] {
        assert!(err.contains(part), "{part}: {err}");
    }
    std::fs::write(
        dir.join("bad.toml"),
        study.replace("run-seeds = [0]", "run-seeds = \"0\""),
    )
    .unwrap();
    let err = run_err(&["study", "plan", "bad.toml"], dir);
    assert!(err.contains("key `run-seeds`"), "{err}");
}

/// A numeric grid key (E6's depth axis) gives one table and one figure per evaluation along
/// it: per line (the cell without its grid value) and route, the mean ± sd over seeds at
/// each value, against a hand computation; a string-valued key gives none.
#[test]
fn grid_tables_follow_a_numeric_grid_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let study = r#"
name = "g"
out = "runs/g"
recipes = ["single.toml", "dual.toml"]
seeds = [0, 1]
grid = { "train.attack.eps" = [0.1, 0.2, 0.3] }

[eval.pgd]
attack = "pgd"
eps = 0.1
steps = 2
test-limit = 40
routes = "all-branches"
"#;
    std::fs::write(dir.join("g.toml"), study).unwrap();
    let o = run_ok(&["study", "plan", "g.toml", "--format", "json"], dir);
    let out = dir.join("runs/g");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("study.json"), &o.stdout).unwrap();
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    // Robust accuracy of run (cell, seed) = eps + seed / 100 (+ 0.5 for dual); clean 0.9.
    let mut n_runs = 0;
    for r in plan["runs"].as_array().unwrap() {
        let cell = r["cell"].as_str().unwrap();
        let seed = r["seed"].as_u64().unwrap() as f64;
        let eps: f64 = cell.rsplit("eps").next().unwrap().parse().unwrap();
        let robust = eps + seed / 100.0 + if cell.starts_with("dual") { 0.5 } else { 0.0 };
        let d = out.join(Path::new(r["dir"].as_str().unwrap()).file_name().unwrap());
        std::fs::create_dir_all(d.join("eval")).unwrap();
        std::fs::write(d.join("recipe.toml"), "name = \"x\"\n").unwrap();
        for s in r["steps"].as_array().unwrap() {
            if s["eval"] != "pgd" {
                continue;
            }
            let f = Path::new(s["output"].as_str().unwrap())
                .file_name()
                .unwrap();
            let v = serde_json::json!({
                "clean_accuracy": 0.9, "robust_accuracy": robust, "attack": "pgd-2",
                "eps": 0.1, "norm": "linf", "bn_mode": "eval", "n": 40,
                "route": s["route"].as_str().map(|t| if t == "adv" { "ns=adv,ap=adv" } else { "ns=clean,ap=clean" }),
                "flags": []
            });
            std::fs::write(d.join("eval").join(f), v.to_string()).unwrap();
        }
        n_runs += 1;
    }
    assert_eq!(n_runs, 12);
    let rep = StudyReport::build(&out, &[]).unwrap();
    assert_eq!(rep.grids.len(), 1, "{:?}", rep.grids);
    let g = &rep.grids[0];
    assert_eq!(
        (g.evaluation.as_str(), g.axis.as_str()),
        ("pgd", "train.attack.eps")
    );
    assert_eq!(g.xs, [0.1, 0.2, 0.3]);
    // single@clean, dual@clean, dual@adv.
    let lines: Vec<(&str, &str)> = g
        .lines
        .iter()
        .map(|l| (l.line.as_str(), l.route.as_str()))
        .collect();
    assert_eq!(
        lines,
        [("single", "clean"), ("dual", "clean"), ("dual", "adv")]
    );
    for l in &g.lines {
        let extra = if l.line == "dual" { 0.5 } else { 0.0 };
        assert_eq!(l.points.len(), 3);
        for (x, clean, robust) in &l.points {
            // Seeds 0 and 1: mean eps + 0.005 (+ 0.5); sd |0.01| / sqrt(2).
            let r = robust.as_ref().unwrap();
            assert_eq!(r.n, 2);
            assert!((r.mean - (x + 0.005 + extra)).abs() < 1e-12, "{l:?}");
            assert!((r.sd.unwrap() - 0.01 / 2f64.sqrt()).abs() < 1e-12);
            assert!((clean.as_ref().unwrap().mean - 0.9).abs() < 1e-12);
        }
    }
    advtrain::study::report::write_report(&out, &[]).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("### pgd over train.attack.eps"), "{md}");
    assert!(
        md.contains("| single | clean | robust % | 10.50 ± 0.71 | 20.50 ± 0.71 | 30.50 ± 0.71 |"),
        "{md}"
    );
    let png = std::fs::read(out.join("report-figures/grid-pgd-train_attack_eps.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let tables = check_html(&html);
    let rows = tables
        .iter()
        .find(|(c, _)| c.starts_with("pgd over"))
        .unwrap()
        .1;
    assert_eq!(rows, 6, "{tables:?}");

    // A string-valued grid key has no axis to plot along.
    let study = study.replace(
        "grid = { \"train.attack.eps\" = [0.1, 0.2, 0.3] }",
        "grid = { \"train.attack.norm\" = [\"linf\", \"l2\"] }",
    );
    std::fs::write(dir.join("s.toml"), study).unwrap();
    let o = run_ok(
        &[
            "study", "plan", "s.toml", "--format", "json", "--out", "runs/s",
        ],
        dir,
    );
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["grid"].as_array().unwrap().len(), 4);
    assert!(plan["grid"][0]["point"][0][1].is_string());
}

/// `study run --only GLOB` runs the matching runs and leaves the others untouched for a later
/// `--resume`, which then runs only those; a glob that matches no run is refused (listing the
/// study's runs) before anything is created.
#[test]
fn only_runs_the_matching_runs_and_leaves_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    // Training and one cheap table: the selection is what is tested, not the steps.
    let study = STUDY
        .split("[eval.fgsm-frozen]")
        .next()
        .unwrap()
        .to_string()
        + "\n[report]\ncompare = [[\"dual@adv\", \"single\"]]\n";
    std::fs::write(dir.join("s.toml"), &study).unwrap();
    let out = dir.join("runs/tiny");

    let err = run_err(
        &[
            "study",
            "run",
            "s.toml",
            "--only",
            "*-seed7",
            "--threads-per-job",
            "1",
        ],
        dir,
    );
    for part in [
        "--only *-seed7",
        "matches no run",
        "single-seed0",
        "dual-seed1",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(!out.exists(), "a refused --only created {}", out.display());
    // The plan of the same selection: the matching runs only.
    let o = run_ok(&["study", "plan", "s.toml", "--only", "*-seed0"], dir);
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    let names: Vec<&str> = plan
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.ends_with("seed0") || l.ends_with("seed1"))
        .collect();
    assert_eq!(names, ["single-seed0", "dual-seed0"], "{plan}");
    let err = run_err(&["study", "run", "s.toml", "--only", "[seed0"], dir);
    assert!(
        err.contains("--only [seed0") && err.contains("glob"),
        "{err}"
    );

    let o = run_ok(
        &[
            "study",
            "run",
            "s.toml",
            "--only",
            "*-seed0",
            "--threads-per-job",
            "1",
        ],
        dir,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("2 completed now") && stdout.contains("2 left for later"),
        "{stdout}"
    );
    for (run, done) in [
        ("single-seed0", true),
        ("dual-seed0", true),
        ("single-seed1", false),
        ("dual-seed1", false),
    ] {
        assert_eq!(
            out.join(run).join("summary.json").exists(),
            done,
            "{run}: summary.json"
        );
        assert_eq!(
            out.join(run).join("eval/pgd-clean.json").exists(),
            done,
            "{run}"
        );
        if !done {
            assert!(!out.join(run).exists(), "{run} was started");
        }
    }
    let before = std::fs::metadata(out.join("single-seed0/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    // Two patterns: the union; what is done stays done.
    let o = run_ok(
        &[
            "study",
            "run",
            "s.toml",
            "--resume",
            "--only",
            "single-*",
            "--only",
            "dual-seed1",
            "--threads-per-job",
            "1",
        ],
        dir,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("2 already done")
            && stdout.contains("2 completed now")
            && !stdout.contains("left for later"),
        "{stdout}"
    );
    for run in ["single-seed1", "dual-seed1"] {
        assert!(out.join(run).join("eval/pgd-clean.json").exists(), "{run}");
    }
    let after = std::fs::metadata(out.join("single-seed0/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a done run was run again");
}

/// Every study file shipped in `studies/` (the studies behind docs/RESULTS.md) still plans from
/// the repository root: its recipes exist and resolve with the study's overrides, its evaluation
/// keys are flags of `advtrain eval`, and the plan holds cells x seeds runs, each running in its
/// own folder under the study's `out` and training first. A recipe or flag renamed without its
/// study files fails here instead of at the start of a long run.
#[test]
fn every_shipped_study_file_plans() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("studies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "studies/ holds {files:?}");
    for file in &files {
        let rel = file.strip_prefix(root).unwrap().to_str().unwrap();
        let o = run_ok(&["study", "plan", rel, "--format", "json"], root);
        let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
        let (cells, seeds) = (
            plan["cells"].as_array().unwrap(),
            plan["seeds"].as_array().unwrap(),
        );
        let runs = plan["runs"].as_array().unwrap();
        assert!(!runs.is_empty(), "{rel}: no runs");
        assert_eq!(runs.len(), cells.len() * seeds.len(), "{rel}");
        let out = plan["out"].as_str().unwrap();
        let mut dirs = std::collections::BTreeSet::new();
        for r in runs {
            let dir = r["dir"].as_str().unwrap();
            assert!(dir.starts_with(out), "{rel}: {dir} outside {out}");
            assert!(dirs.insert(dir.to_string()), "{rel}: two runs share {dir}");
            let recipe = root.join(r["recipe_file"].as_str().unwrap());
            assert!(recipe.is_file(), "{rel}: {} missing", recipe.display());
            assert_eq!(r["steps"][0]["kind"], "train", "{rel}: {dir}");
        }
    }
}
