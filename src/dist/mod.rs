//! torch.distributed (c10d) process groups through the C++ shim `src/shim/dist.cpp`: the launch
//! environment ([`LaunchEnv`]: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
//! as `torchrun`, Slurm's `srun` or a shell loop set them), the `[distributed]` recipe section
//! ([`DistSpec`]) and [`ProcessGroup`]: a TCPStore rendezvous and a Gloo (CPU) or NCCL (CUDA)
//! group with in-place sum all-reduce, broadcast and barrier, bucketed into flat buffers.
//!
//! Failures (a worker that died, a port in use, an unreachable master, a timeout) are errors,
//! never aborts: every collective waits at most the group's timeout.

mod ffi;

use crate::choice::value_enum_text;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// The collective library of a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// NCCL on CUDA devices, Gloo on the CPU.
    Auto,
    /// Gloo (CPU tensors; what torch.distributed uses on CPUs).
    Gloo,
    /// NCCL (CUDA tensors; compiled in when the wheel's NCCL headers were found).
    Nccl,
}
value_enum_text!(Backend => "distributed backend");

/// What `train.batch_size` means when several workers train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BatchSemantics {
    /// `train.batch_size` images per worker: the global batch is batch_size x world size
    /// (PyTorch DDP's convention).
    PerWorker,
    /// `train.batch_size` is the global batch, split across the workers (it must be divisible
    /// by the world size): the same optimisation as one process at any world size.
    Global,
}
value_enum_text!(BatchSemantics => "distributed batch semantics");

/// `[distributed]`: data-parallel training settings. Without the launch variables (`RANK`,
/// `WORLD_SIZE`, ...) the section changes nothing; in a launched run `world_size` is resolved
/// from them and stored in the run's recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistSpec {
    /// auto (NCCL for CUDA, Gloo for CPU) | gloo | nccl.
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// per-worker (default) | global: what `train.batch_size` counts.
    #[serde(default = "default_batch")]
    pub batch: BatchSemantics,
    /// Synchronised BatchNorm statistics across workers (PyTorch's SyncBatchNorm): every
    /// training forward that uses batch statistics normalises with the mean and variance of all
    /// workers' rows, per statistics set (per domain; the rows of each segment source), and the
    /// running statistics move towards the global mean and unbiased variance. Default false:
    /// per-worker statistics, as PyTorch DDP.
    #[serde(default)]
    pub sync_bn: bool,
    /// Seconds the rendezvous and every collective may wait (a dead worker fails the others
    /// after at most this long).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// The number of workers; resolved from `WORLD_SIZE` at start. When the recipe gives it,
    /// the launch must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
}

fn default_backend() -> Backend {
    Backend::Auto
}
fn default_batch() -> BatchSemantics {
    BatchSemantics::PerWorker
}
fn default_timeout() -> f64 {
    300.0
}

impl Default for DistSpec {
    fn default() -> Self {
        DistSpec {
            backend: default_backend(),
            batch: default_batch(),
            sync_bn: false,
            timeout_s: default_timeout(),
            world_size: None,
        }
    }
}

impl DistSpec {
    /// Whether the section is all defaults (then it is left out of the resolved recipe, so a
    /// single-process recipe reads as before).
    pub fn is_default(&self) -> bool {
        *self == DistSpec::default()
    }

    /// Value checks naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            bail!(
                "distributed.timeout_s = {}: expected a positive number of seconds",
                self.timeout_s
            );
        }
        if self.world_size == Some(0) {
            bail!("distributed.world_size = 0: expected at least 1");
        }
        Ok(())
    }

    /// The backend for `device` (auto: NCCL on CUDA, Gloo on the CPU); an error for a backend
    /// that cannot drive the device.
    pub fn backend_for(&self, device: Device) -> Result<Backend> {
        let cuda = matches!(device, Device::Cuda(_));
        match (self.backend, cuda) {
            (Backend::Auto, true) | (Backend::Nccl, true) => Ok(Backend::Nccl),
            (Backend::Auto, false) | (Backend::Gloo, _) => Ok(Backend::Gloo),
            (Backend::Nccl, false) => {
                bail!("distributed.backend = nccl needs a CUDA device (the run is on the CPU)")
            }
        }
    }

    /// Per-worker batch size for `batch_size` (the recipe's `train.batch_size`) on `world`
    /// workers, and the global batch.
    pub fn batches(&self, batch_size: usize, world: usize) -> Result<(usize, usize)> {
        match self.batch {
            BatchSemantics::PerWorker => Ok((batch_size, batch_size * world)),
            BatchSemantics::Global => {
                if batch_size % world != 0 || batch_size < world {
                    bail!(
                        "train.batch_size = {batch_size} with distributed.batch = \"global\": \
                         expected a multiple of the world size {world}"
                    );
                }
                Ok((batch_size / world, batch_size))
            }
        }
    }
}

