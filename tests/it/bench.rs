//! `advtrain bench`: a tiny smoke run of the CLI (ours only: no PyTorch, no AutoAttack), its
//! error on a bad `--parts`, and the forward FLOP count it divides by.

use crate::common;

use advtrain::cli::bench::flops::forward_flops;
use advtrain::nn::{ArchSpec, Network};
use std::process::Output;

fn bench(args: &[&str]) -> Output {
    common::advtrain_cmd()
        .args(["--threads", "1", "bench"])
        .args(args)
        .output()
        .unwrap()
}

fn positive(v: &serde_json::Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

/// 2 x MACs of small-cnn on 1x28x28: conv1 32*1*9*28^2 + conv2 64*32*9*14^2
/// + conv3 128*64*9*7^2 + fc 128*10.
const SMALL_CNN_FLOPS: f64 = 2.0 * (225_792.0 + 3_612_672.0 + 3_612_672.0 + 1_280.0);

#[test]
fn bench_smoke_run_writes_positive_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let o = bench(&[
        "--models",
        "small-cnn",
        "--parts",
        "at,pgd20",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--n",
        "8",
        "--batch-size",
        "16",
        "--repeat",
        "3",
        "--no-pytorch",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("ours img/s"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["parts"], serde_json::json!(["at", "pgd20"]));
    assert_eq!(r["threads"], 1);
    assert!(r["pytorch"].is_null());
    positive(&r["gemm"]["advtrain_gflops_per_s"], "GEMM GFLOP/s");
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert_eq!(m["model"], "small-cnn");
    assert_eq!(m["data"], "random");
    assert_eq!(m["input_shape"], serde_json::json!([1, 28, 28]));
    let f = positive(&m["forward_flops"], "forward FLOPs");
    assert_eq!(f, SMALL_CNN_FLOPS);
    let parts = m["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    // (part, images timed, work in forward passes: (2k + 3) for PGD-10 AT, 42 for PGD-20).
    for (p, (name, images, passes)) in parts.iter().zip([("at", 16, 23.0), ("pgd20", 8, 42.0)]) {
        assert_eq!(p["part"], name);
        assert_eq!(p["advtrain"]["images"], images, "{name}");
        assert_eq!(
            p["work_flops_per_image"].as_f64(),
            Some(passes * f),
            "{name}"
        );
        let ips = positive(&p["advtrain"]["images_per_s"], "images/s");
        let gflops = positive(&p["advtrain"]["gflops_per_s"], "GFLOP/s");
        assert!(
            (gflops - passes * f * ips / 1e9).abs() <= 1e-9 * gflops,
            "{name}"
        );
        let elapsed = positive(&p["advtrain"]["elapsed_s"], "elapsed_s");
        assert!((ips * elapsed - images as f64).abs() < 1e-6, "{name}");
        assert!(p["pytorch"].is_null() && p["ratio"].is_null(), "{name}");
        // --repeat 3: three rounds kept; the reported side is their median by images/s.
        let rounds = p["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 3, "{name}");
        let mut per_round: Vec<f64> = rounds
            .iter()
            .map(|x| positive(&x["advtrain"]["images_per_s"], "round images/s"))
            .collect();
        per_round.sort_by(f64::total_cmp);
        assert_eq!(ips, per_round[1], "{name}: not the median round");
    }
    assert_eq!(r["repeat"], 3);
    assert_eq!(r["compute"]["fold_bn"], true);
    assert_eq!(r["compute"]["precision_attack"], "fp32");
    let robust = parts[1]["advtrain"]["robust_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&robust));
}

#[test]
fn bench_rejects_an_unknown_part_naming_the_flag() {
    let o = bench(&["--parts", "at,bogus", "--no-pytorch"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--parts") && err.contains("'bogus'") && err.contains("pgd20"),
        "{err}"
    );
}

fn arch(name: &str, in_channels: i64, depth: Option<i64>) -> ArchSpec {
    common::arch_spec(name, in_channels, depth, None)
}

#[test]
fn forward_flops_are_twice_the_conv_and_linear_macs() {
    let _rng = common::rng_shared();
    let count = |a: ArchSpec, shape| {
        let net = Network::new(&a, tch::Device::Cpu).unwrap();
        forward_flops(&net, shape).unwrap()
    };
    assert_eq!(
        count(arch("small-cnn", 1, None), [1, 28, 28]),
        SMALL_CNN_FLOPS
    );
    // Also what PyTorch's FlopCounterMode reports for bench/pytorch_pgd_at.py's PreActResNet18.
    assert_eq!(
        count(arch("preact-resnet18", 3, None), [3, 32, 32]),
        2.0 * 555_422_720.0
    );
    // Bottleneck blocks: the first 1x1 conv of a strided block runs at the previous stage's size.
    assert_eq!(
        count(arch("resnet", 3, Some(50)), [3, 32, 32]),
        2.0 * 1_297_829_888.0
    );
}

/// The library API the CLI calls: a tiny plan through `bench::run`, its table handed over
/// per model (and again by the report's `Display`), its report with the CLI's JSON fields;
/// and the plan's checks, which name the flags.
#[test]
fn bench_library_plan_runs_and_checks_name_the_flags() {
    use advtrain::bench::{self, BenchPlan, Part, SubjectPlan};
    let plan = BenchPlan {
        subject: SubjectPlan::fresh(Some("small-cnn")),
        parts: vec![Part::Pgd20],
        n: 4,
        batch_size: 4,
        eval_batch_size: 4,
        iters: 1,
        warmup: 0,
        steps: 1,
        eps: None,
        seed: 0,
        device: tch::Device::Cpu,
        channels_last: false,
        repeat: 1,
        compute: Default::default(),
        twin: None,
    };
    let mut tables = vec![];
    let r = bench::run(&plan, &mut |t| tables.push(t.to_string())).unwrap();
    assert_eq!(tables.len(), 1);
    assert!(
        tables[0].starts_with("\nsmall-cnn | fresh weights | 1x28x28 | eps 0.1000 | batch 4"),
        "{}",
        tables[0]
    );
    assert_eq!(r.to_string(), tables.concat());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["parts"], serde_json::json!(["pgd20"]));
    let m = &v["models"][0];
    assert_eq!(m["pytorch_skipped"], "--no-pytorch");
    // PGD-20 as `eval --attack pgd` makes it: step 2.5 eps / 20 at eps 0.1.
    assert!((m["pgd20_step_size"].as_f64().unwrap() - 0.0125).abs() < 1e-12);
    assert_eq!(m["parts"][0]["advtrain"]["images"], 4);
    for key in ["advtrain_version", "gemm", "compute", "pytorch", "threads"] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }

    let err = |p: BenchPlan| bench::run(&p, &mut |_| {}).unwrap_err().to_string();
    assert!(err(BenchPlan {
        repeat: 0,
        ..plan.clone()
    })
    .contains("--repeat"));
    let script = SubjectPlan::Torchscript {
        file: "m.pt".into(),
        data: None,
        data_dir: None,
    };
    let e = err(BenchPlan {
        subject: script,
        ..plan.clone()
    });
    assert!(e.contains("--torchscript needs --data"), "{e}");
    let e = err(BenchPlan {
        subject: SubjectPlan::fresh(Some(" , ")),
        ..plan.clone()
    });
    assert!(e.contains("--models"), "{e}");
    assert_eq!(
        SubjectPlan::fresh(None).names(),
        ["small-cnn", "preact-resnet18"]
    );
}
