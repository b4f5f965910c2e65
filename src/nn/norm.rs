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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Batch statistics; running statistics updated by EMA.
    Train,
    /// Running statistics.
    Eval,
    /// Batch statistics; running statistics left untouched.
    TrainFrozen,
}

crate::choice::value_enum_text!(Mode => "BN mode");

/// Domain index: 0 = clean / main, 1 = adversarial / auxiliary.
pub type Domain = usize;
/// Index of the clean (main) domain.
pub const CLEAN: Domain = 0;
/// Index of the adversarial (auxiliary) domain.
pub const ADV: Domain = 1;

/// Selects the statistics source and the affine source independently. In recipes and JSON it
/// is written as a string (`"clean"`, `"adv"`, `"ns=clean,ap=adv"`); a table `{ ns = 0, ap = 1 }`
/// is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl Serialize for Route {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Table { ns: Domain, ap: Domain },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Repr::Table { ns, ap } => Ok(Route { ns, ap }),
        }
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

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// What a model with `sets` sets of one kind offers a route: domains `0..sets`, or, with one
/// set or none (shared), the two named domains clean and adv.
fn domain_limit(sets: usize) -> usize {
    sets.max(2)
}

/// Error unless `route` names domains a model with `ns_sets` statistics sets and `ap_sets`
/// affine sets (the larger of the norm layers' affine sets and the classifier heads) has: an
/// index below the number of sets, or with one set (shared by every domain) clean or adv.
/// The message names the domain and the model's number of sets.
pub fn check_route_sets(route: Route, ns_sets: usize, ap_sets: usize) -> Result<(), String> {
    let shared = |n: usize| {
        if n <= 1 {
            ", shared by every domain (a route names clean or adv)".to_string()
        } else {
            let names: Vec<String> = (0..n).map(domain_name).collect();
            format!(" (domains {})", names.join(", "))
        }
    };
    if route.ns >= domain_limit(ns_sets) {
        return Err(format!(
            "NS domain {} does not exist: the model has {}{}",
            route.ns,
            count(ns_sets, "statistics set"),
            shared(ns_sets)
        ));
    }
    if route.ap >= domain_limit(ap_sets) {
        return Err(format!(
            "AP domain {} does not exist: the model has {} (BN affine parameters / classifier heads){}",
            route.ap,
            count(ap_sets, "affine set"),
            shared(ap_sets)
        ));
    }
    Ok(())
}

/// When `route` names a domain other than clean for a part (statistics or affine parameters)
/// that the model holds once (`ns_sets` / `ap_sets` <= 1), so the route computes the same as
/// clean there: the label of the route actually used (`shared` for such parts: `shared` when
/// both are, else e.g. `ns=shared,ap=adv`) and a sentence saying why. `None` when every part
/// the route names is a set of its own.
pub fn shared_route(route: Route, ns_sets: usize, ap_sets: usize) -> Option<(String, String)> {
    let ns_shared = ns_sets <= 1;
    let ap_shared = ap_sets <= 1;
    let redundant = (ns_shared && route.ns != CLEAN) || (ap_shared && route.ap != CLEAN);
    if !redundant {
        return None;
    }
    let part = |shared: bool, d: Domain| {
        if shared {
            "shared".to_string()
        } else {
            domain_name(d)
        }
    };
    let label = if ns_shared && ap_shared {
        "shared".to_string()
    } else {
        format!(
            "ns={},ap={}",
            part(ns_shared, route.ns),
            part(ap_shared, route.ap)
        )
    };
    let mut held = vec![];
    if ns_shared {
        held.push(count(ns_sets, "statistics set"));
    }
    if ap_shared {
        held.push(count(ap_sets, "affine set"));
    }
    let why = format!(
        "the model has {}, shared by every domain: this route computes the same as 'clean' \
         there",
        held.join(" and ")
    );
    Some((label, why))
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

/// A contiguous block of rows of a mixed batch: its size, the domain its samples come from
/// (`source`: whose batch statistics they feed in training modes) and the route they take.
/// `route.ns != source` is Cross-BN: the rows are normalised with the other domain's batch
/// statistics and do not enter them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub size: i64,
    pub source: Domain,
    pub route: Route,
}

