//! Benchmarks as a library (what `advtrain bench` runs): images/s of adversarial training and
//! evaluation, ours (in-process) against the PyTorch eager twin `bench/pytorch_bench.py` (a
//! subprocess per part) on the same weights, points, batch, threads, device, eps and seed; with
//! achieved GFLOP/s next to the machine's measured fp32 GEMM rate. A [`BenchPlan`] says what
//! to time; [`run`] times it and returns the [`BenchReport`] (the JSON of `bench --json`, its
//! tables as `Display`).
//!
//! The files form a chain, no circle: [`plan`] (the plan, the parts) and [`flops`] (work
//! counts) read nothing of the module; [`subject`] (model and points) reads the plan;
//! [`parts`] (our timings) reads the plan, the subject and `flops`; [`twin`] (the PyTorch
//! side) reads the plan and the subject; [`report`] reads the plan, the timings and `flops`;
//! `run` here reads them all (`tests/layers.rs` checks that no circle forms). The layer sits
//! above `eval` and `train` (it runs their attacks, AutoAttack and optimiser) and below the
//! CLI.
//!
//! Parts (`--parts`):
//! - `at`: one PGD-k adversarial-training step on `--batch-size` points (k = `--steps`): k L-inf
//!   PGD steps (uniform start, CE, step eps/4, model in eval mode, gradients w.r.t. the input
//!   only), then one SGD step (lr 0.01, momentum 0.9, weight decay 5e-4) in train mode.
//!   `--warmup` untimed steps, then `--iters` timed ones: images/s = batch x iters / time.
//! - `pgd20`: `advtrain eval --attack pgd` with its defaults (20 L-inf steps of 2.5 eps / 20,
//!   uniform start, CE) on the first `--n` points in batches of `--eval-batch-size`: per batch a
//!   clean forward, the attack and a forward of the adversarial batch. One untimed batch when
//!   `--warmup` > 0, then one timed pass: images/s = n / time.
//! - `autoattack`: AutoAttack-standard (APGD-CE, APGD-T, FAB-T, Square; the reference
//!   `AutoAttack(version='standard')` on the PyTorch side) on the first `--n` points, clean pass
//!   included: images/s = n / time. Its work depends on how many points survive each attack, so
//!   an untrained model (no `--checkpoint`) makes it fast and meaningless: report it on a trained
//!   checkpoint.
//!
//! Work per image, with F = forward FLOPs per image ([`flops::forward_flops`]), an
//! input-gradient backward ~ F (no weight gradients) and a full backward ~ 2F:
//!   at:    k (F + F) + F + 2F = (2k + 3) F      (23 F for PGD-10)
//!   pgd20: F + 20 (F + F) + F = 42 F
//! GFLOP/s = work per image x images / time / 1e9, with the same F for both sides.

pub mod flops;
pub mod parts;
pub mod plan;
pub mod report;
pub mod subject;
pub mod twin;

pub use plan::{BenchPlan, Part, SubjectPlan, TwinPlan};
pub use report::{BenchReport, ModelTable};

use crate::device::device_name;
use anyhow::Result;
use parts::time_ours;
use report::{side, twin_timing, work_flops, Gemm, ModelReport, PartReport, Round, TwinInfo};
use subject::{checkpoint_subject, fresh_subject, script_subject, TempDir};
use twin::Twin;

