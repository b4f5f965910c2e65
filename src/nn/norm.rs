//! The route-aware normalisation layer every model is built on.
//!
//! A BN layer computes `y = gamma * (x - mu) / sqrt(var + eps) + beta` per channel. The
//! statistics NS = (mu, var) and the affine parameters AP = (gamma, beta) can each be held
//! once (shared) or once per domain; every forward call names, through a [`Route`], which
//! domain's NS and which domain's AP to use, and through a [`Mode`] whether batch or
//! running statistics are used and whether the running statistics are updated.
//! Multi-domain variants (Dual BN, Dual-AP, Dual-NS, ...) are configurations of this one type.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// Which statistics are used and whether running statistics move (METHODS.md section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Batch statistics; running statistics updated by EMA.
    Train,
    /// Running statistics.
    Eval,
    /// Batch statistics; running statistics left untouched.
    TrainFrozen,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Mode::Train),
            "eval" => Ok(Mode::Eval),
            "train-frozen" => Ok(Mode::TrainFrozen),
            _ => Err(format!(
                "unknown BN mode '{s}': expected train, eval or train-frozen"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Train => "train",
            Mode::Eval => "eval",
            Mode::TrainFrozen => "train-frozen",
        })
    }
}

/// Domain index: 0 = clean / main, 1 = adversarial / auxiliary.
pub type Domain = usize;
/// Index of the clean (main) domain.
pub const CLEAN: Domain = 0;
/// Index of the adversarial (auxiliary) domain.
pub const ADV: Domain = 1;

/// Selects the statistics source and the affine source independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Route {
    /// Domain whose NS (batch-stat bookkeeping and running stats) is used.
    pub ns: Domain,
    /// Domain whose AP (gamma, beta) is used.
    pub ap: Domain,
}

impl Route {
    /// Route through one domain for both NS and AP.
    pub fn domain(d: Domain) -> Route {
        Route { ns: d, ap: d }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ns={},ap={}", domain_name(self.ns), domain_name(self.ap))
    }
}

/// Human name of a domain index.
pub fn domain_name(d: Domain) -> String {
    match d {
        CLEAN => "clean".into(),
        ADV => "adv".into(),
        k => k.to_string(),
    }
}

/// Parse a domain name (`clean`, `adv`, `main`, `aux` or an index).
pub fn parse_domain(s: &str) -> Result<Domain, String> {
    match s {
        "clean" | "main" => Ok(CLEAN),
        "adv" | "aux" => Ok(ADV),
        _ => s
            .parse()
            .map_err(|_| format!("unknown domain '{s}': expected clean, adv or an index")),
    }
}

impl std::str::FromStr for Route {
    type Err = String;
    /// Accepts `clean`, `adv`, or `ns=clean,ap=adv`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains('=') {
            return parse_domain(s).map(Route::domain);
        }
        let mut route = Route::default();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("bad route part '{part}'"))?;
            match k.trim() {
                "ns" => route.ns = parse_domain(v.trim())?,
                "ap" => route.ap = parse_domain(v.trim())?,
                other => return Err(format!("unknown route key '{other}': expected ns or ap")),
            }
        }
        Ok(route)
    }
}

/// Everything a forward pass needs besides the input: the route and the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ctx {
    pub route: Route,
    pub mode: Mode,
}

impl Ctx {
    pub fn new(route: Route, mode: Mode) -> Ctx {
        Ctx { route, mode }
    }
    /// Single-domain training forward.
    pub fn train() -> Ctx {
        Ctx::new(Route::default(), Mode::Train)
    }
    /// Single-domain inference forward.
    pub fn eval() -> Ctx {
        Ctx::new(Route::default(), Mode::Eval)
    }
    pub fn with_mode(self, mode: Mode) -> Ctx {
        Ctx { mode, ..self }
    }
}

/// The normalisation family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// BatchNorm (the only family with statistics, hence with NS domains and modes).
    Batch,
    /// GroupNorm with `NormSpec::groups` groups.
    Group,
    /// LayerNorm over (C, H, W) = GroupNorm with one group.
    Layer,
    /// InstanceNorm with affine = GroupNorm with one group per channel.
    Instance,
    /// Identity.
    None,
}

/// Configuration of every norm layer of a model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormSpec {
    #[serde(default = "default_kind")]
    pub kind: NormKind,
    /// Groups for `kind = "group"`.
    #[serde(default = "default_groups")]
    pub groups: i64,
    /// Number of statistics sets (1 = shared).
    #[serde(default = "one")]
    pub ns_domains: usize,
    /// Number of affine sets (1 = shared).
    #[serde(default = "one")]
    pub ap_domains: usize,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// EMA momentum, PyTorch convention: running = (1 - m) * running + m * batch.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
}

fn default_kind() -> NormKind {
    NormKind::Batch
}
fn default_groups() -> i64 {
    32
}
fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_momentum() -> f64 {
    0.1
}

