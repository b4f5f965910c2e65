//! advtrain: adversarial training and robustness evaluation on tch (libtorch).
//!
//! The library is layered (docs/ARCHITECTURE.md; lowest first): [`choice`], [`fsio`],
//! [`interrupt`], [`compute`], [`device`], [`dist`] (torch.distributed), [`data`] (readers,
//! splits, batches), [`nn`] (route-aware norm layer, models), [`checkpoint`] (files, atomic
//! sets, foreign state dicts), [`attack`] (attacks on a fixed route and mode), [`eval`] (clean
//! and robust accuracy, AutoAttack), [`train`] (recipes, objectives, optimiser, the resumable
//! run loop), [`bench`] (throughput against the PyTorch twin as a plan and a report),
//! [`report`] (figures), [`analysis`], [`study`], and the thin [`cli`]. Inside each module the
//! files are layered too (`tests/it/layers.rs`).
//!
//! Train a tiny model and evaluate it with two attacks through the library alone:
//!
//! ```
//! use advtrain::attack::{Attack, Classifier, Fgsm, Pgd, PgdConfig, ThreatNorm};
//! use advtrain::nn::Ctx;
//! use advtrain::train::{self, Recipe, RunOptions};
//! # use std::io::Write;
//! # let dir = tempfile::tempdir().unwrap();
//! # // A learnable 10-class 28x28 IDX data set: class k lights a bright block at place k.
//! # for (prefix, n) in [("train", 200usize), ("t10k", 50)] {
//! #     let mut img = std::fs::File::create(dir.path().join(format!("{prefix}-images-idx3-ubyte"))).unwrap();
//! #     let mut lab = std::fs::File::create(dir.path().join(format!("{prefix}-labels-idx1-ubyte"))).unwrap();
//! #     for v in [0x803u32, n as u32, 28, 28] { img.write_all(&v.to_be_bytes()).unwrap(); }
//! #     for v in [0x801u32, n as u32] { lab.write_all(&v.to_be_bytes()).unwrap(); }
//! #     for i in 0..n {
//! #         let k = (i * 7) % 10;
//! #         let mut px = vec![20u8; 784];
//! #         for y in 0..7 { for x in 0..7 { px[((k / 4) * 7 + 3 + y) * 28 + (k % 4) * 7 + x] = 230; } }
//! #         img.write_all(&px).unwrap();
//! #         lab.write_all(&[k as u8]).unwrap();
//! #     }
//! # }
//! let recipe_file = dir.path().join("tiny.toml");
//! std::fs::write(&recipe_file, format!(r#"
//!     name = "tiny"
//!     device = "cpu"
//!     [data]
//!     dataset = "mnist"
//!     dir = "{}"
//!     val_size = 20
//!     [model]
//!     name = "small-cnn"
//!     num_classes = 10
//!     in_channels = 1
//!     [train]
//!     objective = "pgd-at"
//!     epochs = 2
//!     batch_size = 30
//!     lr = 0.05
//!     schedule = "constant"
//!     [train.attack]
//!     eps = 0.1
//!     step_size = 0.05
//!     steps = 2
//!     [validation]
//!     pgd_limit = 20
//! "#, dir.path().display())).unwrap();
//!
//! // Train: the run directory gets recipe.toml, metrics.csv and checkpoints/{last,best}.
//! let recipe = Recipe::load(&recipe_file, &[])?;
//! let out = dir.path().join("run");
//! let summary = train::train(&recipe, &RunOptions { out: out.clone(), resume: false, stop_after: None })?;
//! assert_eq!(summary.epochs, 2);
//!
//! // Load the checkpoint (sha256-verified) with its typed recipe and evaluate it.
//! let run = train::saved::load_run(&out.join("checkpoints/last.safetensors"), tch::Device::Cpu)?;
//! let test = run.recipe.data.load_test()?;
//! let f = Classifier::new(run.checkpoint.net.model.as_ref(), Ctx::eval());
//! let attacks: Vec<Box<dyn Attack>> = vec![
//!     Box::new(Fgsm { eps: 0.1 }),
//!     Box::new(Pgd::new(PgdConfig::new(ThreatNorm::Linf, 0.1, 0.025, 10))),
//! ];
//! for a in &attacks {
//!     let c = advtrain::eval::robust_counts(&f, a.as_ref(), &test, 25, tch::Device::Cpu);
//!     assert_eq!(c.n, 50);
//!     assert!(c.robust_correct <= c.clean_correct);
//!     println!("{}: clean {:.2} robust {:.2}", a.name(), c.clean_accuracy(), c.robust_accuracy());
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod analysis;
pub mod attack;
pub mod bench;
pub mod checkpoint;
pub mod choice;
pub mod cli;
pub mod compute;
pub mod data;
pub mod device;
pub mod dist;
pub mod eval;
pub mod fsio;
pub mod interrupt;
pub mod nn;
pub mod report;
pub mod study;
pub mod train;
