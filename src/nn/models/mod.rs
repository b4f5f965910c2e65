//! Model registry. Every model is built on [`Norm`](crate::nn::Norm) and takes a [`Ctx`]
//! (route + mode) in its forward call. Parameter names follow PyTorch/torchvision
//! conventions so a checkpoint loads into the equivalent PyTorch module unchanged.

pub mod preact_resnet;
pub mod resnet;
pub mod small_cnn;
pub mod wide_resnet;

use crate::nn::norm::{Ctx, Norm, NormSpec};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Output of a forward pass: logits plus the outputs of each stage (for feature hooks).
pub struct Forward {
    pub logits: Tensor,
    /// Stage outputs in order (e.g. after each ResNet stage), before pooling.
    pub stages: Vec<Tensor>,
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
}

/// Architecture description: enough to rebuild the model (stored in every checkpoint sidecar).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// Registry name: small-cnn, preact-resnet18, resnet18, resnet, wide-resnet.
    pub name: String,
    pub num_classes: i64,
    pub in_channels: i64,
    /// Depth for `resnet` (e.g. 10, 18, 34, 50) and `wide-resnet` (6n+4, e.g. 28, 34).
    #[serde(default)]
    pub depth: Option<i64>,
    /// Width factor for `wide-resnet` (e.g. 10).
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub norm: NormSpec,
}

/// Names accepted by [`build_model`].
pub const ARCHITECTURES: &[&str] = &[
    "small-cnn",
    "preact-resnet18",
    "resnet18",
    "resnet",
    "wide-resnet",
];

/// Build the model named by `spec` with its variables under `p`.
pub fn build_model(p: &nn::Path, spec: &ArchSpec) -> anyhow::Result<Box<dyn Model>> {
    spec.norm.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        spec.num_classes >= 2,
        "model.num_classes must be >= 2, got {}",
        spec.num_classes
    );
    anyhow::ensure!(
        spec.in_channels >= 1,
        "model.in_channels must be >= 1, got {}",
        spec.in_channels
    );
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
        other => anyhow::bail!(
            "unknown architecture '{other}': expected one of {}",
            ARCHITECTURES.join(", ")
        ),
    };
    Ok(model)
}

/// 3x3 convolution, padding 1, without bias (it is followed by a norm layer).
pub(crate) fn conv3x3(p: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::Conv2D {
    conv(p, cin, cout, 3, stride, 1, false)
}

/// Convolution with tch's default init (weights kaiming-uniform over fan-in, bias U(+-1/sqrt(fan_in))).
pub(crate) fn conv(
    p: nn::Path,
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    pad: i64,
    bias: bool,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: pad,
        bias,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// Global average pool [N,C,H,W] -> [N,C].
pub(crate) fn global_avg_pool(x: &Tensor) -> Tensor {
    x.mean_dim(&[-1i64, -2][..], false, x.kind())
}
