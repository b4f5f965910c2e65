//! Gradient-masking sanity checks (after AutoAttack's `checks.py` and Carlini et al.'s
//! evaluation checklist). Each check is a small pure function over numbers the evaluation has
//! already computed, except [`model_checks`], which runs one forward/backward pass per batch.
//! A raised check is a [`Flag`] in the evaluation report: a reason to distrust the number, not
//! an error.

use crate::attack::{cross_entropy, input_grad, Classifier};
use crate::data::{Augment, Dataset};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// One raised sanity check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    /// Stable machine-readable code, e.g. `zero-gradients`.
    pub code: String,
    /// What was seen and why it matters.
    pub message: String,
}

impl Flag {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Flag {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Tolerance of AutoAttack's `check_square_sr`: Square may lower robust accuracy by at most
/// this fraction after the white-box attacks before a flag is raised.
pub const SQUARE_TOLERANCE: f64 = 0.002;

/// Tolerance (accuracy fraction) for the monotonicity checks of curves over eps or steps.
pub const MONOTONE_TOLERANCE: f64 = 0.005;

/// What [`model_checks`] measured over the evaluated points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GradientStats {
    /// Points whose input gradient of the CE loss is exactly zero.
    pub zero: usize,
    /// Points whose logits or input gradient contain NaN or infinity.
    pub non_finite: usize,
    /// Points checked.
    pub n: usize,
    /// Two forward passes of the first batch gave different logits.
    pub randomized: bool,
    /// Every row of the first batch's outputs lies in [0,1] and sums to 1 (softmax outputs).
    pub outputs_are_probabilities: bool,
}

/// Per point: the CE input gradient at the clean input and whether it is zero or not finite;
/// on the first batch also whether the model is randomised and whether it outputs probabilities.
pub fn model_checks(
    f: &Classifier,
    data: &Dataset,
    batch_size: usize,
    device: Device,
) -> GradientStats {
    let mut s = GradientStats {
        n: data.len(),
        ..Default::default()
    };
    let mut zero = Tensor::zeros([], (Kind::Int64, device));
    let mut bad = Tensor::zeros([], (Kind::Int64, device));
    for (i, (x, y)) in data
        .batches(batch_size, None, Augment::default(), device)
        .enumerate()
    {
        let xr = x.set_requires_grad(true);
        let logits = f.predict(&xr);
        if i == 0 {
            tch::no_grad(|| {
                let again = f.predict(&x);
                s.randomized = !again.allclose(&logits.detach(), 0.0, 0.0, true);
                let sums = logits.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
                s.outputs_are_probabilities = logits.min().double_value(&[]) >= 0.0
                    && logits.max().double_value(&[]) <= 1.0
                    && (sums - 1.0).abs().max().double_value(&[]) < 1e-4;
            });
        }
        let g = input_grad(&cross_entropy(&logits, &y, tch::Reduction::Sum), &xr);
        let n = g.size()[0];
        let g = g.view([n, -1]);
        let finite = g
            .isfinite()
            .all_dim(1, false)
            .logical_and(&logits.detach().isfinite().all_dim(1, false));
        zero += g
            .abs()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            .eq(0.0)
            .logical_and(&finite)
            .sum(Kind::Int64);
        bad += finite.logical_not().sum(Kind::Int64);
    }
    s.zero = zero.int64_value(&[]) as usize;
    s.non_finite = bad.int64_value(&[]) as usize;
    s
}

/// Flags from [`model_checks`].
pub fn gradient_flags(s: &GradientStats) -> Vec<Flag> {
    let mut out = Vec::new();
    if s.zero > 0 {
        out.push(Flag::new(
            "zero-gradients",
            format!(
                "{} of {} points have an input gradient of exactly zero at the clean input: \
                 gradient-based attacks cannot move them (masked gradients or saturated softmax); \
                 trust black-box results (Square) more than white-box ones here",
                s.zero, s.n
            ),
        ));
    }
    if s.non_finite > 0 {
        out.push(Flag::new(
            "non-finite-gradients",
            format!(
                "{} of {} points have NaN/inf logits or input gradients at the clean input",
                s.non_finite, s.n
            ),
        ));
    }
    if s.randomized {
        out.push(Flag::new(
            "randomized-model",
            "two forward passes of the same batch gave different logits: the model is randomised \
             (or uses batch statistics); use an EOT-style evaluation, the numbers here are not \
             those of a deterministic model",
        ));
    }
    if s.outputs_are_probabilities {
        out.push(Flag::new(
            "outputs-are-probabilities",
            "the model's outputs look like probabilities (rows in [0,1] summing to 1): attacks \
             expect logits, a softmax before the loss flattens gradients",
        ));
    }
    out
}

/// AutoAttack's `check_square_sr`: `acc` lists (attack, robust accuracy after it) in cascade
/// order; Square (a black-box attack) lowering the accuracy reached by the white-box attacks by
/// more than [`SQUARE_TOLERANCE`] suggests gradient masking.
pub fn square_beats_white_box(acc: &[(String, f64)]) -> Option<Flag> {
    let square = acc.iter().find(|(a, _)| a == "square")?.1;
    let white = acc
        .iter()
        .filter(|(a, _)| a != "square")
        .map(|(_, v)| *v)
        .fold(f64::INFINITY, f64::min);
    if white.is_finite() && square < white - SQUARE_TOLERANCE {
        Some(Flag::new(
            "square-beats-white-box",
            format!(
                "Square (black-box) lowered robust accuracy from {:.2}% after the white-box \
                 attacks to {:.2}%: the gradients are unreliable (gradient masking)",
                100.0 * white,
                100.0 * square
            ),
        ))
    } else {
        None
    }
}

/// Points `(x, robust accuracy)` of a curve, sorted by `x`, where accuracy rises by more than
/// [`MONOTONE_TOLERANCE`] as `x` (eps or steps) grows: returns the pairs `(x_i, x_{i+1})`.
pub fn rises(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p.windows(2)
        .filter(|w| w[1].1 > w[0].1 + MONOTONE_TOLERANCE)
        .map(|w| (w[0].0, w[1].0))
        .collect()
}

/// Flags of a curve over `what` (`eps` or `steps`): accuracy that rises as the attack gets
/// stronger, or that does not fall at all between the weakest and the strongest setting.
pub fn curve_flags(what: &str, clean: f64, points: &[(f64, f64)]) -> Vec<Flag> {
    let mut out = Vec::new();
    for (a, b) in rises(points) {
        out.push(Flag::new(
            &format!("accuracy-rises-with-{what}"),
            format!(
                "robust accuracy rises from {what} {a} to {what} {b}: a stronger attack should \
                 never do worse (non-converged attack or gradient masking)"
            ),
        ));
    }
    let strongest = points
        .iter()
        .filter(|(x, _)| *x > 0.0)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(&(x, acc)) = strongest {
        if points.len() >= 2 && acc >= clean - MONOTONE_TOLERANCE {
            out.push(Flag::new(
                &format!("no-drop-with-{what}"),
                format!(
                    "robust accuracy at {what} {x} ({:.2}%) is no lower than clean accuracy \
                     ({:.2}%): the attack does not work on this model",
                    100.0 * acc,
                    100.0 * clean
                ),
            ));
        }
    }
    out
}

/// Flag for adversarial examples found outside the threat model (should never happen; a
/// guard against an attack bug inflating the success rate).
pub fn perturbation_flag(max_norm: f64, eps: f64) -> Option<Flag> {
    (max_norm > eps + 1e-5).then(|| {
        Flag::new(
            "perturbation-exceeds-eps",
            format!("an adversarial example has perturbation norm {max_norm} > eps {eps}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(a, x)| (a.to_string(), *x)).collect()
    }

    #[test]
    fn square_flag_follows_the_reference_rule() {
        let ok = acc(&[
            ("apgd-ce", 0.50),
            ("apgd-t", 0.48),
            ("fab-t", 0.48),
            ("square", 0.479),
        ]);
        assert!(square_beats_white_box(&ok).is_none());
        let bad = acc(&[
            ("apgd-ce", 0.50),
            ("apgd-t", 0.48),
            ("fab-t", 0.48),
            ("square", 0.47),
        ]);
        assert_eq!(
            square_beats_white_box(&bad).unwrap().code,
            "square-beats-white-box"
        );
        assert!(square_beats_white_box(&acc(&[("apgd-ce", 0.5)])).is_none());
    }

    #[test]
    fn curve_checks() {
        let good = [(0.0, 0.9), (0.05, 0.7), (0.1, 0.5), (0.2, 0.1)];
        assert!(curve_flags("eps", 0.9, &good).is_empty());
        let rising = [(0.1, 0.5), (0.0, 0.9), (0.2, 0.6), (0.05, 0.7)];
        let f = curve_flags("eps", 0.9, &rising);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].code, "accuracy-rises-with-eps");
        assert!(
            f[0].message.contains("eps 0.1 to eps 0.2"),
            "{}",
            f[0].message
        );
        // within tolerance: no flag
        assert!(rises(&[(1.0, 0.5), (2.0, 0.504)]).is_empty());
        let flat = [(0.0, 0.9), (0.1, 0.9), (0.3, 0.898)];
        let f = curve_flags("eps", 0.9, &flat);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "no-drop-with-eps");
    }

    #[test]
    fn gradient_flags_name_counts() {
        let s = GradientStats {
            zero: 3,
            non_finite: 1,
            n: 100,
            randomized: false,
            outputs_are_probabilities: true,
        };
        let codes: Vec<String> = gradient_flags(&s).into_iter().map(|f| f.code).collect();
        assert_eq!(
            codes,
            [
                "zero-gradients",
                "non-finite-gradients",
                "outputs-are-probabilities"
            ]
        );
        assert!(gradient_flags(&GradientStats::default()).is_empty());
        assert!(perturbation_flag(0.1 + 1e-7, 0.1).is_none());
        assert!(perturbation_flag(0.11, 0.1).is_some());
    }
}
