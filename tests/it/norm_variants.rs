//! The route-aware norm layer's multi-domain variants (Single BN "cat", Dual BN, Dual-AP,
//! Dual-NS, Cross-BN, soup, momentum override, GroupNorm with split affine, 2-D inputs) and the
//! Dual-Linear head, against an independent float64 reference written with plain loops on
//! `Vec<f64>`. Inputs come from a local deterministic generator (no torch RNG); the layer runs
//! in f32, so comparisons use a relative tolerance of 1e-5.

use advtrain::nn::models::Head;
use advtrain::nn::{Ctx, Mode, Norm, NormKind, NormSpec, Route, Segment, ADV, CLEAN};
use tch::{nn::VarStore, Device, Kind, Tensor};

const TOL: f64 = 1e-5;

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// `n` values in [lo, hi), rounded to f32.
    fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| f32r(lo + (hi - lo) * self.uniform()))
            .collect()
    }
    /// `n` values N(mean, sd^2), rounded to f32.
    fn normal_vec(&mut self, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        (0..n).map(|_| f32r(mean + sd * self.normal())).collect()
    }
}

fn f32r(v: f64) -> f64 {
    v as f32 as f64
}

/// A batch held as exact f64 copies of f32 values, row-major like the tensor.
#[derive(Clone, Debug)]
struct Batch {
    shape: Vec<i64>,
    c: usize,
    hw: usize,
    v: Vec<f64>,
}

impl Batch {
    /// `n` rows of shape [n, c, spatial...]; channel ch ~ N(mean + 0.7 ch, (sd (1 + 0.4 ch))^2).
    fn gen(rng: &mut Rng, n: usize, c: usize, spatial: &[i64], mean: f64, sd: f64) -> Batch {
        let hw: usize = spatial.iter().product::<i64>() as usize;
        let mut v = Vec::with_capacity(n * c * hw);
        for _ in 0..n {
            for ch in 0..c {
                let (m, s) = (mean + 0.7 * ch as f64, sd * (1.0 + 0.4 * ch as f64));
                for _ in 0..hw {
                    v.push(f32r(m + s * rng.normal()));
                }
            }
        }
        let mut shape = vec![n as i64, c as i64];
        shape.extend_from_slice(spatial);
        Batch { shape, c, hw, v }
    }
    fn rows(&self) -> usize {
        self.shape[0] as usize
    }
    fn idx(&self, row: usize, ch: usize, j: usize) -> usize {
        (row * self.c + ch) * self.hw + j
    }
    fn tensor(&self) -> Tensor {
        let f: Vec<f32> = self.v.iter().map(|&x| x as f32).collect();
        Tensor::from_slice(&f).view(self.shape.as_slice())
    }
    /// Rows of `parts` concatenated in order.
    fn cat(parts: &[&Batch]) -> Batch {
        let mut out = parts[0].clone();
        for p in &parts[1..] {
            assert_eq!((p.c, p.hw), (out.c, out.hw));
            out.v.extend_from_slice(&p.v);
            out.shape[0] += p.shape[0];
        }
        out
    }
    /// The flat values of rows `r`.
    fn row_values(&self, v: &[f64], r: std::ops::Range<usize>) -> Vec<f64> {
        let l = self.c * self.hw;
        v[r.start * l..r.end * l].to_vec()
    }
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn set(t: &Tensor, v: &[f64]) {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    tch::no_grad(|| {
        t.shallow_clone()
            .copy_(&Tensor::from_slice(&f).view(t.size().as_slice()))
    });
}

fn assert_close_tol(actual: &[f64], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs() / (1.0 + e.abs());
        assert!(
            err <= tol,
            "{what}[{i}]: library {a} vs reference {e} (relative error {err:.3e} > {tol:.0e})"
        );
    }
}

fn assert_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_close_tol(actual, expected, TOL, what)
}

/// Guard against vacuous comparisons: `a` and `b` must differ somewhere by more than 1e-2.
fn assert_far(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        d > 1e-2,
        "{what}: expected a clear difference, max |diff| = {d:e}"
    );
}

/// Row ranges of the segments, in order, checking they cover `n` rows.
fn ranges(segs: &[Segment], n: usize) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    let r: Vec<_> = segs
        .iter()
        .map(|g| {
            let r = start..start + g.size as usize;
            start += g.size as usize;
            r
        })
        .collect();
    assert_eq!(start, n, "test bug: segments do not cover the batch");
    r
}

/// Per-channel (mean, biased var, unbiased var) over `rows` x spatial positions.
fn moments(x: &Batch, rows: &[usize]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut mean = vec![0.0; x.c];
    let mut vb = vec![0.0; x.c];
    let mut vu = vec![0.0; x.c];
    for ch in 0..x.c {
        let vals: Vec<f64> = rows
            .iter()
            .flat_map(|&r| (0..x.hw).map(move |j| (r, j)))
            .map(|(r, j)| x.v[x.idx(r, ch, j)])
            .collect();
        let n = vals.len() as f64;
        let m = vals.iter().sum::<f64>() / n;
        let ss: f64 = vals.iter().map(|v| (v - m) * (v - m)).sum();
        mean[ch] = m;
        vb[ch] = ss / n;
        vu[ch] = ss / (n - 1.0);
    }
    (mean, vb, vu)
}

// ---------------------------------------------------------------------------------------------
// The float64 reference layer
// ---------------------------------------------------------------------------------------------

/// Reference state of a BN layer with `ns` statistics sets and `ap` affine sets.
#[derive(Clone, Debug)]
struct RefNorm {
    ns_domains: usize,
    ap_domains: usize,
    eps: f64,
    momentum: f64,
    rm: Vec<Vec<f64>>,
    rv: Vec<Vec<f64>>,
    nbt: Vec<i64>,
    gamma: Vec<Vec<f64>>,
    beta: Vec<Vec<f64>>,
}