impl Segment {
    /// `size` rows of domain `route.ns` taking `route`.
    pub fn new(size: i64, route: Route) -> Segment {
        Segment {
            size,
            source: route.ns,
            route,
        }
    }
}

/// Most segments one batch can be split into.
pub const MAX_SEGMENTS: usize = 4;

/// The explicit split of a mixed batch (empty = the whole batch takes `Ctx::route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segments {
    len: usize,
    items: [Segment; MAX_SEGMENTS],
}

impl Segments {
    /// At most [`MAX_SEGMENTS`] segments; empty segments are dropped.
    pub fn new(list: &[Segment]) -> Segments {
        let mut s = Segments::default();
        for seg in list.iter().filter(|g| g.size > 0) {
            assert!(
                s.len < MAX_SEGMENTS,
                "at most {MAX_SEGMENTS} batch segments"
            );
            s.items[s.len] = *seg;
            s.len += 1;
        }
        s
    }
    pub fn as_slice(&self) -> &[Segment] {
        &self.items[..self.len]
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Total rows.
    pub fn rows(&self) -> i64 {
        self.as_slice().iter().map(|g| g.size).sum()
    }
}

/// Everything a forward pass needs besides the input: the route and the mode, optionally an
/// explicit split of a mixed batch, a model-soup weight and an EMA momentum override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ctx {
    pub route: Route,
    pub mode: Mode,
    /// Split of a mixed batch by explicit sizes; empty = one segment taking `route`.
    pub segments: Segments,
    /// Model soup (Rebuffi et al.): every domain-specific parameter set (BN affine, Dual-Linear
    /// head) is used as `w * P_adv + (1 - w) * P_clean`; `route.ap` is then ignored.
    pub soup: Option<f64>,
    /// Overrides the layers' EMA momentum for running-statistics updates (re-estimation
    /// uses `1/(k+1)` at batch k, a cumulative average).
    pub momentum: Option<f64>,
}

impl Ctx {
    pub fn new(route: Route, mode: Mode) -> Ctx {
        Ctx {
            route,
            mode,
            segments: Segments::default(),
            soup: None,
            momentum: None,
        }
    }
    /// Single-domain training forward.
    pub fn train() -> Ctx {
        Ctx::new(Route::default(), Mode::Train)
    }
    /// Single-domain inference forward.
    pub fn eval() -> Ctx {
        Ctx::new(Route::default(), Mode::Eval)
    }
    /// A mixed batch split into `segments` (in row order).
    pub fn mixed(mode: Mode, segments: &[Segment]) -> Ctx {
        let segs = Segments::new(segments);
        let route = segs.as_slice().first().map(|g| g.route).unwrap_or_default();
        Ctx {
            segments: segs,
            ..Ctx::new(route, mode)
        }
    }
    pub fn with_mode(self, mode: Mode) -> Ctx {
        Ctx { mode, ..self }
    }
    pub fn with_soup(self, w: Option<f64>) -> Ctx {
        Ctx { soup: w, ..self }
    }
    /// The segments of a batch of `n` rows (one segment taking `route` when none were given).
    pub fn segments_for(&self, n: i64) -> Vec<Segment> {
        if self.segments.is_empty() {
            vec![Segment::new(n, self.route)]
        } else {
            assert_eq!(
                self.segments.rows(),
                n,
                "batch segments cover {} rows but the batch has {n}",
                self.segments.rows()
            );
            self.segments.as_slice().to_vec()
        }
    }
}

