//! What every objective's step returns: [`StepOutput`] (a batch's loss and what it saw) and
//! the accuracy hits in it. Below the objectives (`objectives/`), which build it; each
//! objective's own loss is in its file there, and the clean/adversarial forward pair of the
//! objectives with `[train.hybrid]` routes and passes is in `objectives/hybrid.rs`.

use crate::attack::correct;
use tch::{Kind, Tensor};

/// The loss of one batch and what it saw.
pub struct StepOutput {
    pub loss: Tensor,
    /// (correct, rows) on clean inputs, when measured.
    pub clean: Option<(Tensor, i64)>,
    /// (correct, rows) on adversarial inputs, when any.
    pub adv: Option<(Tensor, i64)>,
}

/// Correct predictions of `logits` against `y`, summed (no gradient).
pub fn hits(logits: &Tensor, y: &Tensor) -> Tensor {
    tch::no_grad(|| correct(logits, y).sum(Kind::Float))
}