impl RefNorm {
    /// Random running statistics and affine parameters (all exactly representable in f32).
    fn random(rng: &mut Rng, spec: &NormSpec, c: usize) -> RefNorm {
        let ns = if spec.kind == NormKind::Batch {
            spec.ns_domains
        } else {
            0
        };
        RefNorm {
            ns_domains: spec.ns_domains,
            ap_domains: spec.ap_domains,
            eps: spec.eps,
            momentum: spec.momentum,
            rm: (0..ns).map(|_| rng.normal_vec(c, 0.3, 0.8)).collect(),
            rv: (0..ns).map(|_| rng.uniform_vec(c, 0.5, 2.5)).collect(),
            nbt: vec![0; ns],
            gamma: (0..spec.ap_domains)
                .map(|_| rng.uniform_vec(c, 0.5, 1.8))
                .collect(),
            beta: (0..spec.ap_domains)
                .map(|_| rng.normal_vec(c, 0.0, 0.7))
                .collect(),
        }
    }

    /// Copy this state into the library layer.
    fn install(&self, norm: &Norm) {
        assert_eq!(norm.stats.len(), self.rm.len());
        assert_eq!(norm.affine.len(), self.gamma.len());
        for (k, s) in norm.stats.iter().enumerate() {
            set(&s.running_mean, &self.rm[k]);
            set(&s.running_var, &self.rv[k]);
            tch::no_grad(|| {
                s.num_batches_tracked
                    .shallow_clone()
                    .copy_(&Tensor::from(self.nbt[k]))
            });
        }
        for (k, a) in norm.affine.iter().enumerate() {
            set(&a.weight, &self.gamma[k]);
            set(&a.bias, &self.beta[k]);
        }
    }

    fn nsi(&self, d: usize) -> usize {
        if self.ns_domains == 1 {
            0
        } else {
            d
        }
    }

    /// (gamma, beta) of AP domain `ap`, or the soup `w AP[1] + (1 - w) AP[0]`.
    fn affine(&self, ap: usize, soup: Option<f64>) -> (Vec<f64>, Vec<f64>) {
        match soup {
            Some(w) => {
                let (c, a) = (0, self.ap_domains - 1);
                let lerp = |p: &Vec<Vec<f64>>| -> Vec<f64> {
                    p[a].iter()
                        .zip(&p[c])
                        .map(|(x, y)| w * x + (1.0 - w) * y)
                        .collect()
                };
                (lerp(&self.gamma), lerp(&self.beta))
            }
            None => {
                let k = if self.ap_domains == 1 { 0 } else { ap };
                (self.gamma[k].clone(), self.beta[k].clone())
            }
        }
    }

    /// BatchNorm forward of the documented semantics; updates the running state in `Train`.
    fn forward(
        &mut self,
        x: &Batch,
        segs: &[Segment],
        mode: Mode,
        soup: Option<f64>,
        momentum: Option<f64>,
    ) -> Vec<f64> {
        let m = momentum.unwrap_or(self.momentum);
        let rr = ranges(segs, x.rows());
        let mut batch: Vec<Option<(Vec<f64>, Vec<f64>)>> = vec![None; self.ns_domains];
        if mode != Mode::Eval {
            for k in 0..self.ns_domains {
                let rows: Vec<usize> = segs
                    .iter()
                    .zip(&rr)
                    .filter(|(g, _)| self.nsi(g.source) == k)
                    .flat_map(|(_, r)| r.clone())
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let (mean, vb, vu) = moments(x, &rows);
                if mode == Mode::Train {
                    for ch in 0..x.c {
                        self.rm[k][ch] = (1.0 - m) * self.rm[k][ch] + m * mean[ch];
                        self.rv[k][ch] = (1.0 - m) * self.rv[k][ch] + m * vu[ch];
                    }
                    self.nbt[k] += 1;
                }
                batch[k] = Some((mean, vb));
            }
        }
        let mut y = vec![0.0; x.v.len()];
        for (g, r) in segs.iter().zip(&rr) {
            let k = self.nsi(g.route.ns);
            let (mu, var) = if mode == Mode::Eval {
                (self.rm[k].clone(), self.rv[k].clone())
            } else {
                batch[k]
                    .clone()
                    .expect("test bug: routed NS set has no rows")
            };
            let (ga, be) = self.affine(g.route.ap, soup);
            for row in r.clone() {
                for ch in 0..x.c {
                    for j in 0..x.hw {
                        let i = x.idx(row, ch, j);
                        y[i] = ga[ch] * (x.v[i] - mu[ch]) / (var[ch] + self.eps).sqrt() + be[ch];
                    }
                }
            }
        }
        y
    }

    /// The normalised values before affine (gamma = 1, beta = 0), without touching state.
    fn xhat(&self, x: &Batch, segs: &[Segment], mode: Mode) -> Vec<f64> {
        let mut r = self.clone();
        for k in 0..r.ap_domains {
            r.gamma[k] = vec![1.0; x.c];
            r.beta[k] = vec![0.0; x.c];
        }
        r.forward(x, segs, mode, None, None)
    }

    /// The library's state must equal this one: running stats within tolerance, counters exact.
    fn check_stats(&self, norm: &Norm, what: &str) {
        assert_eq!(norm.stats.len(), self.rm.len(), "{what}: number of NS sets");
        for (k, s) in norm.stats.iter().enumerate() {
            assert_close(
                &to_vec(&s.running_mean),
                &self.rm[k],
                &format!("{what}: running_mean[{k}]"),
            );
            assert_close(
                &to_vec(&s.running_var),
                &self.rv[k],
                &format!("{what}: running_var[{k}]"),
            );
            assert_eq!(
                s.num_batches_tracked.int64_value(&[]),
                self.nbt[k],
                "{what}: num_batches_tracked[{k}]"
            );
        }
    }

    /// Set `k`'s running stats must be bit-for-bit what this state holds (never updated).
    fn check_untouched(&self, norm: &Norm, k: usize, what: &str) {
        let s = &norm.stats[k];
        assert_eq!(
            to_vec(&s.running_mean),
            self.rm[k],
            "{what}: running_mean[{k}] moved"
        );
        assert_eq!(
            to_vec(&s.running_var),
            self.rv[k],
            "{what}: running_var[{k}] moved"
        );
        assert_eq!(
            s.num_batches_tracked.int64_value(&[]),
            self.nbt[k],
            "{what}: num_batches_tracked[{k}] moved"
        );
    }
}

fn bn_spec(ns: usize, ap: usize, eps: f64, momentum: f64) -> NormSpec {
    NormSpec {
        kind: NormKind::Batch,
        ns_domains: ns,
        ap_domains: ap,
        eps,
        momentum,
        ..NormSpec::default()
    }
}

