//! The attack registry and the evaluation library (issue 14): every `eval --attack` name
//! makes the attack the CLI always made (names, configs, defaults), specs and plans are data
//! (serde round trips), the named choices keep their spellings and serde names, presets are
//! lists of specs, and `advtrain::eval::evaluate` on a plan gives the CLI's report.

use crate::common;

use advtrain::attack::pgd::{Init, PgdLoss, Target};
use advtrain::attack::{
    ApgdConfig, AttackName, AttackSettings, AttackSpec, FabConfig, Fgsm, ParamNames, PgdConfig,
    SquareConfig, ThreatNorm,
};
use advtrain::compute::{Compute, Precision};
use advtrain::device::DeviceChoice;
use advtrain::eval::autoattack::{preset, Preset};
use advtrain::eval::controls::StatsSource;
use advtrain::eval::{
    evaluate, Batching, DataSelection, DataSource, EvalAttack, EvalPlan, EvalSetup, ModelFormat,
    Silent, TestTime, Threat,
};
use advtrain::nn::Mode;
use clap::ValueEnum;
use serde::Serialize;

/// The settings `eval --attack NAME --eps EPS` gives (restarts 1 from its flag default).
fn flags(eps: f64) -> AttackSettings {
    AttackSettings {
        restarts: Some(1),
        ..AttackSettings::new(ThreatNorm::Linf, eps)
    }
}

fn spec(name: AttackName, s: &AttackSettings) -> AttackSpec {
    name.spec(s, &ParamNames::flags(), false).unwrap()
}

