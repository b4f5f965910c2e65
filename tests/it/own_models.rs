//! Evaluating models advtrain did not train (issue 15): TorchScript modules (`--torchscript`),
//! PyTorch state dicts of our architectures (`--checkpoint sd.safetensors --arch`), points
//! files (`--data FILE.safetensors`), `export --torchscript`, model cards, sharded evaluation
//! and `advtrain merge`, and their bad inputs. The TorchScript modules, state dicts and broken
//! files are made at test time by the venv's Python (`tests/data/own_models.py`).

use crate::common;

use common::{advtrain, read_json, stderr};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn python() -> PathBuf {
    let venv = std::env::var_os("ADVTRAIN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    venv.join("bin/python")
}

/// Run tests/data/own_models.py with `args`.
fn py(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/own_models.py");
    let o = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(
        o.status.success(),
        "own_models.py {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tiny MNIST-like data set (60 test points), an advtrain run of the confident small-cnn on
/// it, its TorchScript export and its points file.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    ckpt: PathBuf,
    script: PathBuf,
    points: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    common::write_tiny_mnist(&data, 20, 60);
    let net = {
        let _g = common::rng_lock();
        common::confident_small_cnn()
    };
    let run = dir.join("run");
    common::save_run(&run, &data, &net);
    let ckpt = run.join("checkpoints/last.safetensors");
    let script = dir.join("model.pt");
    let o = advtrain(&[
        "export",
        "--checkpoint",
        s(&ckpt),
        "--torchscript",
        s(&script),
    ]);
    assert!(o.status.success(), "export: {}", stderr(&o));
    // The test split as a points file (uint8 x, int64 y).
    let test = advtrain::data::DataSpec {
        dataset: advtrain::data::DatasetName::Mnist,
        dir: Some(data.clone()),
        val_size: 0,
        split_seed: 0,
        train_limit: None,
        test_limit: None,
        crop_padding: 0,
        hflip: false,
    }
    .load_test()
    .unwrap();
    let points = dir.join("points.safetensors");
    Tensor::write_safetensors(&[("x", &test.images), ("y", &test.labels)], &points).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        data,
        ckpt,
        script,
        points,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `advtrain --threads 1 --no-fold-bn eval ARGS --json OUT` (asserting success); the report.
/// BN folding is off so that our forward is the same computation as the traced one.
fn eval(args: &[&str], out: &Path) -> Value {
    let mut full = vec!["--threads", "1", "--no-fold-bn", "eval"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--device", "cpu", "--json", s(out)]);
    let o = advtrain(&full);
    assert!(o.status.success(), "eval {args:?}: {}", stderr(&o));
    read_json(out)
}

/// `eval ARGS` expected to fail; its stderr.
fn eval_fails(args: &[&str]) -> String {
    let mut full = vec!["--threads", "1", "eval"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--device", "cpu"]);
    let o = advtrain(&full);
    assert!(!o.status.success(), "eval {args:?} succeeded");
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "eval {args:?} panicked: {e}");
    e
}

/// The fields that must agree between two reports of the same evaluation of the same model
/// (not the model file, its format or its hash).
fn same_verdicts(a: &Value, b: &Value) {
    for k in [
        "clean_accuracy",
        "robust_accuracy",
        "clean_points",
        "robust_points",
        "n",
        "attack",
        "attack_config",
    ] {
        assert_eq!(a[k], b[k], "{k} differs");
    }
    let per = |v: &Value| -> Vec<(Value, Value)> {
        v["per_attack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["attack"].clone(), p["robust_correct"].clone()))
            .collect()
    };
    assert_eq!(per(a), per(b), "per-attack rows differ");
}

#[test]
fn torchscript_export_and_state_dict_give_the_native_verdicts() {
    let f = fixture();
    let _rng = common::rng_shared(); // loading the checkpoint builds a network
                                     // PyTorch loads the export and computes our logits.
    let logits = f.dir.join("logits.safetensors");
    py(&["check-export", s(&f.script), s(&f.points), s(&logits)]);
    let theirs = Tensor::read_safetensors(&logits).unwrap().remove(0).1;
    let net = advtrain::checkpoint::load(&f.ckpt, Device::Cpu)
        .unwrap()
        .net;
    let x = advtrain::data::points::load_points(&f.points, None).unwrap();
    let ours = tch::no_grad(|| {
        net.model.forward(
            &(x.images.to_kind(Kind::Float) / 255.0),
            &advtrain::nn::Ctx::eval(),
        )
    });
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(
        diff < 1e-4,
        "torch.jit.load logits differ from ours by {diff}"
    );
    assert!(ours.std(true).double_value(&[]) > 0.1, "degenerate logits");

    // Its PyTorch state dict under DataParallel/RobustBench names.
    let sd = f.dir.join("sd.safetensors");
    py(&["state-dict", s(&f.ckpt), s(&sd)]);

    let data_dir = s(&f.data);
    for attack in [
        vec!["--attack", "pgd", "--eps", "8/255"],
        vec![
            "--attack",
            "autoattack",
            "--eps",
            "0.1",
            "--test-limit",
            "40",
        ],
    ] {
        let common = [attack.as_slice(), &["--batch-size", "25", "--seed", "1"]].concat();
        let native = eval(
            &[&["--checkpoint", s(&f.ckpt)], common.as_slice()].concat(),
            &f.dir.join("native.json"),
        );
        let ts = eval(
            &[
                &[
                    "--torchscript",
                    s(&f.script),
                    "--data",
                    "mnist",
                    "--data-dir",
                    data_dir,
                ],
                common.as_slice(),
            ]
            .concat(),
            &f.dir.join("ts.json"),
        );
        let ts_points = eval(
            &[
                &["--torchscript", s(&f.script), "--data", s(&f.points)],
                common.as_slice(),
            ]
            .concat(),
            &f.dir.join("ts_points.json"),
        );
        let state_dict = eval(
            &[
                &[
                    "--checkpoint",
                    s(&sd),
                    "--arch",
                    "small-cnn",
                    "--data",
                    s(&f.points),
                ],
                common.as_slice(),
            ]
            .concat(),
            &f.dir.join("sd.json"),
        );
        // Not all robust, not all broken: the verdicts carry information.
        let robust = native["robust_points"].as_str().unwrap();
        let clean = native["clean_points"].as_str().unwrap();
        assert_eq!(robust.len(), native["n"].as_u64().unwrap() as usize);
        assert!(clean.contains('1'), "no clean point correct");
        same_verdicts(&native, &ts);
        same_verdicts(&native, &ts_points);
        same_verdicts(&native, &state_dict);
        assert_eq!(ts["model_format"], "torchscript");
        assert_eq!(state_dict["model_format"], "state-dict");
        assert_eq!(native["model_format"], "advtrain");
        assert_eq!(ts["data_sha256"], native["data_sha256"]);
        assert_eq!(ts["route"], "none");
        if attack[1] == "pgd" {
            assert_eq!(native["eps"].as_f64().unwrap(), 8.0 / 255.0);
        } else {
            let per: Vec<&str> = native["per_attack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["attack"].as_str().unwrap())
                .collect();
            assert_eq!(per, ["apgd-ce", "apgd-t", "fab-t", "square"]);
        }
    }
}

#[test]
fn a_module_traced_in_train_mode_is_flagged_and_a_scripted_one_is_not() {
    let f = fixture();
    let d = s(&f.dir);
    py(&["modules", d]);
    let run = |m: &str| {
        let mut full = vec!["--threads", "1", "eval", "--torchscript"];
        let path = f.dir.join(m);
        let json = f.dir.join(format!("{m}.json"));
        full.extend_from_slice(&[
            s(&path),
            "--data",
            s(&f.points),
            "--attack",
            "fgsm",
            "--eps",
            "0.1",
            "--device",
            "cpu",
            "--json",
            s(&json),
        ]);
        let o = advtrain(&full);
        assert!(o.status.success(), "{m}: {}", stderr(&o));
        let codes: Vec<String> = read_json(&json)["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect();
        (codes, stderr(&o))
    };
    let (codes, err) = run("traced_train.pt");
    assert!(codes.contains(&"traced-in-train-mode".into()), "{codes:?}");
    assert!(
        err.contains("traced-in-train-mode"),
        "no warning printed: {err}"
    );
    assert!(
        err.contains("inputs float32 NCHW in [0, 1]"),
        "contract not printed: {err}"
    );
    let (codes, _) = run("scripted.pt");
    for c in advtrain::eval::merge::MODEL_FLAGS {
        assert!(
            !codes.contains(&c.to_string()),
            "scripted module flagged {c}"
        );
    }
}

#[test]
fn torchscript_parameters_stay_frozen_and_input_gradients_are_right() {
    let f = fixture();
    let m = advtrain::checkpoint::torchscript::ScriptModel::load(&f.script, Device::Cpu).unwrap();
    // The traced export holds its weights as constants; a scripted module has parameters.
    py(&["modules", s(&f.dir)]);
    let scripted = advtrain::checkpoint::torchscript::ScriptModel::load(
        &f.dir.join("scripted.pt"),
        Device::Cpu,
    )
    .unwrap();
    assert!(!scripted.parameters.is_empty());
    let x = advtrain::data::points::load_points(&f.points, None).unwrap();
    let x = x.images.narrow(0, 0, 8).to_kind(Kind::Double) / 255.0;
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);
    for model in [&m, &scripted] {
        let c = advtrain::attack::Classifier::script(model, true);
        let ce = |z: &Tensor, s: i64, l: i64| {
            advtrain::attack::cross_entropy(z, &y.narrow(0, s, l), tch::Reduction::None)
        };
        let xf = x.to_kind(Kind::Float);
        let (_, loss, g) = c.loss_grad(&xf, ce);
        for (name, p) in &model.parameters {
            assert!(!p.requires_grad(), "{name} requires grad");
            assert!(!p.grad().defined(), "{name} received a gradient");
        }
        // Directional finite difference of the summed loss along the gradient's sign.
        let d = g.sign();
        let h = 1e-3;
        let plus = c.predict(&(&xf + &d * h).to_kind(Kind::Float));
        let minus = c.predict(&(&xf - &d * h).to_kind(Kind::Float));
        let sum = |z: &Tensor| ce(z, 0, 8).sum(Kind::Double).double_value(&[]);
        let fd = (sum(&plus) - sum(&minus)) / (2.0 * h);
        let an = (&g * &d).sum(Kind::Double).double_value(&[]);
        assert!(
            (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
            "input gradient {an} vs finite difference {fd}"
        );
        assert!(loss.size() == [8]);
    }
}

/// Every field of two reports equal, times aside.
fn equal_but_times(a: &Value, b: &Value) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        let o = v.as_object_mut().unwrap();
        o.remove("elapsed_s");
        for p in o["per_attack"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("elapsed_s");
        }
        v
    };
    let (a, b) = (strip(a), strip(b));
    for (k, va) in a.as_object().unwrap() {
        assert_eq!(Some(va), b.get(k), "field {k} differs");
    }
    assert_eq!(
        a.as_object().unwrap().len(),
        b.as_object().unwrap().len(),
        "the field sets differ"
    );
}

fn merge(files: &[&Path], out: &Path) -> std::process::Output {
    let mut args = vec!["merge"];
    args.extend(files.iter().map(|f| s(f)));
    args.extend_from_slice(&["--json", s(out)]);
    advtrain(&args)
}

/// `advtrain eval` launched as 2 workers (the variables torchrun or srun set, no --shard):
/// worker r evaluates shard r/2 into `<json stem>.shard-r-of-2.json`, the workers meet and
/// rank 0 writes the merged report at --json, equal to the unsharded evaluation with blocked
/// batching; a worker whose peer never comes fails within --merge-timeout saying so.
#[test]
fn launched_eval_workers_shard_and_rank_0_writes_the_merged_report() {
    let f = fixture();
    let base = [
        "--threads",
        "1",
        "--no-fold-bn",
        "eval",
        "--checkpoint",
        s(&f.ckpt),
        "--batch-size",
        "15",
        "--seed",
        "3",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "5",
        "--device",
        "cpu",
    ];
    let whole = f.dir.join("launch-whole.json");
    let o = advtrain(&[&base[..], &["--batching", "blocked", "--json", s(&whole)]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let worker = |rank: usize, json: &Path, more: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_advtrain"))
            .args(base)
            .args(["--json", s(json)])
            .args(more)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = f.dir.join("launched.json");
    let kids: Vec<_> = (0..2).map(|r| worker(r, &out, &[])).collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "a worker: {}", stderr(&o));
    }
    equal_but_times(&read_json(&out), &read_json(&whole));
    for r in 0..2 {
        let shard = read_json(&f.dir.join(format!("launched.shard-{r}-of-2.json")));
        assert_eq!(shard["shard"]["index"], r);
    }
    // Rank 0 alone: its peer never arrives, so the meeting fails within the timeout.
    let lone = f.dir.join("lone.json");
    let o = worker(0, &lone, &["--merge-timeout", "3"])
        .wait_with_output()
        .unwrap();
    assert!(!o.status.success(), "rank 0 merged without its peer");
    assert!(stderr(&o).contains("could not meet"), "{}", stderr(&o));
    assert!(!lone.exists(), "a merged report without every shard");
}

#[test]
fn merged_shards_equal_the_unsharded_report() {
    let f = fixture();
    // 60 points in batches of 15: 4 batches, shards of 1, 1 and 2 batches.
    for attack in [
        vec!["--attack", "autoattack", "--preset", "fast", "--eps", "0.1"],
        vec!["--attack", "pgd", "--eps", "0.1", "--steps", "5"],
    ] {
        let base = [
            &[
                "--checkpoint",
                s(&f.ckpt),
                "--batch-size",
                "15",
                "--seed",
                "3",
            ],
            attack.as_slice(),
        ]
        .concat();
        let whole = eval(
            &[base.as_slice(), &["--batching", "blocked"]].concat(),
            &f.dir.join("whole.json"),
        );
        let mut files = vec![];
        for i in 0..3 {
            let file = f.dir.join(format!("shard-{i}.json"));
            let shard = format!("{i}/3");
            let r = eval(&[base.as_slice(), &["--shard", &shard]].concat(), &file);
            assert_eq!(r["shard"]["index"], i);
            files.push(file);
        }
        let sizes: Vec<u64> = files
            .iter()
            .map(|p| read_json(p)["n"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, [15, 15, 30]);
        let out = f.dir.join("merged.json");
        let _ = std::fs::remove_file(&out);
        // Any order.
        let o = merge(&[&files[2], &files[0], &files[1]], &out);
        assert!(o.status.success(), "merge: {}", stderr(&o));
        equal_but_times(&read_json(&out), &whole);

        // A previous result is never overwritten.
        let before = std::fs::read(&out).unwrap();
        let o = merge(&[&files[0], &files[1], &files[2]], &out);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }
    let out = f.dir.join("bad.json");
    let files: Vec<PathBuf> = (0..3)
        .map(|i| f.dir.join(format!("shard-{i}.json")))
        .collect();
    // A missing shard.
    let e = stderr(&merge(&[&files[0], &files[2]], &out));
    assert!(e.contains("missing shard(s) 1/3"), "{e}");
    // Overlap: one shard twice.
    let e = stderr(&merge(&[&files[0], &files[1], &files[1], &files[2]], &out));
    assert!(e.contains("both shard 1/3"), "{e}");
    // A shard of another run (seed).
    let other = f.dir.join("other.json");
    eval(
        &[
            "--checkpoint",
            s(&f.ckpt),
            "--batch-size",
            "15",
            "--seed",
            "4",
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--steps",
            "5",
            "--shard",
            "1/3",
        ],
        &other,
    );
    let e = stderr(&merge(&[&files[0], &other, &files[2]], &out));
    assert!(
        e.contains("different evaluations") && e.contains("seed"),
        "{e}"
    );
    // An unsharded report, and the output among the inputs.
    let e = stderr(&merge(&[&f.dir.join("whole.json")], &out));
    assert!(e.contains("not the report of a shard"), "{e}");
    let e = stderr(&merge(&[&files[0], &files[1], &files[2]], &files[0]));
    assert!(e.contains("also one of the shard files"), "{e}");
    assert!(!out.exists(), "a failed merge wrote {}", out.display());
    // --shard auto takes RANK / WORLD_SIZE.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_advtrain"))
        .args([
            "--threads",
            "1",
            "eval",
            "--checkpoint",
            s(&f.ckpt),
            "--batch-size",
            "15",
            "--seed",
            "3",
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--steps",
            "5",
            "--shard",
            "auto",
            "--device",
            "cpu",
            "--json",
            s(&f.dir.join("auto.json")),
        ])
        .env("RANK", "2")
        .env("WORLD_SIZE", "3")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let auto = read_json(&f.dir.join("auto.json"));
    assert_eq!(auto["shard"]["index"], 2);
    assert_eq!(auto["robust_points"], read_json(&files[2])["robust_points"]);
}

/// RobustBench's `ModelInfo` fields (robustbench/utils.py), written out here independently of
/// the library's list.
const ROBUSTBENCH_FIELDS: &[&str] = &[
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "corruptions_acc",
    "corruptions_acc_3d",
    "corruptions_mce",
    "corruptions_mce_3d",
    "autoattack_acc",
    "footnote",
];

#[test]
fn the_model_card_has_the_robustbench_fields() {
    let f = fixture();
    let card = f.dir.join("card.json");
    let json = f.dir.join("aa.json");
    let o = advtrain(&[
        "--threads",
        "1",
        "eval",
        "--torchscript",
        s(&f.script),
        "--data",
        s(&f.points),
        "--attack",
        "autoattack",
        "--eps",
        "8/255",
        "--test-limit",
        "20",
        "--device",
        "cpu",
        "--json",
        s(&json),
        "--model-card",
        s(&card),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = read_json(&card);
    let r = read_json(&json);
    let obj = c.as_object().unwrap();
    for k in ROBUSTBENCH_FIELDS {
        assert!(obj.contains_key(*k), "card lacks {k}");
    }
    let pct = |v: &Value| format!("{:.2}", 100.0 * v.as_f64().unwrap());
    assert_eq!(c["clean_acc"], Value::String(pct(&r["clean_accuracy"])));
    assert_eq!(
        c["autoattack_acc"],
        Value::String(pct(&r["robust_accuracy"]))
    );
    let two_decimals = |v: &Value| {
        let t = v.as_str().unwrap();
        let (a, b) = t.split_once('.').unwrap();
        a.chars().all(|c| c.is_ascii_digit()) && b.len() == 2
    };
    assert!(two_decimals(&c["clean_acc"]) && two_decimals(&c["autoattack_acc"]));
    assert_eq!(c["eps"], "8/255");
    assert_eq!(c["threat_model"], "Linf");
    assert_eq!(c["number_forward_passes"], 1);
    for k in ["link", "venue", "authors", "reported", "footnote"] {
        assert!(c[k].is_null(), "{k} is for the user");
    }
    assert_eq!(c["advtrain"]["model_sha256"], r["checkpoint_sha256"]);
    assert_eq!(c["advtrain"]["per_attack"], r["per_attack"]);
    assert_eq!(c["advtrain"]["model_format"], "torchscript");
    assert!(c["advtrain"]["written_utc"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
}

#[test]
fn bad_input_is_refused_naming_the_file_and_what_was_expected() {
    let f = fixture();
    py(&["modules", s(&f.dir)]);
    let ts = s(&f.script);
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        [extra, &["--attack", "fgsm", "--eps", "0.1"]].concat()
    }
    for (kind, want) in [
        ("above-one", "expected [0, 1]"),
        ("int32-labels", "expected int64"),
        ("label-range", "go up to 12, but the model"),
        ("short-labels", "tensor 'y' has shape"),
        ("no-x", "no tensor 'x'"),
        ("3d", "tensor 'x' has shape"),
    ] {
        let bad = f.dir.join(format!("{kind}.safetensors"));
        py(&["points", s(&f.points), s(&bad), kind]);
        let e = eval_fails(&with(&["--torchscript", ts, "--data", s(&bad)]));
        assert!(e.contains(want) && e.contains(s(&bad)), "{kind}: {e}");
    }
    // Float points in [0, 1] are accepted as they are.
    let float = f.dir.join("float.safetensors");
    py(&["points", s(&f.points), s(&float), "float"]);
    let a = eval(
        &with(&["--torchscript", ts, "--data", s(&float)]),
        &f.dir.join("a.json"),
    );
    let b = eval(
        &with(&["--torchscript", ts, "--data", s(&f.points)]),
        &f.dir.join("b.json"),
    );
    assert_eq!(a["robust_points"], b["robust_points"]);
    // Modules: wrong input shape, not TorchScript at all, a pickle.
    let wrong = f.dir.join("wrong_input.pt");
    let e = eval_fails(&with(&["--torchscript", s(&wrong), "--data", s(&f.points)]));
    assert!(
        e.contains("the module failed on a batch of shape") && e.contains("wrong_input.pt"),
        "{e}"
    );
    let junk = f.dir.join("junk.pt");
    std::fs::write(&junk, b"not a module").unwrap();
    let e = eval_fails(&with(&["--torchscript", s(&junk), "--data", s(&f.points)]));
    assert!(e.contains("cannot load it as a TorchScript module"), "{e}");
    let pickle = f.dir.join("pickle.pt");
    for extra in [vec![], vec!["--arch", "small-cnn", "--data", "mnist"]] {
        let e = eval_fails(&with(
            &[&["--checkpoint", s(&pickle)], extra.as_slice()].concat(),
        ));
        assert!(e.contains("pickle") && e.contains("save_file("), "{e}");
    }
    // A state dict of another architecture.
    let sd = f.dir.join("sd.safetensors");
    py(&["state-dict", s(&f.ckpt), s(&sd)]);
    let e = eval_fails(&with(&[
        "--checkpoint",
        s(&sd),
        "--arch",
        "preact-resnet18",
        "--data",
        s(&f.points),
    ]));
    assert!(e.contains("does not match the architecture"), "{e}");
    // A state dict without --arch.
    let e = eval_fails(&with(&["--checkpoint", s(&sd)]));
    assert!(e.contains("--arch"), "{e}");
    // Flags that need our Norm layer, missing data, bad shards, bad fractions.
    let e = eval_fails(&with(&[
        "--torchscript",
        ts,
        "--data",
        s(&f.points),
        "--route",
        "adv",
    ]));
    assert!(e.contains("Norm"), "{e}");
    let e = eval_fails(&with(&["--torchscript", ts]));
    assert!(e.contains("--data is required"), "{e}");
    let json = f.dir.join("s.json");
    let js = s(&json);
    let e = eval_fails(&with(&[
        "--torchscript",
        ts,
        "--data",
        s(&f.points),
        "--shard",
        "3/3",
        "--json",
        js,
    ]));
    assert!(e.contains("0 <= index < count"), "{e}");
    let e = eval_fails(&with(&[
        "--torchscript",
        ts,
        "--data",
        s(&f.points),
        "--shard",
        "5/9",
        "--json",
        js,
    ]));
    assert!(e.contains("is empty"), "{e}");
    let e = eval_fails(&[
        "--torchscript",
        ts,
        "--data",
        s(&f.points),
        "--attack",
        "pgd",
        "--eps",
        "8/0",
    ]);
    assert!(e.contains("division by zero"), "{e}");
    // analyze needs our Norm layer.
    let o = common::analyze(&["bn-divergence", "--torchscript", ts]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Norm layer"), "{}", stderr(&o));
}

#[test]
fn bench_times_a_torchscript_module_against_the_same_file_in_pytorch() {
    let f = fixture();
    let json = f.dir.join("bench.json");
    let o = advtrain(&[
        "--threads",
        "1",
        "bench",
        "--torchscript",
        s(&f.script),
        "--data",
        s(&f.points),
        "--parts",
        "pgd20",
        "--n",
        "20",
        "--eval-batch-size",
        "20",
        "--warmup",
        "0",
        "--json",
        s(&json),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_json(&json);
    let part = &r["models"][0]["parts"][0];
    assert_eq!(part["part"], "pgd20");
    let (ours, theirs) = (&part["advtrain"], &part["pytorch"]);
    assert!(ours["images_per_s"].as_f64().unwrap() > 0.0);
    // The clean pass is deterministic: both sides see the same module on the same points.
    let clean = |v: &Value| v["clean_accuracy"].as_f64().unwrap();
    assert!(
        (clean(ours) - clean(theirs)).abs() < 1e-6,
        "{ours} vs {theirs}"
    );
    let o = advtrain(&[
        "bench",
        "--torchscript",
        s(&f.script),
        "--data",
        s(&f.points),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--parts pgd20,autoattack"),
        "{}",
        stderr(&o)
    );
}

/// Library evaluation of `format` / `file` with `attack` on the fixture's points.
fn lib_eval(
    f: &Fixture,
    format: advtrain::eval::ModelFormat,
    file: &Path,
    attack: advtrain::eval::EvalAttack,
) -> advtrain::eval::EvalReport {
    use advtrain::eval::*;
    let compute = advtrain::compute::Compute {
        fold_bn: false,
        ..Default::default()
    };
    let plan = EvalPlan {
        setup: EvalSetup {
            checkpoint: file.to_path_buf(),
            format,
            data: DataSelection {
                source: DataSource::Points(f.points.clone()),
                test_limit: Some(12),
                batch_size: 6,
                data_dir: None,
                batching: Batching::Pooled,
                shard: None,
            },
            test_time: TestTime::default(),
            seed: 5,
            device: advtrain::device::DeviceChoice::Cpu,
            compute,
        },
        threat: Threat {
            norm: advtrain::attack::ThreatNorm::Linf,
            eps: 0.1,
        },
        attack,
    };
    let _g = common::rng_lock();
    evaluate(&plan, &mut Silent).unwrap()
}

#[test]
fn every_attack_gives_the_same_verdicts_on_the_torchscript_export() {
    use advtrain::attack::{AttackName, AttackSettings, ParamNames, ThreatNorm};
    use advtrain::eval::{EvalAttack, ModelFormat};
    let f = fixture();
    let mut broke = 0;
    for name in <AttackName as clap::ValueEnum>::value_variants() {
        if *name == AttackName::Autoattack {
            continue; // the CLI test compares the cascade
        }
        let s = AttackSettings {
            steps: Some(2),
            queries: Some(20),
            seed: 5,
            ..AttackSettings::new(ThreatNorm::Linf, 0.1)
        };
        let spec = name.spec(&s, &ParamNames::flags(), false).unwrap();
        let attack = EvalAttack::Single(spec);
        let native = lib_eval(&f, ModelFormat::Advtrain, &f.ckpt, attack.clone());
        let ts = lib_eval(&f, ModelFormat::Torchscript, &f.script, attack);
        assert_eq!(native.robust_points, ts.robust_points, "{name}");
        assert_eq!(native.clean_points, ts.clean_points, "{name}");
        assert_eq!(native.attack_config, ts.attack_config, "{name}");
        broke +=
            native.robust_points.matches('0').count() - native.clean_points.matches('0').count();
    }
    assert!(
        broke > 0,
        "no attack broke any point: the comparison says nothing"
    );
}

#[test]
fn curves_run_on_a_torchscript_module() {
    let f = fixture();
    for (flag, values, vary) in [
        ("--curve", "0,0.05,0.1", "eps"),
        ("--curve-steps", "1,3", "steps"),
    ] {
        let json = f.dir.join(format!("curve-{vary}.json"));
        let o = advtrain(&[
            "--threads",
            "1",
            "eval",
            "--torchscript",
            s(&f.script),
            "--data",
            s(&f.points),
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--steps",
            "2",
            flag,
            values,
            "--test-limit",
            "20",
            "--device",
            "cpu",
            "--json",
            s(&json),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let r = read_json(&json);
        assert_eq!(r["vary"], vary);
        assert_eq!(r["model_format"], "torchscript");
        assert_eq!(
            r["points"].as_array().unwrap().len(),
            values.split(',').count()
        );
        assert!(json.with_extension("png").is_file());
    }
}

#[test]
fn a_torchscript_autoattack_resumes_from_its_state_file() {
    let f = fixture();
    let run = |json: &Path, extra: &[&str]| {
        let mut args = vec![
            "--threads",
            "1",
            "eval",
            "--torchscript",
            s(&f.script),
            "--data",
            s(&f.points),
            "--attack",
            "autoattack",
            "--preset",
            "fast",
            "--eps",
            "0.1",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--json",
            s(json),
        ];
        args.extend_from_slice(extra);
        let o = advtrain(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (read_json(json), stderr(&o))
    };
    let whole = run(&f.dir.join("whole.json"), &[]).0;
    let part = f.dir.join("part.json");
    let (first, _) = run(&part, &["--max-batches", "1"]);
    assert_eq!(first["complete"], false);
    assert!(f.dir.join("part.state.json").is_file());
    let (done, err) = run(&part, &[]);
    assert!(err.contains("continuing"), "{err}");
    assert_eq!(done["complete"], true);
    assert_eq!(done["robust_points"], whole["robust_points"]);
    assert_eq!(done["per_attack"].as_array().unwrap().len(), 2);
}