impl Default for NormSpec {
    fn default() -> Self {
        NormSpec {
            kind: NormKind::Batch,
            groups: 32,
            ns_domains: 1,
            ap_domains: 1,
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

impl NormSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.ns_domains == 0 || self.ap_domains == 0 {
            return Err("norm.ns_domains and norm.ap_domains must be >= 1".into());
        }
        if !(self.eps > 0.0) {
            return Err(format!("norm.eps must be > 0, got {}", self.eps));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(format!(
                "norm.momentum must be in [0,1], got {}",
                self.momentum
            ));
        }
        if self.kind == NormKind::Group && self.groups < 1 {
            return Err(format!("norm.groups must be >= 1, got {}", self.groups));
        }
        Ok(())
    }
}

/// Running statistics of one domain (PyTorch names: running_mean, running_var, num_batches_tracked).
#[derive(Debug)]
pub struct Stats {
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
}

/// Affine parameters of one domain (PyTorch names: weight = gamma, bias = beta).
#[derive(Debug)]
pub struct Affine {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// A route-aware normalisation layer over `channels` channels (2-D [N,C] or 4-D [N,C,H,W] input).
#[derive(Debug)]
pub struct Norm {
    pub spec: NormSpec,
    pub channels: i64,
    pub stats: Vec<Stats>,
    pub affine: Vec<Affine>,
}

/// Sub-path for set `k` of `n`: the layer itself when shared (`bn1.weight`), else `bn1.k.weight`.
fn set_path<'a>(p: &nn::Path<'a>, k: usize, n: usize) -> nn::Path<'a> {
    if n == 1 {
        p.clone()
    } else {
        p.sub(k.to_string())
    }
}

impl Norm {
    /// Create the layer's variables under `p`. Gamma is initialised to 1 and beta to 0 explicitly.
    pub fn new(p: &nn::Path, channels: i64, spec: NormSpec) -> Norm {
        let has_stats = spec.kind == NormKind::Batch;
        let has_affine = spec.kind != NormKind::None;
        let stats = if has_stats {
            (0..spec.ns_domains)
                .map(|k| {
                    let q = set_path(p, k, spec.ns_domains);
                    Stats {
                        running_mean: q.zeros_no_train("running_mean", &[channels]),
                        running_var: q.ones_no_train("running_var", &[channels]),
                        num_batches_tracked: q.add(
                            "num_batches_tracked",
                            Tensor::zeros([], (Kind::Int64, p.device())),
                            false,
                        ),
                    }
                })
                .collect()
        } else {
            vec![]
        };
        let affine = if has_affine {
            (0..spec.ap_domains)
                .map(|k| {
                    let q = set_path(p, k, spec.ap_domains);
                    Affine {
                        weight: q.var("weight", &[channels], nn::Init::Const(1.0)),
                        bias: q.var("bias", &[channels], nn::Init::Const(0.0)),
                    }
                })
                .collect()
        } else {
            vec![]
        };
        Norm {
            spec,
            channels,
            stats,
            affine,
        }
    }

    fn pick<'s, T>(sets: &'s [T], d: Domain, what: &str) -> &'s T {
        if sets.len() == 1 {
            &sets[0]
        } else {
            sets.get(d).unwrap_or_else(|| {
                panic!(
                    "route asks for {what} domain {d} but the layer has {} sets",
                    sets.len()
                )
            })
        }
    }

    /// Error when `route` names a domain this layer has no set for.
    pub fn check_route(&self, route: Route) -> Result<(), String> {
        let ns = self.stats.len();
        let ap = self.affine.len();
        if ns > 1 && route.ns >= ns {
            return Err(format!(
                "NS domain {} requested, the layer has {ns} statistics sets",
                route.ns
            ));
        }
        if ap > 1 && route.ap >= ap {
            return Err(format!(
                "AP domain {} requested, the layer has {ap} affine sets",
                route.ap
            ));
        }
        Ok(())
    }

    /// Statistics set used for domain `d` (the shared set when NS is not split).
    pub fn stats_for(&self, d: Domain) -> &Stats {
        Self::pick(&self.stats, d, "NS")
    }

    /// Affine set used for domain `d` (the shared set when AP is not split).
    pub fn affine_for(&self, d: Domain) -> &Affine {
        Self::pick(&self.affine, d, "AP")
    }

    /// Normalise `x` through `ctx.route` in `ctx.mode`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let cudnn = x.device().is_cuda();
        let affine = (!self.affine.is_empty()).then(|| self.affine_for(ctx.route.ap));
        let (w, b) = match affine {
            Some(a) => (Some(&a.weight), Some(&a.bias)),
            None => (None, None),
        };
        match self.spec.kind {
            NormKind::None => x.shallow_clone(),
            NormKind::Group => x.group_norm(self.spec.groups, w, b, self.spec.eps, cudnn),
            NormKind::Layer => x.group_norm(1, w, b, self.spec.eps, cudnn),
            NormKind::Instance => x.group_norm(self.channels, w, b, self.spec.eps, cudnn),
            NormKind::Batch => {
                let s = self.stats_for(ctx.route.ns);
                match ctx.mode {
                    Mode::Eval => x.batch_norm(
                        w,
                        b,
                        Some(&s.running_mean),
                        Some(&s.running_var),
                        false,
                        self.spec.momentum,
                        self.spec.eps,
                        cudnn,
                    ),
                    Mode::TrainFrozen => x.batch_norm(
                        w,
                        b,
                        None::<&Tensor>,
                        None::<&Tensor>,
                        true,
                        self.spec.momentum,
                        self.spec.eps,
                        cudnn,
                    ),
                    Mode::Train => {
                        tch::no_grad(|| {
                            let mut n = s.num_batches_tracked.shallow_clone();
                            let _ = n.g_add_scalar_(1);
                        });
                        x.batch_norm(
                            w,
                            b,
                            Some(&s.running_mean),
                            Some(&s.running_var),
                            true,
                            self.spec.momentum,
                            self.spec.eps,
                            cudnn,
                        )
                    }
                }
            }
        }
    }
}
