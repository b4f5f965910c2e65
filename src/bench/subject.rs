//! The benchmarked model and its points: a checkpoint on its test images, a TorchScript
//! module on given points, or a freshly initialised architecture (weights written for the
//! twin) on random points. Reads only the plan ([`super::plan`]).

use super::plan::{BenchPlan, EVAL_STEPS};
use crate::attack::Classifier;
use crate::attack::{AttackName, AttackSettings, AttackSpec, ParamNames, PgdConfig, ThreatNorm};
use crate::checkpoint::torchscript::ScriptModel;
use crate::data::Dataset;
use crate::nn::{ArchSpec, Ctx, Network, NormSpec};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The benchmarked model (its weights in a safetensors file with PyTorch names, so that the
/// PyTorch twin loads the same ones) and its points.
pub struct Subject {
    pub arch: ArchSpec,
    pub weights: PathBuf,
    pub checkpoint: Option<PathBuf>,
    /// Images (uint8) and labels: the AT step uses the first `batch_size`, the evaluation parts
    /// the first `n`.
    pub data: Dataset,
    /// `random` or where the test images came from.
    pub data_label: String,
    pub shape: [i64; 3],
    pub eps: f64,
    /// `--torchscript`: the module (then `weights` is the same file and `arch` only names its
    /// input channels and classes).
    pub script: Option<PathBuf>,
}

/// The attacked model of an evaluation part: one of our networks or a TorchScript module.
pub enum BenchModel {
    Native(Network),
    Script(ScriptModel),
}

impl BenchModel {
    /// The attacked function (eval mode) with our compute settings.
    pub fn classifier(&self, o: &BenchPlan) -> Classifier<'_> {
        match self {
            BenchModel::Native(n) => Classifier::new(n.model.as_ref(), Ctx::eval()),
            BenchModel::Script(m) => Classifier::script(m, true),
        }
        .with_compute(&o.compute)
    }
}

impl Subject {
    /// The model for the evaluation parts, on `o.device`.
    pub fn model(&self, o: &BenchPlan) -> Result<BenchModel> {
        Ok(match &self.script {
            Some(f) => BenchModel::Script(ScriptModel::load(f, o.device)?),
            None => BenchModel::Native(self.network(o)?),
        })
    }

    /// L-inf step of the AT step's PGD: eps / 4 (Madry's setting).
    pub fn at_step_size(&self) -> f64 {
        self.eps / 4.0
    }

    /// PGD-20 as `advtrain eval --attack pgd` makes it (the attack registry's defaults at
    /// [`EVAL_STEPS`] steps: L-inf, step 2.5 eps / 20, uniform start, CE).
    pub fn pgd20(&self) -> PgdConfig {
        let s = AttackSettings {
            steps: Some(EVAL_STEPS),
            ..AttackSettings::new(ThreatNorm::Linf, self.eps)
        };
        match AttackName::Pgd.spec(&s, &ParamNames::flags(), true) {
            Ok(AttackSpec::Pgd(c)) => c,
            other => panic!("PGD-20 at the checked bench eps {}: {other:?}", self.eps),
        }
    }

    /// L-inf step of PGD-20 ([`Subject::pgd20`]).
    pub fn pgd_step_size(&self) -> f64 {
        self.pgd20().step_size
    }

    /// A fresh copy of the model on `o.device`.
    pub fn network(&self, o: &BenchPlan) -> Result<Network> {
        let net = Network::new(&self.arch, o.device)?;
        net.load_weights(&self.weights)
            .with_context(|| format!("loading the weights {}", self.weights.display()))?;
        if o.channels_last {
            net.set_channels_last();
        }
        Ok(net)
    }

