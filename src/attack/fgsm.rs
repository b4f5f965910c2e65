//! FGSM (Goodfellow et al.): x' = clip(x + eps * sign(grad_x CE(f(x), y))), L-inf.

use super::{cross_entropy, input_grad, project, Attack, Classifier, ThreatNorm};
use tch::Tensor;

/// Fast gradient sign method, one step of size eps from x.
#[derive(Debug, Clone)]
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
        let xr = x.detach().set_requires_grad(true);
        let loss = cross_entropy(&f.logits(&xr), y, tch::Reduction::Sum);
        let g = input_grad(&loss, &xr);
        project(&(x + g.sign() * self.eps), x, self.eps, ThreatNorm::Linf).detach()
    }
}