/// The launch variables of one worker (torchrun, srun or a shell loop set them).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`): rank 0 connects
    /// as a client instead of binding the port.
    pub agent_store: bool,
}

impl LaunchEnv {
    /// The launch variables from the process environment; None when neither `RANK` nor
    /// `WORLD_SIZE` is set (a plain single-process run).
    pub fn from_env() -> Result<Option<LaunchEnv>> {
        LaunchEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// [`LaunchEnv::from_env`] over any variable lookup (tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>> {
        if get("RANK").is_none() && get("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let num = |k: &str, default: Option<&str>| -> Result<usize> {
            let v = get(k).or(default.map(String::from)).with_context(|| {
                format!("{k} is not set (a distributed launch needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)")
            })?;
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("{k}={v:?}: expected a non-negative integer"))
        };
        let rank = num("RANK", None)?;
        let world_size = num("WORLD_SIZE", None)?;
        if world_size == 0 || rank >= world_size {
            bail!("RANK={rank} WORLD_SIZE={world_size}: expected 0 <= RANK < WORLD_SIZE");
        }
        let local_rank = num("LOCAL_RANK", Some(&rank.to_string()))?;
        let master_addr = get("MASTER_ADDR")
            .filter(|a| !a.trim().is_empty())
            .context("MASTER_ADDR is not set (the address of rank 0's machine, e.g. 127.0.0.1)")?;
        let port = num("MASTER_PORT", None)?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("MASTER_PORT={port}: expected a port in 1..=65535"))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ok(Some(LaunchEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            agent_store,
        }))
    }
}

/// This process's `RANK` when launched as a worker (0 otherwise, also for malformed variables,
/// which the run itself reports).
pub fn launched_rank() -> usize {
    LaunchEnv::from_env().ok().flatten().map_or(0, |e| e.rank)
}

/// An error when this process was launched as one of several workers (`what` says why that
/// is refused); Ok in a plain run and with `WORLD_SIZE=1`.
pub fn refuse_launch(what: &str) -> Result<()> {
    if let Some(env) = LaunchEnv::from_env()? {
        if env.world_size > 1 {
            bail!(
                "{what}: this process is rank {} of WORLD_SIZE={} (launched by torchrun, srun or a \
                 loop); run it once, without the launch variables",
                env.rank,
                env.world_size
            );
        }
    }
    Ok(())
}

/// Bytes and seconds spent in collectives (benchmarks, the end-of-run log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CommStats {
    pub calls: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// A c10d process group of `world_size` workers (this one is `rank`).
pub struct ProcessGroup {
    raw: *mut std::ffi::c_void,
    pub rank: usize,
    pub world_size: usize,
    pub backend: Backend,
    pub timeout: Duration,
    what: String,
    stats: Cell<CommStats>,
    /// A failed sync-BatchNorm call (see [`ProcessGroup::take_sync_error`]).
    sync_error: Cell<Option<String>>,
}

/// Flat buffers of at most this many bytes per collective (PyTorch DDP's default bucket is 25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

