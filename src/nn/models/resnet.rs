//! torchvision-style ResNet with the CIFAR stem (conv1 3x3 stride 1, bn1, ReLU, no max-pool),
//! stages `layer1..layer4` (64, 128, 256, 512; strides 1, 2, 2, 2), global average pool, `fc`.
//! BasicBlock for depths 10/18/34, Bottleneck (expansion 4, stride on the 3x3 conv as
//! torchvision v1.5) for 50/101/152. Names: `layer2.0.conv1`, `layer2.0.bn1`, ...,
//! `layer2.0.downsample.0` (conv1x1), `layer2.0.downsample.1` (norm).

use super::{conv_init, global_avg_pool, ArchSpec, Forward, Head, Model, HE_FAN_OUT};
use crate::nn::norm::{Ctx, Norm, NormSpec};
use tch::nn::{self, Module};
use tch::Tensor;

/// Depths accepted by [`ResNet::new`].
pub const RESNET_DEPTHS: &[i64] = &[10, 18, 34, 50, 101, 152];

/// Bottleneck (true) or BasicBlock (false), and blocks per stage, for a supported depth.
fn plan(depth: i64) -> Option<(bool, [usize; 4])> {
    Some(match depth {
        10 => (false, [1, 1, 1, 1]),
        18 => (false, [2, 2, 2, 2]),
        34 => (false, [3, 4, 6, 3]),
        50 => (true, [3, 4, 6, 3]),
        101 => (true, [3, 4, 23, 3]),
        152 => (true, [3, 8, 36, 3]),
        _ => return None,
    })
}

/// A BasicBlock (two convs) or Bottleneck (three convs): conv/norm pairs with ReLU between,
/// plus the identity or `downsample` shortcut, then ReLU.
struct Block {
    prefix: String,
    convs: Vec<nn::Conv2D>,
    norms: Vec<Norm>,
    downsample: Option<(nn::Conv2D, Norm)>,
}

impl Block {
    fn new(
        p: &nn::Path,
        prefix: String,
        cin: i64,
        planes: i64,
        stride: i64,
        bottleneck: bool,
        ns: NormSpec,
    ) -> Block {
        // (cin, cout, kernel, stride) of each conv.
        let layout = if bottleneck {
            vec![
                (cin, planes, 1, 1),
                (planes, planes, 3, stride),
                (planes, planes * 4, 1, 1),
            ]
        } else {
            vec![(cin, planes, 3, stride), (planes, planes, 3, 1)]
        };
        let cout = layout.last().unwrap().1;
        let (mut convs, mut norms) = (vec![], vec![]);
        for (i, &(ci, co, k, s)) in layout.iter().enumerate() {
            convs.push(conv_init(
                p / format!("conv{}", i + 1),
                ci,
                co,
                k,
                s,
                HE_FAN_OUT,
            ));
            norms.push(Norm::new(&(p / format!("bn{}", i + 1)), co, ns));
        }
        let downsample = (stride != 1 || cin != cout).then(|| {
            let d = p / "downsample";
            (
                conv_init(&d / 0, cin, cout, 1, stride, HE_FAN_OUT),
                Norm::new(&(&d / 1), cout, ns),
            )
        });
        Block {
            prefix,
            convs,
            norms,
            downsample,
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut h = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, n)) in self.convs.iter().zip(&self.norms).enumerate() {
            h = n.forward(&c.forward(&h), ctx);
            if i < last {
                h = h.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some((c, n)) => n.forward(&c.forward(x), ctx),
            None => x.shallow_clone(),
        };
        (h + shortcut).relu()
    }

    fn norms(&self) -> impl Iterator<Item = (String, &Norm)> {
        let main = self
            .norms
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{}.bn{}", self.prefix, i + 1), n));
        let down = self
            .downsample
            .iter()
            .map(|(_, n)| (format!("{}.downsample.1", self.prefix), n));
        main.chain(down)
    }
}

/// CIFAR-stem ResNet of a supported depth (see [`RESNET_DEPTHS`]).
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: Norm,
    stages: Vec<Vec<Block>>,
    fc: Head,
}

impl ResNet {
    pub fn new(p: &nn::Path, spec: &ArchSpec, depth: i64) -> anyhow::Result<ResNet> {
        let (bottleneck, blocks) = plan(depth).ok_or_else(|| {
            anyhow::anyhow!("unsupported ResNet depth {depth}: expected one of {RESNET_DEPTHS:?}")
        })?;
        let conv1 = conv_init(p / "conv1", spec.in_channels, 64, 3, 1, HE_FAN_OUT);
        let bn1 = Norm::new(&(p / "bn1"), 64, spec.norm);
        let mut cin = 64;
        let mut stages = vec![];
        for (s, (&n, planes)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
            let name = format!("layer{}", s + 1);
            let mut stage = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let q = p / name.as_str() / i;
                stage.push(Block::new(
                    &q,
                    format!("{name}.{i}"),
                    cin,
                    planes,
                    stride,
                    bottleneck,
                    spec.norm,
                ));
                cin = if bottleneck { planes * 4 } else { planes };
            }
            stages.push(stage);
        }
        let fc = Head::new(p / "fc", cin, spec.num_classes, spec.heads, None);
        Ok(ResNet {
            conv1,
            bn1,
            stages,
            fc,
        })
    }
}

impl Model for ResNet {
    fn forward_stages(&self, x: &Tensor, ctx: &Ctx) -> Forward {
        let mut h = self.bn1.forward(&self.conv1.forward(x), ctx).relu();
        let mut stages = Vec::with_capacity(4);
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
        let blocks = self.stages.iter().flatten().flat_map(Block::norms);
        std::iter::once(("bn1".to_string(), &self.bn1))
            .chain(blocks)
            .collect()
    }
}
