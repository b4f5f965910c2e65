//! MixACM (Awais et al., NeurIPS 2021; METHODS.md section 2): robustness transfer from a frozen
//! robust teacher T to a student S without attacks. With mixup x~ = m x_i + (1-m) x_j,
//! m ~ Beta(alpha, alpha) (one m per batch, j a random permutation of the batch):
//!
//! L = m CE(S(x~), y_i) + (1-m) CE(S(x~), y_j)
//!   + alpha_kd * tau^2 * KL(softmax(T(x~)/tau) || softmax(S(x~)/tau))
//!   + beta_acm * sum_{(s,t) in pairs} D(norm(ACM(P_s F_S^s)), norm(ACM(F_T^t)))
//!
//! where F^l are stage outputs, P_s a 1x1 projection (only when channel counts differ), ACM a
//! per-channel map, norm a row normalisation and D a distance. Switches give the ablation
//! ladder ([`ABLATION_RUNGS`]). The teacher runs in eval mode under `no_grad`.

use crate::checkpoint::import;
use crate::nn::models::Model;
use crate::nn::{ArchSpec, Ctx, Mode, Network};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

/// Per-channel activated channel map of a feature map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// `a_c = mean_{h,w} relu(F_{c,h,w})`.
    MeanRelu,
    /// `a_c = mean_{h,w} |F_{c,h,w}|^p`.
    MeanAbsPow,
    /// `a = softmax_c(mean_{h,w} F_{c,h,w})`.
    ChannelSoftmax,
}

/// Row normalisation of the maps before the distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalise {
    /// `a_i / max(||a_i||_2, 1e-12)`.
    L2,
    None,
}

/// Distance between student and teacher maps [N, C].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distance {
    /// `mean_i ||a_i - b_i||_2`.
    L2,
    /// `mean_i sum_c |a_ic - b_ic|`.
    L1,
    /// `mean_{i,c} (a_ic - b_ic)^2`.
    Mse,
}

/// Inputs of the distillation terms (KD and ACM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KdInputs {
    /// The inputs the student's CE sees (mixed when mixup is on).
    Mixed,
    /// The clean batch (an extra student pass in `TrainFrozen` mode when mixup is on).
    Clean,
}

/// `train.mixacm`: the MixACM objective. Defaults are the full method ([paper] structure,
/// [open] values): mixup alpha 1, KD with alpha_kd 1 and tau 4, ACM mean-relu + L2 norm +
/// L2 distance with beta_acm 1 at stages 2-4 of a ResNet ([[1,1],[2,2],[3,3]]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixAcmSpec {
    /// Teacher weights (.safetensors). Our checkpoint (with its `.json` sidecar, sha256 checked)
    /// or, with `teacher_arch`, a foreign PyTorch state dict. Required when `kd` or `acm`.
    #[serde(default)]
    pub teacher: Option<PathBuf>,
    /// Architecture of a foreign teacher file (an inline model table, as `[model]`); when set,
    /// the file is loaded by name mapping (`module.` stripped, aliases) and any sidecar ignored.
    #[serde(default)]
    pub teacher_arch: Option<ArchSpec>,
    /// Mix the inputs (default true).
    #[serde(default = "yes")]
    pub mixup: bool,
    /// Beta(alpha, alpha) of the mixing weight (default 1.0, i.e. uniform).
    #[serde(default = "one")]
    pub mixup_alpha: f64,
    /// Soft-label distillation term (default true).
    #[serde(default = "yes")]
    pub kd: bool,
    /// Inputs of the KD and ACM terms (default mixed).
    #[serde(default = "mixed")]
    pub kd_inputs: KdInputs,
    /// KD weight (default 1.0).
    #[serde(default = "one")]
    pub alpha_kd: f64,
    /// KD temperature (default 4.0).
    #[serde(default = "four")]
    pub tau: f64,
    /// Activated-channel-map term (default true).
    #[serde(default = "yes")]
    pub acm: bool,
    /// ACM weight (default 1.0).
    #[serde(default = "one")]
    pub beta_acm: f64,
    /// ACM mapping (default mean-relu).
    #[serde(default = "mean_relu")]
    pub mapping: Mapping,
    /// Exponent of mean-abs-pow (default 2; >= 1).
    #[serde(default = "two")]
    pub p: f64,
    /// Row normalisation (default l2).
    #[serde(default = "l2n")]
    pub normalise: Normalise,
    /// Distance (default l2).
    #[serde(default = "l2d")]
    pub distance: Distance,
    /// (student stage, teacher stage) index pairs into `Forward::stages`
    /// (default [[1,1],[2,2],[3,3]]: the outputs of ResNet stages 2, 3, 4).
    #[serde(default = "default_pairs")]
    pub pairs: Vec<[usize; 2]>,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn two() -> f64 {
    2.0
}
fn four() -> f64 {
    4.0
}
fn mixed() -> KdInputs {
    KdInputs::Mixed
}
fn mean_relu() -> Mapping {
    Mapping::MeanRelu
}
fn l2n() -> Normalise {
    Normalise::L2
}
fn l2d() -> Distance {
    Distance::L2
}
fn default_pairs() -> Vec<[usize; 2]> {
    vec![[1, 1], [2, 2], [3, 3]]
}