impl ProcessGroup {
    /// Rendezvous at `MASTER_ADDR:MASTER_PORT` (rank 0 hosts the TCPStore unless torchrun's
    /// agent does) and create the `backend` group (Gloo or NCCL, not Auto).
    pub fn new(env: &LaunchEnv, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
        let code = match backend {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
            Backend::Auto => bail!("ProcessGroup::new: resolve the backend first"),
        };
        if backend == Backend::Nccl && !has_nccl() {
            bail!("distributed backend nccl: this build of advtrain has no NCCL (its headers were not found at build time); use distributed.backend = \"gloo\"");
        }
        let server = env.rank == 0 && !env.agent_store;
        let addr = std::ffi::CString::new(env.master_addr.clone())
            .context("MASTER_ADDR contains a NUL byte")?;
        let mut err = std::ptr::null_mut();
        let raw = unsafe {
            ffi::advtrain_dist_init(
                code,
                addr.as_ptr(),
                env.master_port as i32,
                env.rank as i32,
                env.world_size as i32,
                server as i32,
                timeout.as_millis().min(i64::MAX as u128) as std::ffi::c_long,
                &mut err,
            )
        };
        let where_ = format!(
            "{}:{} (rank {} of {}, {})",
            env.master_addr,
            env.master_port,
            env.rank,
            env.world_size,
            if server {
                "hosting the store"
            } else {
                "store client"
            }
        );
        if raw.is_null() {
            let msg = take_error(err);
            let hint = if server && msg.contains("ddress already in use") {
                ": the port is in use (another job, or a previous run still exiting): choose another MASTER_PORT"
            } else if !server {
                ": is MASTER_ADDR/MASTER_PORT right, and is rank 0 (or the torchrun agent) running?"
            } else {
                ""
            };
            bail!(
                "distributed rendezvous at {where_} failed within {:.0} s: {msg}{hint}",
                timeout.as_secs_f64()
            );
        }
        Ok(ProcessGroup {
            raw,
            rank: env.rank,
            world_size: env.world_size,
            backend,
            timeout,
            what: where_,
            stats: Cell::new(CommStats::default()),
            sync_error: Cell::new(None),
        })
    }

    /// Collective calls, bytes and seconds so far.
    pub fn stats(&self) -> CommStats {
        self.stats.get()
    }

    fn check(&self, rc: i32, err: *mut std::ffi::c_char, op: &str, t0: Instant) -> Result<()> {
        if rc != 0 {
            let msg = take_error(err);
            bail!(
                "distributed {op} failed on rank {} of {} after {:.1} s: {msg} (another worker \
                 probably exited or was killed, or did not reach the same step within the \
                 timeout of {:.0} s; group {})",
                self.rank,
                self.world_size,
                t0.elapsed().as_secs_f64(),
                self.timeout.as_secs_f64(),
                self.what
            );
        }
        Ok(())
    }

    fn count(&self, bytes: usize, t0: Instant) {
        let mut s = self.stats.get();
        s.calls += 1;
        s.bytes += bytes as u64;
        s.seconds += t0.elapsed().as_secs_f64();
        self.stats.set(s);
    }

    /// Sum a contiguous tensor in place across all workers.
    pub fn allreduce_sum(&self, t: &Tensor) -> Result<()> {
        anyhow::ensure!(t.is_contiguous(), "allreduce_sum: tensor is not contiguous");
        let t0 = Instant::now();
        let mut err = std::ptr::null_mut();
        let rc = unsafe { ffi::advtrain_dist_allreduce_sum(self.raw, t.as_ptr() as _, &mut err) };
        self.check(rc, err, "all-reduce", t0)?;
        self.count(bytes_of(t), t0);
        Ok(())
    }

    /// Overwrite a contiguous tensor with rank `root`'s values.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        anyhow::ensure!(t.is_contiguous(), "broadcast: tensor is not contiguous");
        let t0 = Instant::now();
        let mut err = std::ptr::null_mut();
        let rc = unsafe {
            ffi::advtrain_dist_broadcast(self.raw, t.as_ptr() as _, root as i32, &mut err)
        };
        self.check(rc, err, "broadcast", t0)?;
        self.count(bytes_of(t), t0);
        Ok(())
    }

    /// Wait until every worker arrives.
    pub fn barrier(&self) -> Result<()> {
        let t0 = Instant::now();
        let mut err = std::ptr::null_mut();
        let rc = unsafe { ffi::advtrain_dist_barrier(self.raw, &mut err) };
        self.check(rc, err, "barrier", t0)?;
        self.count(0, t0);
        Ok(())
    }

    /// Sum every tensor of `ts` in place across workers, packed by dtype and device into flat
    /// buffers of at most [`BUCKET_BYTES`] (one collective per bucket, as DDP's reducer).
    pub fn allreduce_sum_all(&self, ts: &[Tensor]) -> Result<()> {
        for_buckets(ts, |flat| self.allreduce_sum(flat))
    }

    /// Overwrite every tensor of `ts` with rank `root`'s values (bucketed like
    /// [`ProcessGroup::allreduce_sum_all`]).
    pub fn broadcast_all(&self, ts: &[Tensor], root: usize) -> Result<()> {
        for_buckets(ts, |flat| self.broadcast(flat, root))
    }
}

