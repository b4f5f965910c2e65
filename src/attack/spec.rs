//! The attack registry: every attack `eval` runs by name, as data.
//!
//! [`AttackSpec`] is one attack with its whole configuration (serialisable: `{"attack":
//! "apgd-t", "config": {...}}`); [`AttackName`] is its name on the command line (`eval
//! --attack`, a [`clap::ValueEnum`] whose help is the doc comment of each entry below), plus
//! `autoattack`, the cascade of a preset (`eval::autoattack::preset`, a
//! `Vec<AttackSpec>`). Both are generated from the one list at the end of this file.
//!
//! Adding an attack: write `src/attack/<name>.rs` with its config type (serde, defaults in its
//! constructor) implementing [`AttackConfig`] (from [`super::settings`]) and the attack
//! implementing [`super::Attack`]; declare the module in `attack/mod.rs`; add one line
//! `Name(Config = variant),` (with its doc comment, the `--help` text; `variant` is the
//! config's [`AttackConfig::Variant`], `()` for a type registered once) to the list. The CLI
//! name is the kebab-case of the variant name. The attack files never name this registry.

pub use super::settings::{AttackConfig, AttackSettings};

use super::apgd::ApgdConfig;
use super::fab::FabConfig;
use super::fgsm::Fgsm;
use super::pgd::{Init, PgdConfig, PgdLoss};
use super::square::SquareConfig;
use super::{check_attack_params, Attack, AttackParams, ParamNames};
use serde::{Deserialize, Serialize};

impl AttackSpec {
    /// The attack's short name, e.g. `pgd-20` (an eval JSON's `attack`).
    pub fn name(&self) -> String {
        self.build().name()
    }

    /// Every hyperparameter (an eval JSON's `attack_config`).
    pub fn config(&self) -> serde_json::Value {
        self.build().config()
    }
}

impl AttackName {
    /// Iterations when none are given (`None` for `autoattack`, whose presets fix them).
    pub fn default_steps(self) -> Option<usize> {
        self.default_steps_of()
    }

    /// The attack `self` at `s` (not `autoattack`: see `eval::autoattack::preset`),
    /// after the one check of the shared settings ([`check_attack_params`]: eps, steps, step
    /// size, restarts; an L-inf eps above 1 only with `allow_large_eps`), naming them as
    /// `names` says, then the attack's own checks.
    pub fn spec(
        self,
        s: &AttackSettings,
        names: &ParamNames,
        allow_large_eps: bool,
    ) -> Result<AttackSpec, String> {
        let Some(default_steps) = self.default_steps() else {
            return Err(format!(
                "{self} is a cascade of attacks, not one: take its preset's attacks"
            ));
        };
        let steps = s.steps.unwrap_or(default_steps);
        check_attack_params(
            names,
            &AttackParams {
                norm: s.norm,
                eps: s.eps,
                steps: Some(steps),
                step_size: s.step_size,
                restarts: s.restarts,
                allow_large_eps,
            },
        )?;
        self.spec_of(s, steps)
    }
}

crate::choice::value_enum_text!(AttackName => "attack");

/// The registry list: `AttackSpec` and `AttackName` (+ `autoattack`) with their dispatch.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident($config:ty = $which:expr),)*) => {
        /// One attack with its whole configuration ([`AttackSpec::build`] makes it). The
        /// variant names the attack; its configuration is what runs.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "attack", content = "config", rename_all = "kebab-case")]
        pub enum AttackSpec {
            $($(#[$doc])* $variant($config),)*
        }

        /// The attacks of `eval --attack`: every registered attack and `autoattack`.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
        )]
        #[serde(rename_all = "kebab-case")]
        pub enum AttackName {
            $($(#[$doc])* $variant,)*
            /// AutoAttack (`--preset`): standard = APGD-CE -> APGD-T -> FAB-T -> Square, each on
            /// the points every earlier one failed on; resumable (`--state`).
            Autoattack,
        }

        impl AttackSpec {
            /// The registry name of the attack.
            pub fn kind(&self) -> AttackName {
                match self {
                    $(AttackSpec::$variant(_) => AttackName::$variant,)*
                }
            }

            /// The attack.
            pub fn build(&self) -> Box<dyn Attack> {
                match self {
                    $(AttackSpec::$variant(c) => c.build(),)*
                }
            }
        }

        impl AttackName {
            fn default_steps_of(self) -> Option<usize> {
                match self {
                    $(AttackName::$variant => Some(<$config as AttackConfig>::default_steps()),)*
                    AttackName::Autoattack => None,
                }
            }

            fn spec_of(self, s: &AttackSettings, steps: usize) -> Result<AttackSpec, String> {
                match self {
                    $(AttackName::$variant => {
                        <$config as AttackConfig>::from_settings($which, s, steps)
                            .map(AttackSpec::$variant)
                    })*
                    AttackName::Autoattack => unreachable!("autoattack has no default steps"),
                }
            }
        }
    };
}

registry! {
    /// FGSM: one L-inf step of size eps along the sign of the CE gradient.
    Fgsm(Fgsm = ()),
    /// PGD on cross-entropy (default 20 steps of 2.5 * eps / steps, uniform start).
    Pgd(PgdConfig = (PgdLoss::Ce, Init::Uniform)),
    /// Targeted PGD (CE towards the class chosen by --target).
    PgdT(PgdConfig = (PgdLoss::TargetedCe, Init::Uniform)),
    /// PGD on TRADES' KL to the clean prediction, from x + 0.001 N(0, I).
    PgdKl(PgdConfig = (PgdLoss::Kl, Init::Normal)),
    /// PGD on the Carlini-Wagner margin.
    Cw(PgdConfig = (PgdLoss::Cw, Init::Uniform)),
    /// APGD on cross-entropy (Croce & Hein; default 100 iterations).
    ApgdCe(ApgdConfig = ApgdConfig::ce),
    /// APGD on the DLR loss.
    ApgdDlr(ApgdConfig = ApgdConfig::dlr),
    /// APGD on the targeted DLR loss, 9 target classes.
    ApgdT(ApgdConfig = ApgdConfig::targeted),
    /// FAB, untargeted (minimum-norm; counted fooled within eps; default 100 iterations).
    Fab(FabConfig = FabConfig::untargeted),
    /// FAB-T, 9 target classes.
    FabT(FabConfig = FabConfig::targeted),
    /// Square Attack (score-based; --queries, default 5000).
    Square(SquareConfig = ()),
}
