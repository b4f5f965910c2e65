//! The run loop: one epoch at a time, validation, metrics, atomic checkpoints, exact resume.
//!
//! Run directory: `recipe.toml` (resolved), `metrics.csv`, `checkpoints/{last,best}.*`,
//! `summary.json`. All randomness of epoch e is seeded from (seed, e), so resuming from the
//! checkpoint after epoch e replays epochs e+1.. exactly as an uninterrupted run (on CPU).

use super::awp;
use super::ddp::{self, Ddp};
use super::derive_seed;
use super::metrics::{self, EpochMetrics};
use super::objectives::{Active, SetupCx, StepCx};
use super::optim::Sgd;
use super::recipe::Recipe;
use super::swa::{self, SwaAverage};
use crate::attack::{Attack, Classifier, Pgd};
use crate::checkpoint::{self, CheckpointStore, Sidecar};
use crate::compute::with_precision;
use crate::data::{Dataset, Splits};
use crate::device::{device_name, parse_device};
use crate::eval::{clean_counts, robust_counts};
use crate::fsio::{write_atomic, DirLock};
use crate::nn::network::channels_last;
use crate::nn::{Ctx, Mode, Network};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Where a run goes and whether it continues an earlier one.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    /// Stop after this many epochs of the schedule as if killed (tests of resuming).
    pub stop_after: Option<usize>,
}

/// Final state of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub epochs: usize,
    pub last: EpochMetrics,
    pub best_metric: Option<f64>,
    pub device: String,
    pub parameters: i64,
    /// Catastrophic overfitting detected by `train.overfit_check`, when it was.
    pub overfitting: Option<Collapse>,
    /// The SWA model (`train.swa`), when one was made.
    pub swa: Option<SwaSummary>,
}

/// What `train.swa` produced: `checkpoints/swa` and its validation accuracy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwaSummary {
    /// Epochs averaged (the parameters after epochs `first_epoch..=epochs`).
    pub averaged: usize,
    pub first_epoch: usize,
    pub val_clean_acc: Option<f64>,
    pub val_pgd_acc: Option<f64>,
    /// Statistics sets re-estimated: route, data, images.
    pub bn_reestimated: Vec<(String, String, usize)>,
}

/// A collapse of PGD accuracy on the training subset (catastrophic overfitting).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Collapse {
    pub epoch: usize,
    pub pgd_accuracy: f64,
    pub best_before: f64,
    pub rolled_back_to: Option<usize>,
}

const CHECKPOINT_FORMAT: &str = "advtrain-checkpoint-v1";
/// The lock file of a run directory (see [`DirLock`]).
pub const LOCK_FILE: &str = ".lock";

const STREAM_INIT: u64 = 0;
const STREAM_TORCH: u64 = 1;
const STREAM_DATA: u64 = 2;
const STREAM_VAL: u64 = 3;
const STREAM_OVERFIT: u64 = 4;

/// Train `recipe` into `opts.out`. With `opts.resume`, continue from `checkpoints/last`.
pub fn train(recipe: &Recipe, opts: &RunOptions) -> Result<RunSummary> {
    train_observed(recipe, opts, &mut |_| {})
}

