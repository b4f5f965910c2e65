//! Data-parallel training (one model, N workers) on a [`ProcessGroup`], as PyTorch's
//! DistributedDataParallel does it:
//!
//! - **Launch.** `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (torchrun, srun,
//!   a shell loop); without them [`Ddp::start`] returns the single-process value and nothing
//!   changes. The backend follows the device (Gloo on the CPU, NCCL on CUDA, `cuda:LOCAL_RANK`
//!   when the recipe names no index); `distributed.backend` overrides.
//! - **Start.** The resolved recipe (with `distributed.world_size`) must hash the same on every
//!   worker; weights, buffers and optimiser state are broadcast from rank 0.
//! - **Batches.** The global batch is `train.batch_size x world` (`distributed.batch =
//!   "per-worker"`) or `train.batch_size` (`"global"`). Every worker draws the same epoch
//!   permutation and augmentation (the single-process stream, seeded by (seed, epoch)) and takes
//!   rows `[floor(r m / W), floor((r+1) m / W))` of each global batch of `m` images: no image twice,
//!   none dropped, except a last global batch with fewer images than workers (skipped by all).
//! - **Gradients.** Before every optimiser step each worker's gradient (model, predictors, the
//!   objective's own parameters) is scaled by `m_r / m` and summed over the workers in flat
//!   buckets: `sum_r (m_r/m) grad L_r = grad` of the global batch's mean loss. AWP's weight
//!   perturbation uses the same averaged gradient.
//! - **Random draws.** Attacks run locally. Every worker seeds torch's generator for a training
//!   epoch as the single process does, and each per-row draw of a step (PGD's uniform or normal
//!   start, TRADES' `0.001 N(0, I)`, FGSM-RS's `U(-eps, eps)`, random targets, MixACM's mixup
//!   partners) draws the whole global batch's rows and keeps the worker's own
//!   ([`Ddp::draw_scope`], [`crate::attack::draw`]): worker r's draws are the single process's
//!   rows `[a_r, b_r)`, and all generators stay in the single process's state. Validation and
//!   the overfitting check draw per worker (independent seeds, rank 0 the single process's).
//! - **BatchNorm.** Batch statistics per worker during training (DDP's default), or with
//!   `distributed.sync_bn = true` synchronised over all workers in every training forward that
//!   uses batch statistics (PyTorch's SyncBatchNorm: `dist::sync_bn_moments`, per statistics set,
//!   so per domain and per segment source; running statistics from the global mean and unbiased
//!   variance). Running statistics (every floating buffer) are averaged over the workers at each
//!   epoch end, so all workers hold identical models.
//! - **Validation**, `validation.branches` and the overfitting check sharded the same way,
//!   counts summed: every worker takes the same decisions (best checkpoint, stop, rollback) from
//!   the same numbers. SWA's end (BN re-estimation in global batches, validation) runs on rank 0
//!   alone, as one process. Only rank 0 writes (run directory lock, recipe, checkpoints,
//!   metrics, summary) and shows progress; other ranks log warnings only.

use super::optim::Sgd;
use super::recipe::Recipe;
use crate::checkpoint;
use crate::data::Dataset;
use crate::dist::{Backend, LaunchEnv, ProcessGroup};
use crate::nn::Network;
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::path::Path;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// This process's part in a data-parallel run (or the whole of a single-process one).
pub struct Ddp {
    pg: Option<ProcessGroup>,
    pub rank: usize,
    pub world_size: usize,
    /// `distributed.sync_bn`: training forwards synchronise BatchNorm statistics.
    pub sync_bn: bool,
    /// Gradient all-reduces so far: (optimiser steps, bytes, seconds).
    grad_comm: Cell<(u64, u64, f64)>,
}

impl Ddp {
    /// One process, no group.
    pub fn single() -> Ddp {
        Ddp {
            pg: None,
            rank: 0,
            world_size: 1,
            sync_bn: false,
            grad_comm: Cell::new((0, 0, 0.0)),
        }
    }