/// A fresh library layer holding the reference's state.
fn layer(spec: NormSpec, c: usize, state: &RefNorm) -> (VarStore, Norm) {
    let vs = VarStore::new(Device::Cpu);
    let norm = Norm::new(&(vs.root() / "bn"), c as i64, spec);
    state.install(&norm);
    (vs, norm)
}

fn seg(size: i64, source: usize, ns: usize, ap: usize) -> Segment {
    Segment {
        size,
        source,
        route: Route { ns, ap },
    }
}

/// Clean rows (mean 0.5, sd 1) followed by adversarial rows (mean 2.5, sd 2): the two domains'
/// statistics clearly differ.
fn two_domains(
    rng: &mut Rng,
    n_clean: usize,
    n_adv: usize,
    c: usize,
    sp: &[i64],
) -> (Batch, Batch, Batch) {
    let clean = Batch::gen(rng, n_clean, c, sp, 0.5, 1.0);
    let adv = Batch::gen(rng, n_adv, c, sp, 2.5, 2.0);
    let x = Batch::cat(&[&clean, &adv]);
    (clean, adv, x)
}

// ---------------------------------------------------------------------------------------------
// BatchNorm variants
// ---------------------------------------------------------------------------------------------

/// (1) Single BN with a "cat" batch: one statistics set and shared affine, two segments
/// (clean, adv) = normalising the whole batch at once; running stats from the whole batch.
#[test]
fn single_bn_cat_equals_whole_batch_normalisation() {
    let mut rng = Rng(11);
    let (c, sp) = (3, [3i64, 3]);
    let spec = bn_spec(1, 1, 1e-5, 0.1);
    let (clean, _adv, x) = two_domains(&mut rng, 5, 3, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);
    let segs = [
        Segment::new(5, Route::domain(CLEAN)),
        Segment::new(3, Route::domain(ADV)),
    ];

    // Reference: one segment over all rows.
    let mut r = init.clone();
    let want = r.forward(
        &x,
        &[Segment::new(8, Route::default())],
        Mode::Train,
        None,
        None,
    );

    let (_vs, norm) = layer(spec, c, &init);
    let y = norm.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs));
    assert_close(&to_vec(&y), &want, "cat output");
    r.check_stats(&norm, "cat");

    // The same as the library's own whole-batch call.
    let (_vs2, norm2) = layer(spec, c, &init);
    let y2 = norm2.forward(&x.tensor(), &Ctx::new(Route::default(), Mode::Train));
    assert_close(&to_vec(&y2), &want, "whole-batch output");
    r.check_stats(&norm2, "whole batch");

    // Not vacuous: per-domain statistics would have given something else for the clean rows.
    let (mc, vc, _) = moments(&clean, &(0..5).collect::<Vec<_>>());
    let per_domain: Vec<f64> = (0..clean.v.len())
        .map(|i| {
            let ch = (i / clean.hw) % c;
            init.gamma[0][ch] * (clean.v[i] - mc[ch]) / (vc[ch] + 1e-5).sqrt() + init.beta[0][ch]
        })
        .collect();
    assert_far(
        &x.row_values(&want, 0..5),
        &per_domain,
        "cat vs per-domain stats",
    );
}

/// (2) Dual BN: two statistics sets and two affine sets; each domain's rows use their own
/// batch statistics, perturbing adv rows leaves clean outputs unchanged, a batch of only adv
/// rows leaves the clean set untouched, and running stats follow the EMA over several steps.
#[test]
fn dual_bn_keeps_domain_statistics_separate() {
    let mut rng = Rng(22);
    let (c, sp) = (3, [3i64, 3]);
    let spec = bn_spec(2, 2, 1e-3, 0.2);
    let (clean, adv, x) = two_domains(&mut rng, 4, 4, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);
    let segs = [
        Segment::new(4, Route::domain(CLEAN)),
        Segment::new(4, Route::domain(ADV)),
    ];

    // Two Train steps on mixed batches.
    let (_vs, norm) = layer(spec, c, &init);
    let mut r = init.clone();
    let want = r.forward(&x, &segs, Mode::Train, None, None);
    let y = to_vec(&norm.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs)));
    assert_close(&y, &want, "dual BN step 1 output");
    r.check_stats(&norm, "dual BN step 1");
    let x2 = Batch::cat(&[
        &Batch::gen(&mut rng, 4, c, &sp, -1.0, 0.5),
        &Batch::gen(&mut rng, 4, c, &sp, 4.0, 3.0),
    ]);
    let want2 = r.forward(&x2, &segs, Mode::Train, None, None);
    let y2 = to_vec(&norm.forward(&x2.tensor(), &Ctx::mixed(Mode::Train, &segs)));
    assert_close(&y2, &want2, "dual BN step 2 output");
    r.check_stats(&norm, "dual BN step 2");
    assert_eq!(r.nbt, vec![2, 2]);

    // Not vacuous: joint statistics would give different clean outputs.
    let mut joint = init.clone();
    joint.ns_domains = 1;
    joint.rm.truncate(1);
    joint.rv.truncate(1);
    joint.nbt.truncate(1);
    let want_joint = joint.forward(&x, &segs, Mode::Train, None, None);
    assert_far(
        &x.row_values(&y, 0..4),
        &x.row_values(&want_joint, 0..4),
        "dual vs joint stats",
    );

    // Perturbing only the adv rows leaves the clean outputs and the clean set unchanged.
    // (Non-affine per-element change: a per-channel affine change would be normalised away.)
    let adv_moved = Batch {
        v: adv
            .v
            .iter()
            .map(|v| f32r(3.0 * v + 5.0 + 2.0 * rng.normal()))
            .collect(),
        ..adv.clone()
    };
    let xp = Batch::cat(&[&clean, &adv_moved]);
    let (_vs3, norm3) = layer(spec, c, &init);
    let yp = to_vec(&norm3.forward(&xp.tensor(), &Ctx::mixed(Mode::Train, &segs)));
    assert_close_tol(
        &x.row_values(&yp, 0..4),
        &x.row_values(&y, 0..4),
        1e-6,
        "clean rows after adv perturbation",
    );
    assert_eq!(to_vec(&norm3.stats[0].running_mean), {
        let (_vs1, n1) = layer(spec, c, &init);
        let _ = n1.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs));
        to_vec(&n1.stats[0].running_mean)
    });
    assert_far(
        &x.row_values(&yp, 4..8),
        &x.row_values(&y, 4..8),
        "adv rows after adv perturbation",
    );

    // A batch with only adv rows: the clean set is untouched, the adv set moves.
    for ctx in [
        Ctx::new(Route::domain(ADV), Mode::Train),
        Ctx::mixed(
            Mode::Train,
            &[
                Segment::new(1, Route::domain(ADV)),
                Segment::new(3, Route::domain(ADV)),
            ],
        ),
    ] {
        let (_vs4, norm4) = layer(spec, c, &init);
        let mut r4 = init.clone();
        let want4 = r4.forward(
            &adv,
            &[Segment::new(4, Route::domain(ADV))],
            Mode::Train,
            None,
            None,
        );
        let y4 = norm4.forward(&adv.tensor(), &ctx);
        assert_close(&to_vec(&y4), &want4, "adv-only output");
        init.check_untouched(&norm4, CLEAN, "adv-only batch");
        r4.check_stats(&norm4, "adv-only batch");
        assert_far(
            &to_vec(&norm4.stats[1].running_mean),
            &init.rm[1],
            "adv set moved",
        );
    }
}