/// [`train`], calling `after_epoch(run_dir)` after each epoch's checkpoint set is committed
/// (the CLI draws `curves.png` there: figures are a higher layer). The hook cannot fail the
/// run: it reports its own errors.
pub fn train_observed(
    recipe: &Recipe,
    opts: &RunOptions,
    after_epoch: &mut dyn FnMut(&Path),
) -> Result<RunSummary> {
    crate::compute::apply_process_settings(&recipe.compute)?;
    let device = parse_device(&recipe.device)?;
    // Data-parallel workers (torchrun, srun): the recipe with its world size (src/train/ddp.rs).
    let (ddp, resolved, device) = Ddp::start(recipe, device)?;
    let recipe = resolved.as_ref().unwrap_or(recipe);
    let writer = ddp.is_writer();
    crate::device::enter_phase(device, crate::device::Phase::Training);
    let out = &opts.out;
    // The data first: a data error leaves no run directory behind.
    let data = recipe.data.load()?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    ddp.wait_for_writer()?;
    // One writer per run directory; held until this function returns.
    let _lock = if writer {
        Some(DirLock::acquire(
            &out.join(LOCK_FILE),
            &format!("run directory {}", out.display()),
        )?)
    } else {
        None
    };
    let store = CheckpointStore::open(out)?;
    let ckdir = store.link();
    let last_file = ckdir.join("last.safetensors");
    let best_file = ckdir.join("best.safetensors");
    let csv = out.join("metrics.csv");
    if !opts.resume && last_file.exists() {
        anyhow::bail!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    if opts.resume && last_file.exists() {
        ddp::check_world_size(&last_file, ddp.world_size)?;
    }
    if writer {
        write_atomic(&out.join("recipe.toml"), recipe.to_toml().as_bytes())?;
    }
    crate::interrupt::install();

    tch::manual_seed(derive_seed(recipe.seed, 0, STREAM_INIT) as i64);
    let net = Network::new(&recipe.model, device)?;
    if recipe.channels_last {
        net.set_channels_last();
    }
    let t = &recipe.train;
    let mut sgd = Sgd::new(&net.vs, t.momentum, t.weight_decay, t.nesterov);
    let (mut start_epoch, mut best) = (0usize, None::<f64>);
    if opts.resume && last_file.exists() {
        store.ensure_verified("last.safetensors")?;
        let side = super::restore(&last_file, &net.variables(), &mut sgd)?;
        start_epoch = side.epoch;
        best = side.best_metric;
        log::info!("resuming {} after epoch {start_epoch}", out.display());
    } else if opts.resume {
        log::warn!(
            "--resume: no checkpoint in {}, starting from scratch",
            ckdir.display()
        );
    }

    // Rows are appended before an epoch's checkpoint set is committed: drop those of epochs
    // after the checkpoint (a kill between the two; also a first epoch that never finished).
    for f in ["metrics.csv", "branches.csv", "overfit_check.csv"] {
        metrics::truncate_after(&out.join(f), start_epoch)?;
    }
    ddp.release_others()?;
    ddp.check_start_epoch(start_epoch, out)?;
    let swa_file = ckdir.join("swa_avg.safetensors");
    let mut swa_avg = match &t.swa {
        Some(_) if start_epoch > 0 && swa_file.exists() => {
            SwaAverage::load(&swa_file, &net, start_epoch)?
        }
        _ => SwaAverage::empty(),
    };
    if writer {
        print_header(recipe, device, &net, out);
    }
    if let Some(d) = ddp.describe(recipe) {
        log::info!("{d}");
    }
    log::info!(
        "data: {} train, {} validation, {} test images",
        data.train.len(),
        data.val.len(),
        data.test.len()
    );

    // The objective's extra parameters and checks against the built model (MixACM: teacher and
    // projections, restored on resume; ARAT: its hooks).
    let mut objective = t.objective.start(&SetupCx {
        settings: recipe.settings(),
        net: &net,
        data: &data,
        device,
        out,
        writer,
    })?;
    if start_epoch > 0 {
        objective.resume(&ckdir, start_epoch)?;
    }
    ddp.broadcast_state(&net, &sgd, &objective.parameters())?;
    // The training set stays on the training device (uint8): batches are gathered, cropped and
    // flipped there (src/data/loader.rs; the same bits as on the host). Shared on the CPU.
    let train_set = data.train.to_device(device);
    let mut last = EpochMetrics::default();
    let mut overfitting = None;
    let overfit_csv = out.join("overfit_check.csv");
    let mut check_best = best_check_accuracy(&overfit_csv)?;
    let mut prev_clean_acc = last_clean_accuracy(&csv)?;
    let end = opts.stop_after.map_or(t.epochs, |s| s.min(t.epochs));
    for epoch in start_epoch..end {
        let mut m = train_epoch(
            recipe,
            &net,
            &mut sgd,
            &train_set,
            epoch,
            device,
            prev_clean_acc,
            objective.as_mut(),
            &ddp,
        )
        .map_err(|e| match e.downcast::<crate::interrupt::Interrupted>() {
            Ok(mut i) => {
                i.message = i.message.replace("<run dir>", &out.display().to_string());
                anyhow::Error::new(i)
            }
            Err(e) => e,
        })?;
        prev_clean_acc = m.train_clean_acc;
        ddp.average_buffers(&net)?;
        validate(recipe, &net, &data, epoch, device, &mut m, &ddp)?;
        // Sharded like the validation: every worker computes its share, rank 0 writes.
        validate_branches(
            recipe,
            &net,
            &data,
            epoch,
            device,
            &out.join("branches.csv"),
            &ddp,
        )?;
        let score = t.objective.score(&m);
        let is_best = match (score, best) {
            (Some(s), Some(b)) => s >= b,
            (Some(_), None) => true,
            (None, _) => true,
        };
        if is_best {
            best = score.or(best);
        }
        let sidecar = |metric: &EpochMetrics| {
            let metrics = serde_json::to_value(metric).expect("serialisable");
            Sidecar::for_run(CHECKPOINT_FORMAT, recipe, epoch + 1, metrics, best)
        };
        let model_tensors = net.named_tensors();
        checkpoint::check_finite(&model_tensors, epoch + 1)?;
        if !writer {
            // Ranks > 0 write nothing; the overfitting check is sharded and its counts summed,
            // so every worker decides (stop, roll back) from the same number.
            if let Some(c) = &t.overfit_check {
                let acc = overfit_accuracy(recipe, c, &net, &data, epoch, device, &ddp)?;
                if is_collapse(check_best, acc, c.drop) && c.rollback {
                    break;
                }
                check_best = Some(check_best.map_or(acc, |b| b.max(acc)));
            }
            last = m;
            continue;
        }
        // Everything of this epoch goes into one new checkpoint generation, made current by a
        // single rename at the end; the CSV rows are appended first (a resume drops rows after
        // the checkpoint's epoch, so a kill between the two loses nothing).
        let stage = store.stage()?;
        let sdir = stage.dir().to_path_buf();
        if is_best {
            checkpoint::save(
                &sdir.join("best.safetensors"),
                &model_tensors,
                None,
                sidecar(&m),
            )?;
        }
        objective.save(&sdir, &|format| {
            Sidecar::for_run(format, recipe, epoch + 1, serde_json::Value::Null, None)
        })?;
        checkpoint::save(
            &sdir.join("last.safetensors"),
            &model_tensors,
            Some(&sgd.state()),
            sidecar(&m),
        )?;
        if let Some(w) = &t.swa {
            if swa::averages_after(w, epoch + 1) {
                swa_avg.update(&net);
                swa_avg.save(&sdir.join("swa_avg.safetensors"), recipe, epoch + 1)?;
            }
        }
        metrics::append(&csv, &m)?;
        let mut collapse = None;
        if let Some(c) = &t.overfit_check {
            let acc = overfit_accuracy(recipe, c, &net, &data, epoch, device, &ddp)?;
            let collapsed = is_collapse(check_best, acc, c.drop);
            append_line(
                &overfit_csv,
                "epoch,train_pgd_acc,best_before,collapsed",
                &format!(
                    "{},{acc:.6},{},{}",
                    epoch + 1,
                    check_best.map(|b| format!("{b:.6}")).unwrap_or_default(),
                    collapsed as u8
                ),
            )?;
            collapse = Some((c, acc, collapsed));
        }
        store.commit(stage)?;
        log::info!("{}", describe(&m, t.epochs));
        after_epoch(out);
        last = m;
        if let Some((c, acc, collapsed)) = collapse {
            if collapsed {
                let before = check_best.unwrap_or(0.0);
                log::warn!(
                    "catastrophic overfitting in epoch {}: PGD-{} accuracy on {} training images fell from {:.2}% to {:.2}%",
                    epoch + 1,
                    c.steps,
                    c.n,
                    100.0 * before,
                    100.0 * acc
                );
                let mut rolled_back_to = None;
                if c.rollback && best_file.exists() {
                    let side = checkpoint::read_sidecar(&best_file)?;
                    net.load_weights(&best_file)?;
                    rolled_back_to = Some(side.epoch);
                    log::warn!(
                        "rolled back to checkpoints/best (epoch {}) and stopped training",
                        side.epoch
                    );
                }
                overfitting = Some(Collapse {
                    epoch: epoch + 1,
                    pgd_accuracy: acc,
                    best_before: before,
                    rolled_back_to,
                });
                if c.rollback {
                    break;
                }
            }
            check_best = Some(check_best.map_or(acc, |b| b.max(acc)));
        }
    }
    let swa = match &t.swa {
        // Rank 0 alone (the others are done): BN re-estimation over the whole training set in
        // global batches and an unsharded validation, exactly as one process.
        Some(w) if writer && end == t.epochs && swa_avg.n > 0 => Some(finish_swa(
            recipe,
            w,
            &swa_avg,
            &net,
            &data,
            device,
            &store,
            ddp.global_batch(recipe),
        )?),
        _ => None,
    };
    let summary = RunSummary {
        epochs: t.epochs,
        last,
        best_metric: best,
        device: device_name(device),
        parameters: net.num_parameters(),
        overfitting,
        swa,
    };
    if let Some(line) = ddp.comm_report() {
        log::info!("{line}");
    }
    if writer {
        write_atomic(
            &out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(summary)
}

/// Turn the SWA average into `checkpoints/swa`: load it into `net`, re-estimate the BN
/// statistics (in batches of `batch`, the global batch of a data-parallel run), validate, save.
#[allow(clippy::too_many_arguments)]
fn finish_swa(
    recipe: &Recipe,
    spec: &super::recipe::SwaSpec,
    avg: &SwaAverage,
    net: &Network,
    data: &Splits,
    device: Device,
    store: &CheckpointStore,
    batch: usize,
) -> Result<SwaSummary> {
    let t = &recipe.train;
    avg.apply(net);
    let mut global = recipe.clone();
    global.train.batch_size = batch;
    let sets = swa::reestimate_bn(&global, spec, net, &data.train, device)?;
    let mut m = EpochMetrics {
        epoch: t.epochs,
        ..Default::default()
    };
    validate(recipe, net, data, t.epochs, device, &mut m, &Ddp::single())?;
    let metrics = serde_json::to_value(&m).expect("serialisable");
    let side = Sidecar::for_run(CHECKPOINT_FORMAT, recipe, t.epochs, metrics, None);
    let tensors = net.named_tensors();
    checkpoint::check_finite(&tensors, t.epochs)?;
    let stage = store.stage()?;
    checkpoint::save(&stage.dir().join("swa.safetensors"), &tensors, None, side)?;
    store.commit(stage)?;
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.2}%", 100.0 * x));
    log::info!(
        "SWA of {} epochs (from epoch {}): val clean {} pgd {} -> checkpoints/swa.safetensors",
        avg.n,
        spec.start_epoch + 1,
        f(m.val_clean_acc),
        f(m.val_pgd_acc)
    );
    Ok(SwaSummary {
        averaged: avg.n,
        first_epoch: spec.start_epoch + 1,
        val_clean_acc: m.val_clean_acc,
        val_pgd_acc: m.val_pgd_acc,
        bn_reestimated: sets
            .into_iter()
            .map(|(r, s, n)| (r.to_string(), s.to_string(), n))
            .collect(),
    })
}

fn print_header(recipe: &Recipe, device: Device, net: &Network, out: &Path) {
    let t = &recipe.train;
    eprintln!(
        "advtrain {} | run {} | device {} | seed {}",
        env!("CARGO_PKG_VERSION"),
        out.display(),
        device_name(device),
        recipe.seed
    );
    eprintln!(
        "model {} ({} parameters), norm {:?} | objective {} | validation route {} | attack BN mode {}",
        recipe.model.name,
        net.num_parameters(),
        recipe.model.norm.kind,
        t.objective.name(),
        recipe.validation_route(),
        t.attack_bn_mode
    );
    eprintln!("compute: {}", recipe.compute.describe());
    if let Some(a) = t.objective.training_attack() {
        eprintln!(
            "training attack: {}",
            serde_json::to_string(a).unwrap_or_default()
        );
    }
    eprintln!("resolved recipe:\n{}", recipe.to_toml());
}

fn describe(m: &EpochMetrics, epochs: usize) -> String {
    let f = |v: Option<f64>| {
        v.map(|x| format!("{:.2}%", 100.0 * x))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "epoch {}/{epochs} lr {:.4} loss {:.4} train clean {} adv {} | val clean {} pgd {} | {:.0} img/s, {:.1}s",
        m.epoch,
        m.lr,
        m.train_loss,
        f(m.train_clean_acc),
        f(m.train_adv_acc),
        f(m.val_clean_acc),
        f(m.val_pgd_acc),
        m.images_per_s,
        m.epoch_time_s
    )
}

fn progress_bar(len: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("{}/{epochs}", epoch + 1));
    pb
}

/// One training epoch; returns the training part of the metrics.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    recipe: &Recipe,
    net: &Network,
    sgd: &mut Sgd,
    train_set: &Dataset,
    epoch: usize,
    device: Device,
    prev_clean_acc: Option<f64>,
    objective: &mut dyn Active,
    ddp: &Ddp,
) -> Result<EpochMetrics> {
    let t = &recipe.train;
    // Every worker the single process's seed: each step's per-row draws take the worker's rows
    // of the global batch's draw (Ddp::draw_scope), so the generators never diverge.
    tch::manual_seed(derive_seed(recipe.seed, epoch as u64, STREAM_TORCH) as i64);
    let rng = ChaCha8Rng::seed_from_u64(derive_seed(recipe.seed, epoch as u64, STREAM_DATA));
    let batches = train_set.batches(
        ddp.global_batch(recipe),
        Some(rng),
        recipe.data.augment(),
        device,
    );
    let n_batches = batches.num_batches();
    let pb = if ddp.is_writer() {
        progress_bar(n_batches, epoch, t.epochs)
    } else {
        ProgressBar::hidden()
    };
    let model = net.model.as_ref();
    let cx = StepCx {
        settings: recipe.settings(),
        model,
        predictors: &net.predictors,
        prev_clean_acc,
    };
    let zero = || Tensor::zeros([], (Kind::Float, device));
    let (mut loss_sum, mut clean_hits, mut adv_hits) = (zero(), zero(), zero());
    let (mut seen, mut clean_seen, mut adv_seen, mut lr) = (0usize, 0i64, 0i64, t.lr);
    let start = Instant::now();
    // distributed.sync_bn: every batch-statistics forward of this epoch synchronises.
    let _sync_bn = ddp.sync_bn_scope();
    for (i, (x, y)) in batches.enumerate() {
        // Data-parallel: every worker learns of a signal any of them got (same step boundary).
        if let Some(sig) = ddp.interrupt_signal()? {
            pb.finish_and_clear();
            return Err(crate::interrupt::Interrupted {
                signal: sig,
                message: format!(
                    "stopped by {} in epoch {} (before step {} of {n_batches}); the step in \
                     progress was abandoned and the last complete checkpoint (epoch {epoch}) is \
                     intact: continue with `advtrain train --out <run dir> --resume`",
                    crate::interrupt::name(sig),
                    epoch + 1,
                    i + 1
                ),
            }
            .into());
        }
        // This worker's rows of the global batch (all of it in one process), and its rows of
        // every random draw of this step (none in one process).
        let _draws = ddp.draw_scope(&x, &y);
        let Some((x, y, global)) = ddp.shard(x, y) else {
            pb.inc(1);
            continue;
        };
        let x = if recipe.channels_last {
            channels_last(&x)
        } else {
            x
        };
        lr = t.learning_rate(epoch as f64 + i as f64 / n_batches as f64);
        let bs = y.size()[0];
        let x_adv = objective.generate(&cx, &x, &y);
        let perturbation = match &t.awp {
            Some(a) if epoch >= a.warmup_epochs => {
                let adv_loss = with_precision(recipe.compute.precision_train, device, || {
                    objective.loss(&cx, &x, &y, x_adv.as_ref(), Mode::TrainFrozen)
                })?
                .loss;
                Some(awp::perturb_synced(net, a.gamma, &adv_loss, |g| {
                    ddp.average_gradients(g, bs, global)
                })?)
            }
            _ => None,
        };
        let out = with_precision(recipe.compute.precision_train, device, || {
            objective.loss(&cx, &x, &y, x_adv.as_ref(), Mode::Train)
        })?;
        sgd.zero_grad();
        objective.zero_grad();
        out.loss.backward();
        if let Some(v) = perturbation {
            awp::restore(v);
        }
        if ddp.group().is_some() {
            let mut params: Vec<Tensor> =
                sgd.params.iter().map(|(_, p)| p.shallow_clone()).collect();
            params.extend(objective.parameters());
            ddp.average_param_grads(&params, bs, global)?;
        }
        sgd.step(lr);
        objective.step(lr);
        if let Some((h, k)) = out.clean {
            clean_hits += h;
            clean_seen += k;
        }
        if let Some((h, k)) = out.adv {
            adv_hits += h;
            adv_seen += k;
        }
        loss_sum += out.loss.detach() * bs as f64;
        seen += bs as usize;
        if i % 20 == 19 || i + 1 == n_batches {
            let mean_loss = loss_sum.double_value(&[]) / seen as f64;
            anyhow::ensure!(
                mean_loss.is_finite(),
                "training loss became {mean_loss} in epoch {} (iteration {}, lr {lr}): lower train.lr or check the data",
                epoch + 1,
                i + 1
            );
            let (acc, k) = if adv_seen > 0 {
                (&adv_hits, adv_seen)
            } else {
                (&clean_hits, clean_seen)
            };
            let rate = seen as f64 / start.elapsed().as_secs_f64();
            pb.set_message(format!(
                "loss {mean_loss:.4} acc {:.3} {rate:.0} img/s",
                acc.double_value(&[]) / k.max(1) as f64
            ));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if ddp.group().is_some() {
        // Epoch metrics over all workers' images.
        let f = |t: &Tensor| t.double_value(&[]);
        let v = ddp.sum(&[
            f(&loss_sum),
            f(&clean_hits),
            f(&adv_hits),
            seen as f64,
            clean_seen as f64,
            adv_seen as f64,
        ])?;
        let s = |x: f64| Tensor::from(x);
        (loss_sum, clean_hits, adv_hits) = (s(v[0]), s(v[1]), s(v[2]));
        (seen, clean_seen, adv_seen) = (v[3] as usize, v[4] as i64, v[5] as i64);
    }
    let frac = |h: &Tensor, k: i64| h.double_value(&[]) / k.max(1) as f64;
    Ok(EpochMetrics {
        epoch: epoch + 1,
        lr,
        train_loss: loss_sum.double_value(&[]) / seen.max(1) as f64,
        train_clean_acc: (clean_seen > 0).then(|| frac(&clean_hits, clean_seen)),
        train_adv_acc: (adv_seen > 0).then(|| frac(&adv_hits, adv_seen)),
        val_clean_acc: None,
        val_pgd_acc: None,
        images_per_s: seen as f64 / secs,
        epoch_time_s: secs,
    })
}

/// PGD accuracy on the first `c.n` training images (the catastrophic-overfitting check);
/// data-parallel: each worker its share, the counts summed (the same number on every worker).
fn overfit_accuracy(
    recipe: &Recipe,
    c: &super::recipe::OverfitCheck,
    net: &Network,
    data: &Splits,
    epoch: usize,
    device: Device,
    ddp: &Ddp,
) -> Result<f64> {
    let a = recipe
        .train
        .attack()
        .context("train.overfit_check needs train.attack (its eps)")?;
    let cfg = crate::attack::PgdConfig::probe(a.norm, a.eps, c.steps);
    tch::manual_seed(ddp.torch_seed(derive_seed(recipe.seed, epoch as u64, STREAM_OVERFIT)));
    let f = Classifier::new(
        net.model.as_ref(),
        Ctx::new(recipe.validation_route(), Mode::Eval),
    )
    .with_compute(&recipe.compute);
    let subset = ddp.shard_dataset(&data.train.take(c.n));
    let r = robust_counts(
        &f,
        &Pgd::new(cfg),
        &subset,
        recipe.validation.batch_size,
        device,
    );
    let v = ddp.sum(&[r.robust_correct as f64, r.n as f64])?;
    Ok(v[0] / v[1].max(1.0))
}

/// `train_clean_acc` of the last row of an existing `metrics.csv` (resume).
fn last_clean_accuracy(path: &Path) -> Result<Option<f64>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(metrics::read(path)?.last().and_then(|m| m.train_clean_acc))
}

/// A collapse: accuracy `acc` more than `drop` (absolute) below the best earlier epoch's.
pub fn is_collapse(best_before: Option<f64>, acc: f64, drop: f64) -> bool {
    best_before.is_some_and(|b| b - acc > drop)
}

/// Highest `train_pgd_acc` in an existing `overfit_check.csv` (resume), read with the `csv`
/// crate by column name; rows without a number there (torn, or empty) are skipped.
fn best_check_accuracy(path: &Path) -> Result<Option<f64>> {
    #[derive(serde::Deserialize)]
    struct Row {
        train_pgd_acc: Option<f64>,
    }
    if !path.exists() {
        return Ok(None);
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(reader
        .deserialize::<Row>()
        .filter_map(|r| r.ok()?.train_pgd_acc)
        .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v)))))
}

