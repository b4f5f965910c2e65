//! The PyTorch eager twin (`bench/pytorch_bench.py`), run as a subprocess per part on the
//! weights and points our side used; its JSON lines are parsed back. Reads the plan and the
//! subject.

use super::plan::{BenchPlan, Part, TwinPlan, EVAL_STEPS};
use super::subject::Subject;
use crate::device::device_name;
use crate::nn::norm::NormKind;
use crate::nn::{ArchSpec, NormSpec};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Architectures the twin has a PyTorch module for.
pub const TWIN_ARCHITECTURES: &[&str] = &["small-cnn", "preact-resnet18"];

/// How to run the twin.
pub struct Twin {
    pub python: PathBuf,
    pub script: PathBuf,
    /// Checkout of fra31/auto-attack (`--autoattack-dir`, else `$AUTOATTACK_DIR`).
    pub autoattack_dir: Option<PathBuf>,
}

/// What one run of the twin printed: its `info` line and the part's line.
pub struct TwinRun {
    pub info: serde_json::Value,
    pub part: serde_json::Value,
}

/// `rel` in the working directory if it exists there, else in the source tree advtrain was
/// built from, if there.
fn in_repo(rel: &str) -> Option<PathBuf> {
    [
        PathBuf::from(rel),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel),
    ]
    .into_iter()
    .find(|p| p.exists())
}

impl Twin {
    /// The interpreter (`--pytorch`, else the repository's `.venv/bin/python`, else `python3`),
    /// the script (`--twin`, else the repository's `bench/pytorch_bench.py`) and the AutoAttack
    /// checkout (`--autoattack-dir`, else `$AUTOATTACK_DIR`).
    pub fn resolve(a: &TwinPlan) -> Result<Twin> {
        let python = a
            .python
            .clone()
            .or_else(|| in_repo(".venv/bin/python"))
            .unwrap_or_else(|| PathBuf::from("python3"));
        let found = if python.components().count() > 1 {
            python.is_file()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&python).is_file()))
        };
        anyhow::ensure!(
            found,
            "--pytorch {}: no such interpreter; give the Python with torch and safetensors \
             (e.g. .venv/bin/python), or --no-pytorch",
            python.display()
        );
        let script = match &a.script {
            Some(t) => {
                anyhow::ensure!(t.is_file(), "--twin {}: no such file", t.display());
                t.clone()
            }
            None => in_repo("bench/pytorch_bench.py").context(
                "cannot find the PyTorch twin bench/pytorch_bench.py (neither in the working \
                 directory nor in the source tree); give --twin FILE or --no-pytorch",
            )?,
        };
        let autoattack_dir = a
            .autoattack_dir
            .clone()
            .or_else(|| std::env::var_os("AUTOATTACK_DIR").map(PathBuf::from))
            .filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = &autoattack_dir {
            anyhow::ensure!(
                d.join("autoattack").is_dir(),
                "--autoattack-dir / AUTOATTACK_DIR {}: not a checkout of fra31/auto-attack (it \
                 has no autoattack/ package folder)",
                d.display()
            );
        }
        Ok(Twin {
            python,
            script,
            autoattack_dir,
        })
    }

    /// Why the twin cannot run `arch` (`None` when it can).
    pub fn unsupported(arch: &ArchSpec) -> Option<String> {
        let default = NormSpec::default();
        if arch.name == "torchscript" {
            None
        } else if !TWIN_ARCHITECTURES.contains(&arch.name.as_str()) {
            Some(format!(
                "the PyTorch twin has no module for '{}' (only {})",
                arch.name,
                TWIN_ARCHITECTURES.join(", ")
            ))
        } else if arch.norm.kind != NormKind::Batch
            || arch.norm.ns_domains != 1
            || arch.norm.ap_domains != 1
            || arch.norm.eps != default.eps
            || arch.norm.momentum != default.momentum
            || arch.heads != 1
        {
            Some(
                "the PyTorch twin models plain BatchNorm (eps 1e-5, momentum 0.1, one domain) \
                 with one head; this model differs"
                    .into(),
            )
        } else {
            None
        }
    }

    /// Run the twin on `part` of `s` (points in `data_file`); `gemm` asks it to measure its GEMM
    /// rate too. Its stderr passes through; its stdout JSON lines are returned.
    pub fn run(
        &self,
        part: Part,
        s: &Subject,
        o: &BenchPlan,
        data_file: &Path,
        threads: i32,
        gemm: bool,
    ) -> Result<TwinRun> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .args(["--parts", part.name(), "--arch", &s.arch.name])
            .arg("--in-channels")
            .arg(s.arch.in_channels.to_string())
            .arg("--num-classes")
            .arg(s.arch.num_classes.to_string())
            .arg("--weights")
            .arg(&s.weights)
            .arg("--data")
            .arg(data_file)
            .args(["--n", &o.n.to_string()])
            .args(["--batch-size", &o.batch_size.to_string()])
            .args(["--eval-batch-size", &o.eval_batch_size.to_string()])
            .args(["--iters", &o.iters.to_string()])
            .args(["--warmup", &o.warmup.to_string()])
            .args(["--steps", &o.steps.to_string()])
            .args(["--eps", &format!("{:e}", s.eps)])
            .args(["--at-step-size", &format!("{:e}", s.at_step_size())])
            .args(["--pgd-steps", &EVAL_STEPS.to_string()])
            .args(["--pgd-step-size", &format!("{:e}", s.pgd_step_size())])
            .args(["--threads", &threads.to_string()])
            .args(["--device", &device_name(o.device)])
            .args(["--seed", &o.seed.to_string()])
            .env("OMP_NUM_THREADS", threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if o.channels_last {
            cmd.arg("--channels-last");
        }
        if gemm {
            cmd.arg("--gemm");
        }
        if let Some(d) = &self.autoattack_dir {
            cmd.arg("--autoattack-dir").arg(d);
        }
        let out = cmd.output().with_context(|| {
            format!(
                "cannot run the PyTorch twin with --pytorch {}; give the interpreter of a \
                 Python with torch and safetensors, or --no-pytorch",
                self.python.display()
            )
        })?;
        anyhow::ensure!(
            out.status.success(),
            "the PyTorch twin ({} {}) failed on part {} with {} (its messages are above); give \
             --no-pytorch to time advtrain only",
            self.python.display(),
            self.script.display(),
            part.name(),
            out.status
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("the PyTorch twin printed a line that is not JSON")?;
        let find = |name: &str| {
            lines
                .iter()
                .find(|v| v["part"] == name)
                .cloned()
                .with_context(|| format!("the PyTorch twin printed no '{name}' line"))
        };
        Ok(TwinRun {
            info: find("info")?,
            part: find(part.name())?,
        })
    }
}