/// `w * a + (1 - w) * b`.
pub(crate) fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Tensor {
    a * w + b * (1.0 - w)
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
    /// When `Some`, every forward appends its input's batch statistics (analyses).
    probe: std::sync::Mutex<Option<Vec<BatchStats>>>,
    /// When `Some`, every forward appends its output (with its autograd graph): feature hooks
    /// on norm layers (ARAT's BN outputs).
    tap: std::sync::Mutex<Option<Vec<Tensor>>>,
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
            probe: std::sync::Mutex::new(None),
            tap: std::sync::Mutex::new(None),
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

    /// Error when `route` names a domain this layer has no set for (with one set or none,
    /// only the named domains clean and adv, which share it, exist).
    pub fn check_route(&self, route: Route) -> Result<(), String> {
        let ns = self.stats.len();
        let ap = self.affine.len();
        if route.ns >= ns.max(2) {
            return Err(format!(
                "NS domain {} requested, the layer has {}",
                route.ns,
                count(ns, "statistics set")
            ));
        }
        if route.ap >= ap.max(2) {
            return Err(format!(
                "AP domain {} requested, the layer has {}",
                route.ap,
                count(ap, "affine set")
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

    /// Index of the statistics set domain `d` resolves to (0 when NS is shared).
    pub fn ns_index(&self, d: Domain) -> usize {
        if self.stats.len() <= 1 {
            0
        } else {
            d
        }
    }

    /// Index of the affine set domain `d` resolves to (0 when AP is shared).
    pub fn ap_index(&self, d: Domain) -> usize {
        if self.affine.len() <= 1 {
            0
        } else {
            d
        }
    }

    /// (gamma, beta) for route AP domain `ap`, or the soup `w * AP_adv + (1-w) * AP_clean`.
    fn affine_params(&self, ap: Domain, soup: Option<f64>) -> Option<(Tensor, Tensor)> {
        if self.affine.is_empty() {
            return None;
        }
        match soup {
            Some(w) if self.affine.len() > 1 => {
                let (c, a) = (&self.affine[CLEAN], &self.affine[ADV]);
                Some((lerp(&a.weight, &c.weight, w), lerp(&a.bias, &c.bias, w)))
            }
            _ => {
                let a = self.affine_for(ap);
                Some((a.weight.shallow_clone(), a.bias.shallow_clone()))
            }
        }
    }

    /// Whether a statistics probe or an output tap is recording this layer.
    pub fn recording(&self) -> bool {
        self.probe.lock().expect("probe lock").is_some()
            || self.tap.lock().expect("tap lock").is_some()
    }

    /// The per-channel map of this layer when it is affine for every row: eval-mode BatchNorm
    /// (`s = gamma / sqrt(var + eps)`, `t = beta - mu * s`) or no norm (identity), with one route
    /// for the whole batch (no explicit segments) and no probe or tap recording. `None`
    /// otherwise (batch statistics, group/layer/instance norm, mixed batches, analyses).
    pub fn eval_affine(&self, ctx: &Ctx) -> Option<EvalAffine> {
        if !ctx.segments.is_empty() || self.recording() {
            return None;
        }
        match self.spec.kind {
            NormKind::None => Some(EvalAffine::Identity),
            NormKind::Batch if ctx.mode == Mode::Eval => {
                let st = self.stats_for(ctx.route.ns);
                let inv_std = (&st.running_var + self.spec.eps).rsqrt();
                Some(match self.affine_params(ctx.route.ap, ctx.soup) {
                    Some((w, b)) => {
                        let s = w * inv_std;
                        let t = b - &st.running_mean * &s;
                        EvalAffine::Affine(s, t)
                    }
                    None => {
                        let t = -(&st.running_mean * &inv_std);
                        EvalAffine::Affine(inv_std, t)
                    }
                })
            }
            _ => None,
        }
    }

    /// Start (`Some(vec![])`) or stop (`None`) recording the per-channel batch statistics of
    /// every input this layer sees.
    pub fn set_probe(&self, on: bool) {
        *self.probe.lock().expect("probe lock") = on.then(Vec::new);
    }

    /// The recorded batch statistics, oldest first (empty when not probing).
    pub fn take_probe(&self) -> Vec<BatchStats> {
        self.probe
            .lock()
            .expect("probe lock")
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Start (`Some(vec![])`) or stop (`None`) recording this layer's outputs.
    pub fn set_tap(&self, on: bool) {
        *self.tap.lock().expect("tap lock") = on.then(Vec::new);
    }

    /// The recorded outputs, oldest first (empty when not tapping).
    pub fn take_tap(&self) -> Vec<Tensor> {
        self.tap
            .lock()
            .expect("tap lock")
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&self, x: &Tensor) {
        let mut guard = self.probe.lock().expect("probe lock");
        if let Some(v) = guard.as_mut() {
            let (mean, var) = tch::no_grad(|| batch_moments(x));
            v.push(BatchStats { mean, var });
        }
    }

    /// Normalise `x` through `ctx.route` (or, for a mixed batch, each segment through its own
    /// route) in `ctx.mode`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.record(x);
        let y = self.normalise(x, ctx);
        if let Some(v) = self.tap.lock().expect("tap lock").as_mut() {
            v.push(y.shallow_clone());
        }
        y
    }

    fn normalise(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let n = x.size()[0];
        let segs = ctx.segments_for(n);
        match self.spec.kind {
            NormKind::None => x.shallow_clone(),
            NormKind::Batch => self.batch_norm(x, &segs, ctx),
            _ => {
                let groups = match self.spec.kind {
                    NormKind::Group => self.spec.groups,
                    NormKind::Layer => 1,
                    _ => self.channels,
                };
                let cudnn = x.device().is_cuda();
                let same_ap = segs
                    .iter()
                    .all(|g| self.ap_index(g.route.ap) == self.ap_index(segs[0].route.ap));
                if same_ap || ctx.soup.is_some() {
                    let wb = self.affine_params(segs[0].route.ap, ctx.soup);
                    let (w, b) = split_opt(&wb);
                    return x.group_norm(groups, w, b, self.spec.eps, cudnn);
                }
                let parts: Vec<Tensor> = slices(x, &segs)
                    .iter()
                    .zip(&segs)
                    .map(|(xs, g)| {
                        let wb = self.affine_params(g.route.ap, None);
                        let (w, b) = split_opt(&wb);
                        xs.group_norm(groups, w, b, self.spec.eps, cudnn)
                    })
                    .collect();
                Tensor::cat(&parts, 0)
            }
        }
    }

    /// BatchNorm over explicit segments. Eval: every segment uses the running NS of its route.
    /// Train modes: the rows of each statistics set (by `source`) are normalised together with
    /// their batch NS (that set's running NS updated once in `Train`); Cross-BN rows
    /// (`route.ns != source`) use the batch NS of the set they route to. Under a
    /// [`crate::dist::SyncBnScope`] (data-parallel `sync_bn`) each set's batch NS are those of
    /// its rows on every worker (mean, biased var; the running var gets the unbiased var with
    /// the global count N: `var * N / (N - 1)`), as PyTorch's SyncBatchNorm.
    fn batch_norm(&self, x: &Tensor, segs: &[Segment], ctx: &Ctx) -> Tensor {
        let cudnn = x.device().is_cuda();
        let momentum = ctx.momentum.unwrap_or(self.spec.momentum);
        let key = |g: &Segment| (self.ns_index(g.route.ns), self.ap_index(g.route.ap));
        // Fast path: one segment, or all segments resolve to the same NS and AP sets and none
        // is a cross row: one fused call over the whole batch.
        let uniform = segs.iter().all(|g| key(g) == key(&segs[0]))
            && segs
                .iter()
                .all(|g| self.ns_index(g.source) == self.ns_index(g.route.ns));
        // Synchronised BatchNorm (data-parallel `distributed.sync_bn`): batch statistics of
        // every worker's rows, per statistics set, through the process group.
        let sync = ctx.mode != Mode::Eval && crate::dist::sync_bn_active();
        if uniform && !sync {
            let wb = self.affine_params(segs[0].route.ap, ctx.soup);
            return self.fused(
                x,
                &wb,
                self.ns_index(segs[0].route.ns),
                ctx.mode,
                momentum,
                cudnn,
            );
        }
        let xs = slices(x, segs);
        if ctx.mode == Mode::Eval {
            let parts: Vec<Tensor> = xs
                .iter()
                .zip(segs)
                .map(|(xi, g)| {
                    let wb = self.affine_params(g.route.ap, ctx.soup);
                    self.fused(
                        xi,
                        &wb,
                        self.ns_index(g.route.ns),
                        Mode::Eval,
                        momentum,
                        cudnn,
                    )
                })
                .collect();
            return Tensor::cat(&parts, 0);
        }
        // Train modes where every statistics set is one segment of its own rows (no set split
        // over segments, no Cross-BN row): each segment is one native batch_norm with its own
        // batch statistics and its set's running update, the same function as the hand-written
        // path below (to float rounding: the native kernels reduce in another order) in one
        // kernel per segment instead of about ten. Not under sync_bn: its statistics are the
        // workers' together (the hand-written path below).
        if !sync && self.one_segment_per_set(segs, x) {
            let parts: Vec<Tensor> = xs
                .iter()
                .zip(segs)
                .map(|(xi, g)| {
                    let wb = self.affine_params(g.route.ap, ctx.soup);
                    self.fused(xi, &wb, self.ns_index(g.source), ctx.mode, momentum, cudnn)
                })
                .collect();
            return Tensor::cat(&parts, 0);
        }
        self.hand_batch_norm(x, &xs, segs, ctx, momentum, sync)
    }

    /// Whether, in a train mode, every segment normalises with the batch statistics of its own
    /// rows alone: its rows route to their own set (`route.ns == source`), no other segment
    /// has that set, and it has more than one value per channel (native batch_norm refuses
    /// one).
    fn one_segment_per_set(&self, segs: &[Segment], x: &Tensor) -> bool {
        let per_row = x.numel() as i64 / (x.size()[0].max(1) * self.channels.max(1));
        let sets: Vec<usize> = segs.iter().map(|g| self.ns_index(g.source)).collect();
        segs.iter()
            .all(|g| self.ns_index(g.source) == self.ns_index(g.route.ns) && g.size * per_row > 1)
            && (0..sets.len()).all(|i| !sets[i + 1..].contains(&sets[i]))
    }

    /// The train-mode BatchNorm of [`Norm::batch_norm`] written out: the moments of each
    /// statistics set over all its rows (several segments, differentiable), then every segment
    /// normalised with the moments of the set it routes to.
    fn hand_batch_norm(
        &self,
        x: &Tensor,
        xs: &[Tensor],
        segs: &[Segment],
        ctx: &Ctx,
        momentum: f64,
        sync: bool,
    ) -> Tensor {
        let eps = self.spec.eps;
        // Batch statistics per source set, differentiable (under `sync`, of every worker's rows).
        let mut moments: Vec<Option<(Tensor, Tensor)>> =
            (0..self.stats.len().max(1)).map(|_| None).collect();
        for k in 0..moments.len() {
            let rows: Vec<&Tensor> = xs
                .iter()
                .zip(segs)
                .filter(|(_, g)| self.ns_index(g.source) == k)
                .map(|(xi, _)| xi)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let xk = if rows.len() == 1 {
                rows[0].shallow_clone()
            } else {
                Tensor::cat(&rows, 0)
            };
            let synced = if sync {
                crate::dist::sync_bn_moments(&xk)
            } else {
                None
            };
            let (mean, var, count) = synced.unwrap_or_else(|| {
                let (mean, var) = batch_moments(&xk);
                (mean, var, xk.numel() as f64 / self.channels as f64)
            });
            if ctx.mode == Mode::Train {
                let s = &self.stats[k];
                tch::no_grad(|| {
                    let unbiased = &var * (count / (count - 1.0).max(1.0));
                    let mut rm = s.running_mean.shallow_clone();
                    let mut rv = s.running_var.shallow_clone();
                    rm.copy_(&(&rm * (1.0 - momentum) + &mean.detach() * momentum));
                    rv.copy_(&(&rv * (1.0 - momentum) + unbiased.detach() * momentum));
                    let mut nb = s.num_batches_tracked.shallow_clone();
                    let _ = nb.g_add_scalar_(1);
                });
            }
            moments[k] = Some((mean, var));
        }
        let shape = channel_shape(x.dim(), self.channels);
        let parts: Vec<Tensor> = xs
            .iter()
            .zip(segs)
            .map(|(xi, g)| {
                let k = self.ns_index(g.route.ns);
                let (mean, var) = moments[k].as_ref().unwrap_or_else(|| {
                    panic!(
                        "segment routed to NS domain {} but no rows of that domain are in the batch \
                         (Cross-BN needs both domains in one forward)",
                        g.route.ns
                    )
                });
                let y = (xi - mean.view(shape.as_slice()))
                    * (var.view(shape.as_slice()) + eps).rsqrt();
                match self.affine_params(g.route.ap, ctx.soup) {
                    Some((w, b)) => y * w.view(shape.as_slice()) + b.view(shape.as_slice()),
                    None => y,
                }
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// One fused `batch_norm` call with statistics set `k` in `mode`.
    fn fused(
        &self,
        x: &Tensor,
        wb: &Option<(Tensor, Tensor)>,
        k: usize,
        mode: Mode,
        momentum: f64,
        cudnn: bool,
    ) -> Tensor {
        let (w, b) = split_opt(wb);
        let s = &self.stats[k];
        let eps = self.spec.eps;
        match mode {
            Mode::Eval => x.batch_norm(
                w,
                b,
                Some(&s.running_mean),
                Some(&s.running_var),
                false,
                momentum,
                eps,
                cudnn,
            ),
            Mode::TrainFrozen => x.batch_norm(
                w,
                b,
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                momentum,
                eps,
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
                    momentum,
                    eps,
                    cudnn,
                )
            }
        }
    }
}

/// What an eval-mode norm layer does to each channel (see [`Norm::eval_affine`]).
#[derive(Debug)]
pub enum EvalAffine {
    /// `y = x`.
    Identity,
    /// `y = s * x + t` per channel.
    Affine(Tensor, Tensor),
}

/// Per-channel batch statistics of one input: mean and biased variance.
#[derive(Debug)]
pub struct BatchStats {
    pub mean: Tensor,
    pub var: Tensor,
}

/// Per-channel mean and biased variance over every dimension but 1 (differentiable).
pub fn batch_moments(x: &Tensor) -> (Tensor, Tensor) {
    let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    let mean = x.mean_dim(dims.as_slice(), false, Kind::Float);
    let shape = channel_shape(x.dim(), mean.size()[0]);
    let var =
        (x - mean.view(shape.as_slice()))
            .square()
            .mean_dim(dims.as_slice(), false, Kind::Float);
    (mean, var)
}

/// `[1, C, 1, 1]` for 4-D inputs, `[1, C]` for 2-D ones.
fn channel_shape(dim: usize, c: i64) -> Vec<i64> {
    let mut s = vec![1, c];
    s.extend(std::iter::repeat(1).take(dim.saturating_sub(2)));
    s
}

/// The rows of each segment, in order.
fn slices(x: &Tensor, segs: &[Segment]) -> Vec<Tensor> {
    let mut start = 0;
    segs.iter()
        .map(|g| {
            let t = x.narrow(0, start, g.size);
            start += g.size;
            t
        })
        .collect()
}

fn split_opt(wb: &Option<(Tensor, Tensor)>) -> (Option<&Tensor>, Option<&Tensor>) {
    match wb {
        Some((w, b)) => (Some(w), Some(b)),
        None => (None, None),
    }
}