#[test]
fn every_name_makes_the_attack_eval_always_made() {
    let s = flags(0.1);
    let pgd = |loss, init| PgdConfig {
        loss,
        init,
        ..PgdConfig::new(ThreatNorm::Linf, 0.1, 2.5 * 0.1 / 20.0, 20)
    };
    let apgd = |c: ApgdConfig| ApgdConfig { seed: Some(0), ..c };
    let fab = |c: FabConfig| FabConfig {
        n_restarts: 1,
        seed: Some(0),
        ..c
    };
    let (l, e) = (ThreatNorm::Linf, 0.1);
    let cases = [
        (AttackName::Fgsm, AttackSpec::Fgsm(Fgsm { eps: e }), "fgsm"),
        (
            AttackName::Pgd,
            AttackSpec::Pgd(pgd(PgdLoss::Ce, Init::Uniform)),
            "pgd-20",
        ),
        (
            AttackName::PgdT,
            AttackSpec::PgdT(pgd(PgdLoss::TargetedCe, Init::Uniform)),
            "pgd-t-20",
        ),
        (
            AttackName::PgdKl,
            AttackSpec::PgdKl(pgd(PgdLoss::Kl, Init::Normal)),
            "pgd-kl-20",
        ),
        (
            AttackName::Cw,
            AttackSpec::Cw(pgd(PgdLoss::Cw, Init::Uniform)),
            "pgd-cw-20",
        ),
        (
            AttackName::ApgdCe,
            AttackSpec::ApgdCe(apgd(ApgdConfig::ce(l, e))),
            "apgd-ce",
        ),
        (
            AttackName::ApgdDlr,
            AttackSpec::ApgdDlr(apgd(ApgdConfig::dlr(l, e))),
            "apgd-dlr",
        ),
        (
            AttackName::ApgdT,
            AttackSpec::ApgdT(apgd(ApgdConfig::targeted(l, e))),
            "apgd-t",
        ),
        (
            AttackName::Fab,
            AttackSpec::Fab(fab(FabConfig::untargeted(l, e))),
            "fab",
        ),
        (
            AttackName::FabT,
            AttackSpec::FabT(fab(FabConfig::targeted(l, e))),
            "fab-t",
        ),
        (
            AttackName::Square,
            AttackSpec::Square(SquareConfig::new(l, e)),
            "square-5000",
        ),
    ];
    // Every registered attack is listed once, and autoattack is the only other name.
    let mut listed: Vec<AttackName> = cases.iter().map(|c| c.0).collect();
    listed.push(AttackName::Autoattack);
    assert_eq!(listed, AttackName::value_variants());
    for (name, want, short) in cases {
        let got = spec(name, &s);
        assert_eq!(got, want, "{name}");
        assert_eq!(got.kind(), name);
        assert_eq!(got.name(), short, "{name}");
        assert_eq!(got.config(), want.build().config(), "{name}");
        // Specs are data: a JSON round trip gives the same attack.
        let text = serde_json::to_string(&got).unwrap();
        assert!(
            text.starts_with(&format!("{{\"attack\":\"{name}\",\"config\":")),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<AttackSpec>(&text).unwrap(), got);
    }
    // Defaults: APGD / FAB iterate 100 times, the rest 20 (checked for every attack).
    assert_eq!(AttackName::ApgdT.default_steps(), Some(100));
    assert_eq!(AttackName::FabT.default_steps(), Some(100));
    assert_eq!(AttackName::Square.default_steps(), Some(20));
    assert_eq!(AttackName::Autoattack.default_steps(), None);
    // Untargeted FAB keeps its own 5 restarts when none are given.
    let plain = AttackSettings::new(ThreatNorm::Linf, 0.1);
    match spec(AttackName::Fab, &plain) {
        AttackSpec::Fab(c) => assert_eq!(c.n_restarts, 5),
        other => panic!("{other:?}"),
    }
    // The flags override the defaults.
    let custom = AttackSettings {
        steps: Some(7),
        step_size: Some(0.02),
        restarts: Some(2),
        queries: Some(30),
        target: Target::RunnerUp,
        seed: 4,
        ..AttackSettings::new(ThreatNorm::L2, 0.5)
    };
    match spec(AttackName::PgdT, &custom) {
        AttackSpec::PgdT(c) => {
            assert_eq!((c.steps, c.step_size, c.restarts), (7, 0.02, 2));
            assert_eq!((c.norm, c.target), (ThreatNorm::L2, Target::RunnerUp));
        }
        other => panic!("{other:?}"),
    }
    match spec(AttackName::ApgdDlr, &custom) {
        AttackSpec::ApgdDlr(c) => assert_eq!((c.n_iter, c.n_restarts, c.seed), (7, 2, Some(4))),
        other => panic!("{other:?}"),
    }
    assert_eq!(spec(AttackName::Square, &custom).name(), "square-30x2");
}

#[test]
fn specs_are_checked_with_the_names_of_their_settings() {
    let check = |name: AttackName, s: AttackSettings| {
        name.spec(&s, &ParamNames::flags(), false).unwrap_err()
    };
    let s = flags(0.1);
    let e = check(
        AttackName::Pgd,
        AttackSettings {
            steps: Some(0),
            ..s
        },
    );
    assert_eq!(e, "--steps must be >= 1, got 0");
    let e = check(
        AttackName::Fgsm,
        AttackSettings {
            steps: Some(0),
            ..s
        },
    );
    assert_eq!(e, "--steps must be >= 1, got 0");
    let e = check(
        AttackName::Pgd,
        AttackSettings {
            step_size: Some(0.0),
            ..s
        },
    );
    assert!(e.starts_with("--step-size must be > 0"), "{e}");
    let e = check(AttackName::ApgdCe, flags(8.0));
    assert!(
        e.contains("--eps = 8 is above 1") && e.contains("--allow-large-eps"),
        "{e}"
    );
    assert!(AttackName::ApgdCe
        .spec(&flags(8.0), &ParamNames::flags(), true)
        .is_ok());
    let l2 = AttackSettings::new(ThreatNorm::L2, 0.5);
    assert!(check(AttackName::Fgsm, l2).contains("L-inf attack"));
    let e = check(AttackName::Autoattack, s);
    assert!(e.contains("autoattack") && e.contains("preset"), "{e}");
    let e = check(
        AttackName::Square,
        AttackSettings {
            restarts: Some(0),
            ..s
        },
    );
    assert_eq!(e, "--restarts must be >= 1, got 0");
    let mut names = ParamNames::flags();
    names.eps = "--curve eps value".into();
    let e = AttackName::Pgd
        .spec(&flags(2.0), &names, false)
        .unwrap_err();
    assert!(e.starts_with("--curve eps value = 2 is above 1"), "{e}");
}

