//! Training: recipes, the objectives (one file each under [`objectives`]), the optimiser and
//! schedules, checkpoints and the resumable run loop.
//!
//! The files, lowest first (a file uses only files above it in this list; `tests/it/layers.rs`
//! checks that they form no circle):
//! - `metrics.rs`, `awp.rs`, `mixacm.rs` (MixACM's loss terms, projections and teacher
//!   loading), `step.rs` (`StepOutput`, what an objective's step returns), `optim.rs` (SGD
//!   and the restore of a checkpoint with optimiser state), `settings.rs` (what an objective
//!   reads of the recipe besides its own settings): they use no other file of `train`;
//! - `teacher.rs`: MixACM's run state (teacher, projections and their optimiser);
//! - `objectives/`: the objective trait, the `Objective` enum and one file per objective;
//! - `recipe.rs`: the recipe, which holds the objective (`train.objective`) and makes its
//!   `Settings`; the learning-rate schedules (`TrainSpec::learning_rate`);
//! - `saved.rs` (the typed recipe of a sidecar), `swa.rs`, `ddp.rs`;
//! - `run.rs`: the run loop.

pub mod awp;
pub mod ddp;
pub mod metrics;
pub mod mixacm;
pub mod objectives;
pub mod optim;
pub mod recipe;
pub mod run;
pub mod saved;
pub mod settings;
pub mod step;
pub mod swa;
pub mod teacher;

/// The checkpoint module under its earlier path (it moved below `nn`).
pub use crate::checkpoint;
pub use optim::restore;
pub use recipe::{Objective, Recipe};
/// [`train`] under the name of the library API (`advtrain::train::run(&recipe, &options)`).
pub use run::train as run;
pub use run::{train, train_observed, RunOptions};

/// Derive an independent 64-bit seed for (seed, epoch, stream) by SplitMix64 mixing, so every
/// epoch's randomness is a pure function of the recipe seed (what makes resuming exact).
pub fn derive_seed(seed: u64, epoch: u64, stream: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
