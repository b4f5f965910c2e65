//! advtrain: adversarial training and robustness evaluation on tch (libtorch).
//!
//! Layout: [`data`] (readers, splits, batches), [`nn`] (route-aware norm layer, models),
//! [`attack`] (attacks on a fixed route and mode), [`train`] (recipes, objectives, optimiser,
//! checkpoints, the run loop), [`eval`] (clean and robust accuracy).

pub mod analysis;
pub mod attack;
pub mod checkpoint;
pub mod choice;
pub mod cli;
pub mod compute;
pub mod data;
pub mod device;
pub mod eval;
pub mod fsio;
pub mod interrupt;
pub mod nn;
pub mod report;
pub mod train;
