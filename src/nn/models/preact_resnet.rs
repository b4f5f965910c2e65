//! Pre-activation ResNet as used in the PGD-AT literature (`PreActResNet18` of Wong et al.,
//! "Fast is better than free", and Rice et al., "Overfitting in adversarially robust deep
//! learning"): conv1 3x3 (64), stages `layer1..layer4` of PreActBlocks (64, 128, 256, 512;
//! strides 1, 2, 2, 2), final `bn` + ReLU, global average pool, `linear`.
//! Names: `layer2.0.bn1`, `layer2.0.conv1`, `layer2.0.bn2`, `layer2.0.conv2`,
//! `layer2.0.shortcut.0` (conv1x1), `bn`, `linear`. Init: PyTorch defaults, as the reference.

use super::{conv_init, Head, TORCH_DEFAULT};
use super::{global_avg_pool, ArchSpec, Forward, Model};
use crate::nn::norm::{Ctx, Norm, NormSpec};
use tch::{nn, nn::Module, Tensor};

/// `out = relu(bn1(x))`; shortcut = `shortcut(out)` or `x`; `conv2(relu(bn2(conv1(out)))) + shortcut`.
struct PreActBlock {
    prefix: String,
    bn1: Norm,
    conv1: nn::Conv2D,
    bn2: Norm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl PreActBlock {
    fn new(
        p: &nn::Path,
        prefix: String,
        cin: i64,
        cout: i64,
        stride: i64,
        ns: NormSpec,
    ) -> PreActBlock {
        PreActBlock {
            prefix,
            bn1: Norm::new(&(p / "bn1"), cin, ns),
            conv1: conv_init(p / "conv1", cin, cout, 3, stride, TORCH_DEFAULT),
            bn2: Norm::new(&(p / "bn2"), cout, ns),
            conv2: conv_init(p / "conv2", cout, cout, 3, 1, TORCH_DEFAULT),
            shortcut: (stride != 1 || cin != cout)
                .then(|| conv_init(p / "shortcut" / 0, cin, cout, 1, stride, TORCH_DEFAULT)),
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let out = self.bn1.forward(x, ctx).relu();
        let shortcut = match &self.shortcut {
            Some(c) => c.forward(&out),
            None => x.shallow_clone(),
        };
        let h = self.conv1.forward(&out);
        self.conv2.forward(&self.bn2.forward(&h, ctx).relu()) + shortcut
    }
}

/// PreAct ResNet with `blocks[s]` PreActBlocks in stage `s` ([2, 2, 2, 2] = PreActResNet18).
pub struct PreActResNet {
    conv1: nn::Conv2D,
    stages: Vec<Vec<PreActBlock>>,
    bn: Norm,
    linear: Head,
}

impl PreActResNet {
    pub fn new(p: &nn::Path, spec: &ArchSpec, blocks: [usize; 4]) -> anyhow::Result<PreActResNet> {
        anyhow::ensure!(
            blocks.iter().all(|&n| n >= 1),
            "every PreActResNet stage needs >= 1 block, got {blocks:?}"
        );
        let conv1 = conv_init(p / "conv1", spec.in_channels, 64, 3, 1, TORCH_DEFAULT);
        let mut cin = 64;
        let mut stages = vec![];
        for (s, (&n, cout)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
            let name = format!("layer{}", s + 1);
            let mut stage = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let q = p / name.as_str() / i;
                stage.push(PreActBlock::new(
                    &q,
                    format!("{name}.{i}"),
                    cin,
                    cout,
                    stride,
                    spec.norm,
                ));
                cin = cout;
            }
            stages.push(stage);
        }
        let bn = Norm::new(&(p / "bn"), cin, spec.norm);
        let linear = Head::new(p / "linear", cin, spec.num_classes, spec.heads, None);
        Ok(PreActResNet {
            conv1,
            stages,
            bn,
            linear,
        })
    }
}

impl Model for PreActResNet {
    /// Stage outputs are taken after each `layerX`, i.e. before the final `bn`.
    fn forward_stages(&self, x: &Tensor, ctx: &Ctx) -> Forward {
        let mut h = self.conv1.forward(x);
        let mut stages = Vec::with_capacity(4);
        for stage in &self.stages {
            for b in stage {
                h = b.forward(&h, ctx);
            }
            stages.push(h.shallow_clone());
        }
        let h = self.bn.forward(&h, ctx).relu();
        let logits = self.linear.forward(&global_avg_pool(&h), ctx);
        Forward { logits, stages }
    }

    fn norms(&self) -> Vec<(String, &Norm)> {
        let mut out = vec![];
        for b in self.stages.iter().flatten() {
            out.push((format!("{}.bn1", b.prefix), &b.bn1));
            out.push((format!("{}.bn2", b.prefix), &b.bn2));
        }
        out.push(("bn".to_string(), &self.bn));
        out
    }
}
