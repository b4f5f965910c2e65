//! The CIFAR ResNet of He et al. 2016 ("Deep Residual Learning for Image Recognition", section
//! 4.2): depth 6n+2 = `conv1` 3x3 (16) + `bn1` + ReLU, stages `layer1..layer3` of n BasicBlocks
//! (16, 32, 64 channels; strides 1, 2, 2), global average pool, `fc`. Shortcuts are the paper's
//! option A: identity, and where the shape changes `x[:, :, ::2, ::2]` with zero channels padded
//! on both sides (no parameters), as in the widely used PyTorch port (akamaster/pytorch_resnet_cifar10,
//! whose `linear` head the state-dict import maps to `fc`). Depths 20, 32, 44, 56, 110 have
//! 0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters (the paper's table 6).
//! Names: `layer2.0.conv1`, `layer2.0.bn1`, `layer2.0.conv2`, `layer2.0.bn2`.
//! Init: convs He-normal over fan-out, `fc` PyTorch's default.

use super::{conv_init, global_avg_pool, ArchSpec, Forward, Head, Model, HE_FAN_OUT};
use crate::nn::norm::{Ctx, Norm, NormSpec};
use tch::nn::{self, Module};
use tch::Tensor;

/// Blocks per stage n of a depth 6n+2, or an error naming the rule.
pub fn blocks_per_stage(depth: i64) -> anyhow::Result<usize> {
    anyhow::ensure!(
        depth >= 8 && (depth - 2) % 6 == 0,
        "resnet-cifar depth must be 6n+2 with n >= 1 (e.g. 8, 20, 32, 44, 56, 110), got {depth}"
    );
    Ok(((depth - 2) / 6) as usize)
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, shortcut = option A.
struct BasicBlock {
    prefix: String,
    conv1: nn::Conv2D,
    bn1: Norm,
    conv2: nn::Conv2D,
    bn2: Norm,
    /// Spatial stride and (front, back) zero channels of the option-A shortcut.
    stride: i64,
    pad: (i64, i64),
}

impl BasicBlock {
    fn new(
        p: &nn::Path,
        prefix: String,
        cin: i64,
        cout: i64,
        stride: i64,
        ns: NormSpec,
    ) -> BasicBlock {
        let extra = cout - cin;
        BasicBlock {
            prefix,
            conv1: conv_init(p / "conv1", cin, cout, 3, stride, HE_FAN_OUT),
            bn1: Norm::new(&(p / "bn1"), cout, ns),
            conv2: conv_init(p / "conv2", cout, cout, 3, 1, HE_FAN_OUT),
            bn2: Norm::new(&(p / "bn2"), cout, ns),
            stride,
            pad: (extra / 2, extra - extra / 2),
        }
    }

    fn shortcut(&self, x: &Tensor) -> Tensor {
        if self.stride == 1 && self.pad == (0, 0) {
            return x.shallow_clone();
        }
        let s = self.stride;
        let h = x.slice(2, 0, None, s).slice(3, 0, None, s);
        h.constant_pad_nd([0, 0, 0, 0, self.pad.0, self.pad.1])
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let h = self.bn1.forward(&self.conv1.forward(x), ctx).relu();
        let h = self.bn2.forward(&self.conv2.forward(&h), ctx);
        (h + self.shortcut(x)).relu()
    }
}

/// ResNet-`spec.depth` (default 20) for 32x32 (or 28x28) images.
pub struct ResNetCifar {
    conv1: nn::Conv2D,
    bn1: Norm,
    stages: Vec<Vec<BasicBlock>>,
    fc: Head,
}

impl ResNetCifar {
    pub fn new(p: &nn::Path, spec: &ArchSpec) -> anyhow::Result<ResNetCifar> {
        let n = blocks_per_stage(spec.depth.unwrap_or(20))?;
        let conv1 = conv_init(p / "conv1", spec.in_channels, 16, 3, 1, HE_FAN_OUT);
        let bn1 = Norm::new(&(p / "bn1"), 16, spec.norm);
        let mut cin = 16;
        let mut stages = vec![];
        for (s, cout) in [16, 32, 64].into_iter().enumerate() {
            let name = format!("layer{}", s + 1);
            let stage = (0..n)
                .map(|i| {
                    let stride = if s > 0 && i == 0 { 2 } else { 1 };
                    let b = BasicBlock::new(
                        &(p / name.as_str() / i),
                        format!("{name}.{i}"),
                        cin,
                        cout,
                        stride,
                        spec.norm,
                    );
                    cin = cout;
                    b
                })
                .collect();
            stages.push(stage);
        }
        let fc = Head::new(p / "fc", cin, spec.num_classes, spec.heads, None);
        Ok(ResNetCifar {
            conv1,
            bn1,
            stages,
            fc,
        })
    }
}

impl Model for ResNetCifar {
    /// Stage outputs are taken after each `layerX`.
    fn forward_stages(&self, x: &Tensor, ctx: &Ctx) -> Forward {
        let mut h = self.bn1.forward(&self.conv1.forward(x), ctx).relu();
        let mut stages = Vec::with_capacity(3);
        for stage in &self.stages {
            for b in stage {
                h = b.forward(&h, ctx);
            }
            stages.push(h.shallow_clone());
        }
        let logits = self.fc.forward(&global_avg_pool(&h), ctx);
        Forward { logits, stages }
    }

    fn norms(&self) -> Vec<(String, &Norm)> {
        let mut out = vec![("bn1".to_string(), &self.bn1)];
        for b in self.stages.iter().flatten() {
            out.push((format!("{}.bn1", b.prefix), &b.bn1));
            out.push((format!("{}.bn2", b.prefix), &b.bn2));
        }
        out
    }
}

/// Multiply-accumulates of one forward of one `in_channels x h x w` image through
/// ResNet-`depth` (convolutions and `fc`; norms, ReLUs, additions and pooling excluded, the
/// usual FLOP count convention, FLOPs = 2 MACs):
/// `sum over convs of cout * cin * 9 * h_out * w_out + 64 * num_classes`.
pub fn macs_per_image(
    depth: i64,
    in_channels: i64,
    hw: [i64; 2],
    num_classes: i64,
) -> anyhow::Result<i64> {
    let n = blocks_per_stage(depth)? as i64;
    let out = |s: i64, stride: i64| (s + stride - 1) / stride;
    let (mut h, mut w) = (hw[0], hw[1]);
    let mut macs = 16 * in_channels * 9 * h * w;
    let mut cin = 16;
    for (k, cout) in [16i64, 32, 64].into_iter().enumerate() {
        for i in 0..n {
            let stride = if k > 0 && i == 0 { 2 } else { 1 };
            (h, w) = (out(h, stride), out(w, stride));
            macs += cout * cin * 9 * h * w + cout * cout * 9 * h * w;
            cin = cout;
        }
    }
    Ok(macs + 64 * num_classes)
}
