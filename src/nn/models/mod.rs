//! Model registry. Every model is built on [`Norm`](crate::nn::Norm) and takes a [`Ctx`]
//! (route + mode) in its forward call. Parameter names follow PyTorch/torchvision
//! conventions so a checkpoint loads into the equivalent PyTorch module unchanged.

pub mod preact_resnet;
pub mod resnet;
pub mod resnet_cifar;
pub mod small_cnn;
pub mod wide_resnet;

use crate::nn::norm::{lerp, Ctx, Norm, NormSpec, ADV, CLEAN};
use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::Module;
use tch::nn::{self, Init};
use tch::Tensor;

/// Output of a forward pass: logits plus the outputs of each stage (for feature hooks).
pub struct Forward {
    pub logits: Tensor,
    /// Stage outputs in order (e.g. after each ResNet stage), before pooling.
    pub stages: Vec<Tensor>,
}

/// Stage outputs of one eval-mode, no-grad forward of a blank `[1, in_channels, h, w]` image
/// (their widths and spatial sizes).
pub fn probe_stages(
    model: &dyn Model,
    in_channels: i64,
    hw: [i64; 2],
    device: tch::Device,
) -> Vec<Tensor> {
    let probe = Tensor::zeros([1, in_channels, hw[0], hw[1]], (tch::Kind::Float, device));
    tch::no_grad(|| model.forward_stages(&probe, &Ctx::eval())).stages
}

/// A classifier whose every normalisation layer follows the route and mode of `ctx`.
pub trait Model: Send {
    /// Logits and stage outputs of `x` (images in [0,1], NCHW).
    fn forward_stages(&self, x: &Tensor, ctx: &Ctx) -> Forward;

    /// Logits of `x`.
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.forward_stages(x, ctx).logits
    }

    /// Every norm layer, in forward order, with its parameter-name prefix (e.g. `layer1.0.bn1`).
    fn norms(&self) -> Vec<(String, &Norm)>;

    /// Logits of `x` computed with every norm folded into the convolution before it
    /// ([`crate::nn::fold`]): the same function as `forward(x, ctx)` to float rounding, or
    /// `None` when this model or `ctx` does not allow exact folding (the default).
    fn forward_folded(&self, _x: &Tensor, _ctx: &Ctx) -> Option<Tensor> {
        None
    }
}

/// Architecture description: enough to rebuild the model (stored in every checkpoint sidecar).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// Registry name: small-cnn, preact-resnet18, resnet18, resnet, wide-resnet, resnet-cifar.
    pub name: String,
    pub num_classes: i64,
    pub in_channels: i64,
    /// Depth for `resnet` (e.g. 10, 18, 34, 50), `wide-resnet` (6n+4, e.g. 28, 34) and
    /// `resnet-cifar` (6n+2, e.g. 20, 56, 110).
    #[serde(default)]
    pub depth: Option<i64>,
    /// Width factor for `wide-resnet` (e.g. 10).
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub norm: NormSpec,
    /// Feature hooks (stage indices or norm-layer names) with an ARAT predictor head (empty = none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predictors: Vec<Hook>,
    /// Classifier heads: 1, or one per domain ("Dual-Linear"; selected by `route.ap`).
    #[serde(default = "one_head", skip_serializing_if = "is_one")]
    pub heads: usize,
}

/// A feature hook (`nn::hook`): where ARAT's invariance term (and the gradient-conflict
/// analysis) read features, a stage output (`Forward::stages[i]`, given as an integer) or the
/// output of a named norm layer (given as its parameter prefix, e.g. `"layer4.0.bn1"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hook {
    /// Output of stage `i` (after its activation).
    Stage(usize),
    /// Output of the norm layer with this name (before the activation that follows it).
    Norm(String),
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Stage(i) => write!(f, "stage {i}"),
            Hook::Norm(n) => write!(f, "norm layer {n}"),
        }
    }
}

/// `2` is stage 2, anything else the norm layer of that name (surrounding spaces ignored).
impl std::str::FromStr for Hook {
    type Err = String;
    fn from_str(s: &str) -> Result<Hook, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty hook: give a stage index or a norm-layer name".into());
        }
        Ok(s.parse::<usize>()
            .map(Hook::Stage)
            .unwrap_or_else(|_| Hook::Norm(s.to_string())))
    }
}

impl Hook {
    /// A variable-name component for this hook (`2`, `layer4_0_bn1`).
    pub fn key(&self) -> String {
        match self {
            Hook::Stage(i) => i.to_string(),
            Hook::Norm(n) => n.replace('.', "_"),
        }
    }
}

fn one_head() -> usize {
    1
}
fn is_one(n: &usize) -> bool {
    *n == 1
}

/// The classifier: one linear layer, or one per domain (Dual-Linear: a shared backbone with
/// per-domain heads). Route and soup select the head exactly as they select BN affine
/// parameters: `route.ap`, per segment of a mixed batch; soup `w * head_adv + (1-w) * head_clean`.
/// Names: `fc.weight` for one head, `fc.0.weight`, `fc.1.weight`, ... for several.
pub struct Head {
    pub sets: Vec<nn::Linear>,
}

impl Head {
    pub fn new(p: nn::Path, cin: i64, cout: i64, heads: usize, bias_init: Option<Init>) -> Head {
        let sets = if heads <= 1 {
            vec![torch_linear(p, cin, cout, bias_init)]
        } else {
            (0..heads)
                .map(|k| torch_linear(&p / k, cin, cout, bias_init))
                .collect()
        };
        Head { sets }
    }

