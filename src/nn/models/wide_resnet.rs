//! WideResNet-depth-width as in TRADES / RobustBench: `conv1` 3x3 (16), stages
//! `block1..block3` of n = (depth-4)/6 pre-activation BasicBlocks (16k, 32k, 64k channels;
//! strides 1, 2, 2), final `bn1` + ReLU, global average pool, `fc`. Dropout 0.
//! Names: `block1.layer.0.bn1`, `.conv1`, `.bn2`, `.conv2`, `.convShortcut` (when in != out).
//! Init as the reference: convs He-normal over fan-out, fc bias 0.

use super::{conv_init, Head, HE_FAN_OUT};
use super::{global_avg_pool, ArchSpec, Forward, Model};
use crate::nn::norm::{Ctx, Norm, NormSpec};
use tch::{nn, nn::Module, Tensor};

/// RobustBench `BasicBlock`. With in == out: `x + conv2(relu(bn2(conv1(relu(bn1(x))))))`;
/// otherwise `a = relu(bn1(x))` feeds both the conv path and `convShortcut(a)`.
struct BasicBlock {
    prefix: String,
    bn1: Norm,
    conv1: nn::Conv2D,
    bn2: Norm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
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
        BasicBlock {
            prefix,
            bn1: Norm::new(&(p / "bn1"), cin, ns),
            conv1: conv_init(p / "conv1", cin, cout, 3, stride, HE_FAN_OUT),
            bn2: Norm::new(&(p / "bn2"), cout, ns),
            conv2: conv_init(p / "conv2", cout, cout, 3, 1, HE_FAN_OUT),
            conv_shortcut: (cin != cout)
                .then(|| conv_init(p / "convShortcut", cin, cout, 1, stride, HE_FAN_OUT)),
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let a = self.bn1.forward(x, ctx).relu();
        let h = self.bn2.forward(&self.conv1.forward(&a), ctx).relu();
        let h = self.conv2.forward(&h);
        match &self.conv_shortcut {
            Some(c) => c.forward(&a) + h,
            None => x + h,
        }
    }
}

/// WideResNet-`spec.depth` (default 28) - `spec.width` (default 10).
pub struct WideResNet {
    conv1: nn::Conv2D,
    stages: Vec<Vec<BasicBlock>>,
    bn1: Norm,
    fc: Head,
}

impl WideResNet {
    pub fn new(p: &nn::Path, spec: &ArchSpec) -> anyhow::Result<WideResNet> {
        let depth = spec.depth.unwrap_or(28);
        let widen = spec.width.unwrap_or(10);
        anyhow::ensure!(
            depth >= 10 && (depth - 4) % 6 == 0,
            "WideResNet depth must be 6n+4 with n >= 1 (e.g. 16, 28, 34, 70), got {depth}"
        );
        anyhow::ensure!(widen >= 1, "WideResNet width must be >= 1, got {widen}");
        let n = ((depth - 4) / 6) as usize;
        let conv1 = conv_init(p / "conv1", spec.in_channels, 16, 3, 1, HE_FAN_OUT);
        let mut cin = 16;
        let mut stages = vec![];
        for (s, (cout, stride)) in [(16 * widen, 1), (32 * widen, 2), (64 * widen, 2)]
            .into_iter()
            .enumerate()
        {
            let name = format!("block{}", s + 1);
            let mut stage = Vec::with_capacity(n);
            for i in 0..n {
                let q = p / name.as_str() / "layer" / i;
                let st = if i == 0 { stride } else { 1 };
                stage.push(BasicBlock::new(
                    &q,
                    format!("{name}.layer.{i}"),
                    cin,
                    cout,
                    st,
                    spec.norm,
                ));
                cin = cout;
            }
            stages.push(stage);
        }
        let bn1 = Norm::new(&(p / "bn1"), cin, spec.norm);
        let fc = Head::new(
            p / "fc",
            cin,
            spec.num_classes,
            spec.heads,
            Some(nn::Init::Const(0.0)),
        );
        Ok(WideResNet {
            conv1,
            stages,
            bn1,
            fc,
        })
    }
}

impl Model for WideResNet {
    /// Stage outputs are taken after each `blockX`, i.e. before the final `bn1`.
    fn forward_stages(&self, x: &Tensor, ctx: &Ctx) -> Forward {
        let mut h = self.conv1.forward(x);
        let mut stages = Vec::with_capacity(3);
        for stage in &self.stages {
            for b in stage {
                h = b.forward(&h, ctx);
            }
            stages.push(h.shallow_clone());
        }
        let h = self.bn1.forward(&h, ctx).relu();
        let logits = self.fc.forward(&global_avg_pool(&h), ctx);
        Forward { logits, stages }
    }

    fn norms(&self) -> Vec<(String, &Norm)> {
        let mut out = vec![];
        for b in self.stages.iter().flatten() {
            out.push((format!("{}.bn1", b.prefix), &b.bn1));
            out.push((format!("{}.bn2", b.prefix), &b.bn2));
        }
        out.push(("bn1".to_string(), &self.bn1));
        out
    }
}
