//! The earlier flat layout of `[train]`, where every objective's settings were fields of one
//! struct and every resolved recipe (a run's `recipe.toml`, a checkpoint sidecar's `recipe`)
//! carried all of them: `attack`, `route`, `hybrid`, `trades_beta`, `mart_lambda`, `arat`,
//! `mixacm`, `track_clean_accuracy`. The layout itself is unchanged (an objective's keys sit
//! beside `objective`), so a key an objective uses is read as before; a key of this list it does
//! not use is type-checked as before and dropped while reading (`keys.rs`). Such a key
//! never had an effect for that objective, so the recipe resolves to the same settings.
//! [`ignored`] names the dropped keys whose value differs from what the earlier code wrote by
//! default (a warning at `train`), and refuses `[train.mixacm]` with another objective, as the
//! earlier validation did.

use super::arat::AratSpec;
use super::hybrid::HybridSpec;
use crate::attack::PgdConfig;
use crate::nn::Route;
use crate::train::mixacm::MixAcmSpec;
use serde::de::{DeserializeSeed, Deserializer};
use serde::Deserialize;

/// The objective-specific keys of the earlier `[train]`.
pub const KEYS: &[&str] = &[
    "attack",
    "route",
    "hybrid",
    "trades_beta",
    "mart_lambda",
    "arat",
    "mixacm",
    "track_clean_accuracy",
];

/// Reads (and drops) the value of legacy key `.0` with its earlier type.
pub struct Check<'k>(pub &'k str);

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0 {
            "attack" => Option::<PgdConfig>::deserialize(d).map(drop),
            "route" => Route::deserialize(d).map(drop),
            "hybrid" => HybridSpec::deserialize(d).map(drop),
            "trades_beta" | "mart_lambda" => f64::deserialize(d).map(drop),
            "arat" => Option::<AratSpec>::deserialize(d).map(drop),
            "mixacm" => Option::<MixAcmSpec>::deserialize(d).map(drop),
            "track_clean_accuracy" => bool::deserialize(d).map(drop),
            _ => serde::de::IgnoredAny::deserialize(d).map(drop),
        }
    }
}

/// What a required key holds, for "is required" messages.
pub fn what(key: &str) -> &'static str {
    match key {
        "attack" => " ([train.attack]: eps, step_size, steps, ...)",
        "arat" => " ([train.arat]: lambda, hooks, ...)",
        "mixacm" => " ([train.mixacm]: teacher, ...)",
        _ => "",
    }
}

/// Whether `value` of legacy key `key` is what the earlier code wrote when the recipe left the
/// key out (so dropping it loses nothing the user set).
fn is_default(key: &str, value: &toml::Value) -> bool {
    match key {
        "route" => value.clone().try_into::<Route>().ok() == Some(Route::default()),
        "hybrid" => value
            .clone()
            .try_into::<HybridSpec>()
            .ok()
            .is_some_and(|mut h| {
                // The earlier code wrote the resolved passes into every recipe.
                h.passes = None;
                h == HybridSpec::default()
            }),
        "trades_beta" | "mart_lambda" => {
            value.as_float() == Some(6.0) || value.as_integer() == Some(6)
        }
        "track_clean_accuracy" => value.as_bool() == Some(true),
        _ => false,
    }
}

/// The legacy keys of the `[train]` table `train` that `objective` drops (not among `used`),
/// as warnings for those the user set; an error for `[train.mixacm]` with another objective.
pub fn ignored(train: &toml::Value, objective: &str, used: &[&str]) -> anyhow::Result<Vec<String>> {
    let Some(table) = train.as_table() else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for (key, value) in table {
        if !KEYS.contains(&key.as_str()) || used.contains(&key.as_str()) {
            continue;
        }
        if key == "mixacm" {
            anyhow::bail!(
                "[train.mixacm] is only used by objective mixacm, not {objective}: remove it or set train.objective = \"mixacm\""
            );
        }
        if !is_default(key, value) {
            let shown = match value {
                toml::Value::Table(_) => format!("[train.{key}]"),
                v => format!("train.{key} = {v}"),
            };
            out.push(format!(
                "{shown} is not used by objective {objective} and is ignored"
            ));
        }
    }
    Ok(out)
}
