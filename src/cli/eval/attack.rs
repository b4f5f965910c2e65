//! The attack flags of `advtrain eval` (flattened into `EvalArgs` (args.rs) in place, so
//! `--help` keeps its order) and their conversion into the attack settings; `parse_number`
//! reads budgets given as fractions.

use crate::attack::Target;
use crate::attack::{AttackName, AttackSettings, ThreatNorm};
use crate::choice::choice;
use crate::eval::autoattack::Preset;

/// The attack, its budget and settings, and the curves over budgets or steps.
#[derive(clap::Args, Debug)]
pub struct AttackArgs {
    /// The attack (autoattack: the cascade of --preset).
    #[arg(long, value_parser = choice::<AttackName>())]
    pub attack: AttackName,
    /// AutoAttack preset.
    #[arg(long, default_value = "standard", value_parser = choice::<Preset>())]
    pub preset: Preset,
    /// Perturbation budget (also the fallback when --curve is given).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_number)]
    pub eps: f64,
    /// Accept an L-inf eps above 1 (--eps, --curve, --reestimate-eps): in [0, 1] pixel space
    /// such a budget allows any image, and is usually a 0..255 value given by mistake.
    #[arg(long)]
    pub allow_large_eps: bool,
    #[arg(long, default_value = "linf", value_parser = choice::<ThreatNorm>())]
    pub norm: ThreatNorm,
    /// Iterations: PGD steps (default 20), APGD/FAB iterations (default 100).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Square: query budget per restart (default 5000).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Square: list the points still to fool (one host sync) every N iterations instead of
    /// every one (for GPUs; 1 = the reference; L-inf results unchanged in eval mode, L2 draws
    /// differ). Not used by AutoAttack's Square.
    #[arg(long)]
    pub square_check_every: Option<usize>,
    /// PGD step size (default 2.5 * eps / steps).
    #[arg(long, value_parser = parse_number)]
    pub step_size: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Target class choice of pgd-t.
    #[arg(long, default_value = "random", value_parser = choice::<Target>())]
    pub target: Target,
    /// Robust accuracy over this comma-separated list of eps values (JSON + PNG plot).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = parse_number)]
    pub curve: Option<Vec<f64>>,
    /// Robust accuracy over this comma-separated list of step counts (JSON + PNG plot).
    #[arg(long, value_delimiter = ',', conflicts_with = "curve")]
    pub curve_steps: Option<Vec<usize>>,
}

impl AttackArgs {
    /// `--square-check-every`: Square only, at least 1.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.square_check_every.is_none() || self.attack == AttackName::Square,
            "--square-check-every applies to --attack square only (got --attack {})",
            self.attack
        );
        anyhow::ensure!(
            self.square_check_every != Some(0),
            "--square-check-every must be >= 1 (1 = every iteration, the reference), got 0"
        );
        Ok(())
    }

    /// The attack settings at `eps` and `steps` (else the attack's default).
    pub fn settings(&self, eps: f64, steps: Option<usize>, seed: u64) -> AttackSettings {
        AttackSettings {
            steps,
            step_size: self.step_size,
            restarts: Some(self.restarts),
            queries: self.queries,
            square_check_every: self.square_check_every,
            target: self.target,
            seed,
            ..AttackSettings::new(self.norm, eps)
        }
    }
}

/// A number, or a fraction `a/b` (e.g. `8/255`).
pub fn parse_number(text: &str) -> Result<f64, String> {
    let num = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("'{text}' is not a number or a fraction like 8/255"))
    };
    match text.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b == 0.0 {
                return Err(format!("'{text}': division by zero"));
            }
            Ok(a / b)
        }
        None => num(text),
    }
}
