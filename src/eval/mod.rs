//! Evaluation: clean accuracy and robust accuracy under an attack, through a fixed route and mode.
//!
//! As a library: describe the evaluation as an [`EvalPlan`] (or a [`CurvePlan`]) and call
//! [`evaluate`] (or [`evaluate_curve`]); the [`EvalReport`] is what `advtrain eval` prints and
//! writes as JSON. [`source`] resolves a model and its points as the `eval` flags name them. The
//! counting functions below are the building blocks.
//!
//! The files, lowest first: [`checks`] and [`controls`], [`plan`] (what is asked), [`autoattack`]
//! (the cascade), [`report`] (what comes back), [`run`] (`evaluate`), then [`source`],
//! [`merge`], [`workers`] (a launched evaluation's shards and their merge) and [`card`] on top.

pub mod autoattack;
pub mod card;
pub mod checks;
pub mod controls;
pub mod merge;
pub mod plan;
pub mod report;
pub mod run;
pub mod source;
pub mod workers;

pub use plan::{
    AutoAttackPlan, Batching, CurveAxis, CurvePlan, CurvePointPlan, DataSelection, DataSource,
    EvalAttack, EvalPlan, EvalSetup, ModelFormat, Shard, TestTime, Threat,
};
pub use report::{CurvePoint, CurveReport, EvalReport, PerAttack, ShardInfo};
pub use run::{
    evaluate, evaluate_curve, evaluate_curve_model, evaluate_curve_on, evaluate_model, evaluate_on,
    load_checkpoint, load_model, Console, LoadedModel, Progress, Silent,
};
pub use source::{DataRequest, LoadAdvtrain, ModelRequest, SetupRest, StateDictArch};

use crate::attack::{correct, Attack, Classifier};
use crate::data::{Augment, Dataset};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Counts of one evaluation pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub n: usize,
    pub clean_correct: usize,
    pub robust_correct: usize,
}

impl Counts {
    pub fn clean_accuracy(&self) -> f64 {
        self.clean_correct as f64 / self.n.max(1) as f64
    }
    pub fn robust_accuracy(&self) -> f64 {
        self.robust_correct as f64 / self.n.max(1) as f64
    }
}

/// Clean accuracy of `f` on `data` (no gradients; the mode is `f`'s own).
pub fn clean_counts(f: &Classifier, data: &Dataset, batch_size: usize, device: Device) -> Counts {
    let mut hits = Tensor::zeros([], (Kind::Int64, device));
    tch::no_grad(|| {
        for (x, y) in data.batches(batch_size, None, Augment::default(), device) {
            hits += correct(&f.predict(&x), &y).sum(Kind::Int64);
        }
    });
    let c = hits.int64_value(&[]) as usize;
    Counts {
        n: data.len(),
        clean_correct: c,
        robust_correct: c,
    }
}

/// [`robust_counts`] with torch's generator seeded with `seed` before every batch (blocked
/// batching: each batch's result is independent of the others).
pub fn robust_counts_seeded(
    f: &Classifier,
    attack: &dyn Attack,
    data: &Dataset,
    batch_size: usize,
    device: Device,
    seed: u64,
) -> Counts {
    counts_of(f, attack, data, batch_size, device, Some(seed)).0
}

/// Clean and robust counts: a point is robust when it is classified correctly on the clean
/// input and on the attack's output.
pub fn robust_counts(
    f: &Classifier,
    attack: &dyn Attack,
    data: &Dataset,
    batch_size: usize,
    device: Device,
) -> Counts {
    counts_of(f, attack, data, batch_size, device, None).0
}

/// The counts and, per point, whether it is classified correctly on the clean input and on the
/// attack's output (robust); torch's generator seeded with `seed` before every batch when given.
pub fn counts_of(
    f: &Classifier,
    attack: &dyn Attack,
    data: &Dataset,
    batch_size: usize,
    device: Device,
    seed: Option<u64>,
) -> (Counts, Vec<bool>, Vec<bool>) {
    let mut clean = Tensor::zeros([], (Kind::Int64, device));
    let mut robust = Tensor::zeros([], (Kind::Int64, device));
    let (mut oks, mut robusts) = (vec![], vec![]);
    for (x, y) in data.batches(batch_size, None, Augment::default(), device) {
        if let Some(s) = seed {
            tch::manual_seed(s as i64);
        }
        let ok = tch::no_grad(|| correct(&f.predict(&x), &y));
        let x_adv = attack.perturb(f, &x, &y);
        let ok_adv = tch::no_grad(|| correct(&f.predict(&x_adv), &y));
        let rob = ok.logical_and(&ok_adv);
        clean += ok.sum(Kind::Int64);
        robust += rob.sum(Kind::Int64);
        oks.push(ok);
        robusts.push(rob);
    }
    let flags = |v: &[Tensor]| -> Vec<bool> {
        if v.is_empty() {
            return vec![];
        }
        Vec::<bool>::try_from(Tensor::cat(v, 0).to_device(Device::Cpu)).unwrap_or_default()
    };
    let counts = Counts {
        n: data.len(),
        clean_correct: clean.int64_value(&[]) as usize,
        robust_correct: robust.int64_value(&[]) as usize,
    };
    (counts, flags(&oks), flags(&robusts))
}

/// Per-point flags as a string of `1` (true) and `0` (false).
pub fn flag_string(v: &[bool]) -> String {
    v.iter().map(|&b| if b { '1' } else { '0' }).collect()
}
