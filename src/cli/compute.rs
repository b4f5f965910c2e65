//! The global compute flags (`--precision-attack`, `--no-fold-bn`, ...) and their two uses: a
//! [`crate::compute::Compute`] value for every command but `train`, recipe overrides for it.

/// Compute settings on the command line ([`crate::compute`]); for `train` they override the
/// recipe's `[compute]` table.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ComputeArgs {
    /// Precision of attack generation: fp32 (default) or bf16 (autocast).
    #[arg(long, global = true, value_parser = crate::choice::choice::<crate::compute::Precision>())]
    pub precision_attack: Option<crate::compute::Precision>,
    /// Precision of the training forward/backward: fp32 (default) or bf16 (autocast).
    #[arg(long, global = true, value_parser = crate::choice::choice::<crate::compute::Precision>())]
    pub precision_train: Option<crate::compute::Precision>,
    /// Do not fold eval-mode BatchNorm into the convolutions in attacks (folding computes the
    /// same function to float rounding, faster; docs/BENCHMARKS.md).
    #[arg(long, global = true)]
    pub no_fold_bn: bool,
    /// Rows per forward/backward micro-batch of eval-mode attacks on CPU (0 = whole batch;
    /// default 128).
    #[arg(long, global = true, value_name = "ROWS")]
    pub attack_chunk: Option<usize>,
    /// TensorFloat-32 on CUDA: pytorch (default: convolutions TF32, matmuls fp32), on, off.
    #[arg(long, global = true, value_parser = crate::choice::choice::<crate::compute::Tf32>())]
    pub tf32: Option<crate::compute::Tf32>,
    /// Deterministic algorithms (CUDA: deterministic cuDNN, no benchmark search,
    /// CUBLAS_WORKSPACE_CONFIG); the CPU is deterministic already.
    #[arg(long, global = true)]
    pub deterministic: bool,
}

impl ComputeArgs {
    /// `base` with the flags given applied.
    pub fn apply(&self, base: crate::compute::Compute) -> crate::compute::Compute {
        let mut c = base;
        if let Some(p) = self.precision_attack {
            c.precision_attack = p;
        }
        if let Some(p) = self.precision_train {
            c.precision_train = p;
        }
        if self.no_fold_bn {
            c.fold_bn = false;
        }
        if let Some(n) = self.attack_chunk {
            c.attack_chunk = n;
        }
        if let Some(t) = self.tf32 {
            c.tf32 = t;
        }
        if self.deterministic {
            c.deterministic = true;
        }
        c
    }

    /// The flags given, as recipe `--set` overrides.
    pub fn as_overrides(&self) -> Vec<String> {
        let mut v = vec![];
        if let Some(p) = self.precision_attack {
            v.push(format!("compute.precision_attack=\"{p}\""));
        }
        if let Some(p) = self.precision_train {
            v.push(format!("compute.precision_train=\"{p}\""));
        }
        if self.no_fold_bn {
            v.push("compute.fold_bn=false".into());
        }
        if let Some(n) = self.attack_chunk {
            v.push(format!("compute.attack_chunk={n}"));
        }
        if let Some(t) = self.tf32 {
            v.push(format!("compute.tf32=\"{t}\""));
        }
        if self.deterministic {
            v.push("compute.deterministic=true".into());
        }
        v
    }
}
