//! The model and the points of an evaluation as a caller names them (the `eval` flags:
//! `--run` / `--checkpoint` / `--torchscript`, `--arch` / `--arch-file` for a state dict,
//! `--data` and its batching), resolved into an [`EvalSetup`] and the loaded model. The errors
//! name those flags.
//!
//! An advtrain checkpoint is loaded with the recipe that trained it (its `[data]` is the
//! default data); reading a recipe belongs to `train`, a higher layer, so the caller passes
//! that loader in ([`LoadAdvtrain`]).

use super::plan::{Batching, DataSelection, DataSource, EvalSetup, ModelFormat, Shard, TestTime};
use super::run::{load_model, LoadedModel};
use crate::checkpoint::torchscript::ScriptModel;
use crate::compute::Compute;
use crate::data::points::is_points_file;
use crate::data::{DataSpec, DatasetName};
use crate::device::DeviceChoice;
use crate::nn::ArchSpec;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::Device;

/// Loads an advtrain checkpoint with the `[data]` of its recipe (`train::saved::load_run`).
pub type LoadAdvtrain<'a> = &'a dyn Fn(&Path, Device) -> Result<(LoadedModel, DataSpec)>;

/// The architecture of a PyTorch state dict: a TOML file, or a name with its sizes.
#[derive(Debug, Clone, Default)]
pub struct StateDictArch {
    /// The fields of a recipe's `[model]` table (a `[model]` table or the fields at the top).
    pub file: Option<PathBuf>,
    /// One of [`crate::nn::models::ARCHITECTURES`].
    pub name: Option<String>,
    /// Classes (default: the data set's, else 10).
    pub num_classes: Option<i64>,
    pub depth: Option<i64>,
    pub width: Option<i64>,
}

impl StateDictArch {
    /// Whether a state dict's architecture is given at all.
    pub fn given(&self) -> bool {
        self.name.is_some() || self.file.is_some()
    }

    /// The architecture (the input channels from `data`); `None` when none is given.
    pub fn resolve(&self, data: &DataSelection) -> Result<Option<ArchSpec>> {
        if let Some(f) = &self.file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--arch-file {}: cannot read it", f.display()))?;
            let v: toml::Value = toml::from_str(&text)
                .with_context(|| format!("--arch-file {}: not valid TOML", f.display()))?;
            let table = v.get("model").cloned().unwrap_or(v);
            let arch: ArchSpec = table.try_into().with_context(|| {
                format!(
                    "--arch-file {}: not an architecture (the fields of a recipe's [model] \
                     table: name, num_classes, in_channels, depth, width, norm, heads)",
                    f.display()
                )
            })?;
            return Ok(Some(arch));
        }
        let Some(name) = &self.name else {
            return Ok(None);
        };
        anyhow::ensure!(
            crate::nn::models::ARCHITECTURES.contains(&name.as_str()),
            "--arch '{name}': expected one of {}",
            crate::nn::models::ARCHITECTURES.join(", ")
        );
        let (channels, classes) = match &data.source {
            DataSource::Dataset(spec) => (
                spec.dataset.image_shape().0,
                Some(spec.dataset.num_classes() as i64),
            ),
            DataSource::Points(p) => (crate::data::points::points_shape(p)?[1], None),
        };
        Ok(Some(ArchSpec {
            name: name.clone(),
            num_classes: self.num_classes.or(classes).unwrap_or(10),
            in_channels: channels,
            depth: self.depth,
            width: self.width,
            norm: Default::default(),
            predictors: vec![],
            heads: 1,
        }))
    }
}

/// The evaluated points as named: a data set or a points file (`None`: the recipe's data).
#[derive(Debug, Clone)]
pub struct DataRequest {
    pub data: Option<String>,
    pub test_limit: Option<usize>,
    pub batch_size: usize,
    pub data_dir: Option<PathBuf>,
    pub batching: Batching,
    pub shard: Option<Shard>,
}

