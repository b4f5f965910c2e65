//! Work counts for `advtrain bench`: the model's forward FLOPs per image and the machine's
//! measured fp32 GEMM rate.

use crate::nn::Network;
use std::collections::HashMap;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Forward FLOPs per image of `net` on `[c, h, w]` inputs: 2 x MACs summed over every
/// convolution and linear layer, the convention of PyTorch's `FlopCounterMode` (bias adds,
/// norms, activations and pooling are not counted):
///
///   conv `[Cout, Cin/g, kh, kw]` -> 2 * Cout * (Cin/g) * kh * kw * Hout * Wout
///   linear `[out, in]`           -> 2 * out * in
///
/// Output sizes come from a probe forward of one blank image (eval mode): a convolution outputs
/// at the spatial size of its stage, the stage given by the PyTorch-style name — top-level `convK`:
/// stage K (small-cnn's blocks; a ResNet stem, whose first stage keeps its size), `layerK.*` /
/// `blockK.*`: stage K — except a bottleneck's first 1x1 `layerK.0.conv1`, which runs before the
/// block's stride, at stage K-1's size. Of several classifier heads only the first counts (each
/// image goes through one); ARAT predictor heads are not part of the forward pass. `None` when a
/// layer fits none of these rules (then no GFLOP/s are reported).
pub fn forward_flops(net: &Network, shape: [i64; 3]) -> Option<f64> {
    let [_, h, w] = shape;
    let stages: Vec<i64> = net
        .probe_stages([h, w])
        .iter()
        .map(|s| s.size()[2] * s.size()[3])
        .collect();
    let vars: HashMap<String, Tensor> = net.variables();
    let mut macs = 0f64;
    for (name, t) in &vars {
        let Some(layer) = name.strip_suffix(".weight") else {
            continue;
        };
        if name.starts_with("predictor.") {
            continue;
        }
        let numel = t.numel() as f64;
        let parts: Vec<&str> = layer.split('.').collect();
        match t.dim() {
            2 => match parts.as_slice() {
                [head] | [head, "0"] if matches!(*head, "fc" | "linear") => macs += numel,
                [head, _] if matches!(*head, "fc" | "linear") => {}
                _ => return None,
            },
            4 => {
                let stage = conv_stage(&parts, &vars)?;
                macs += numel * *stages.get(stage)? as f64;
            }
            _ => {}
        }
    }
    Some(2.0 * macs)
}

/// Index (0-based) of the stage whose spatial size a convolution named `parts` outputs at.
fn conv_stage(parts: &[&str], vars: &HashMap<String, Tensor>) -> Option<usize> {
    let number = |s: &str, prefix: &str| -> Option<usize> {
        s.strip_prefix(prefix)?
            .parse::<usize>()
            .ok()?
            .checked_sub(1)
    };
    match parts {
        [conv] => number(conv, "conv"),
        [first, rest @ ..] => {
            let k = number(first, "layer").or_else(|| number(first, "block"))?;
            let bottleneck_entry =
                rest == ["0", "conv1"] && vars.contains_key(&format!("{first}.0.conv3.weight"));
            Some(if bottleneck_entry {
                k.saturating_sub(1)
            } else {
                k
            })
        }
        [] => None,
    }
}

/// Waits for queued work on `device` (CUDA); a no-op on the CPU.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Side of the square matrices of the GEMM measurement.
pub const GEMM_N: i64 = 1024;
const GEMM_REPS: usize = 4;
const GEMM_TRIALS: usize = 5;

/// The machine's fp32 GEMM rate in GFLOP/s at the current thread count: `GEMM_N` x `GEMM_N`
/// matmuls, 2 n^3 FLOPs each, best of 5 trials of 4 matmuls after 2 warm-up ones
/// (`bench/pytorch_bench.py` measures its side the same way).
pub fn gemm_gflops(device: Device) -> f64 {
    let a = Tensor::randn([GEMM_N, GEMM_N], (Kind::Float, device));
    let b = Tensor::randn([GEMM_N, GEMM_N], (Kind::Float, device));
    for _ in 0..2 {
        let _ = a.mm(&b);
    }
    sync(device);
    let mut best = f64::INFINITY;
    for _ in 0..GEMM_TRIALS {
        let t = Instant::now();
        for _ in 0..GEMM_REPS {
            let _ = a.mm(&b);
        }
        sync(device);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (GEMM_N as f64).powi(3) * GEMM_REPS as f64 / best / 1e9
}