/// (3) Dual-AP: one statistics set from the joint batch, affine chosen per segment.
#[test]
fn dual_ap_uses_joint_statistics_and_per_segment_affine() {
    let mut rng = Rng(33);
    let (c, sp) = (4, [2i64, 3]);
    let spec = bn_spec(1, 2, 1e-5, 0.1);
    let (_clean, _adv, x) = two_domains(&mut rng, 5, 3, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);
    let segs = [
        Segment::new(5, Route::domain(CLEAN)),
        Segment::new(3, Route::domain(ADV)),
    ];
    let (_vs, norm) = layer(spec, c, &init);
    let mut r = init.clone();
    let want = r.forward(&x, &segs, Mode::Train, None, None);
    let y = to_vec(&norm.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs)));
    assert_close(&y, &want, "dual-AP output");
    r.check_stats(&norm, "dual-AP");
    assert_eq!(r.nbt, vec![1]);

    // Not vacuous: the adv rows with the clean affine would differ.
    let shared = init.clone().forward(
        &x,
        &[Segment::new(8, Route::default())],
        Mode::Train,
        None,
        None,
    );
    assert_close(
        &x.row_values(&y, 0..5),
        &x.row_values(&shared, 0..5),
        "dual-AP clean rows = shared AP",
    );
    assert_far(
        &x.row_values(&y, 5..8),
        &x.row_values(&shared, 5..8),
        "dual-AP adv rows vs AP clean",
    );

    // The same routes in the other order, and a three-segment split.
    let segs3 = [
        Segment::new(2, Route::domain(ADV)),
        Segment::new(3, Route::domain(CLEAN)),
        Segment::new(3, Route::domain(ADV)),
    ];
    let (_vs2, norm2) = layer(spec, c, &init);
    let mut r2 = init.clone();
    let want2 = r2.forward(&x, &segs3, Mode::Train, None, None);
    let y2 = norm2.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs3));
    assert_close(&to_vec(&y2), &want2, "dual-AP three segments");
    r2.check_stats(&norm2, "dual-AP three segments");
}

/// (4) Dual-NS: per-domain statistics, one shared affine.
#[test]
fn dual_ns_uses_per_domain_statistics_and_shared_affine() {
    let mut rng = Rng(44);
    let (c, sp) = (3, [3i64, 2]);
    let spec = bn_spec(2, 1, 1e-5, 0.3);
    let (_clean, _adv, x) = two_domains(&mut rng, 3, 5, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);
    let segs = [
        Segment::new(3, Route::domain(CLEAN)),
        Segment::new(5, Route::domain(ADV)),
    ];
    let (_vs, norm) = layer(spec, c, &init);
    let mut r = init.clone();
    let want = r.forward(&x, &segs, Mode::Train, None, None);
    let y = to_vec(&norm.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs)));
    assert_close(&y, &want, "dual-NS output");
    r.check_stats(&norm, "dual-NS");
    assert_eq!(r.nbt, vec![1, 1]);
    // Per-domain normalisation with one affine: each block has the same per-channel mean beta.
    for (rows, what) in [(0..3usize, "clean"), (3..8, "adv")] {
        for ch in 0..c {
            let vals: Vec<f64> = rows
                .clone()
                .flat_map(|row| (0..x.hw).map(move |j| (row, j)))
                .map(|(row, j)| y[x.idx(row, ch, j)])
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            assert!(
                (m - init.beta[0][ch]).abs() < 1e-4,
                "dual-NS {what} ch {ch}: mean {m} vs beta {}",
                init.beta[0][ch]
            );
        }
    }
}

