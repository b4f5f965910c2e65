//! FGSM (Goodfellow et al.): x' = clip(x + eps * sign(grad_x CE(f(x), y))), L-inf.

use super::{input_grad, project, Attack, Classifier, ThreatNorm};
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
        let loss = f.logits(&xr).cross_entropy_for_logits(y) * x.size()[0] as f64;
        let g = input_grad(&loss, &xr);
        project(&(x + g.sign() * self.eps), x, self.eps, ThreatNorm::Linf).detach()
    }
}
