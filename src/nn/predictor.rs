//! ARAT's predictor heads (Waseda et al., following SimSiam): on the adversarial side only,
//! `h(z) = Linear(C -> C/4, no bias) -> BatchNorm1d -> ReLU -> Linear(C/4 -> C)` applied to
//! `z = GAP(ReLU(feature))` of a hooked feature. Names: `predictor.<key>.fc1.weight`,
//! `predictor.<key>.bn.*`, `predictor.<key>.fc2.{weight,bias}` with `<key>` the stage index or
//! the norm layer's name with dots as underscores (`predictor.layer4_0_bn1.fc1.weight`).

use super::hook::Hook;
use super::models::TORCH_DEFAULT;
use super::norm::{Ctx, Mode, Norm, NormSpec, Route};
use tch::nn::{self, Module};
use tch::Tensor;

pub struct Predictor {
    pub hook: Hook,
    fc1: nn::Linear,
    bn: Norm,
    fc2: nn::Linear,
}

impl Predictor {
    /// A predictor for the feature at `hook` with `c` channels (hidden width max(c/4, 1)).
    pub fn new(p: &nn::Path, hook: Hook, c: i64) -> Predictor {
        let q = p / "predictor" / hook.key();
        let hidden = (c / 4).max(1);
        let cfg = |bias| nn::LinearConfig {
            ws_init: TORCH_DEFAULT,
            bs_init: None,
            bias,
        };
        Predictor {
            hook,
            fc1: nn::linear(&q / "fc1", c, hidden, cfg(false)),
            bn: Norm::new(&(&q / "bn"), hidden, NormSpec::default()),
            fc2: nn::linear(&q / "fc2", hidden, c, cfg(true)),
        }
    }

    /// `h(z)` for pooled features `z` [N, C]; the BN runs in `mode`.
    pub fn forward(&self, z: &Tensor, mode: Mode) -> Tensor {
        let h = self.fc1.forward(z);
        let h = self
            .bn
            .forward(&h, &Ctx::new(Route::default(), mode))
            .relu();
        self.fc2.forward(&h)
    }
}
