//! `small-cnn` for 1x28x28 inputs: three conv3x3 + norm + ReLU blocks (32, 64/2, 128/2),
//! global average pooling and a linear classifier. Names: conv1, bn1, conv2, bn2, conv3, bn3, fc.
//! PyTorch default init; convolutions carry a bias only when the norm is `none`.

use super::{global_avg_pool, ArchSpec, Forward, Head, Model, TORCH_DEFAULT};
use crate::nn::fold::FoldedConv;
use crate::nn::norm::{Ctx, Norm, NormKind};
use tch::{nn, nn::Module, Tensor};

pub struct SmallCnn {
    convs: Vec<nn::Conv2D>,
    strides: Vec<i64>,
    norms: Vec<Norm>,
    fc: Head,
}

impl SmallCnn {
    pub fn new(p: &nn::Path, spec: &ArchSpec) -> SmallCnn {
        let bias = spec.norm.kind == NormKind::None;
        let plan = [(spec.in_channels, 32, 1), (32, 64, 2), (64, 128, 2)];
        let mut convs = vec![];
        let mut norms = vec![];
        let strides = plan.iter().map(|p| p.2).collect();
        for (i, &(cin, cout, stride)) in plan.iter().enumerate() {
            let cfg = nn::ConvConfig {
                stride,
                padding: 1,
                bias,
                ws_init: TORCH_DEFAULT,
                ..Default::default()
            };
            convs.push(nn::conv2d(p / format!("conv{}", i + 1), cin, cout, 3, cfg));
            norms.push(Norm::new(&(p / format!("bn{}", i + 1)), cout, spec.norm));
        }
        let fc = Head::new(p / "fc", 128, spec.num_classes, spec.heads, None);
        SmallCnn {
            convs,
            strides,
            norms,
            fc,
        }
    }
}

impl Model for SmallCnn {
    fn forward_stages(&self, x: &Tensor, ctx: &Ctx) -> Forward {
        let mut h = x.shallow_clone();
        let mut stages = Vec::with_capacity(3);
        for (c, n) in self.convs.iter().zip(&self.norms) {
            h = n.forward(&c.forward(&h), ctx).relu();
            stages.push(h.shallow_clone());
        }
        let logits = self.fc.forward(&global_avg_pool(&h), ctx);
        Forward { logits, stages }
    }

    fn norms(&self) -> Vec<(String, &Norm)> {
        self.norms
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("bn{}", i + 1), n))
            .collect()
    }

    fn forward_folded(&self, x: &Tensor, ctx: &Ctx) -> Option<Tensor> {
        let mut h = x.shallow_clone();
        for ((c, n), &stride) in self.convs.iter().zip(&self.norms).zip(&self.strides) {
            let folded = FoldedConv::new(&c.ws, c.bs.as_ref(), n, ctx, stride, 1)?;
            h = folded.forward(&h).relu();
        }
        Some(self.fc.forward(&global_avg_pool(&h), ctx))
    }
}
