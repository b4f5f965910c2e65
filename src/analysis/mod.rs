//! Analyses of trained models (METHODS.md section 4): what the normalisation layers see and hold.
//!
//! - [`domain_gap`]: per BN layer, the 1-D Wasserstein distance between the batch statistics of
//!   adversarial / uniform-noise / clean inputs and the clean running statistics (Zhang et al.).
//! - [`bn_divergence`]: per layer, how far the two branches of a multi-domain model (Dual BN,
//!   Dual-NS, Dual-AP) lie apart in running mean, running std, gamma and beta.
//! - [`bn_swap`]: the test-time swap matrix NS {adv, clean, re-estimated} x AP {adv, clean} of
//!   clean and PGD robust accuracy.
//! - [`grad_conflict`]: cosine and opposite-sign fraction of the parameter gradients of two loss
//!   terms (ARAT's gradient conflict), per tensor, per layer and overall.
//!
//! Each analysis module holds two levels:
//! - a plain function over a model (or a [`Network`]) returning a serialisable result with a
//!   `plot` method (e.g. [`domain_gap()`]);
//! - the analysis as a typed plan, like `eval`'s: `<kind>::Plan` (the checkpoint, seed, device
//!   and compute settings of [`plan::AnalysisSetup`], the test images, the threat and the
//!   route), `<kind>::run(&Plan, ..)` (loads the checkpoint with [`plan::Subject::load`]) or
//!   `run_on` (already loaded), and `<kind>::Report`: the JSON `advtrain analyze <kind>`
//!   writes (tests/it/analysis_contract.rs guards it), its table (`Display`) and its PNG
//!   (`write_png`).
//!
//! ```no_run
//! use advtrain::analysis::{domain_gap, plan::{AnalysisSetup, TestImages}};
//! use advtrain::eval::{Silent, Threat};
//! let plan = domain_gap::Plan {
//!     setup: AnalysisSetup {
//!         checkpoint: "runs/x/checkpoints/best.safetensors".into(),
//!         seed: 0,
//!         device: advtrain::device::DeviceChoice::Cpu,
//!         compute: Default::default(),
//!         out: "runs/x/analysis".into(),
//!     },
//!     data: TestImages { spec: None, n: 256, data_dir: None },
//!     threat: Threat { norm: advtrain::attack::ThreatNorm::Linf, eps: 8.0 / 255.0 },
//!     route: Default::default(),
//! };
//! let report = domain_gap::run(&plan, &mut Silent)?;
//! println!("{report}mean adv-mu W1 {}", report.summary.adv_mu);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod bn_divergence;
pub mod bn_swap;
pub mod domain_gap;
pub mod grad_conflict;
pub mod plan;

pub use bn_divergence::{bn_divergence, BnDivergence, Divergence, LayerDivergence};
pub use bn_swap::{bn_swap, swap_step_size, BnSwap, SwapCell, SwapConfig};
pub use domain_gap::{domain_gap, stat_distances, DomainGap, GapConfig, LayerGap, StatDistance};

use crate::nn::{Model, Network, Norm};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// 1-D Wasserstein-1 distance between the empirical distributions of the samples `a` and `b`:
/// `integral |F_a(t) - F_b(t)| dt`. For samples of equal size this is `mean_i |a_(i) - b_(i)|`
/// over the sorted samples (the form used for channel vectors of one layer). NaN when either
/// sample is empty.
pub fn wasserstein1(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let mut sa = a.to_vec();
    let mut sb = b.to_vec();
    sa.sort_by(f64::total_cmp);
    sb.sort_by(f64::total_cmp);
    if sa.len() == sb.len() {
        return sa.iter().zip(&sb).map(|(x, y)| (x - y).abs()).sum::<f64>() / sa.len() as f64;
    }
    // Unequal sizes: integrate |F_a - F_b| between consecutive points of the merged sample.
    let (na, nb) = (sa.len() as f64, sb.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut total = 0.0;
    let mut prev: Option<f64> = None;
    while i < sa.len() || j < sb.len() {
        let t = match (sa.get(i), sb.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => unreachable!(),
        };
        if let Some(p) = prev {
            total += (i as f64 / na - j as f64 / nb).abs() * (t - p);
        }
        while i < sa.len() && sa[i] <= t {
            i += 1;
        }
        while j < sb.len() && sb[j] <= t {
            j += 1;
        }
        prev = Some(t);
    }
    total
}

/// `mean_i |a_i - b_i|` (element-wise, in the given order); NaN for empty or unequal lengths.
pub fn mean_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return f64::NAN;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

/// Mean of the finite values (NaN when there is none).
pub fn finite_mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut k) = (0.0, 0usize);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        s += v;
        k += 1;
    }
    if k == 0 {
        f64::NAN
    } else {
        s / k as f64
    }
}

/// Values of a tensor (any shape, any device) as a flat `Vec<f64>`.
pub fn to_vec(t: &Tensor) -> Vec<f64> {
    let flat = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .reshape([-1])
        .contiguous();
    Vec::<f64>::try_from(&flat).expect("a 1-D double tensor converts to Vec<f64>")
}

/// The BatchNorm layers of `model` (norm layers that hold running statistics), in forward order.
pub fn bn_layers(model: &dyn Model) -> Vec<(String, &Norm)> {
    model
        .norms()
        .into_iter()
        .filter(|(_, n)| !n.stats.is_empty())
        .collect()
}

/// Whether any norm layer has more than one statistics or affine set, or the model more than one
/// head (i.e. it has two branches to compare or swap).
pub fn is_multi_domain(net: &Network) -> bool {
    net.arch.heads > 1
        || net
            .model
            .norms()
            .iter()
            .any(|(_, n)| n.stats.len() > 1 || n.affine.len() > 1)
}

/// A fresh network of the same architecture on the same device holding copies of every variable
/// of `net` (changes to the copy, e.g. re-estimated statistics, leave `net` untouched).
pub fn copy_network(net: &Network) -> Result<Network> {
    let mut copy = Network::new(&net.arch, net.vs.device())?;
    copy.vs
        .copy(&net.vs)
        .map_err(|e| anyhow::anyhow!("cannot copy the network's variables: {e}"))?;
    Ok(copy)
}