#[test]
fn presets_are_lists_of_specs() {
    let std = preset(Preset::Standard, ThreatNorm::Linf, 8.0 / 255.0, 3, 10);
    let kinds: Vec<AttackName> = std.iter().map(AttackSpec::kind).collect();
    assert_eq!(
        kinds,
        [
            AttackName::ApgdCe,
            AttackName::ApgdT,
            AttackName::FabT,
            AttackName::Square
        ]
    );
    assert_eq!(Preset::Standard.attacks(), kinds);
    match (&std[0], &std[1], &std[2], &std[3]) {
        (
            AttackSpec::ApgdCe(ce),
            AttackSpec::ApgdT(t),
            AttackSpec::FabT(f),
            AttackSpec::Square(q),
        ) => {
            assert_eq!((ce.n_iter, ce.n_restarts, ce.seed), (100, 1, Some(3)));
            assert_eq!((t.n_iter, t.n_target_classes, t.seed), (100, 9, Some(3)));
            assert_eq!((f.n_iter, f.n_target_classes, f.seed), (100, 9, Some(3)));
            assert_eq!((q.n_queries, q.p_init, q.n_restarts), (5000, 0.8, 1));
        }
        other => panic!("{other:?}"),
    }
    // Targeted attacks use min(9, classes - 1) targets.
    match &preset(Preset::Fast, ThreatNorm::L2, 0.5, 0, 5)[1] {
        AttackSpec::ApgdT(t) => assert_eq!((t.n_target_classes, t.norm), (4, ThreatNorm::L2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Preset::Fast.attacks(),
        [AttackName::ApgdCe, AttackName::ApgdT]
    );
}

/// The serde name of `v` (a unit variant) as a string.
fn serde_name(v: &impl Serialize) -> String {
    serde_json::to_value(v)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// Every choice's command-line name is its serde name and its `Display`, and parses back.
fn same_names<E>()
where
    E: ValueEnum + Serialize + std::fmt::Display + std::str::FromStr<Err = String> + PartialEq,
    E: std::fmt::Debug,
{
    for v in E::value_variants() {
        let name = v.to_possible_value().unwrap().get_name().to_string();
        assert_eq!(serde_name(v), name);
        assert_eq!(v.to_string(), name);
        assert_eq!(&name.parse::<E>().unwrap(), v);
    }
}

#[test]
fn choices_keep_their_spellings_and_serde_names() {
    same_names::<ThreatNorm>();
    same_names::<Mode>();
    same_names::<StatsSource>();
    same_names::<Precision>();
    same_names::<Target>();
    same_names::<Preset>();
    same_names::<AttackName>();
    for s in ["linf", "l-inf", "inf", "LINF", "L-Inf"] {
        assert_eq!(s.parse::<ThreatNorm>(), Ok(ThreatNorm::Linf), "{s}");
    }
    assert_eq!("L2".parse::<ThreatNorm>(), Ok(ThreatNorm::L2));
    assert_eq!(
        "l1".parse::<ThreatNorm>().unwrap_err(),
        "unknown norm 'l1': expected one of linf, l2"
    );
    assert_eq!("float32".parse::<Precision>(), Ok(Precision::Fp32));
    assert_eq!("BFloat16".parse::<Precision>(), Ok(Precision::Bf16));
    assert_eq!("train-frozen".parse::<Mode>(), Ok(Mode::TrainFrozen));
    assert_eq!("least-likely".parse::<Target>(), Ok(Target::LeastLikely));
    assert!("deepfool"
        .parse::<AttackName>()
        .unwrap_err()
        .starts_with("unknown attack 'deepfool': expected one of fgsm, pgd,"));
    for (s, d) in [
        ("auto", DeviceChoice::Auto),
        ("cpu", DeviceChoice::Cpu),
        ("cuda", DeviceChoice::Cuda(0)),
        ("cuda:1", DeviceChoice::Cuda(1)),
    ] {
        assert_eq!(s.parse::<DeviceChoice>(), Ok(d));
        assert_eq!(d.to_string().parse::<DeviceChoice>(), Ok(d));
    }
    assert!("tpu"
        .parse::<DeviceChoice>()
        .unwrap_err()
        .contains("unknown device 'tpu'"));
}

/// `advtrain::eval::evaluate` on a typed plan gives the report `advtrain eval` writes for the
/// same flags (same verdicts, configs and labels); the plan is data (JSON round trip), and the
/// compute settings given are the ones recorded.
#[test]
fn the_library_evaluation_is_the_cli_evaluation() {
    // The CLI runs with the torch threads of this process (setting them here would set them for
    // every test of the crate).
    let threads = tch::get_num_threads().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 40, 60);
    let run = tmp.path().join("run");
    let ck = common::confident_run(&run, &data);
    let json = tmp.path().join("cli.json");
    let o = common::advtrain(&[
        "--threads",
        &threads,
        "--attack-chunk",
        "0",
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--test-limit",
        "30",
        "--batch-size",
        "16",
        "--json",
        json.to_str().unwrap(),
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "3",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let cli = common::read_json(&json);

    // The seeded evaluation (and the network its plan loads) holds the generator alone.
    let _rng = common::rng_lock();
    let compute = Compute {
        attack_chunk: 0,
        ..Compute::default()
    };
    let settings = AttackSettings {
        steps: Some(3),
        ..flags(0.1)
    };
    let plan = EvalPlan {
        setup: EvalSetup {
            checkpoint: ck.clone(),
            format: ModelFormat::Advtrain,
            data: DataSelection {
                source: DataSource::Dataset(
                    advtrain::train::saved::load_run(&ck, tch::Device::Cpu)
                        .unwrap()
                        .recipe
                        .data,
                ),
                test_limit: Some(30),
                batch_size: 16,
                data_dir: None,
                batching: Batching::Pooled,
                shard: None,
            },
            test_time: TestTime::default(),
            seed: 0,
            device: DeviceChoice::Cpu,
            compute,
        },
        threat: Threat {
            norm: ThreatNorm::Linf,
            eps: 0.1,
        },
        attack: EvalAttack::Single(spec(AttackName::Pgd, &settings)),
    };
    let text = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<EvalPlan>(&text).unwrap(), plan);
    let report = evaluate(&plan, &mut Silent).unwrap();
    let lib = serde_json::to_value(&report).unwrap();
    for key in [
        "clean_accuracy",
        "robust_accuracy",
        "attack",
        "attack_config",
        "eps",
        "norm",
        "n",
        "seed",
        "route",
        "route_requested",
        "bn_mode",
        "compute",
        "soup",
        "reestimate",
        "flags",
        "gradient_checks",
    ] {
        assert_eq!(lib[key], cli[key], "{key}");
    }
    assert_eq!(
        lib["per_attack"][0]["robust_accuracy"],
        cli["per_attack"][0]["robust_accuracy"]
    );
    assert_eq!(lib["compute"]["attack_chunk"], 0);
    assert_eq!(lib["attack"], "pgd-3");
    // The printed table names the attack and the accuracies.
    let table = report.to_string();
    assert!(
        table.starts_with("attack ") && table.contains("pgd-3"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{:.2}%", 100.0 * report.robust_accuracy)),
        "{table}"
    );
}
