//! Feature hooks: where ARAT's invariance term (and the gradient-conflict analysis) read
//! features. A hook is a stage output (`Forward::stages[i]`, given as an integer) or the output
//! of a named norm layer (given as its parameter prefix, e.g. `"layer4.0.bn1"`).

/// The hook itself is data of the architecture ([`super::models::ArchSpec::predictors`]),
/// defined beside it.
pub use super::models::Hook;
use super::models::{Forward, Model};
use anyhow::Result;
use tch::Tensor;

/// Error unless every hook exists in `model` (`stages` = its number of stage outputs); `field`
/// names the recipe field the hooks came from.
pub fn check_hooks(model: &dyn Model, stages: usize, hooks: &[Hook], field: &str) -> Result<()> {
    let norms = model.norms();
    for (k, h) in hooks.iter().enumerate() {
        anyhow::ensure!(!hooks[..k].contains(h), "{field}: {h} is listed twice");
        match h {
            Hook::Stage(i) => anyhow::ensure!(
                *i < stages,
                "{field}: stage {i} does not exist (the model has {stages} stages, 0..{})",
                stages.saturating_sub(1)
            ),
            Hook::Norm(n) => anyhow::ensure!(
                norms.iter().any(|(name, _)| name == n),
                "{field}: no norm layer named {n:?} (the model's norm layers include {})",
                norms
                    .iter()
                    .rev()
                    .take(6)
                    .map(|(name, _)| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(())
}

/// Run `forward` (one forward pass of `model`) with the norm layers named in `hooks` tapped.
/// Returns its output and, per hook, the feature of that pass (the stage output, or the norm
/// layer's output). Hooks must have been checked with [`check_hooks`].
pub fn hooked(
    model: &dyn Model,
    hooks: &[Hook],
    forward: impl FnOnce() -> Forward,
) -> (Forward, Vec<Tensor>) {
    let norms = model.norms();
    let find = |n: &str| {
        norms
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("hook: no norm layer named {n:?} (checked before training)"))
    };
    for h in hooks {
        if let Hook::Norm(n) = h {
            find(n).set_tap(true);
        }
    }
    let out = forward();
    let feats = hooks
        .iter()
        .map(|h| match h {
            Hook::Stage(i) => out.stages[*i].shallow_clone(),
            Hook::Norm(n) => {
                let l = find(n);
                let mut v = l.take_tap();
                l.set_tap(false);
                assert_eq!(
                    v.len(),
                    1,
                    "norm layer {n} ran {} times in one forward",
                    v.len()
                );
                v.remove(0)
            }
        })
        .collect();
    (out, feats)
}