/// (5) Cross-BN: rows whose route.ns differs from their source are normalised with the batch
/// statistics of the routed set and do not enter it; each set's running stats come from its
/// own source rows.
#[test]
fn cross_bn_normalises_with_the_other_domains_batch_statistics() {
    let mut rng = Rng(55);
    let (c, sp) = (3, [3i64, 3]);
    let spec = bn_spec(2, 2, 1e-5, 0.1);
    let (clean, adv, x) = two_domains(&mut rng, 4, 3, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);

    // Adv rows routed to the clean statistics and the adv affine.
    let segs = [seg(4, CLEAN, CLEAN, CLEAN), seg(3, ADV, CLEAN, ADV)];
    let (_vs, norm) = layer(spec, c, &init);
    let mut r = init.clone();
    let want = r.forward(&x, &segs, Mode::Train, None, None);
    let y = to_vec(&norm.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs)));
    assert_close(&y, &want, "cross-BN output");
    r.check_stats(&norm, "cross-BN");
    assert_eq!(r.nbt, vec![1, 1]);

    // Spelled out: adv rows = gamma_adv (x - mu_clean) / sqrt(var_clean + eps) + beta_adv with
    // the clean rows' batch statistics, and the adv set's running stats from the adv rows.
    let (mc, vc, _) = moments(&clean, &(0..4).collect::<Vec<_>>());
    let direct: Vec<f64> = (0..adv.v.len())
        .map(|i| {
            let ch = (i / adv.hw) % c;
            init.gamma[1][ch] * (adv.v[i] - mc[ch]) / (vc[ch] + 1e-5).sqrt() + init.beta[1][ch]
        })
        .collect();
    assert_close(
        &x.row_values(&y, 4..7),
        &direct,
        "cross-BN adv rows, direct formula",
    );
    let (ma, _, vua) = moments(&adv, &(0..3).collect::<Vec<_>>());
    let rm_adv: Vec<f64> = (0..c)
        .map(|ch| 0.9 * init.rm[1][ch] + 0.1 * ma[ch])
        .collect();
    let rv_adv: Vec<f64> = (0..c)
        .map(|ch| 0.9 * init.rv[1][ch] + 0.1 * vua[ch])
        .collect();
    assert_close(
        &to_vec(&norm.stats[1].running_mean),
        &rm_adv,
        "cross-BN adv running_mean",
    );
    assert_close(
        &to_vec(&norm.stats[1].running_var),
        &rv_adv,
        "cross-BN adv running_var",
    );

    // The adv rows do not enter the clean statistics: clean outputs ignore an adv perturbation.
    let adv_moved = Batch {
        v: adv
            .v
            .iter()
            .map(|v| f32r(-2.0 * v + 7.0 + rng.normal()))
            .collect(),
        ..adv.clone()
    };
    let (_vs2, norm2) = layer(spec, c, &init);
    let yp = to_vec(&norm2.forward(
        &Batch::cat(&[&clean, &adv_moved]).tensor(),
        &Ctx::mixed(Mode::Train, &segs),
    ));
    assert_close_tol(
        &x.row_values(&yp, 0..4),
        &x.row_values(&y, 0..4),
        1e-6,
        "cross-BN clean rows after adv perturbation",
    );

    // Reverse direction plus a normal adv segment: clean rows routed to the adv statistics.
    let segs_b = [seg(4, CLEAN, ADV, CLEAN), seg(3, ADV, ADV, ADV)];
    let (_vs3, norm3) = layer(spec, c, &init);
    let mut r3 = init.clone();
    let want3 = r3.forward(&x, &segs_b, Mode::Train, None, None);
    let y3 = norm3.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs_b));
    assert_close(&to_vec(&y3), &want3, "reverse cross-BN output");
    r3.check_stats(&norm3, "reverse cross-BN");

    // Three segments: clean, adv crossing to clean, adv on its own route.
    let x4 = Batch::cat(&[&clean, &adv, &Batch::gen(&mut rng, 2, c, &sp, 2.0, 1.5)]);
    let segs_c = [
        seg(4, CLEAN, CLEAN, CLEAN),
        seg(3, ADV, CLEAN, ADV),
        seg(2, ADV, ADV, ADV),
    ];
    let (_vs4, norm4) = layer(spec, c, &init);
    let mut r4 = init.clone();
    let want4 = r4.forward(&x4, &segs_c, Mode::Train, None, None);
    let y4 = norm4.forward(&x4.tensor(), &Ctx::mixed(Mode::Train, &segs_c));
    assert_close(&to_vec(&y4), &want4, "three-segment cross-BN output");
    r4.check_stats(&norm4, "three-segment cross-BN");
}

/// (6) Affine gradients reach only the routed set, with the reference's values.
#[test]
fn affine_gradients_reach_only_the_routed_set() {
    for (ns, trial) in [(2usize, 0u64), (1, 1)] {
        for target in [ADV, CLEAN] {
            let mut rng = Rng(66 + 10 * trial + target as u64);
            let (c, sp) = (3, [2i64, 2]);
            let spec = bn_spec(ns, 2, 1e-5, 0.1);
            let (_clean, _adv, x) = two_domains(&mut rng, 4, 4, c, &sp);
            let init = RefNorm::random(&mut rng, &spec, c);
            let segs = [
                Segment::new(4, Route::domain(CLEAN)),
                Segment::new(4, Route::domain(ADV)),
            ];
            let (_vs, norm) = layer(spec, c, &init);
            let y = norm.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs));
            let rows = if target == ADV { 4..8 } else { 0..4 };
            let wt = Batch::gen(&mut rng, 4, c, &sp, 0.2, 1.0);
            let loss = (y.narrow(0, rows.start as i64, 4) * wt.tensor()).sum(Kind::Float);
            loss.backward();

            let other = 1 - target;
            let what = format!("ns={ns}, loss on {target}");
            for (name, t) in [
                ("weight", &norm.affine[other].weight),
                ("bias", &norm.affine[other].bias),
            ] {
                let g = t.grad();
                if g.defined() {
                    assert!(
                        to_vec(&g).iter().all(|&v| v == 0.0),
                        "{what}: AP {other} {name} got gradient {:?}",
                        to_vec(&g)
                    );
                }
            }
            let xhat = init.xhat(&x, &segs, Mode::Train);
            let mut dg = vec![0.0; c];
            let mut db = vec![0.0; c];
            for (k, row) in rows.clone().enumerate() {
                for ch in 0..c {
                    for j in 0..x.hw {
                        let w = wt.v[wt.idx(k, ch, j)];
                        dg[ch] += w * xhat[x.idx(row, ch, j)];
                        db[ch] += w;
                    }
                }
            }
            let gw = norm.affine[target].weight.grad();
            let gb = norm.affine[target].bias.grad();
            assert!(
                gw.defined() && gb.defined(),
                "{what}: routed AP got no gradient"
            );
            assert_close_tol(&to_vec(&gw), &dg, 1e-4, &format!("{what}: d gamma"));
            assert_close_tol(&to_vec(&gb), &db, 1e-4, &format!("{what}: d beta"));
            assert!(
                db.iter().any(|v| v.abs() > 1e-2),
                "{what}: reference gradient is trivial"
            );
        }
    }
}