    /// From the launch variables: the group, the recipe with `distributed.world_size` resolved
    /// (None when not launched), and this worker's device.
    pub fn start(recipe: &Recipe, device: Device) -> Result<(Ddp, Option<Recipe>, Device)> {
        let Some(env) = LaunchEnv::from_env()? else {
            if let Some(w) = recipe.distributed.world_size.filter(|w| *w > 1) {
                bail!(
                    "distributed.world_size = {w} but this process was not launched as a worker \
                     (RANK and WORLD_SIZE are not set): launch {w} workers with torchrun, srun or \
                     a loop (README, \"Scaling out\"); a resumed run needs the world size it was \
                     trained with"
                );
            }
            return Ok((Ddp::single(), None, device));
        };
        let spec = &recipe.distributed;
        if let Some(w) = spec.world_size {
            if w != env.world_size {
                bail!(
                    "distributed.world_size = {w} in the recipe, but WORLD_SIZE={} workers were \
                     launched (a resumed run needs the world size it was trained with)",
                    env.world_size
                );
            }
        }
        let mut resolved = recipe.clone();
        resolved.distributed.world_size = Some(env.world_size);
        resolved
            .distributed
            .batches(recipe.train.batch_size, env.world_size)?;
        let device = match device {
            Device::Cuda(_) if !recipe.device.contains(':') => Device::Cuda(env.local_rank),
            d => d,
        };
        let backend = spec.backend_for(device)?;
        let timeout = Duration::from_secs_f64(spec.timeout_s);
        let pg = ProcessGroup::new(&env, backend, timeout)?;
        if env.rank > 0 {
            // One voice: the other workers report warnings and errors only.
            log::set_max_level(log::LevelFilter::Warn);
        }
        let ddp = Ddp {
            pg: Some(pg),
            rank: env.rank,
            world_size: env.world_size,
            sync_bn: spec.sync_bn,
            grad_comm: Cell::new((0, 0, 0.0)),
        };
        ddp.check_same_recipe(&resolved)?;
        Ok((ddp, Some(resolved), device))
    }

    /// Whether this process writes the run directory (rank 0, or the single process).
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// The group, when there is one.
    pub fn group(&self) -> Option<&ProcessGroup> {
        self.pg.as_ref()
    }

    /// The start-of-run line, when distributed.
    pub fn describe(&self, recipe: &Recipe) -> Option<String> {
        let pg = self.pg.as_ref()?;
        let d = &recipe.distributed;
        let (local, global) = d.batches(recipe.train.batch_size, self.world_size).ok()?;
        Some(format!(
            "distributed: {} workers ({} backend, timeout {:.0} s) | batch {local} per worker, \
             global {global} (distributed.batch = \"{}\") | BatchNorm: {} | gradients averaged \
             before every step",
            self.world_size,
            match pg.backend {
                Backend::Nccl => "nccl",
                _ => "gloo",
            },
            pg.timeout.as_secs_f64(),
            d.batch,
            if self.sync_bn {
                "synchronised batch statistics over all workers per statistics set \
                 (distributed.sync_bn = true), running statistics from the global batch"
            } else {
                "per-worker batch statistics (distributed.sync_bn = false), running statistics \
                 averaged at every epoch end"
            }
        ))
    }

