//! What every registered attack is made from, below the registry (`spec.rs`) and the
//! attacks: the shared settings ([`AttackSettings`], the `eval` flags or any caller's), the
//! trait of an attack's configuration type ([`AttackConfig`]) and PGD-T's target choice
//! ([`Target`], one of the settings). The attack files use only this; the registry names them.

use super::{Attack, ThreatNorm};
use serde::{Deserialize, Serialize};

/// How PGD's targeted loss (`PgdLoss::TargetedCe`, `pgd-t`) picks the target class of each
/// point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Uniform over the classes other than the label (drawn from torch's generator).
    #[default]
    Random,
    /// The class with the smallest clean logit other than the label.
    LeastLikely,
    /// The class with the largest clean logit other than the label (the runner-up).
    RunnerUp,
}

crate::choice::value_enum_text!(Target => "target choice");

/// The settings an attack is made from (the `eval` flags, or any caller's): the threat model
/// and overrides of the knobs attacks share. `None` leaves the attack's default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttackSettings {
    pub norm: ThreatNorm,
    pub eps: f64,
    /// Iterations: PGD steps, APGD / FAB iterations ([`AttackConfig::default_steps`]).
    pub steps: Option<usize>,
    /// PGD step size (default `2.5 * eps / steps`).
    pub step_size: Option<f64>,
    pub restarts: Option<usize>,
    /// Square: queries per restart.
    pub queries: Option<usize>,
    /// Square: list the points still to fool every N iterations (default 1, the reference).
    pub square_check_every: Option<usize>,
    /// Target class choice of `pgd-t`.
    pub target: Target,
    /// Seed of the attacks that reseed torch's generator at every batch (APGD, FAB).
    pub seed: u64,
}

impl AttackSettings {
    /// `norm` and `eps`, every other setting the attack's default, seed 0.
    pub fn new(norm: ThreatNorm, eps: f64) -> Self {
        AttackSettings {
            norm,
            eps,
            steps: None,
            step_size: None,
            restarts: None,
            queries: None,
            square_check_every: None,
            target: Target::default(),
            seed: 0,
        }
    }
}

/// What the configuration type of a registered attack provides.
pub trait AttackConfig: Sized {
    /// Which of the type's attacks a registry entry is (PGD's loss and start, APGD's and FAB's
    /// base configuration; `()` for a type registered once). The registry line gives it, so the
    /// attack's file needs no registry name.
    type Variant;
    /// Iterations when the settings give none. Attacks without iterations keep PGD's 20: the
    /// value is still checked (`--steps 0` is refused for every attack) and reported as a
    /// curve point's `steps`.
    fn default_steps() -> usize {
        20
    }
    /// The configuration of the attack `variant` at `s`, with `steps` iterations (`s.steps` or
    /// [`Self::default_steps`]); the error says why not.
    fn from_settings(
        variant: Self::Variant,
        s: &AttackSettings,
        steps: usize,
    ) -> Result<Self, String>;
    /// The attack.
    fn build(&self) -> Box<dyn Attack>;
}