/// (7) Eval: every segment uses the running statistics of route.ns and the affine of route.ap;
/// nothing moves.
#[test]
fn eval_mode_routes_each_segment_to_its_running_stats_and_affine() {
    let mut rng = Rng(77);
    let (c, sp) = (3, [3i64, 3]);
    let spec = bn_spec(2, 2, 1e-5, 0.1);
    let (_clean, _adv, x) = two_domains(&mut rng, 3, 5, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);
    let (_vs, norm) = layer(spec, c, &init);
    let cases: Vec<(Vec<Segment>, Ctx)> = vec![
        {
            let s = vec![seg(3, ADV, ADV, CLEAN), seg(5, CLEAN, CLEAN, ADV)];
            let ctx = Ctx::mixed(Mode::Eval, &s);
            (s, ctx)
        },
        {
            let s = vec![
                Segment::new(3, Route::domain(CLEAN)),
                Segment::new(5, Route::domain(ADV)),
            ];
            let ctx = Ctx::mixed(Mode::Eval, &s);
            (s, ctx)
        },
        {
            let r = Route { ns: ADV, ap: CLEAN };
            (vec![Segment::new(8, r)], Ctx::new(r, Mode::Eval))
        },
        {
            let s = vec![
                Segment::new(2, Route::domain(ADV)),
                Segment::new(6, Route::domain(ADV)),
            ];
            let ctx = Ctx::mixed(Mode::Eval, &s);
            (s, ctx)
        },
    ];
    let mut outs = vec![];
    for (i, (segs, ctx)) in cases.iter().enumerate() {
        let want = init.clone().forward(&x, segs, Mode::Eval, None, None);
        let y = to_vec(&norm.forward(&x.tensor(), ctx));
        assert_close(&y, &want, &format!("eval case {i}"));
        init.check_untouched(&norm, CLEAN, "eval");
        init.check_untouched(&norm, ADV, "eval");
        outs.push(y);
    }
    // Not vacuous: the routes matter.
    assert_far(
        &outs[0],
        &outs[1],
        "eval routes (ns=adv,ap=clean | ns=clean,ap=adv) vs (clean | adv)",
    );
}

/// (8) Soup: affine = w AP[adv] + (1 - w) AP[clean] for every segment, whatever route.ap says.
#[test]
fn soup_interpolates_the_affine_sets() {
    let mut rng = Rng(88);
    let (c, sp) = (3, [2i64, 2]);
    let spec = bn_spec(2, 2, 1e-5, 0.1);
    let (_clean, _adv, x) = two_domains(&mut rng, 4, 4, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);
    let segs = [
        Segment::new(4, Route::domain(CLEAN)),
        Segment::new(4, Route::domain(ADV)),
    ];
    for w in [0.3, 0.0, 1.0] {
        // Train, mixed batch.
        let (_vs, norm) = layer(spec, c, &init);
        let mut r = init.clone();
        let want = r.forward(&x, &segs, Mode::Train, Some(w), None);
        let y = to_vec(&norm.forward(
            &x.tensor(),
            &Ctx::mixed(Mode::Train, &segs).with_soup(Some(w)),
        ));
        assert_close(&y, &want, &format!("soup w={w} train mixed"));
        r.check_stats(&norm, &format!("soup w={w} train mixed"));
        // Eval, routed to AP clean (ignored by soup) and to NS adv.
        let route = Route { ns: ADV, ap: CLEAN };
        let want_e = r
            .clone()
            .forward(&x, &[Segment::new(8, route)], Mode::Eval, Some(w), None);
        let ye =
            to_vec(&norm.forward(&x.tensor(), &Ctx::new(route, Mode::Eval).with_soup(Some(w))));
        assert_close(&ye, &want_e, &format!("soup w={w} eval"));
        // Eval mixed with different NS routes.
        let segs_e = [seg(4, CLEAN, CLEAN, ADV), seg(4, ADV, ADV, CLEAN)];
        let want_m = r.clone().forward(&x, &segs_e, Mode::Eval, Some(w), None);
        let ym = to_vec(&norm.forward(
            &x.tensor(),
            &Ctx::mixed(Mode::Eval, &segs_e).with_soup(Some(w)),
        ));
        assert_close(&ym, &want_m, &format!("soup w={w} eval mixed"));
        if w == 0.3 {
            let plain = r
                .clone()
                .forward(&x, &[Segment::new(8, route)], Mode::Eval, None, None);
            assert_far(&ye, &plain, "soup vs routed affine");
        }
    }
}

/// (9) TrainFrozen: batch statistics as in Train, running statistics and counters untouched.
#[test]
fn train_frozen_uses_batch_statistics_and_updates_nothing() {
    let mut rng = Rng(99);
    let (c, sp) = (3, [3i64, 2]);
    for (ns, ap) in [(2usize, 2usize), (1, 1), (1, 2), (2, 1)] {
        let spec = bn_spec(ns, ap, 1e-5, 0.1);
        let (_clean, _adv, x) = two_domains(&mut rng, 4, 3, c, &sp);
        let init = RefNorm::random(&mut rng, &spec, c);
        let (_vs, norm) = layer(spec, c, &init);
        let cases: Vec<(Vec<Segment>, Ctx)> = vec![
            {
                let s = vec![
                    Segment::new(4, Route::domain(CLEAN)),
                    Segment::new(3, Route::domain(ADV)),
                ];
                let ctx = Ctx::mixed(Mode::TrainFrozen, &s);
                (s, ctx)
            },
            {
                let s = vec![seg(4, CLEAN, CLEAN, CLEAN), seg(3, ADV, CLEAN, ADV)];
                let ctx = Ctx::mixed(Mode::TrainFrozen, &s);
                (s, ctx)
            },
            (
                vec![Segment::new(7, Route::domain(ADV))],
                Ctx::new(Route::domain(ADV), Mode::TrainFrozen),
            ),
        ];
        for (i, (segs, ctx)) in cases.iter().enumerate() {
            // Train-mode reference output (the reference state is a throwaway clone).
            let want = init.clone().forward(&x, segs, Mode::Train, None, None);
            let y = to_vec(&norm.forward(&x.tensor(), ctx));
            let what = format!("ns={ns} ap={ap} frozen case {i}");
            assert_close(&y, &want, &what);
            for k in 0..ns {
                init.check_untouched(&norm, k, &what);
            }
        }
    }
}