    /// While alive (a training epoch), batch-statistics BatchNorm synchronises over the group
    /// (`distributed.sync_bn`); None in one process or without sync_bn.
    pub fn sync_bn_scope(&self) -> Option<crate::dist::SyncBnScope<'_>> {
        self.pg
            .as_ref()
            .filter(|_| self.sync_bn)
            .map(|pg| pg.sync_bn_scope())
    }

    /// The signal (SIGINT/SIGTERM) that stops training, when any worker has received one:
    /// checked before every step with one tiny all-reduce, so all workers stop at the same
    /// step boundary (torchrun forwards a signal to every worker, but not at the same instant).
    pub fn interrupt_signal(&self) -> Result<Option<i32>> {
        let local = crate::interrupt::requested();
        let Some(pg) = &self.pg else {
            return Ok(local);
        };
        let t = Tensor::from_slice(&[i64::from(local.is_some()), local.unwrap_or(0) as i64]);
        pg.allreduce_sum(&t)
            .context("agreeing on a stop signal between the workers")?;
        let (n, sum) = (t.int64_value(&[0]), t.int64_value(&[1]));
        Ok(local.or((n > 0).then(|| (sum / n) as i32)))
    }

    /// The batch the data loader cuts per step (all workers' images together).
    pub fn global_batch(&self, recipe: &Recipe) -> usize {
        if self.pg.is_none() {
            return recipe.train.batch_size;
        }
        recipe
            .distributed
            .batches(recipe.train.batch_size, self.world_size)
            .map(|(_, g)| g)
            .unwrap_or(recipe.train.batch_size)
    }

    /// Ranks > 0: wait until rank 0 has locked, recovered and prepared the run directory (it
    /// calls [`Ddp::release_others`] when done).
    pub fn wait_for_writer(&self) -> Result<()> {
        match &self.pg {
            Some(pg) if self.rank > 0 => pg
                .barrier()
                .context("waiting for rank 0 to prepare the run directory"),
            _ => Ok(()),
        }
    }

    /// Rank 0: the run directory is ready; let the other workers read it.
    pub fn release_others(&self) -> Result<()> {
        match &self.pg {
            Some(pg) if self.rank == 0 => pg.barrier(),
            _ => Ok(()),
        }
    }

    /// Error on every worker unless all resolved recipes hash alike (sha256 of the TOML).
    fn check_same_recipe(&self, recipe: &Recipe) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        use sha2::Digest;
        let digest = sha2::Sha256::digest(recipe.to_toml().as_bytes());
        let words: Vec<i64> = digest
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let mine = Tensor::from_slice(&words);
        let theirs = mine.copy();
        pg.broadcast(&theirs, 0)?;
        let differs = i64::from(!mine.equal(&theirs));
        let count = Tensor::from_slice(&[differs]);
        pg.allreduce_sum(&count)?;
        let n = count.int64_value(&[0]);
        if n > 0 {
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            bail!(
                "the resolved recipe differs between workers: {n} of {} workers have a recipe \
                 other than rank 0's (this is rank {}, recipe sha256 {hex}): launch every worker \
                 with the same --recipe, --set and flags",
                self.world_size,
                self.rank
            );
        }
        Ok(())
    }

    /// Rank 0's resume epoch must be every worker's (the run directory on a shared filesystem).
    pub fn check_start_epoch(&self, start_epoch: usize, dir: &Path) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        let t = Tensor::from_slice(&[start_epoch as i64]);
        pg.broadcast(&t, 0)?;
        let first = t.int64_value(&[0]) as usize;
        if first != start_epoch {
            bail!(
                "rank {} resumes after epoch {start_epoch} but rank 0 after epoch {first}: every \
                 worker must see the same run directory {} (a filesystem shared by all machines)",
                self.rank,
                dir.display()
            );
        }
        Ok(())
    }

    /// Broadcast every model variable (parameters and buffers), the optimiser's momentum and
    /// `extra` (the objective's own parameters) from rank 0.
    pub fn broadcast_state(&self, net: &Network, sgd: &Sgd, extra: &[Tensor]) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        let mut ts: Vec<Tensor> = net.named_tensors().into_iter().map(|(_, t)| t).collect();
        ts.extend(sgd.buffers.iter().map(|b| b.shallow_clone()));
        ts.extend(extra.iter().map(|t| t.shallow_clone()));
        let ts: Vec<Tensor> = ts.iter().map(|t| t.detach()).collect();
        pg.broadcast_all(&ts, 0)
            .context("broadcasting the initial weights from rank 0")
    }

    /// Torch seed of this worker for a stream seeded `base` in one process: rank 0 keeps it,
    /// rank r > 0 gets an independent one. Used for validation and the overfitting check
    /// (sharded PGD whose random starts differ per worker); the training epoch seeds every
    /// worker with `base` itself and takes its rows of each draw ([`Ddp::draw_scope`]).
    pub fn torch_seed(&self, base: u64) -> i64 {
        if self.rank == 0 {
            base as i64
        } else {
            super::derive_seed(base, self.rank as u64, 0x5EED) as i64
        }
    }

    /// This worker's rows of a global batch `(x, y)` of `m` images and `m`; None when `m` is
    /// smaller than the world size (then every worker skips the batch).
    pub fn shard(&self, x: Tensor, y: Tensor) -> Option<(Tensor, Tensor, i64)> {
        let m = y.size()[0];
        if self.pg.is_none() {
            return Some((x, y, m));
        }
        let (a, b) = shard_range(m as usize, self.rank, self.world_size);
        if (m as usize) < self.world_size {
            return None;
        }
        let n = (b - a) as i64;
        Some((x.narrow(0, a as i64, n), y.narrow(0, a as i64, n), m))
    }

    /// While alive (one training step), per-row random draws (attack starts, random targets,
    /// mixup partners) are this worker's rows of the draw one process makes for the whole
    /// global batch `(x, y)` ([`crate::attack::draw`]; every worker's torch generator seeded like
    /// the single process's at the epoch's start): random starts equal one process's number
    /// for number, at the cost of drawing global-batch-sized noise (`W` times the local draw,
    /// negligible next to the attack). None in one process (plain draws, bit for bit as before).
    pub fn draw_scope(&self, x: &Tensor, y: &Tensor) -> Option<crate::attack::draw::RowsScope> {
        self.pg.as_ref()?;
        let m = y.size()[0] as usize;
        let (a, b) = shard_range(m, self.rank, self.world_size);
        Some(crate::attack::draw::rows_scope(
            x,
            y,
            a as i64,
            (b - a) as i64,
            self.rank,
            self.world_size,
        ))
    }

    /// This worker's contiguous share of `d` (validation).
    pub fn shard_dataset(&self, d: &Dataset) -> Dataset {
        if self.pg.is_none() {
            return d.take(d.len());
        }
        let (a, b) = shard_range(d.len(), self.rank, self.world_size);
        d.slice(a, b - a)
    }

    /// Replace every defined tensor of `grads` (this worker's gradients of its `local` images'
    /// mean loss) by the gradient of the global batch's (`global` images) mean loss:
    /// `sum_r (local_r / global) g_r`.
    pub fn average_gradients(&self, grads: &[Tensor], local: i64, global: i64) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        // A sync-BatchNorm collective of this step's forward or backward that failed.
        pg.take_sync_error()?;
        let grads: Vec<Tensor> = grads
            .iter()
            .filter(|g| g.defined())
            .map(|g| g.shallow_clone())
            .collect();
        tch::no_grad(|| {
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(local as f64 / global as f64);
            }
        });
        pg.allreduce_sum_all(&grads)
            .context("all-reducing the gradients")
    }

    /// [`Ddp::average_gradients`] of the `.grad` of `params` (those that have one).
    pub fn average_param_grads(&self, params: &[Tensor], local: i64, global: i64) -> Result<()> {
        if self.pg.is_none() {
            return Ok(());
        }
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        let before = self.pg.as_ref().map(|pg| pg.stats()).unwrap_or_default();
        self.average_gradients(&grads, local, global)?;
        let after = self.pg.as_ref().map(|pg| pg.stats()).unwrap_or_default();
        let (n, b, t) = self.grad_comm.get();
        self.grad_comm.set((
            n + 1,
            b + after.bytes - before.bytes,
            t + after.seconds - before.seconds,
        ));
        Ok(())
    }

    /// The end-of-run line on communication: all collectives, and the gradient all-reduce per
    /// optimiser step (bytes and milliseconds).
    pub fn comm_report(&self) -> Option<String> {
        let s = self.pg.as_ref()?.stats();
        let (n, b, t) = self.grad_comm.get();
        let per = |x: f64| x / n.max(1) as f64;
        Some(format!(
            "distributed: {} collectives, {:.1} MB, {:.2} s in communication; gradient \
             all-reduce per step: {:.3} MB, {:.1} ms ({n} steps)",
            s.calls,
            s.bytes as f64 / 1e6,
            s.seconds,
            per(b as f64) / 1e6,
            per(t) * 1e3
        ))
    }

    /// Sums of `values` over the workers (metrics, counts).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let Some(pg) = &self.pg else {
            return Ok(values.to_vec());
        };
        let t = Tensor::from_slice(values);
        pg.allreduce_sum(&t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Average every floating buffer (BatchNorm running statistics) over the workers.
    pub fn average_buffers(&self, net: &Network) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        let bufs: Vec<Tensor> = net
            .named_tensors()
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| {
                !t.requires_grad()
                    && matches!(
                        t.kind(),
                        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
                    )
            })
            .collect();
        if bufs.is_empty() {
            return Ok(());
        }
        pg.allreduce_sum_all(&bufs)
            .context("averaging the BatchNorm running statistics")?;
        tch::no_grad(|| {
            for b in &bufs {
                let mut b = b.shallow_clone();
                let _ = b.g_div_scalar_(self.world_size as f64);
            }
        });
        Ok(())
    }
}

/// Rows `[floor(r n / w), floor((r+1) n / w))` of `n`: worker `r`'s share (sizes differ by at
/// most one; together every row once).
pub fn shard_range(n: usize, r: usize, w: usize) -> (usize, usize) {
    (r * n / w, (r + 1) * n / w)
}

/// `--resume` must use the world size the run was trained with (the sidecar's recipe;
/// absent = 1).
pub fn check_world_size(last_file: &Path, world_size: usize) -> Result<()> {
    // An unreadable sidecar is left to the resume's verification (and its fallback).
    let Ok(side) = checkpoint::read_sidecar(last_file) else {
        return Ok(());
    };
    let saved = side
        .recipe
        .get("distributed")
        .and_then(|d| d.get("world_size"))
        .and_then(|w| w.as_u64())
        .unwrap_or(1) as usize;
    if saved != world_size {
        bail!(
            "--resume: {} was trained with {saved} worker(s) but {world_size} were launched: \
             resume with the same world size (the batch split, hence the run, depends on it)",
            last_file.display()
        );
    }
    Ok(())
}