impl DataRequest {
    /// The selection: `data` (a data set or a points file), else `recipe` (the checkpoint's
    /// recipe's `[data]`), with the limit, the folder, the batching and the shard.
    pub fn selection(&self, recipe: Option<DataSpec>) -> Result<DataSelection> {
        let source = match (&self.data, recipe) {
            (Some(d), _) if is_points_file(d) => DataSource::Points(PathBuf::from(d)),
            (Some(d), _) => {
                let dataset: DatasetName = crate::choice::parse(d, "--data")
                    .map_err(|e| anyhow::anyhow!("{e} (or a FILE.safetensors of x and y)"))?;
                DataSource::Dataset(DataSpec {
                    dataset,
                    dir: None,
                    val_size: 0,
                    split_seed: 0,
                    train_limit: None,
                    test_limit: None,
                    crop_padding: 0,
                    hflip: false,
                })
            }
            (None, Some(spec)) => DataSource::Dataset(spec),
            (None, None) => anyhow::bail!(
                "--data is required here (a built-in data set such as cifar10, or a \
                 FILE.safetensors holding x and y): a TorchScript module or a state dict carries \
                 no data set"
            ),
        };
        anyhow::ensure!(
            self.data_dir.is_none() || matches!(source, DataSource::Dataset(_)),
            "--data-dir applies to built-in data sets, not to the points file given with --data"
        );
        Ok(DataSelection {
            source,
            test_limit: self.test_limit,
            batch_size: self.batch_size,
            data_dir: self.data_dir.clone(),
            batching: self.batching,
            shard: self.shard,
        })
    }
}

/// The evaluated model as named: a run folder, an advtrain checkpoint, a state dict with its
/// architecture, or a TorchScript module.
#[derive(Debug, Clone, Default)]
pub struct ModelRequest {
    /// A run folder (`checkpoints/best`, else `checkpoints/last`).
    pub run: Option<PathBuf>,
    /// An advtrain checkpoint, or with `arch` a state dict.
    pub checkpoint: Option<PathBuf>,
    pub torchscript: Option<PathBuf>,
    pub arch: StateDictArch,
}

/// What an [`EvalSetup`] holds besides the model and the data.
#[derive(Debug, Clone)]
pub struct SetupRest {
    pub test_time: TestTime,
    pub seed: u64,
    pub device: DeviceChoice,
    pub compute: Compute,
}

impl ModelRequest {
    /// The setup and the loaded model: a TorchScript module or a state dict on `data` (which
    /// must then name the points), an advtrain checkpoint (`load` reads it with its recipe) on
    /// `data`, else on its recipe's data.
    pub fn open(
        &self,
        data: &DataRequest,
        rest: SetupRest,
        load: LoadAdvtrain,
    ) -> Result<(EvalSetup, LoadedModel)> {
        let device = rest.device.resolve()?;
        let setup = |checkpoint: PathBuf, format, data| EvalSetup {
            checkpoint,
            format,
            data,
            test_time: rest.test_time.clone(),
            seed: rest.seed,
            device: rest.device,
            compute: rest.compute,
        };
        if let Some(ts) = &self.torchscript {
            anyhow::ensure!(
                !self.arch.given(),
                "--arch / --arch-file describe a state dict given with --checkpoint; a \
                 TorchScript module carries its architecture"
            );
            let data = data.selection(None)?;
            let model = LoadedModel::Script(ScriptModel::load(ts, device)?);
            return Ok((setup(ts.clone(), ModelFormat::Torchscript, data), model));
        }
        if self.arch.given() {
            let file = self.checkpoint.clone().ok_or_else(|| {
                anyhow::anyhow!("--arch / --arch-file need --checkpoint sd.safetensors")
            })?;
            let data = data.selection(None)?;
            let arch = self.arch.resolve(&data)?.expect("--arch or --arch-file");
            eprintln!(
                "state dict {} as {}",
                file.display(),
                serde_json::to_string(&arch)?
            );
            let s = setup(file, ModelFormat::StateDict(arch), data);
            let model = load_model(&s)?;
            return Ok((s, model));
        }
        if let Some(c) = &self.checkpoint {
            if c.is_file() {
                crate::checkpoint::import::refuse_pickle(c, "--checkpoint")?;
            }
            let side = crate::checkpoint::paths(c).2;
            anyhow::ensure!(
                !c.is_file() || side.is_file(),
                "--checkpoint {}: its sidecar {} does not exist, so it is not an advtrain \
                 checkpoint; a PyTorch state dict of one of our architectures loads with --arch \
                 NAME (or --arch-file), a TorchScript module with --torchscript",
                c.display(),
                side.display()
            );
        }
        let checkpoint = crate::checkpoint::locate(self.checkpoint.as_ref(), self.run.as_ref())?;
        let (model, recipe_data) = load(&checkpoint, device)?;
        let data = data.selection(Some(recipe_data))?;
        Ok((setup(checkpoint, ModelFormat::Advtrain, data), model))
    }
}