/// Append `line` to a CSV file, writing `header` first when the file is new.
fn append_line(path: &Path, header: &str, line: &str) -> Result<()> {
    use std::io::Write;
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let text = if new {
        format!("{header}\n{line}\n")
    } else {
        format!("{line}\n")
    };
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// Clean and PGD validation accuracy of every route in `validation.branches`, appended to
/// `branches.csv` (the same images and seeds as the main validation; data-parallel: sharded
/// like it, counts summed, rank 0 writes).
fn validate_branches(
    recipe: &Recipe,
    net: &Network,
    data: &Splits,
    epoch: usize,
    device: Device,
    csv: &Path,
    ddp: &Ddp,
) -> Result<()> {
    if data.val.is_empty() || recipe.validation.branches.is_empty() {
        return Ok(());
    }
    let mut rows = String::new();
    if !csv.exists() {
        rows += "epoch,route,val_clean_acc,val_pgd_acc\n";
    }
    for &route in &recipe.validation.branches {
        let f = Classifier::new(net.model.as_ref(), Ctx::new(route, Mode::Eval))
            .with_compute(&recipe.compute);
        let bs = recipe.validation.batch_size;
        let accuracy = |hits: usize, n: usize| -> Result<f64> {
            let v = ddp.sum(&[hits as f64, n as f64])?;
            Ok(v[0] / v[1].max(1.0))
        };
        let c = clean_counts(&f, &ddp.shard_dataset(&data.val), bs, device);
        let clean = accuracy(c.clean_correct, c.n)?;
        let pgd = match (recipe.validation_attack(), recipe.validation.pgd_limit > 0) {
            (Some(cfg), true) => {
                tch::manual_seed(ddp.torch_seed(derive_seed(
                    recipe.seed,
                    epoch as u64,
                    STREAM_VAL,
                )));
                let subset = ddp.shard_dataset(&data.val.take(recipe.validation.pgd_limit));
                let attack = Pgd::new(cfg);
                let r = robust_counts(&f, &attack, &subset, bs, device);
                format!("{:.6}", accuracy(r.robust_correct, r.n)?)
            }
            _ => String::new(),
        };
        log::info!(
            "epoch {} branch {route}: val clean {clean:.4} pgd {pgd}",
            epoch + 1
        );
        rows += &format!("{},\"{route}\",{clean:.6},{pgd}\n", epoch + 1);
    }
    if !ddp.is_writer() {
        return Ok(());
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(csv)
        .and_then(|mut f| f.write_all(rows.as_bytes()))
        .with_context(|| format!("cannot write {}", csv.display()))
}

/// Validation clean accuracy (all held-out images) and PGD accuracy (the first `pgd_limit`).
fn validate(
    recipe: &Recipe,
    net: &Network,
    data: &Splits,
    epoch: usize,
    device: Device,
    m: &mut EpochMetrics,
    ddp: &Ddp,
) -> Result<()> {
    if data.val.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let f = Classifier::new(
        net.model.as_ref(),
        Ctx::new(recipe.validation_route(), Mode::Eval),
    )
    .with_compute(&recipe.compute);
    let bs = recipe.validation.batch_size;
    // Each worker its share of the images (all in one process); counts summed over workers.
    let share = |d: &crate::data::Dataset| ddp.shard_dataset(d);
    let accuracy = |hits: usize, n: usize| -> Result<f64> {
        let v = ddp.sum(&[hits as f64, n as f64])?;
        Ok(v[0] / v[1].max(1.0))
    };
    let c = clean_counts(&f, &share(&data.val), bs, device);
    m.val_clean_acc = Some(accuracy(c.clean_correct, c.n)?);
    if let (Some(cfg), true) = (recipe.validation_attack(), recipe.validation.pgd_limit > 0) {
        tch::manual_seed(ddp.torch_seed(derive_seed(recipe.seed, epoch as u64, STREAM_VAL)));
        let subset = share(&data.val.take(recipe.validation.pgd_limit));
        let attack: Box<dyn Attack> = Box::new(Pgd::new(cfg));
        let c = robust_counts(&f, attack.as_ref(), &subset, bs, device);
        m.val_pgd_acc = Some(accuracy(c.robust_correct, c.n)?);
    }
    m.epoch_time_s += start.elapsed().as_secs_f64();
    Ok(())
}