impl Default for MixAcmSpec {
    fn default() -> Self {
        MixAcmSpec {
            teacher: None,
            teacher_arch: None,
            mixup: true,
            mixup_alpha: 1.0,
            kd: true,
            kd_inputs: KdInputs::Mixed,
            alpha_kd: 1.0,
            tau: 4.0,
            acm: true,
            beta_acm: 1.0,
            mapping: Mapping::MeanRelu,
            p: 2.0,
            normalise: Normalise::L2,
            distance: Distance::L2,
            pairs: default_pairs(),
        }
    }
}

/// The ablation ladder (METHODS.md E15), in order: mixup only (plain CE on mixed inputs), KD
/// only on clean inputs, mixup + KD, mixup + KD + ACM (full MixACM), ACM without mixup.
pub const ABLATION_RUNGS: [&str; 5] = [
    "mixup-only",
    "kd-clean",
    "mixup-kd",
    "mixup-kd-acm",
    "acm-only",
];

impl MixAcmSpec {
    /// Errors name the field (`train.mixacm.<field>`) and what was expected.
    pub fn validate(&self) -> Result<()> {
        let f = |name: &str, ok: bool, want: &str, got: String| -> Result<()> {
            anyhow::ensure!(ok, "train.mixacm.{name}: expected {want}, got {got}");
            Ok(())
        };
        let m = self.mixup_alpha;
        f(
            "mixup_alpha",
            m.is_finite() && m > 0.0,
            "a number > 0",
            m.to_string(),
        )?;
        let a = self.alpha_kd;
        f(
            "alpha_kd",
            a.is_finite() && a >= 0.0,
            "a number >= 0",
            a.to_string(),
        )?;
        let t = self.tau;
        f(
            "tau",
            t.is_finite() && t > 0.0,
            "a number > 0",
            t.to_string(),
        )?;
        let b = self.beta_acm;
        f(
            "beta_acm",
            b.is_finite() && b >= 0.0,
            "a number >= 0",
            b.to_string(),
        )?;
        let p = self.p;
        let want_p = "a number >= 1 (|F|^p has no gradient at 0 below 1)";
        f("p", p.is_finite() && p >= 1.0, want_p, p.to_string())?;
        if self.acm {
            let want = "at least one [student_stage, teacher_stage] pair when acm = true";
            f("pairs", !self.pairs.is_empty(), want, "[]".into())?;
        }
        for (i, pair) in self.pairs.iter().enumerate() {
            if self.pairs[..i].contains(pair) {
                anyhow::bail!("train.mixacm.pairs: expected distinct pairs, {pair:?} repeats");
            }
        }
        if self.kd || self.acm {
            let want = "a teacher checkpoint path when kd or acm is on";
            let ok = self
                .teacher
                .as_ref()
                .is_some_and(|p| !p.as_os_str().is_empty());
            f("teacher", ok, want, "none".into())?;
        }
        if let Some(arch) = &self.teacher_arch {
            let known = crate::nn::models::ARCHITECTURES;
            let want = format!("one of {}", known.join(", "));
            let ok = known.contains(&arch.name.as_str());
            f("teacher_arch.name", ok, &want, format!("'{}'", arch.name))?;
        }
        Ok(())
    }

