//! ARAT's predictor heads (Waseda et al., following SimSiam): on the adversarial side only,
//! `h(z) = Linear(C -> C/4, no bias) -> BatchNorm1d -> ReLU -> Linear(C/4 -> C)` applied to
//! `z = GAP(ReLU(feature))` of a hooked stage. Names: `predictor.<stage>.fc1.weight`,
//! `predictor.<stage>.bn.*`, `predictor.<stage>.fc2.{weight,bias}`.

use super::models::TORCH_DEFAULT;
use super::norm::{Ctx, Mode, Norm, NormSpec, Route};
use tch::nn::{self, Module};
use tch::Tensor;

pub struct Predictor {
    pub stage: usize,
    fc1: nn::Linear,
    bn: Norm,
    fc2: nn::Linear,
}

impl Predictor {
    /// A predictor for stage `stage` with `c` channels (hidden width max(c/4, 1)).
    pub fn new(p: &nn::Path, stage: usize, c: i64) -> Predictor {
        let q = p / "predictor" / stage;
        let hidden = (c / 4).max(1);
        let cfg = |bias| nn::LinearConfig {
            ws_init: TORCH_DEFAULT,
            bs_init: None,
            bias,
        };
        Predictor {
            stage,
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