    fn index(&self, d: usize) -> usize {
        if self.sets.len() <= 1 {
            0
        } else {
            assert!(
                d < self.sets.len(),
                "route asks for head {d} but the model has {} heads",
                self.sets.len()
            );
            d
        }
    }

    fn apply(&self, x: &Tensor, k: usize, soup: Option<f64>) -> Tensor {
        match soup {
            Some(w) if self.sets.len() > 1 => {
                let (c, a) = (&self.sets[CLEAN], &self.sets[ADV]);
                let ws = lerp(&a.ws, &c.ws, w);
                let bs = match (&a.bs, &c.bs) {
                    (Some(ab), Some(cb)) => Some(lerp(ab, cb, w)),
                    _ => None,
                };
                x.linear(&ws, bs.as_ref())
            }
            _ => self.sets[self.index(k)].forward(x),
        }
    }

    /// Logits of pooled features `x` [N, C] through the routed head(s), never in reduced
    /// precision (under bf16 autocast the linear layer runs in bf16 and its output is cast back, so losses and
    /// softmaxes are computed in float32).
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let z = self.forward_any(x, ctx);
        match z.kind() {
            tch::Kind::BFloat16 | tch::Kind::Half => z.to_kind(tch::Kind::Float),
            _ => z,
        }
    }

    fn forward_any(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let segs = ctx.segments_for(x.size()[0]);
        let first = self.index(segs[0].route.ap);
        if self.sets.len() <= 1
            || ctx.soup.is_some()
            || segs.iter().all(|g| self.index(g.route.ap) == first)
        {
            return self.apply(x, first, ctx.soup);
        }
        let mut start = 0;
        let parts: Vec<Tensor> = segs
            .iter()
            .map(|g| {
                let t = self.apply(&x.narrow(0, start, g.size), self.index(g.route.ap), None);
                start += g.size;
                t
            })
            .collect();
        Tensor::cat(&parts, 0)
    }
}

/// Names accepted by [`build_model`].
pub const ARCHITECTURES: &[&str] = &[
    "small-cnn",
    "preact-resnet18",
    "resnet18",
    "resnet",
    "wide-resnet",
    "resnet-cifar",
];

/// Build the model named by `spec` with its variables under `p`.
pub fn build_model(p: &nn::Path, spec: &ArchSpec) -> anyhow::Result<Box<dyn Model>> {
    spec.norm.validate().map_err(anyhow::Error::msg)?;
    // Bounds far above any real model, so a corrupt sidecar or recipe cannot ask for terabytes.
    anyhow::ensure!(
        (1..=64).contains(&spec.heads),
        "model.heads must be in 1..=64, got {}",
        spec.heads
    );
    anyhow::ensure!(
        (2..=100_000).contains(&spec.num_classes),
        "model.num_classes must be in 2..=100000, got {}",
        spec.num_classes
    );
    anyhow::ensure!(
        (1..=64).contains(&spec.in_channels),
        "model.in_channels must be in 1..=64, got {}",
        spec.in_channels
    );
    if let Some(d) = spec.depth {
        anyhow::ensure!(d <= 1202, "model.depth must be <= 1202, got {d}");
    }
    if let Some(w) = spec.width {
        anyhow::ensure!(w <= 64, "model.width must be <= 64, got {w}");
    }
    let model: Box<dyn Model> = match spec.name.as_str() {
        "small-cnn" => Box::new(small_cnn::SmallCnn::new(p, spec)),
        "preact-resnet18" => Box::new(preact_resnet::PreActResNet::new(p, spec, [2, 2, 2, 2])?),
        "resnet18" => Box::new(resnet::ResNet::new(p, spec, 18)?),
        "resnet" => {
            let depth = spec.depth.ok_or_else(|| {
                anyhow::anyhow!("model.depth is required for 'resnet' (e.g. 10, 18, 34, 50)")
            })?;
            Box::new(resnet::ResNet::new(p, spec, depth)?)
        }
        "wide-resnet" => Box::new(wide_resnet::WideResNet::new(p, spec)?),
        "resnet-cifar" => Box::new(resnet_cifar::ResNetCifar::new(p, spec)?),
        other => anyhow::bail!(
            "unknown architecture '{other}': expected one of {}",
            ARCHITECTURES.join(", ")
        ),
    };
    Ok(model)
}

/// PyTorch's default weight init for conv and linear layers: U(+-1/sqrt(fan_in))
/// (kaiming-uniform with a = sqrt(5), i.e. gain 1/sqrt(3)).
pub(crate) const TORCH_DEFAULT: Init = Init::Kaiming {
    dist: NormalOrUniform::Uniform,
    fan: FanInOut::FanIn,
    non_linearity: NonLinearity::ExplicitGain(0.577_350_269_189_625_8),
};

/// He-normal over fan-out: N(0, 2 / (k*k*cout)), the conv init of torchvision ResNet and of WRN.
pub(crate) const HE_FAN_OUT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// Bias-free k x k convolution with padding k/2 and the given weight init.
pub(crate) fn conv_init(
    p: nn::Path,
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    init: Init,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ws_init: init,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// Linear layer with PyTorch's default init; `bias_init` None = U(+-1/sqrt(fan_in)).
pub(crate) fn torch_linear(
    p: nn::Path,
    cin: i64,
    cout: i64,
    bias_init: Option<Init>,
) -> nn::Linear {
    nn::linear(
        p,
        cin,
        cout,
        nn::LinearConfig {
            ws_init: TORCH_DEFAULT,
            bs_init: bias_init,
            bias: true,
        },
    )
}

/// Global average pool [N,C,H,W] -> [N,C].
pub(crate) fn global_avg_pool(x: &Tensor) -> Tensor {
    x.mean_dim(&[-1i64, -2][..], false, x.kind())
}
