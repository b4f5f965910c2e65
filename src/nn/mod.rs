//! Neural-network building blocks: the route-aware norm layer and the model registry.
//!
//! The files, lowest first: [`norm`] (the `Norm` layer), [`fold`] (BN folding), [`models`] (the
//! `Model` trait, `ArchSpec` with its `Hook`s, the registry), [`hook`] (reading hooked
//! features), [`predictor`] and [`network`] (model + variables).

pub mod fold;
pub mod hook;
pub mod models;
pub mod network;
pub mod norm;
pub mod predictor;

pub use hook::Hook;
pub use models::{build_model, ArchSpec, Model};
pub use network::Network;
pub use norm::{Ctx, Domain, Mode, Norm, NormKind, NormSpec, Route, Segment, ADV, CLEAN};
