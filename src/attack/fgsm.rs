//! FGSM (Goodfellow et al.): x' = clip(x + eps * sign(grad_x CE(f(x), y))), L-inf.

use super::settings::{AttackConfig, AttackSettings};
use super::{cross_entropy, project, rows, Attack, Classifier, ThreatNorm};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Fast gradient sign method, one step of size eps from x (its own configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fgsm {
    pub eps: f64,
}

impl Attack for Fgsm {
    fn name(&self) -> String {
        "fgsm".into()
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({"attack": "fgsm", "eps": self.eps, "norm": "linf", "loss": "ce"})
    }
    fn perturb(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor {
        f.region(x.device(), || {
            let (_, _, g) = f.loss_grad(x, |z, start, len| {
                cross_entropy(z, &rows(y, start, len), tch::Reduction::None)
            });
            project(&(x + g.sign() * self.eps), x, self.eps, ThreatNorm::Linf).detach()
        })
    }
}

impl AttackConfig for Fgsm {
    type Variant = ();

    fn from_settings((): (), s: &AttackSettings, _steps: usize) -> Result<Self, String> {
        if s.norm != ThreatNorm::Linf {
            return Err("fgsm is an L-inf attack; use --norm linf".into());
        }
        Ok(Fgsm { eps: s.eps })
    }

    fn build(&self) -> Box<dyn Attack> {
        Box::new(self.clone())
    }
}
