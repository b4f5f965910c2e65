//! Data: file readers (IDX, CIFAR binary), in-memory datasets, the train/validation split,
//! deterministic shuffling and augmentation.

pub mod cifar;
pub mod idx;
pub mod loader;
pub mod points;
pub mod raw;

pub use loader::{Augment, Batches, Dataset};
pub use raw::{DataError, RawImages};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package puts its IDX files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The built-in data sets: name (as written in recipes), classes, image shape, default folder
/// and reader. Adding a data set = one variant here (with its arms below) + its reader file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// Fashion-MNIST (IDX files; Debian's `dataset-fashion-mnist` by default).
    FashionMnist,
    /// MNIST (IDX files).
    Mnist,
    /// CIFAR-10 (binary version).
    Cifar10,
    /// CIFAR-100 with its 100 fine labels (binary version).
    Cifar100,
    /// CIFAR-100 with its 20 coarse labels.
    #[serde(rename = "cifar100-coarse")]
    #[value(name = "cifar100-coarse")]
    Cifar100Coarse,
}

impl DatasetName {
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            DatasetName::FashionMnist | DatasetName::Mnist | DatasetName::Cifar10 => 10,
            DatasetName::Cifar100 => 100,
            DatasetName::Cifar100Coarse => 20,
        }
    }

    /// Image shape (channels, height, width): the input shape of models trained on it.
    pub fn image_shape(self) -> (i64, i64, i64) {
        if self.is_cifar() {
            (3, 32, 32)
        } else {
            (1, 28, 28)
        }
    }

    fn is_cifar(self) -> bool {
        matches!(
            self,
            DatasetName::Cifar10 | DatasetName::Cifar100 | DatasetName::Cifar100Coarse
        )
    }

    /// Folder used when `data.dir` is not given (None: it must be given).
    pub fn default_dir(self) -> Option<PathBuf> {
        (self == DatasetName::FashionMnist).then(|| PathBuf::from(DEBIAN_FASHION_MNIST))
    }

    /// Read the training (`train`) or test split from `dir`.
    fn read_split(self, dir: &Path, train: bool) -> Result<RawImages, DataError> {
        match self {
            DatasetName::Cifar10 => cifar::load_cifar10_dir(dir, train),
            DatasetName::Cifar100 => cifar::load_cifar100_dir(dir, train, false),
            DatasetName::Cifar100Coarse => cifar::load_cifar100_dir(dir, train, true),
            DatasetName::FashionMnist | DatasetName::Mnist => idx::load_idx_dir(dir, train, 10),
        }
    }

    /// The file (or folder) named when a split has the wrong image shape.
    fn split_path(self, dir: &Path, train: bool) -> Result<PathBuf, DataError> {
        if self.is_cifar() {
            Ok(dir.to_path_buf())
        } else {
            idx::images_file(dir, train)
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

/// Which data set, where it lives, and how it is split and augmented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// fashion-mnist | mnist | cifar10 | cifar100 | cifar100-coarse
    pub dataset: DatasetName,
    /// Folder with the files (default for fashion-mnist: Debian's package folder).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Images held out from the training files for validation.
    #[serde(default)]
    pub val_size: usize,
    /// Seed of the train/validation split (independent of the training seed).
    #[serde(default)]
    pub split_seed: u64,
    /// Use only the first N training images (after the split).
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// Zero padding for random crops (0 = no crop).
    #[serde(default)]
    pub crop_padding: i64,
    /// Random horizontal flips.
    #[serde(default)]
    pub hflip: bool,
}

/// The three splits of a data set.
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

impl DataSpec {
    /// Folder the files are read from.
    pub fn resolved_dir(&self) -> Result<PathBuf> {
        match (&self.dir, self.dataset.default_dir()) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(d)) => Ok(d),
            (None, None) => anyhow::bail!("data.dir is required for dataset '{}'", self.dataset),
        }
    }

    /// Number of classes of the data set.
    pub fn num_classes(&self) -> Result<usize> {
        Ok(self.dataset.num_classes())
    }

    /// Image shape (channels, height, width).
    pub fn image_shape(&self) -> Result<(i64, i64, i64)> {
        Ok(self.dataset.image_shape())
    }

    pub fn augment(&self) -> Augment {
        Augment {
            crop_padding: self.crop_padding,
            hflip: self.hflip,
        }
    }

    /// Reads one split and checks that its images have the shape of the data set (the input
    /// shape of the models trained and evaluated on it).
    fn read(&self, dir: &Path, train: bool) -> Result<RawImages, DataError> {
        let raw = self.dataset.read_split(dir, train)?;
        if let Ok((c, h, w)) = self.image_shape() {
            let expected = (c as usize, h as usize, w as usize);
            if (raw.c, raw.h, raw.w) != expected {
                let path = self.dataset.split_path(dir, train)?;
                return Err(DataError::WrongShape {
                    path,
                    dataset: self.dataset.to_string(),
                    found: format!("{}x{}x{}", raw.c, raw.h, raw.w),
                    expected: format!("{c}x{h}x{w}"),
                });
            }
        }
        Ok(raw)
    }

    /// Load the test split only (limited by `test_limit`).
    pub fn load_test(&self) -> Result<Dataset> {
        self.num_classes()?;
        let dir = self.resolved_dir()?;
        let raw = self
            .read(&dir, false)
            .with_context(|| format!("loading the {} test split", self.dataset))?;
        let test = Dataset::from_raw(&raw)?;
        Ok(match self.test_limit {
            Some(n) => test.take(n),
            None => test,
        })
    }

    /// Load train (minus the held-out validation images), validation and test splits.
    pub fn load(&self) -> Result<Splits> {
        self.num_classes()?;
        let dir = self.resolved_dir()?;
        let raw = self
            .read(&dir, true)
            .with_context(|| format!("loading the {} training split", self.dataset))?;
        let all = Dataset::from_raw(&raw)?;
        anyhow::ensure!(
            self.val_size < all.len(),
            "data.val_size = {} leaves no training images (the training files hold {})",
            self.val_size,
            all.len()
        );
        let (train, val) = all.split(self.val_size, self.split_seed);
        let train = match self.train_limit {
            Some(n) => train.take(n),
            None => train,
        };
        anyhow::ensure!(
            !train.is_empty(),
            "the training set is empty (data.train_limit = 0?)"
        );
        let test = self.load_test()?;
        Ok(Splits { train, val, test })
    }
}
