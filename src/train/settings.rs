//! What an objective reads of the recipe besides its own settings ([`Settings`]). The recipe
//! holds the objectives (`train.objective`), so the objectives, and MixACM's teacher below
//! them, see it through this view, made by `Recipe::settings` in `recipe.rs`.

use crate::attack::PgdConfig;
use crate::compute::Compute;
use crate::nn::{ArchSpec, Mode};

/// The recipe's settings outside the objective's own keys that objectives read (each field
/// names its recipe key).
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    /// `seed`.
    pub seed: u64,
    /// `compute`: precision, BN folding and micro-batching of the attacks.
    pub compute: &'a Compute,
    /// `model` (ARAT checks its predictors).
    pub model: &'a ArchSpec,
    /// `train.attack_bn_mode`: the BN mode while generating training attacks.
    pub attack_bn_mode: Mode,
    /// `train.momentum`, `train.weight_decay`, `train.nesterov`: the SGD of the model, which
    /// an objective's own parameters get too (MixACM's projections).
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Whether `train.awp` is set.
    pub awp: bool,
    /// `validation.batch_size`.
    pub validation_batch_size: usize,
    /// `validation.pgd_limit`.
    pub validation_pgd_limit: usize,
    /// The validation attack, resolved (`Recipe::validation_attack`: `validation.attack`, or
    /// PGD-10 with step eps/4 at the training eps).
    pub validation_attack: Option<PgdConfig>,
}
