//! Adversarial weight perturbation (Wu et al. 2020, "Adversarial Weight Perturbation Helps
//! Robust Generalization"), as a wrapper around any objective's loss.

use crate::nn::Network;
use tch::Tensor;

/// The weights AWP perturbs: trainable tensors with more than one dimension (conv and linear
/// weights; not biases or norm affine parameters), by name.
pub fn perturbed_weights(net: &Network) -> Vec<(String, Tensor)> {
    let trainable: Vec<Tensor> = net.vs.trainable_variables();
    let mut v: Vec<(String, Tensor)> = net
        .vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.dim() > 1 && trainable.iter().any(|u| u.data_ptr() == t.data_ptr()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `v_l = gamma * ||w_l|| / ||d_l|| * d_l` for each weight tensor with `d_l = dL/dw_l`.
/// The ratio stays a device tensor (no host read per weight, so a CUDA step does not wait on
/// each of the ~40 weights of a ResNet), computed in float64 then applied in the weight's dtype.
pub fn perturbation(w: &Tensor, d: &Tensor, gamma: f64) -> Tensor {
    let f64 = tch::Kind::Double;
    let scale = w.norm().to_kind(f64) * gamma / (d.norm().to_kind(f64) + 1e-20);
    d * scale.to_kind(d.kind())
}

/// Add the AWP perturbation for `loss` (whose graph reaches the weights) to every weight;
/// returns the weights with what was added, for [`restore`].
pub fn perturb(net: &Network, gamma: f64, loss: &Tensor) -> Vec<(Tensor, Tensor)> {
    perturb_synced(net, gamma, loss, |_| Ok(())).expect("no synchronisation")
}

/// [`perturb`] with the gradients `d` passed through `sync` first (data-parallel training
/// replaces them by their average over the workers, so every worker perturbs alike).
pub fn perturb_synced(
    net: &Network,
    gamma: f64,
    loss: &Tensor,
    sync: impl FnOnce(&[Tensor]) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<(Tensor, Tensor)>> {
    let weights = perturbed_weights(net);
    let refs: Vec<&Tensor> = weights.iter().map(|(_, t)| t).collect();
    let grads = Tensor::run_backward(&[loss], &refs, false, false);
    sync(&grads)?;
    Ok(tch::no_grad(|| {
        weights
            .into_iter()
            .zip(grads)
            .map(|((_, mut w), d)| {
                let v = perturbation(&w, &d, gamma);
                let _ = w.g_add_(&v);
                (w, v)
            })
            .collect()
    }))
}

/// Remove the perturbation added by [`perturb`].
pub fn restore(added: Vec<(Tensor, Tensor)>) {
    tch::no_grad(|| {
        for (mut w, v) in added {
            let _ = w.g_sub_(&v);
        }
    });
}