    /// This spec with the switches (mixup, kd, kd_inputs, acm) of ablation rung `rung`
    /// ([`ABLATION_RUNGS`]); teacher, weights and ACM settings are kept.
    pub fn with_rung(&self, rung: &str) -> Result<MixAcmSpec> {
        let (mixup, kd, kd_inputs, acm) = match rung {
            "mixup-only" => (true, false, KdInputs::Mixed, false),
            "kd-clean" => (false, true, KdInputs::Clean, false),
            "mixup-kd" => (true, true, KdInputs::Mixed, false),
            "mixup-kd-acm" => (true, true, KdInputs::Mixed, true),
            "acm-only" => (false, false, KdInputs::Clean, true),
            other => anyhow::bail!(
                "unknown MixACM ablation rung '{other}': expected one of {}",
                ABLATION_RUNGS.join(", ")
            ),
        };
        Ok(MixAcmSpec {
            mixup,
            kd,
            kd_inputs,
            acm,
            ..self.clone()
        })
    }
}

/// The five rungs of the ablation ladder built on `base`, by name.
pub fn ablation_ladder(base: &MixAcmSpec) -> Vec<(&'static str, MixAcmSpec)> {
    ABLATION_RUNGS
        .iter()
        .map(|&r| (r, base.with_rung(r).expect("known rung")))
        .collect()
}

/// The frozen teacher of `spec` on `device`: from our checkpoint ([`crate::checkpoint::load`]:
/// sidecar + sha256, the one path eval and the analyses load through) or, with
/// `teacher_arch`, from a foreign state dict ([`import::load_foreign`]). Its variables no
/// longer require gradients.
pub fn load_teacher(spec: &MixAcmSpec, device: Device) -> Result<Network> {
    let file = spec
        .teacher
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("train.mixacm.teacher: no teacher file given"))?;
    anyhow::ensure!(
        file.exists(),
        "train.mixacm.teacher: {} does not exist",
        file.display()
    );
    let mut net = match &spec.teacher_arch {
        Some(arch) => import::load_foreign(file, arch, device)?,
        None => {
            let (_, _, side) = crate::checkpoint::paths(file);
            anyhow::ensure!(
                side.exists(),
                "train.mixacm.teacher: {} has no sidecar {} (a foreign PyTorch file needs \
                 train.mixacm.teacher_arch)",
                file.display(),
                side.display()
            );
            crate::checkpoint::load(file, device)
                .with_context(|| format!("train.mixacm.teacher: loading {}", file.display()))?
                .net
        }
    };
    net.vs.freeze();
    Ok(net)
}

/// ACM of a feature map `f` [N,C,H,W] -> [N,C] (see [`Mapping`]; `p` for mean-abs-pow).
pub fn acm_map(f: &Tensor, mapping: Mapping, p: f64) -> Tensor {
    assert_eq!(f.dim(), 4, "acm_map expects [N,C,H,W], got {:?}", f.size());
    let hw = [2i64, 3];
    match mapping {
        Mapping::MeanRelu => f.relu().mean_dim(&hw[..], false, Kind::Float),
        Mapping::MeanAbsPow => f
            .abs()
            .pow_tensor_scalar(p)
            .mean_dim(&hw[..], false, Kind::Float),
        Mapping::ChannelSoftmax => f
            .mean_dim(&hw[..], false, Kind::Float)
            .softmax(1, Kind::Float),
    }
}

