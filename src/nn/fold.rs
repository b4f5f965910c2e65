//! Eval-mode BatchNorm folded into the convolution before it, for attacks and evaluation.
//!
//! In eval mode `BN(z) = s * z + t` per channel with `s = gamma / sqrt(var + eps)` and
//! `t = beta - mu * s`, so `BN(conv_{W,b}(x)) = conv_{W',b'}(x)` with `W' = s * W` (per output
//! channel) and `b' = s * b + t`. The folded network computes the same function (to float
//! rounding) with one pass over each activation fewer in the forward and in the backward, which
//! is where the attack inner loops spend a large part of their time on small models.
//!
//! Folding is on by default and applies only where it is exact: eval-mode BatchNorm (or no
//! norm) directly after a convolution, one route for the whole batch, no statistics probe or
//! feature tap active. Everything else runs the ordinary forward. The folded weights are
//! rebuilt from the live parameters on every call (a few tiny ops), so they never go stale
//! while training moves the weights. `compute.fold_bn = false` (`--no-fold-bn`) turns it off.

use crate::nn::norm::{Ctx, EvalAffine, Norm};
use tch::Tensor;

/// A convolution with the eval-mode norm after it folded in: `conv_{W',b'}`.
pub struct FoldedConv {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
}

impl FoldedConv {
    /// Fold `norm` (under `ctx`) into the convolution `(ws, bs)`; `None` when the norm cannot
    /// be folded exactly (see [`Norm::eval_affine`]).
    pub fn new(
        ws: &Tensor,
        bs: Option<&Tensor>,
        norm: &Norm,
        ctx: &Ctx,
        stride: i64,
        padding: i64,
    ) -> Option<FoldedConv> {
        let (weight, bias) = match norm.eval_affine(ctx)? {
            EvalAffine::Identity => (ws.shallow_clone(), bs.map(Tensor::shallow_clone)),
            EvalAffine::Affine(s, t) => {
                let bias = match bs {
                    Some(b) => b * &s + t,
                    None => t,
                };
                (ws * s.view([-1, 1, 1, 1]), Some(bias))
            }
        };
        Some(FoldedConv {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// `conv_{W',b'}(x)`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}