    /// Write the points as safetensors (`images` uint8 [N,C,H,W], `labels` int64 [N]).
    pub fn write_data(&self, path: &Path) -> Result<()> {
        let named = [
            ("images", self.data.images.contiguous()),
            ("labels", self.data.labels.contiguous()),
        ];
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// `n` random points: uint8 images, uniform labels, from torch's generator seeded with `seed`.
pub fn random_points(n: usize, shape: [i64; 3], num_classes: i64, seed: u64) -> Dataset {
    tch::manual_seed(seed as i64);
    let [c, h, w] = shape;
    let images =
        Tensor::randint(256, [n as i64, c, h, w], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8);
    let labels = Tensor::randint(num_classes, [n as i64], (Kind::Int64, Device::Cpu));
    Dataset {
        images,
        labels,
        num_classes: num_classes as usize,
    }
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("advtrain-bench-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Default budget for `c`-channel inputs.
fn default_eps(c: i64) -> f64 {
    if c == 1 {
        0.1
    } else {
        8.0 / 255.0
    }
}

/// The TorchScript module `file` and the first `points` of `data` (a points file or a
/// built-in data set's test split, folder `data_dir`).
pub fn script_subject(
    plan: &BenchPlan,
    file: &Path,
    data: Option<&str>,
    data_dir: Option<&PathBuf>,
    points: usize,
) -> Result<Subject> {
    let what = data.map(String::from).ok_or_else(|| {
        anyhow::anyhow!("--torchscript needs --data (FILE.safetensors of x and y, or a data set)")
    })?;
    let data = if crate::data::points::is_points_file(&what) {
        crate::data::points::load_points(Path::new(&what), None)?.take(points)
    } else {
        let dataset: crate::data::DatasetName =
            crate::choice::parse(&what, "--data").map_err(anyhow::Error::msg)?;
        crate::data::DataSpec {
            dataset,
            dir: data_dir.cloned(),
            val_size: 0,
            split_seed: 0,
            train_limit: None,
            test_limit: Some(points),
            crop_padding: 0,
            hflip: false,
        }
        .load_test()?
    };
    anyhow::ensure!(
        data.len() >= points,
        "--n {}: --data {what} holds only {} points",
        plan.n,
        data.len()
    );
    let sz = data.images.size();
    let shape = [sz[1], sz[2], sz[3]];
    let m = ScriptModel::load(file, Device::Cpu)?;
    let x = crate::data::loader::to_unit(&data.images.narrow(0, 0, 2.min(data.len() as i64)));
    let classes = m.probe(&x)?.classes;
    Ok(Subject {
        arch: ArchSpec {
            predictors: vec![],
            heads: 1,
            name: "torchscript".into(),
            num_classes: classes,
            in_channels: shape[0],
            depth: None,
            width: None,
            norm: NormSpec::default(),
        },
        weights: file.to_path_buf(),
        checkpoint: Some(file.to_path_buf()),
        data,
        data_label: what,
        shape,
        eps: plan.eps.unwrap_or(default_eps(shape[0])),
        script: Some(file.to_path_buf()),
    })
}

/// The model and points of the checkpoint `ckpt`: its test images (first `points`), from
/// `data_dir` instead of the recipe's folder when given.
pub fn checkpoint_subject(
    plan: &BenchPlan,
    ckpt: &Path,
    data_dir: Option<&PathBuf>,
    points: usize,
) -> Result<Subject> {
    let file = crate::checkpoint::locate(Some(&ckpt.to_path_buf()), None)?;
    let run = crate::train::saved::load_run(&file, Device::Cpu)
        .with_context(|| format!("--checkpoint {}", file.display()))?;
    let (net, recipe) = (run.checkpoint.net, run.recipe);
    let mut spec = recipe.data.clone();
    if let Some(d) = data_dir {
        spec.dir = Some(d.clone());
    }
    spec.test_limit = Some(points);
    let dir = spec.resolved_dir()?;
    let data = spec.load_test().with_context(|| {
        format!(
            "cannot load the test images of --checkpoint {} from {} (give --data-dir)",
            file.display(),
            dir.display()
        )
    })?;
    anyhow::ensure!(
        data.len() >= points,
        "--n {} / --batch-size {}: the test set in {} holds only {} images",
        plan.n,
        plan.batch_size,
        dir.display(),
        data.len()
    );
    let sz = data.images.size();
    let shape = [sz[1], sz[2], sz[3]];
    anyhow::ensure!(
        shape[0] == net.arch.in_channels,
        "the test images in {} have {} channels, the model of {} takes {}",
        dir.display(),
        shape[0],
        file.display(),
        net.arch.in_channels
    );
    Ok(Subject {
        arch: net.arch.clone(),
        weights: file.clone(),
        checkpoint: Some(file),
        data,
        data_label: format!("{} test images from {}", spec.dataset, dir.display()),
        shape,
        eps: plan.eps.unwrap_or(default_eps(shape[0])),
        script: None,
    })
}

/// A freshly initialised `name` (seeded with the plan's seed; weights written to `tmp`) on
/// random points.
pub fn fresh_subject(plan: &BenchPlan, name: &str, points: usize, tmp: &Path) -> Result<Subject> {
    let (c, hw) = if name == "small-cnn" {
        (1, 28)
    } else {
        (3, 32)
    };
    let arch = ArchSpec {
        predictors: vec![],
        heads: 1,
        name: name.into(),
        num_classes: 10,
        in_channels: c,
        depth: None,
        width: None,
        norm: NormSpec::default(),
    };
    tch::manual_seed(plan.seed as i64);
    let net = Network::new(&arch, Device::Cpu).with_context(|| format!("--models {name}"))?;
    let weights = tmp.join(format!("{name}.safetensors"));
    let named: Vec<(String, Tensor)> = net
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach().contiguous()))
        .collect();
    Tensor::write_safetensors(&named, &weights)
        .with_context(|| format!("cannot write {}", weights.display()))?;
    let shape = [c, hw, hw];
    Ok(Subject {
        arch,
        weights,
        checkpoint: None,
        data: random_points(points, shape, 10, plan.seed),
        data_label: "random".into(),
        shape,
        eps: plan.eps.unwrap_or(default_eps(c)),
        script: None,
    })
}