/// Rows of `a` [N,C]: L2 `a_i / max(||a_i||_2, 1e-12)`, or unchanged.
pub fn normalise_rows(a: &Tensor, n: Normalise) -> Tensor {
    match n {
        Normalise::L2 => {
            let norm = a.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
            a / norm.clamp_min(1e-12)
        }
        Normalise::None => a.shallow_clone(),
    }
}

/// Scalar distance of `a`, `b` [N,C] (see [`Distance`]).
pub fn acm_distance(a: &Tensor, b: &Tensor, d: Distance) -> Tensor {
    let diff = a - b;
    let rows = [1i64];
    match d {
        Distance::L2 => diff
            .norm_scalaropt_dim(2.0, rows.as_slice(), false)
            .mean(Kind::Float),
        Distance::L1 => diff
            .abs()
            .sum_dim_intlist(rows.as_slice(), false, Kind::Float)
            .mean(Kind::Float),
        Distance::Mse => diff.square().mean(Kind::Float),
    }
}

/// `tau^2 * mean_i sum_k q_ik (log q_ik - log p_ik)`, `q = softmax(t/tau)` (teacher, detached),
/// `p = softmax(s/tau)`: KL(teacher || student) at temperature tau.
pub fn kd_loss(student_logits: &Tensor, teacher_logits: &Tensor, tau: f64) -> Tensor {
    let log_q = (teacher_logits.detach() / tau).log_softmax(-1, Kind::Float);
    let log_p = (student_logits / tau).log_softmax(-1, Kind::Float);
    let kl = (log_q.exp() * (log_q - log_p)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    kl.mean(Kind::Float) * (tau * tau)
}

/// A mixed batch: `x = m x_in + (1-m) x_in[perm]`, labels `y_a = y`, `y_b = y[perm]`.
pub struct Mixup {
    pub x: Tensor,
    pub y_a: Tensor,
    pub y_b: Tensor,
    pub m: f64,
    /// The partners' rows (data-parallel training: rows of the global batch, `attack::draw`).
    pub perm: Tensor,
}

/// One draw of Beta(alpha, alpha) from torch's (CPU) generator: `G1 / (G1 + G2)`,
/// `G ~ Gamma(alpha, 1)` (both underflowing, at tiny alpha, gives a fair 0/1 coin).
pub fn sample_beta(alpha: f64) -> f64 {
    let g = Tensor::full([2], alpha, (Kind::Double, Device::Cpu)).internal_standard_gamma();
    let (g1, g2) = (g.double_value(&[0]), g.double_value(&[1]));
    let m = g1 / (g1 + g2);
    if m.is_finite() {
        m.clamp(0.0, 1.0)
    } else if g1 == g2 {
        (Tensor::rand([1], (Kind::Double, Device::Cpu)).double_value(&[0]) < 0.5) as u8 as f64
    } else {
        (g1 > g2) as u8 as f64
    }
}

/// Mixup of the batch (`x` [N,...], labels `y` [N]) with one m ~ Beta(alpha, alpha) and a random
/// permutation partner, both from torch's generators (seeded by `tch::manual_seed`).
pub fn sample_mixup(x: &Tensor, y: &Tensor, alpha: f64) -> Mixup {
    let m = sample_beta(alpha);
    // Data-parallel: the single process's partners in the global batch (attack::draw).
    let (xp, y_b, perm) = crate::attack::draw::partners(x, y);
    Mixup {
        x: x * m + xp * (1.0 - m),
        y_a: y.shallow_clone(),
        y_b,
        m,
        perm,
    }
}

/// Mean cross-entropy of `logits` [N,K] against labels `y` [N].
pub fn ce(logits: &Tensor, y: &Tensor) -> Tensor {
    logits
        .log_softmax(-1, Kind::Float)
        .g_nll_loss::<Tensor>(y, None, Reduction::Mean, -100)
}

/// `m CE(logits, y_a) + (1-m) CE(logits, y_b)`.
pub fn mixup_ce(logits: &Tensor, mix: &Mixup) -> Tensor {
    ce(logits, &mix.y_a) * mix.m + ce(logits, &mix.y_b) * (1.0 - mix.m)
}

/// A 1x1 convolution (no bias) from a student stage's channels to the teacher's.
pub struct Projection {
    pub conv: nn::Conv2D,
    pub cin: i64,
    pub cout: i64,
}

impl Projection {
    pub fn new(p: nn::Path, cin: i64, cout: i64) -> Projection {
        let cfg = nn::ConvConfig {
            bias: false,
            ..Default::default()
        };
        Projection {
            conv: nn::conv2d(p, cin, cout, 1, cfg),
            cin,
            cout,
        }
    }

    pub fn forward(&self, f: &Tensor) -> Tensor {
        self.conv.forward(f)
    }
}

/// One optional [`Projection`] per configured pair, in their own variable store (names
/// `proj.<k>.weight`, k = pair index); train `vs` with the student, it is not part of the
/// student's checkpoint.
pub struct Projections {
    pub vs: nn::VarStore,
    pub per_pair: Vec<Option<Projection>>,
}

/// Stage channel counts of `net` from one eval-mode forward of a blank `hw` image.
pub fn stage_channels(net: &Network, hw: [i64; 2]) -> Vec<i64> {
    net.probe_stages(hw).iter().map(|s| s.size()[1]).collect()
}

impl Projections {
    /// No projections (for specs without ACM, or when every pair's channels agree).
    pub fn none(spec: &MixAcmSpec, device: Device) -> Projections {
        Projections {
            vs: nn::VarStore::new(device),
            per_pair: spec.pairs.iter().map(|_| None).collect(),
        }
    }

    /// Check the pairing (same classes and input channels, stage indices in range) and build
    /// a projection for each pair whose channel counts differ. `hw`: input height and width.
    pub fn new(
        spec: &MixAcmSpec,
        student: &Network,
        teacher: &Network,
        hw: [i64; 2],
    ) -> Result<Projections> {
        let (sa, ta) = (&student.arch, &teacher.arch);
        anyhow::ensure!(
            sa.num_classes == ta.num_classes && sa.in_channels == ta.in_channels,
            "train.mixacm.teacher: the teacher ({}, {} classes, {} input channels) does not \
             match the student ({}, {} classes, {} input channels)",
            ta.name,
            ta.num_classes,
            ta.in_channels,
            sa.name,
            sa.num_classes,
            sa.in_channels
        );
        let mut out = Projections::none(spec, student.vs.device());
        if !spec.acm {
            return Ok(out);
        }
        let (sc, tc) = (stage_channels(student, hw), stage_channels(teacher, hw));
        for (k, &[s, t]) in spec.pairs.iter().enumerate() {
            let bad = |who: &str, i: usize, n: usize, name: &str| {
                anyhow::anyhow!(
                    "train.mixacm.pairs[{k}]: {who} stage {i} does not exist ({who} {name} has \
                     {n} stages, 0..{})",
                    n.saturating_sub(1)
                )
            };
            let cs = *sc
                .get(s)
                .ok_or_else(|| bad("student", s, sc.len(), &sa.name))?;
            let ct = *tc
                .get(t)
                .ok_or_else(|| bad("teacher", t, tc.len(), &ta.name))?;
            if cs != ct {
                let p = out.vs.root() / "proj" / k;
                out.per_pair[k] = Some(Projection::new(p, cs, ct));
            }
        }
        Ok(out)
    }
}

/// The weighted terms of one MixACM loss (detached scalars; disabled terms are 0).
pub struct MixAcmParts {
    /// Mixup CE (or plain CE without mixup).
    pub ce: Tensor,
    /// `alpha_kd * kd_loss`.
    pub kd: Tensor,
    /// `beta_acm * sum_pairs D`.
    pub acm: Tensor,
    /// The mixing weight, when mixup is on.
    pub m: Option<f64>,
    /// The student's logits on its CE inputs (detached).
    pub logits: Tensor,
}

fn acm_term(
    spec: &MixAcmSpec,
    projections: &Projections,
    fs: &[Tensor],
    ft: &[Tensor],
) -> Result<Tensor> {
    let mut total = Tensor::zeros([], (Kind::Float, fs[0].device()));
    for (k, &[s, t]) in spec.pairs.iter().enumerate() {
        let (a, b) = match (fs.get(s), ft.get(t)) {
            (Some(a), Some(b)) => (a, b),
            _ => anyhow::bail!(
                "train.mixacm.pairs[{k}] = [{s}, {t}]: the student has {} stages, the teacher {}",
                fs.len(),
                ft.len()
            ),
        };
        let a = match projections.per_pair.get(k).and_then(Option::as_ref) {
            Some(p) => p.forward(a),
            None => a.shallow_clone(),
        };
        anyhow::ensure!(
            a.size()[1] == b.size()[1],
            "train.mixacm.pairs[{k}]: student stage {s} has {} channels, teacher stage {t} {} \
             and there is no projection (build Projections::new)",
            a.size()[1],
            b.size()[1]
        );
        let ma = normalise_rows(&acm_map(&a, spec.mapping, spec.p), spec.normalise);
        let mb = normalise_rows(&acm_map(b, spec.mapping, spec.p), spec.normalise);
        total = total + acm_distance(&ma, &mb, spec.distance);
    }
    Ok(total)
}

/// The MixACM loss of batch (`x`, `y`) and its parts. The student runs in `mode` (`Train`, or
/// `TrainFrozen` for a proxy pass); its extra clean pass (kd_inputs = clean with mixup) runs in
/// `TrainFrozen`, so running statistics see each step's CE inputs once. The teacher runs in
/// eval mode under `no_grad` (no gradient, BN statistics unchanged) and only when KD or ACM is
/// on. Mixup draws from torch's generators.
pub fn mixacm_loss(
    spec: &MixAcmSpec,
    student: &dyn Model,
    teacher: &dyn Model,
    projections: &Projections,
    x: &Tensor,
    y: &Tensor,
    mode: Mode,
) -> Result<(Tensor, MixAcmParts)> {
    let ctx = Ctx::train().with_mode(mode);
    let zero = || Tensor::zeros([], (Kind::Float, x.device()));
    let mix = spec.mixup.then(|| sample_mixup(x, y, spec.mixup_alpha));
    let x_ce = mix
        .as_ref()
        .map_or_else(|| x.shallow_clone(), |m| m.x.shallow_clone());
    let out = student.forward_stages(&x_ce, &ctx);
    let ce_term = match &mix {
        Some(m) => mixup_ce(&out.logits, m),
        None => ce(&out.logits, y),
    };
    let mut loss = ce_term.shallow_clone();
    let (mut kd_part, mut acm_part) = (zero(), zero());
    if spec.kd || spec.acm {
        let extra = spec.kd_inputs == KdInputs::Clean && mix.is_some();
        let clean_out;
        let (x_d, s_out) = if extra {
            let frozen = ctx.with_mode(if mode == Mode::Eval {
                mode
            } else {
                Mode::TrainFrozen
            });
            clean_out = student.forward_stages(x, &frozen);
            (x, &clean_out)
        } else {
            (&x_ce, &out)
        };
        let t_out = tch::no_grad(|| teacher.forward_stages(x_d, &Ctx::eval()));
        if spec.kd {
            let kd = kd_loss(&s_out.logits, &t_out.logits, spec.tau) * spec.alpha_kd;
            kd_part = kd.detach();
            loss = loss + kd;
        }
        if spec.acm {
            let acm = acm_term(spec, projections, &s_out.stages, &t_out.stages)? * spec.beta_acm;
            acm_part = acm.detach();
            loss = loss + acm;
        }
    }
    let parts = MixAcmParts {
        ce: ce_term.detach(),
        kd: kd_part,
        acm: acm_part,
        m: mix.as_ref().map(|m| m.m),
        logits: out.logits.detach(),
    };
    Ok((loss, parts))
}