/// Ctx.momentum overrides the layer's EMA momentum (fused single-segment path and mixed path).
#[test]
fn momentum_override_sets_the_ema_rate() {
    let mut rng = Rng(111);
    let (c, sp) = (3, [2i64, 3]);
    let spec = bn_spec(2, 2, 1e-5, 0.1);
    let (_clean, adv, x) = two_domains(&mut rng, 4, 4, c, &sp);
    let init = RefNorm::random(&mut rng, &spec, c);
    let m = 0.37;
    // Mixed batch.
    let segs = [
        Segment::new(4, Route::domain(CLEAN)),
        Segment::new(4, Route::domain(ADV)),
    ];
    let (_vs, norm) = layer(spec, c, &init);
    let mut r = init.clone();
    let want = r.forward(&x, &segs, Mode::Train, None, Some(m));
    let ctx = Ctx {
        momentum: Some(m),
        ..Ctx::mixed(Mode::Train, &segs)
    };
    assert_close(
        &to_vec(&norm.forward(&x.tensor(), &ctx)),
        &want,
        "momentum mixed output",
    );
    r.check_stats(&norm, "momentum override, mixed");
    // One segment (fused path), adv only.
    let (_vs2, norm2) = layer(spec, c, &init);
    let mut r2 = init.clone();
    let _ = r2.forward(
        &adv,
        &[Segment::new(4, Route::domain(ADV))],
        Mode::Train,
        None,
        Some(m),
    );
    let ctx2 = Ctx {
        momentum: Some(m),
        ..Ctx::new(Route::domain(ADV), Mode::Train)
    };
    let _ = norm2.forward(&adv.tensor(), &ctx2);
    r2.check_stats(&norm2, "momentum override, fused");
    // Not vacuous: the default momentum would have given other running stats.
    let mut r3 = init.clone();
    let _ = r3.forward(
        &adv,
        &[Segment::new(4, Route::domain(ADV))],
        Mode::Train,
        None,
        None,
    );
    assert_far(
        &to_vec(&norm2.stats[1].running_var),
        &r3.rv[1],
        "override vs default momentum",
    );
    // Cumulative average (re-estimation): momentum 1/(k+1) at batch k gives the mean of the batch means.
    let (_vs4, norm4) = layer(spec, c, &init);
    let batches: Vec<Batch> = (0..3)
        .map(|_| Batch::gen(&mut rng, 4, c, &sp, 1.0, 1.5))
        .collect();
    for (k, b) in batches.iter().enumerate() {
        let ctx = Ctx {
            momentum: Some(1.0 / (k as f64 + 1.0)),
            ..Ctx::new(Route::domain(CLEAN), Mode::Train)
        };
        let _ = norm4.forward(&b.tensor(), &ctx);
    }
    let all: Vec<usize> = (0..4).collect();
    let means: Vec<Vec<f64>> = batches.iter().map(|b| moments(b, &all).0).collect();
    let avg: Vec<f64> = (0..c)
        .map(|ch| means.iter().map(|m| m[ch]).sum::<f64>() / 3.0)
        .collect();
    assert_close(
        &to_vec(&norm4.stats[0].running_mean),
        &avg,
        "cumulative average running_mean",
    );
}

// ---------------------------------------------------------------------------------------------
// GroupNorm and friends
// ---------------------------------------------------------------------------------------------

/// GroupNorm reference: per sample and group, biased statistics over (C/G) x HW, then the
/// per-channel affine of the row's segment.
fn ref_group_norm(
    x: &Batch,
    groups: usize,
    eps: f64,
    affine_of_row: &dyn Fn(usize) -> (Vec<f64>, Vec<f64>),
) -> Vec<f64> {
    let cg = x.c / groups;
    let mut y = vec![0.0; x.v.len()];
    for row in 0..x.rows() {
        let (ga, be) = affine_of_row(row);
        for g in 0..groups {
            let idx: Vec<usize> = (g * cg..(g + 1) * cg)
                .flat_map(|ch| (0..x.hw).map(move |j| (ch, j)))
                .map(|(ch, j)| x.idx(row, ch, j))
                .collect();
            let n = idx.len() as f64;
            let m = idx.iter().map(|&i| x.v[i]).sum::<f64>() / n;
            let var = idx.iter().map(|&i| (x.v[i] - m).powi(2)).sum::<f64>() / n;
            for &i in &idx {
                let ch = (i / x.hw) % x.c;
                y[i] = ga[ch] * (x.v[i] - m) / (var + eps).sqrt() + be[ch];
            }
        }
    }
    y
}

/// (10) GroupNorm (and Layer / Instance) with two affine sets: per-segment affine, any mode,
/// soup; no statistics sets.
#[test]
fn group_norm_with_two_affine_sets_uses_per_segment_affine() {
    let mut rng = Rng(1010);
    let (c, sp) = (4, [3i64, 3]);
    for (kind, groups) in [
        (NormKind::Group, 2usize),
        (NormKind::Layer, 1),
        (NormKind::Instance, 4),
    ] {
        let spec = NormSpec {
            kind,
            groups: 2,
            ns_domains: 2,
            ap_domains: 2,
            eps: 1e-4,
            momentum: 0.1,
        };
        let (_clean, _adv, x) = two_domains(&mut rng, 3, 2, c, &sp);
        let init = RefNorm::random(&mut rng, &spec, c);
        let (_vs, norm) = layer(spec, c, &init);
        assert!(norm.stats.is_empty(), "{kind:?} must hold no statistics");
        let segs = [
            Segment::new(3, Route::domain(CLEAN)),
            Segment::new(2, Route::domain(ADV)),
        ];
        let want = ref_group_norm(&x, groups, 1e-4, &|row| {
            init.affine(if row < 3 { CLEAN } else { ADV }, None)
        });
        for mode in [Mode::Train, Mode::Eval, Mode::TrainFrozen] {
            let y = to_vec(&norm.forward(&x.tensor(), &Ctx::mixed(mode, &segs)));
            assert_close(&y, &want, &format!("{kind:?} {mode} per-segment affine"));
        }
        // Reversed routes.
        let segs_r = [
            Segment::new(3, Route { ns: CLEAN, ap: ADV }),
            Segment::new(2, Route::domain(CLEAN)),
        ];
        let want_r = ref_group_norm(&x, groups, 1e-4, &|row| {
            init.affine(if row < 3 { ADV } else { CLEAN }, None)
        });
        let yr = to_vec(&norm.forward(&x.tensor(), &Ctx::mixed(Mode::Train, &segs_r)));
        assert_close(&yr, &want_r, &format!("{kind:?} reversed routes"));
        assert_far(&yr, &want, &format!("{kind:?} routes matter"));
        // Whole batch through AP adv, and soup.
        let want_a = ref_group_norm(&x, groups, 1e-4, &|_| init.affine(ADV, None));
        let ya = to_vec(&norm.forward(&x.tensor(), &Ctx::new(Route::domain(ADV), Mode::Eval)));
        assert_close(&ya, &want_a, &format!("{kind:?} AP adv"));
        let want_s = ref_group_norm(&x, groups, 1e-4, &|_| init.affine(CLEAN, Some(0.6)));
        let ys = to_vec(&norm.forward(
            &x.tensor(),
            &Ctx::mixed(Mode::Train, &segs).with_soup(Some(0.6)),
        ));
        assert_close(&ys, &want_s, &format!("{kind:?} soup"));
    }
}

