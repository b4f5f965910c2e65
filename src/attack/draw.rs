//! Per-row random draws (attack starts, random targets, mixup partners) that a data-parallel
//! worker shares with one process.
//!
//! In a data-parallel training step worker `r` of `W` holds rows `[a, a + n)` of a global batch
//! of `m` images. While a [`RowsScope`] is alive on the thread (the training loop opens one per
//! step, with every worker's torch generator seeded like the single process's), a draw for the
//! worker's `n` rows draws all `m` rows of the global batch, exactly as the single process
//! does (same shape, same strides, same generator state), and keeps rows `[a, a + n)`. So worker
//! `r`'s random starts are the single process's rows `[a, a + n)` number for number, and every
//! worker's generator stays in the single process's state for the next draw. The cost is one
//! element-wise fill of a global-batch-sized tensor per draw (`W` times the local one): next to
//! the attack's forward and backward passes, negligible.
//!
//! A draw of another row count `k` (the unpaired attacked subset of a hybrid batch, which is not
//! a contiguous slice of the single process's subset, so no draw can match it) takes block `r`
//! of `W c` drawn rows, `c = max(k, ceil(m / W))`: distinct rows for every worker, and the
//! generators stay alike when all workers draw the same `k`.
//!
//! Without a scope (one process, evaluation, validation, the overfitting check) every draw is
//! the plain `x.rand_like()` / `x.randn_like()` / `Tensor::rand`, bit for bit.

use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

/// This worker's place in the global batch while a [`RowsScope`] is alive.
struct Rows {
    /// Images in the global batch (`m`).
    global: i64,
    /// This worker's first row (`a`) and row count (`n`).
    start: i64,
    rows: i64,
    rank: i64,
    world: i64,
    /// The global batch (images, labels), for draws that pick partner rows (mixup).
    batch: Option<(Tensor, Tensor)>,
}

thread_local! {
    static ROWS: RefCell<Option<Rows>> = const { RefCell::new(None) };
}

/// While alive, per-row draws on this thread are this worker's rows of the global batch's draw
/// (see the module doc). Opened by the data-parallel training loop around each step.
pub struct RowsScope {
    prev: Option<Rows>,
}

impl Drop for RowsScope {
    fn drop(&mut self) {
        let prev = self.prev.take();
        ROWS.with(|r| *r.borrow_mut() = prev);
    }
}

/// Open a [`RowsScope`]: this worker (`rank` of `world`) holds rows `[start, start + rows)` of the
/// global batch `(x, y)` (`global` = its row count).
pub fn rows_scope(
    x: &Tensor,
    y: &Tensor,
    start: i64,
    rows: i64,
    rank: usize,
    world: usize,
) -> RowsScope {
    let global = y.size()[0];
    let rows = Rows {
        global,
        start,
        rows,
        rank: rank as i64,
        world: world as i64,
        batch: Some((x.shallow_clone(), y.shallow_clone())),
    };
    RowsScope {
        prev: ROWS.with(|r| r.borrow_mut().replace(rows)),
    }
}

/// Under a scope: `fill(rows)` for the rows to draw, then this worker's `k` of them.
fn scoped(k: i64, fill: impl Fn(i64) -> Tensor) -> Option<Tensor> {
    ROWS.with(|r| {
        let r = r.borrow();
        let r = r.as_ref()?;
        if k == r.rows {
            Some(fill(r.global).narrow(0, r.start, k))
        } else {
            let c = k.max((r.global + r.world - 1) / r.world);
            Some(fill(r.world * c).narrow(0, r.rank * c, k))
        }
    })
}

/// An empty tensor like `x` with `n` rows, in `x`'s memory format as `empty_like` keeps it
/// (channels-last 4-d inputs stay channels-last; anything else contiguous).
fn empty_rows_like(x: &Tensor, n: i64) -> Tensor {
    let mut size = x.size();
    size[0] = n;
    let opts = (x.kind(), x.device());
    if size.len() == 4 && !x.is_contiguous() {
        let (c, h, w) = (size[1], size[2], size[3]);
        if x.stride() == [c * h * w, 1, w * c, c] {
            return Tensor::empty_strided(size.as_slice(), [c * h * w, 1, w * c, c], opts);
        }
    }
    Tensor::empty(size.as_slice(), opts)
}

/// `U[0, 1)` like `x` (`x.rand_like()`; under a [`RowsScope`] this worker's rows of the global
/// batch's draw).
pub fn rand_like(x: &Tensor) -> Tensor {
    scoped(x.size()[0], |n| empty_rows_like(x, n).uniform_(0.0, 1.0))
        .unwrap_or_else(|| x.rand_like())
}

/// `N(0, 1)` like `x` (`x.randn_like()`; under a [`RowsScope`] this worker's rows of the global
/// batch's draw).
pub fn randn_like(x: &Tensor) -> Tensor {
    scoped(x.size()[0], |n| empty_rows_like(x, n).normal_(0.0, 1.0))
        .unwrap_or_else(|| x.randn_like())
}

/// `U[0, 1)` of shape `size` (`Tensor::rand`; under a [`RowsScope`] this worker's rows).
pub fn rand(size: &[i64], opts: (Kind, Device)) -> Tensor {
    scoped(size[0], |n| {
        let mut s = size.to_vec();
        s[0] = n;
        Tensor::rand(s.as_slice(), opts)
    })
    .unwrap_or_else(|| Tensor::rand(size, opts))
}

/// A random permutation partner for each of the `n` rows of `(x, y)`: `(x[perm], y[perm],
/// perm)` with `perm = randperm(n)`. Under a [`RowsScope`] with `n` = this worker's rows, the
/// single process's `randperm(m)` of the global batch is drawn and this worker's rows of it
/// index the global batch (partners may be other workers' images), so the pairs are the single
/// process's; `perm` then holds global row indices.
pub fn partners(x: &Tensor, y: &Tensor) -> (Tensor, Tensor, Tensor) {
    let n = y.size()[0];
    let global = ROWS.with(|r| {
        let r = r.borrow();
        let r = r.as_ref().filter(|r| r.rows == n)?;
        let (gx, gy) = r.batch.as_ref()?;
        let perm = Tensor::randperm(r.global, (Kind::Int64, y.device())).narrow(0, r.start, n);
        Some((gx.index_select(0, &perm), gy.index_select(0, &perm), perm))
    });
    global.unwrap_or_else(|| {
        let perm = Tensor::randperm(n, (Kind::Int64, x.device()));
        (x.index_select(0, &perm), y.index_select(0, &perm), perm)
    })
}