// Synchronised BatchNorm: the group that batch-statistics BatchNorm layers of this thread
// synchronise over, while a [`SyncBnScope`] is alive.
thread_local! {
    static SYNC_BN: Cell<*const ProcessGroup> = const { Cell::new(std::ptr::null()) };
    static SYNC_BN_SUMMED: Cell<bool> = const { Cell::new(false) };
}

/// While alive, synchronised BatchNorm backward passes on this thread differentiate a loss
/// summed over the rows (an attack's `d(sum_i loss_i)/dx`: every worker's rows weigh 1), not
/// a per-worker mean weighted by the worker's share of the batch (the training loss).
pub struct SummedLosses {
    prev: bool,
}

impl Drop for SummedLosses {
    fn drop(&mut self) {
        SYNC_BN_SUMMED.with(|c| c.set(self.prev));
    }
}

/// See [`SummedLosses`].
pub fn sync_bn_summed_losses() -> SummedLosses {
    SummedLosses {
        prev: SYNC_BN_SUMMED.with(|c| c.replace(true)),
    }
}

/// While alive, [`sync_bn_moments`] on this thread synchronises over its group (PyTorch's
/// `SyncBatchNorm` for every BatchNorm layer in a batch-statistics mode); dropping it restores
/// the previous state.
pub struct SyncBnScope<'a> {
    prev: *const ProcessGroup,
    _group: std::marker::PhantomData<&'a ProcessGroup>,
}

impl Drop for SyncBnScope<'_> {
    fn drop(&mut self) {
        SYNC_BN.with(|c| c.set(self.prev));
    }
}

/// Whether a [`SyncBnScope`] is active on this thread.
pub fn sync_bn_active() -> bool {
    SYNC_BN.with(|c| !c.get().is_null())
}

/// Per-channel mean and biased variance of `x` (`[N, C, ...]`) over the rows of every worker,
/// and the global row count per channel, when a [`SyncBnScope`] is active (None otherwise).
/// Differentiable: the backward all-reduces the gradients with respect to (mean, var) (the
/// shim's `SyncMoments`, PyTorch's `SyncBatchNorm`). Every worker must make the same calls in
/// the same order. A failed collective does not stop the forward (local statistics are used);
/// [`ProcessGroup::take_sync_error`] reports it at the end of the step.
pub fn sync_bn_moments(x: &Tensor) -> Option<(Tensor, Tensor, f64)> {
    let pg = SYNC_BN.with(|c| c.get());
    if pg.is_null() {
        return None;
    }
    // SAFETY: the scope that set the pointer borrows the group and restores it on drop.
    let pg = unsafe { &*pg };
    Some(pg.sync_moments(x))
}

