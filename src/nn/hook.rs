//! Feature hooks: where ARAT's invariance term (and the gradient-conflict analysis) read
//! features. A hook is a stage output (`Forward::stages[i]`, given as an integer) or the output
//! of a named norm layer (given as its parameter prefix, e.g. `"layer4.0.bn1"`).

use super::models::{Forward, Model};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::Tensor;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hook {
    /// Output of stage `i` (after its activation).
    Stage(usize),
    /// Output of the norm layer with this name (before the activation that follows it).
    Norm(String),
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::Stage(i) => write!(f, "stage {i}"),
            Hook::Norm(n) => write!(f, "norm layer {n}"),
        }
    }
}

/// `2` is stage 2, anything else the norm layer of that name (surrounding spaces ignored).
impl std::str::FromStr for Hook {
    type Err = String;
    fn from_str(s: &str) -> Result<Hook, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty hook: give a stage index or a norm-layer name".into());
        }
        Ok(s.parse::<usize>()
            .map(Hook::Stage)
            .unwrap_or_else(|_| Hook::Norm(s.to_string())))
    }
}

impl Hook {
    /// A variable-name component for this hook (`2`, `layer4_0_bn1`).
    pub fn key(&self) -> String {
        match self {
            Hook::Stage(i) => i.to_string(),
            Hook::Norm(n) => n.replace('.', "_"),
        }
    }
}

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