// ---------------------------------------------------------------------------------------------
// 2-D inputs
// ---------------------------------------------------------------------------------------------

/// (11) [N, C] inputs through every BN path: fused, mixed Dual BN, Dual-AP, Cross-BN, Eval.
#[test]
fn two_dimensional_inputs_work_on_every_path() {
    let mut rng = Rng(1111);
    let c = 5;
    for (ns, ap) in [(2usize, 2usize), (1, 2), (2, 1), (1, 1)] {
        let spec = bn_spec(ns, ap, 1e-5, 0.15);
        let (_clean, _adv, x) = two_domains(&mut rng, 6, 5, c, &[]);
        assert_eq!(x.tensor().dim(), 2);
        let init = RefNorm::random(&mut rng, &spec, c);
        let (_vs, norm) = layer(spec, c, &init);
        let mut r = init.clone();
        let cases: Vec<(Vec<Segment>, Mode)> = vec![
            (
                vec![
                    Segment::new(6, Route::domain(CLEAN)),
                    Segment::new(5, Route::domain(ADV)),
                ],
                Mode::Train,
            ),
            (
                vec![seg(6, CLEAN, CLEAN, CLEAN), seg(5, ADV, CLEAN, ADV)],
                Mode::Train,
            ),
            (vec![Segment::new(11, Route::domain(ADV))], Mode::Train),
            (
                vec![seg(6, CLEAN, ADV, CLEAN), seg(5, ADV, CLEAN, ADV)],
                Mode::Eval,
            ),
            (
                vec![
                    Segment::new(6, Route::domain(ADV)),
                    Segment::new(5, Route::domain(CLEAN)),
                ],
                Mode::TrainFrozen,
            ),
        ];
        for (i, (segs, mode)) in cases.iter().enumerate() {
            let what = format!("2-D ns={ns} ap={ap} case {i} ({mode})");
            let want = r.forward(&x, segs, *mode, None, None);
            let y = norm.forward(&x.tensor(), &Ctx::mixed(*mode, segs));
            assert_eq!(y.size(), vec![11, c as i64], "{what}: shape");
            assert_close(&to_vec(&y), &want, &what);
            r.check_stats(&norm, &what);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dual-Linear head
// ---------------------------------------------------------------------------------------------

/// (12) A two-head classifier routes each segment's rows to the head of its route.ap; soup
/// lerps weights and biases.
#[test]
fn dual_linear_head_routes_rows_to_their_heads() {
    let mut rng = Rng(1212);
    let (cin, cout) = (6usize, 4usize);
    let vs = VarStore::new(Device::Cpu);
    let head = Head::new(vs.root() / "fc", cin as i64, cout as i64, 2, None);
    assert_eq!(head.sets.len(), 2);
    let mut ws = vec![];
    let mut bs = vec![];
    for s in &head.sets {
        let w = rng.normal_vec(cout * cin, 0.0, 0.8);
        let b = rng.normal_vec(cout, 0.5, 1.0);
        set(&s.ws, &w);
        set(s.bs.as_ref().expect("head bias"), &b);
        ws.push(w);
        bs.push(b);
    }
    let x = Batch::gen(&mut rng, 9, cin, &[], 1.0, 2.0);
    // y[row] = W_k x[row] + b_k with k = head of the row; `w_of` gives (W, b) per row.
    let reference = |w_of: &dyn Fn(usize) -> (Vec<f64>, Vec<f64>)| -> Vec<f64> {
        let mut y = vec![];
        for row in 0..9 {
            let (w, b) = w_of(row);
            for o in 0..cout {
                y.push(
                    b[o] + (0..cin)
                        .map(|i| w[o * cin + i] * x.v[row * cin + i])
                        .sum::<f64>(),
                );
            }
        }
        y
    };
    let head_of = |k: usize| (ws[k].clone(), bs[k].clone());

    // clean(3) | adv(4, via ap only) | clean(2)
    let segs = [
        Segment::new(3, Route::domain(CLEAN)),
        seg(4, CLEAN, CLEAN, ADV),
        Segment::new(2, Route::domain(CLEAN)),
    ];
    let route_of_row = |row: usize| if (3..7).contains(&row) { ADV } else { CLEAN };
    for mode in [Mode::Train, Mode::Eval] {
        let y = to_vec(&head.forward(&x.tensor(), &Ctx::mixed(mode, &segs)));
        let want = reference(&|row| head_of(route_of_row(row)));
        assert_close(&y, &want, &format!("head mixed {mode}"));
        assert_far(&y, &reference(&|_| head_of(CLEAN)), "head routes matter");
    }
    // Whole batch through each head.
    for k in [CLEAN, ADV] {
        let y = to_vec(&head.forward(&x.tensor(), &Ctx::new(Route::domain(k), Mode::Eval)));
        assert_close(
            &y,
            &reference(&|_| head_of(k)),
            &format!("head {k} whole batch"),
        );
    }
    // Route by ap, not ns.
    let y = to_vec(&head.forward(
        &x.tensor(),
        &Ctx::new(Route { ns: ADV, ap: CLEAN }, Mode::Eval),
    ));
    assert_close(
        &y,
        &reference(&|_| head_of(CLEAN)),
        "head selected by route.ap",
    );
    // Soup: W = w W_adv + (1 - w) W_clean, b likewise, for every row.
    let w = 0.35;
    let lerp = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(p, q)| w * p + (1.0 - w) * q)
            .collect()
    };
    let soup = (lerp(&ws[1], &ws[0]), lerp(&bs[1], &bs[0]));
    let y = to_vec(&head.forward(
        &x.tensor(),
        &Ctx::mixed(Mode::Eval, &segs).with_soup(Some(w)),
    ));
    assert_close(&y, &reference(&|_| soup.clone()), "head soup");
}