impl ProcessGroup {
    /// Synchronise batch-statistics BatchNorm on this thread over this group until the scope
    /// is dropped.
    pub fn sync_bn_scope(&self) -> SyncBnScope<'_> {
        let prev = SYNC_BN.with(|c| c.replace(self as *const ProcessGroup));
        SyncBnScope {
            prev,
            _group: std::marker::PhantomData,
        }
    }

    /// See [`sync_bn_moments`]. Falls back to the local moments when the call itself fails
    /// (the error is kept for [`ProcessGroup::take_sync_error`]).
    fn sync_moments(&self, x: &Tensor) -> (Tensor, Tensor, f64) {
        let t0 = Instant::now();
        let mut err = std::ptr::null_mut();
        let (mut mean, mut var, mut count) = (std::ptr::null_mut(), std::ptr::null_mut(), 0.0f64);
        let rc = unsafe {
            ffi::advtrain_dist_sync_moments(
                self.raw,
                x.as_ptr() as _,
                SYNC_BN_SUMMED.with(|c| c.get()) as i32,
                &mut mean,
                &mut var,
                &mut count,
                &mut err,
            )
        };
        if rc != 0 {
            let msg = take_error(err);
            self.sync_error.replace(Some(msg));
            let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
            let _guard = tch::no_grad_guard();
            let m = x.mean_dim(dims.as_slice(), false, Kind::Float);
            let v = x
                .to_kind(Kind::Float)
                .var_dim(dims.as_slice(), false, false);
            let n = (x.numel() / x.size()[1].max(1) as usize) as f64;
            return (m, v, n);
        }
        let c = x.size()[1] as usize;
        self.count((2 * c + 1) * self.world_size * 8, t0);
        unsafe {
            (
                Tensor::from_ptr(mean as *mut torch_sys::C_tensor),
                Tensor::from_ptr(var as _),
                count,
            )
        }
    }

    /// The first failed synchronised-BatchNorm collective since the last call, as an error
    /// naming this worker (Ok when none failed). Checked after every training step.
    pub fn take_sync_error(&self) -> Result<()> {
        let raw = unsafe { ffi::advtrain_dist_sync_error(self.raw, 1) };
        let msg = if raw.is_null() {
            self.sync_error.take()
        } else {
            let _ = self.sync_error.take();
            Some(take_error(raw))
        };
        match msg {
            None => Ok(()),
            Some(msg) => bail!(
                "distributed sync BatchNorm failed on rank {} of {}: {msg} (another worker \
                 probably exited or was killed, or did not reach the same step within the \
                 timeout of {:.0} s; group {})",
                self.rank,
                self.world_size,
                self.timeout.as_secs_f64(),
                self.what
            ),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe { ffi::advtrain_dist_free(self.raw) }
    }
}

/// Whether this build has NCCL compiled in.
pub fn has_nccl() -> bool {
    unsafe { ffi::advtrain_dist_has_nccl() != 0 }
}

fn bytes_of(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

fn take_error(err: *mut std::ffi::c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    let s = unsafe { std::ffi::CStr::from_ptr(err) }
        .to_string_lossy()
        .trim()
        .to_string();
    unsafe { ffi::advtrain_dist_free_error(err) };
    s
}

/// Run `op` on flat buffers holding `ts` (grouped by kind and device, in order, at most
/// [`BUCKET_BYTES`] each), then copy the results back into `ts`.
fn for_buckets(ts: &[Tensor], mut op: impl FnMut(&Tensor) -> Result<()>) -> Result<()> {
    let mut groups: Vec<((Kind, Device), Vec<&Tensor>)> = vec![];
    for t in ts {
        let key = (t.kind(), t.device());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(t),
            None => groups.push((key, vec![t])),
        }
    }
    for (_, members) in groups {
        let mut bucket: Vec<&Tensor> = vec![];
        let mut bytes = 0;
        for t in members {
            let b = bytes_of(t);
            if bytes + b > BUCKET_BYTES && !bucket.is_empty() {
                run_bucket(&bucket, &mut op)?;
                bucket.clear();
                bytes = 0;
            }
            bucket.push(t);
            bytes += b;
        }
        run_bucket(&bucket, &mut op)?;
    }
    Ok(())
}

/// One flat buffer: pack, `op`, unpack.
fn run_bucket(bucket: &[&Tensor], op: &mut impl FnMut(&Tensor) -> Result<()>) -> Result<()> {
    if bucket.is_empty() {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    let parts: Vec<Tensor> = bucket.iter().map(|t| t.reshape([-1])).collect();
    let flat = Tensor::cat(&parts, 0);
    op(&flat)?;
    let mut at = 0;
    for t in bucket {
        let n = t.numel() as i64;
        let mut dst = (*t).shallow_clone();
        dst.copy_(&flat.narrow(0, at, n).view_as(t));
        at += n;
    }
    Ok(())
}
