//! TorchScript modules (`torch.jit.script` / `torch.jit.trace`, saved with `torch.jit.save`) as
//! evaluation models, and the way back: tracing one route of an advtrain [`Network`] into a
//! TorchScript file.
//!
//! The contract of a loaded module: it takes float32 images in [0, 1], NCHW (any mean/std
//! normalisation happens inside the module), and returns float logits `[N, classes]`. It is
//! loaded with [`tch::CModule`] on the evaluation device, put in eval mode, and its parameters
//! are frozen (`requires_grad = false`): attacks take input gradients only
//! (`run_backward` on the input), so no weight gradient is ever computed.

use super::sha256_file;
use crate::nn::{Ctx, Network};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{CModule, Device, Kind, Tensor};

/// The contract, as printed at the start of an evaluation and documented in the README.
pub const CONTRACT: &str = "inputs float32 NCHW in [0, 1] (normalisation inside the module), \
                            logits out [N, classes]; eval mode, parameters frozen";

/// A loaded TorchScript module in eval mode with frozen parameters.
pub struct ScriptModel {
    module: CModule,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// sha256 of the file.
    pub sha256: String,
    /// Its parameters (frozen), as handles.
    pub parameters: Vec<(String, Tensor)>,
}

/// What [`ScriptModel::probe`] saw on one batch of evaluation images.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptProbe {
    /// Output width: the number of classes.
    pub classes: i64,
    /// Train- and eval-mode outputs are bit-identical.
    pub mode_invariant: bool,
    /// In eval mode, some row's logits change with the other images of the batch.
    pub batch_dependent: bool,
    /// Parameters whose names look like normalisation layers (`bn`, `norm`, ...).
    pub norm_parameters: Vec<String>,
}

impl ScriptModel {
    /// Load `file` on `device`, in eval mode, parameters frozen. A file that is not TorchScript
    /// (e.g. a `torch.save` pickle) is refused with how to produce one.
    pub fn load(file: &Path, device: Device) -> Result<ScriptModel> {
        let f = file.display();
        anyhow::ensure!(file.is_file(), "--torchscript {f}: no such file");
        let mut module = CModule::load_on_device(file, device).map_err(|e| {
            let e = e.to_string();
            let first = e.lines().next().unwrap_or("").to_string();
            anyhow::anyhow!(
                "--torchscript {f}: cannot load it as a TorchScript module ({first}). A file \
                 written by torch.save (a pickled model or state dict) is not TorchScript: in \
                 Python save the model with torch.jit.save(torch.jit.script(model.eval()), \
                 'model.pt') (or torch.jit.trace(model.eval(), x)); a state dict of an advtrain \
                 architecture loads with --checkpoint sd.safetensors --arch NAME"
            )
        })?;
        module
            .f_set_eval()
            .with_context(|| format!("--torchscript {f}: cannot put the module in eval mode"))?;
        let parameters = module
            .named_parameters()
            .with_context(|| format!("--torchscript {f}: cannot list the module's parameters"))?;
        for (_, p) in &parameters {
            let _ = p.set_requires_grad(false);
        }
        Ok(ScriptModel {
            module,
            file: file.to_path_buf(),
            sha256: sha256_file(file)?,
            parameters,
        })
    }

    /// The module's output at `x`, checked to be a 2-D float tensor with one row per image;
    /// float32.
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let z = self.module.forward_ts(&[x]).map_err(|e| {
            let e = e.to_string();
            let first = e.lines().take(3).collect::<Vec<_>>().join(" ");
            anyhow::anyhow!(
                "--torchscript {}: the module failed on a batch of shape {:?} (float32 in [0, \
                 1]): {first}; the contract is: {CONTRACT}",
                self.file.display(),
                x.size()
            )
        })?;
        let n = x.size()[0];
        anyhow::ensure!(
            z.dim() == 2 && z.size()[0] == n && z.is_floating_point(),
            "--torchscript {}: the module returned a {:?} tensor of shape {:?} for {n} images; \
             expected float logits of shape [{n}, classes]",
            self.file.display(),
            z.kind(),
            z.size()
        );
        Ok(if z.kind() == Kind::Float {
            z
        } else {
            z.to_kind(Kind::Float)
        })
    }

    /// [`Self::try_forward`] for attacks (after [`Self::probe`] succeeded on the same kind of
    /// batch, a failure here is a bug of the module).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Probe the module on `x` (a batch of evaluation images, float in [0, 1]): the output width,
    /// whether train and eval mode give the same outputs (a module traced in one mode), and
    /// whether eval-mode outputs depend on the batch (BatchNorm with batch statistics frozen
    /// into a trace). Leaves the module in eval mode. Runs before any seeding of the evaluation.
    pub fn probe(&self, x: &Tensor) -> Result<ScriptProbe> {
        let f = self.file.display().to_string();
        let eval = tch::no_grad(|| self.try_forward(x))?;
        let classes = eval.size()[1];
        // Each of the first rows alone vs in the batch (rows independent in eval mode).
        let n = x.size()[0];
        let mut batch_dependent = false;
        if n > 1 {
            for i in 0..n.min(4) {
                let alone = tch::no_grad(|| self.try_forward(&x.narrow(0, i, 1)))?;
                let inside = eval.narrow(0, i, 1);
                let scale = inside.abs().max().double_value(&[]).max(1.0);
                let diff = (alone - inside).abs().max().double_value(&[]);
                if !(diff <= 1e-4 * scale) {
                    batch_dependent = true;
                }
            }
        }
        // Train mode on a throwaway copy: a train-mode forward updates BatchNorm's running
        // statistics, which must stay those of the file.
        let mut copy = CModule::load_on_device(&self.file, x.device())
            .with_context(|| format!("--torchscript {f}: cannot load a second copy"))?;
        copy.f_set_train()
            .with_context(|| format!("--torchscript {f}: cannot put the module in train mode"))?;
        let train = tch::no_grad(|| copy.forward_ts(&[x]))
            .with_context(|| format!("--torchscript {f}: the module failed in train mode"))?;
        let mode_invariant = train.size() == eval.size() && train.to_kind(Kind::Float).equal(&eval);
        let norm_parameters = self
            .parameters
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| {
                n.split('.').any(|s| {
                    let s = s.to_ascii_lowercase();
                    s.starts_with("bn") || s.contains("norm") || s.starts_with("batchnorm")
                })
            })
            .collect();
        Ok(ScriptProbe {
            classes,
            mode_invariant,
            batch_dependent,
            norm_parameters,
        })
    }
}

/// Trace `net` through the route and mode of `ctx` into a TorchScript module and save it at
/// `out` (atomically). The traced function is the plain forward (no BN folding) with the
/// network's weights as constants, taking float32 images `[N, in_channels, h, w]` in [0, 1]
/// and returning logits; `hw` is the image size traced with (convolutional models accept other
/// batch sizes; the trace fixes the control flow, which our models do not branch on).
pub fn export_torchscript(net: &mut Network, ctx: &Ctx, hw: [i64; 2], out: &Path) -> Result<()> {
    net.vs.freeze();
    let device = net.vs.device();
    let x = Tensor::rand(
        [2, net.arch.in_channels, hw[0], hw[1]],
        (Kind::Float, device),
    );
    let model = net.model.as_ref();
    let module = CModule::create_by_tracing("advtrain", "forward", &[x], &mut |xs| {
        vec![model.forward(&xs[0], ctx)]
    })
    .context("tracing the model")?;
    let tmp = crate::fsio::tmp_path(out);
    module
        .save(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    crate::fsio::commit_tmp(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}
