//! Training: recipes, the objectives (one file each under [`objectives`]), the optimiser and
//! schedules, checkpoints and the resumable run loop.

pub mod awp;
pub mod ddp;
pub mod metrics;
pub mod mixacm;
pub mod objectives;
pub mod optim;
pub mod recipe;
pub mod run;
pub mod saved;
pub mod step;
pub mod swa;
pub mod teacher;

/// The checkpoint module under its earlier path (it moved below `nn`).
pub use crate::checkpoint;
pub use recipe::{Objective, Recipe};
/// [`train`] under the name of the library API (`advtrain::train::run(&recipe, &options)`).
pub use run::train as run;
pub use run::{train, train_observed, RunOptions};
pub use saved::restore;

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