/// Time `plan`: per model and part, `plan.repeat` rounds of ours then the twin's.
/// `on_model` gets each model's table as soon as the model is done (the CLI prints it).
pub fn run(plan: &BenchPlan, on_model: &mut dyn FnMut(&ModelTable<'_>)) -> Result<BenchReport> {
    plan.check()?;
    if let SubjectPlan::Checkpoint { file, .. } = &plan.subject {
        crate::checkpoint::locate(Some(file), None)?;
    }
    let twin = plan.twin.as_ref().map(Twin::resolve).transpose()?;
    let device = plan.device;
    let threads = tch::get_num_threads();
    let tmp = TempDir::new()?;
    log::info!(
        "measuring the fp32 GEMM rate ({0}x{0}, {threads} threads)",
        flops::GEMM_N
    );
    let mut report = BenchReport {
        advtrain_version: env!("CARGO_PKG_VERSION").into(),
        device: device_name(device),
        threads,
        seed: plan.seed,
        parts: plan.parts.clone(),
        batch_size: plan.batch_size,
        eval_batch_size: plan.eval_batch_size,
        n: plan.n,
        iters: plan.iters,
        warmup: plan.warmup,
        steps: plan.steps,
        repeat: plan.repeat,
        channels_last: plan.channels_last,
        compute: plan.compute,
        gemm: Gemm {
            n: flops::GEMM_N,
            advtrain_gflops_per_s: flops::gemm_gflops(device),
            pytorch_gflops_per_s: None,
        },
        pytorch: None,
        models: vec![],
    };
    let mut torch_version = None;
    let points = plan.points();
    for name in plan.subject.names() {
        let s = match &plan.subject {
            SubjectPlan::Checkpoint { file, data_dir } => {
                checkpoint_subject(plan, file, data_dir.as_ref(), points)?
            }
            SubjectPlan::Torchscript {
                file,
                data,
                data_dir,
            } => script_subject(plan, file, data.as_deref(), data_dir.as_ref(), points)?,
            SubjectPlan::Fresh(_) => fresh_subject(plan, &name, points, &tmp.0)?,
        };
        let data_file = tmp.0.join("points.safetensors");
        s.write_data(&data_file)?;
        let f = match &s.script {
            Some(_) => None,
            None => flops::forward_flops(&s.network(plan)?, s.shape),
        };
        let mut model = ModelReport {
            model: s.arch.name.clone(),
            checkpoint: s.checkpoint.as_ref().map(|c| c.display().to_string()),
            data: s.data_label.clone(),
            input_shape: s.shape,
            num_classes: s.arch.num_classes,
            eps: s.eps,
            at_step_size: s.at_step_size(),
            pgd20_step_size: s.pgd_step_size(),
            forward_flops: f,
            forward_flops_pytorch: None,
            pytorch_skipped: match &twin {
                None => Some("--no-pytorch".to_string()),
                Some(_) => Twin::unsupported(&s.arch),
            },
            parts: vec![],
        };
        let model_skip = model.pytorch_skipped.clone();
        for &part in &plan.parts {
            let work = f.and_then(|f| work_flops(part, f, plan.steps));
            let mut rounds = vec![];
            let mut skipped = model_skip.clone();
            for round in 0..plan.repeat {
                log::info!(
                    "{}: timing {} (advtrain), round {}/{}",
                    s.arch.name,
                    part.name(),
                    round + 1,
                    plan.repeat
                );
                // cuDNN's algorithm search where shapes stay fixed (the twin does the same).
                crate::device::enter_phase(
                    device,
                    match part {
                        Part::At => crate::device::Phase::Training,
                        Part::Pgd20 => crate::device::Phase::FixedShapes,
                        Part::Autoattack => crate::device::Phase::Evaluation,
                    },
                );
                let ours = side(time_ours(part, &s, plan)?, work);
                let mut theirs = None;
                if let (Some(t), None) = (&twin, &skipped) {
                    log::info!("{}: timing {} (PyTorch twin)", s.arch.name, part.name());
                    let gemm = report.gemm.pytorch_gflops_per_s.is_none();
                    let r = t.run(part, &s, plan, &data_file, threads, gemm)?;
                    if let Some(g) = r.info["gemm_gflops_per_s"].as_f64() {
                        report.gemm.pytorch_gflops_per_s = Some(g);
                    }
                    torch_version = r.info["torch"].as_str().map(String::from);
                    model.forward_flops_pytorch = r.info["forward_flops"].as_f64();
                    match twin_timing(&r.part)? {
                        Ok(tm) => theirs = Some(side(tm, work)),
                        Err(reason) => skipped = Some(reason),
                    }
                }
                rounds.push(Round {
                    ratio: theirs.as_ref().map(|t| ours.images_per_s / t.images_per_s),
                    advtrain: ours,
                    pytorch: theirs,
                });
            }
            model
                .parts
                .push(PartReport::from_rounds(part, work, rounds, skipped));
        }
        on_model(&report.table(&model));
        report.models.push(model);
    }
    report.pytorch = twin.map(|t| TwinInfo {
        python: t.python.display().to_string(),
        script: t.script.display().to_string(),
        torch: torch_version,
        autoattack_dir: t.autoattack_dir.map(|d| d.display().to_string()),
    });
    Ok(report)
}
