//! MixACM building blocks: ACM maps and distances, KD, mixup, the loss's terms and ablation
//! rungs, the frozen teacher, and loading a teacher from a PyTorch-style safetensors file
//! written by `tests/data/write_teacher.py` (numpy + safetensors, no torch).

use crate::common;

use advtrain::checkpoint;
use advtrain::checkpoint::import;
use advtrain::nn::{ArchSpec, Ctx, Mode, Network};
use advtrain::train::mixacm::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn arch(name: &str, depth: Option<i64>) -> ArchSpec {
    common::arch_spec(name, 1, depth, None)
}

fn tensor(v: &[f64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).reshape(shape).to_kind(Kind::Float)
}

fn values(t: &Tensor) -> Vec<f64> {
    let t = t.detach().to_kind(Kind::Double).contiguous().view([-1]);
    Vec::<f64>::try_from(&t).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn assert_all_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, tol), "{what}[{i}]: got {g}, want {w}");
    }
}

/// A deterministic feature map [2,3,2,2] with positive, negative and zero entries.
fn feature() -> (Vec<f64>, [i64; 4]) {
    let v = (0..24).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
    (v, [2, 3, 2, 2])
}

#[test]
fn acm_map_matches_hand_computation() {
    let (v, shape) = feature();
    let f = tensor(&v, &shape);
    let cell = |n: usize, c: usize| &v[(n * 3 + c) * 4..(n * 3 + c) * 4 + 4];
    let by_hand = |g: &dyn Fn(f64) -> f64| -> Vec<f64> {
        let mut out = vec![];
        for n in 0..2 {
            for c in 0..3 {
                out.push(cell(n, c).iter().map(|&x| g(x)).sum::<f64>() / 4.0);
            }
        }
        out
    };
    let relu = by_hand(&|x: f64| x.max(0.0));
    let got = acm_map(&f, Mapping::MeanRelu, 2.0);
    assert_eq!(got.size(), vec![2, 3]);
    assert_all_close(&values(&got), &relu, 1e-6, "mean-relu");
    for p in [1.0, 2.0, 3.0] {
        let want = by_hand(&|x: f64| x.abs().powf(p));
        let got = values(&acm_map(&f, Mapping::MeanAbsPow, p));
        assert_all_close(&got, &want, 1e-6, &format!("mean-abs-pow p={p}"));
    }
    let mean = by_hand(&|x| x);
    let mut soft = vec![];
    for n in 0..2 {
        let row = &mean[n * 3..n * 3 + 3];
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        soft.extend(row.iter().map(|x| x.exp() / z));
    }
    let got = values(&acm_map(&f, Mapping::ChannelSoftmax, 2.0));
    assert_all_close(&got, &soft, 1e-6, "channel-softmax");
}

#[test]
fn normalise_and_distances_match_hand_computation() {
    let a: Vec<f64> = (0..12).map(|i| ((i * 5 % 7) as f64 - 2.0) / 2.0).collect();
    let b: Vec<f64> = (0..12).map(|i| ((i * 3 % 5) as f64 - 1.0) / 3.0).collect();
    let (ta, tb) = (tensor(&a, &[3, 4]), tensor(&b, &[3, 4]));
    let row = |v: &[f64], i: usize| v[i * 4..i * 4 + 4].to_vec();

    let mut l2 = vec![];
    for i in 0..3 {
        let r = row(&a, i);
        let n = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        l2.extend(r.iter().map(|x| x / n));
    }
    let got = values(&normalise_rows(&ta, Normalise::L2));
    assert_all_close(&got, &l2, 1e-6, "l2 rows");
    assert_all_close(
        &values(&normalise_rows(&ta, Normalise::None)),
        &a,
        0.0,
        "none",
    );
    let zeros = normalise_rows(&Tensor::zeros([2, 3], CPU), Normalise::L2);
    assert!(values(&zeros).iter().all(|x| *x == 0.0), "zero rows stay 0");

    let (mut d2, mut d1, mut sq) = (0.0, 0.0, 0.0);
    for i in 0..3 {
        let (ra, rb) = (row(&a, i), row(&b, i));
        let d: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| x - y).collect();
        d2 += d.iter().map(|x| x * x).sum::<f64>().sqrt() / 3.0;
        d1 += d.iter().map(|x| x.abs()).sum::<f64>() / 3.0;
        sq += d.iter().map(|x| x * x).sum::<f64>() / 12.0;
    }
    let got = |d| acm_distance(&ta, &tb, d).double_value(&[]);
    assert!(close(got(Distance::L2), d2, 1e-6), "L2");
    assert!(close(got(Distance::L1), d1, 1e-6), "L1");
    assert!(close(got(Distance::Mse), sq, 1e-6), "MSE");
    for d in [Distance::L2, Distance::L1, Distance::Mse] {
        assert_eq!(acm_distance(&ta, &ta, d).double_value(&[]), 0.0);
        assert_eq!(acm_distance(&ta, &tb, d).size(), Vec::<i64>::new());
    }
}

#[test]
fn kd_loss_matches_float64_reference() {
    let _g = common::rng_lock();
    tch::manual_seed(11);
    let s = (Tensor::randn([5, 7], CPU) * 3.0).set_requires_grad(true);
    let t = (Tensor::randn([5, 7], CPU) * 3.0).set_requires_grad(true);
    let (sv, tv) = (values(&s), values(&t));
    for tau in [1.0, 4.0, 0.5] {
        let log_softmax = |v: &[f64]| -> Vec<f64> {
            let z: Vec<f64> = v.iter().map(|x| x / tau).collect();
            let mx = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
            z.iter().map(|x| x - lse).collect()
        };
        let mut want = 0.0;
        for i in 0..5 {
            let lq = log_softmax(&tv[i * 7..i * 7 + 7]);
            let lp = log_softmax(&sv[i * 7..i * 7 + 7]);
            want += lq
                .iter()
                .zip(&lp)
                .map(|(q, p)| q.exp() * (q - p))
                .sum::<f64>()
                / 5.0;
        }
        want *= tau * tau;
        let got = kd_loss(&s, &t, tau);
        assert!(
            close(got.double_value(&[]), want, 1e-5),
            "tau {tau}: {} vs {want}",
            got.double_value(&[])
        );
        assert!(kd_loss(&s, &s, tau).double_value(&[]).abs() < 1e-6);
    }
    kd_loss(&s, &t, 2.0).backward();
    assert!(s.grad().defined(), "the student gets a gradient");
    assert!(!t.grad().defined(), "the teacher logits are detached");
}

#[test]
fn mixup_labels_weights_and_inputs() {
    let _g = common::rng_lock();
    for (seed, alpha) in [(1, 1.0), (2, 0.2), (3, 5.0)] {
        tch::manual_seed(seed);
        let n = 6;
        let x = Tensor::rand([n, 1, 3, 3], CPU);
        let y = Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9]);
        let mix = sample_mixup(&x, &y, alpha);
        let m = mix.m;
        assert!((0.0..=1.0).contains(&m), "m = {m}");
        let perm = Vec::<i64>::try_from(&mix.perm).unwrap();
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "perm is a permutation");
        let yv = Vec::<i64>::try_from(&y).unwrap();
        assert_eq!(Vec::<i64>::try_from(&mix.y_a).unwrap(), yv);
        let yb: Vec<i64> = perm.iter().map(|&j| yv[j as usize]).collect();
        assert_eq!(Vec::<i64>::try_from(&mix.y_b).unwrap(), yb);
        let (xv, xm) = (values(&x), values(&mix.x));
        for i in 0..n as usize {
            let j = perm[i] as usize;
            for k in 0..9 {
                let want = m * xv[i * 9 + k] + (1.0 - m) * xv[j * 9 + k];
                assert!(close(xm[i * 9 + k], want, 1e-6), "x_mix[{i},{k}]");
            }
        }
        // CE weighting: m CE(y_a) + (1-m) CE(y_b), by hand in f64.
        let logits = Tensor::randn([n, 10], CPU);
        let lv = values(&logits);
        let ce_of = |labels: &[i64]| -> f64 {
            let mut s = 0.0;
            for i in 0..n as usize {
                let r = &lv[i * 10..i * 10 + 10];
                let lse = r.iter().map(|x| x.exp()).sum::<f64>().ln();
                s += (lse - r[labels[i] as usize]) / n as f64;
            }
            s
        };
        let want = m * ce_of(&yv) + (1.0 - m) * ce_of(&yb);
        let got = mixup_ce(&logits, &mix).double_value(&[]);
        assert!(close(got, want, 1e-5), "mixup CE {got} vs {want}");
        // Seeded: the same seed gives the same draw.
        tch::manual_seed(seed);
        let _ = Tensor::rand([n, 1, 3, 3], CPU);
        let again = sample_mixup(&x, &y, alpha);
        assert_eq!(again.m, m);
        assert_eq!(Vec::<i64>::try_from(&again.perm).unwrap(), perm);
    }
}

#[test]
fn beta_draws_have_the_beta_moments() {
    let _g = common::rng_lock();
    tch::manual_seed(5);
    for alpha in [1.0, 0.2, 4.0] {
        let k = 3000;
        let d: Vec<f64> = (0..k).map(|_| sample_beta(alpha)).collect();
        assert!(d.iter().all(|m| (0.0..=1.0).contains(m)));
        let mean = d.iter().sum::<f64>() / k as f64;
        let var = d.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / k as f64;
        let want_var = 1.0 / (4.0 * (2.0 * alpha + 1.0));
        assert!((mean - 0.5).abs() < 0.03, "alpha {alpha}: mean {mean}");
        assert!(
            (var - want_var).abs() < 0.15 * want_var,
            "alpha {alpha}: var {var} vs {want_var}"
        );
    }
}

/// Student and teacher small-cnns (the teacher with moved running statistics).
fn pair(seed: i64) -> (Network, Network) {
    tch::manual_seed(seed);
    let student = Network::new(&arch("small-cnn", None), Device::Cpu).unwrap();
    let teacher = Network::new(&arch("small-cnn", None), Device::Cpu).unwrap();
    let x = Tensor::rand([16, 1, 28, 28], CPU);
    let _ = tch::no_grad(|| teacher.model.forward(&x, &Ctx::train()));
    // A confident teacher, so the KD term is not negligible.
    tch::no_grad(|| {
        let mut w = teacher.variables()["fc.weight"].shallow_clone();
        let _ = w.g_mul_scalar_(20.0);
    });
    (student, teacher)
}

fn batch() -> (Tensor, Tensor) {
    let x = Tensor::rand([8, 1, 28, 28], CPU);
    let y = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
    (x, y)
}

fn small_spec() -> MixAcmSpec {
    MixAcmSpec {
        teacher: Some("unused.safetensors".into()),
        pairs: vec![[0, 0], [1, 1], [2, 2]],
        mixup_alpha: 0.7,
        alpha_kd: 0.8,
        beta_acm: 3.0,
        ..MixAcmSpec::default()
    }
}

fn snapshot(net: &Network) -> Vec<(String, Tensor)> {
    net.named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

#[test]
fn teacher_gets_no_gradient_and_keeps_its_statistics() {
    let _g = common::rng_lock();
    let (student, teacher) = pair(21);
    for kd_inputs in [KdInputs::Mixed, KdInputs::Clean] {
        let spec = MixAcmSpec {
            kd_inputs,
            ..small_spec()
        };
        let proj = Projections::new(&spec, &student, &teacher, [28, 28]).unwrap();
        assert!(
            proj.per_pair.iter().all(Option::is_none),
            "same widths: none"
        );
        let before_t = snapshot(&teacher);
        let before_s = snapshot(&student);
        let (x, y) = batch();
        let (loss, parts) = mixacm_loss(
            &spec,
            &*student.model,
            &*teacher.model,
            &proj,
            &x,
            &y,
            Mode::Train,
        )
        .unwrap();
        loss.backward();
        for (name, t) in teacher.named_tensors() {
            let g = t.grad();
            assert!(
                !g.defined() || g.abs().max().double_value(&[]) == 0.0,
                "teacher {name} received a gradient"
            );
        }
        for ((name, a), (_, b)) in before_t.iter().zip(teacher.named_tensors()) {
            assert!(a.equal(&b), "teacher {name} changed ({kd_inputs:?})");
        }
        let vars = student.variables();
        let g = vars["conv1.weight"].grad();
        assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        let moved = before_s
            .iter()
            .find(|(n, _)| n == "bn1.running_mean")
            .map(|(_, t)| !t.equal(&vars["bn1.running_mean"]))
            .unwrap();
        assert!(moved, "the student runs in train mode");
        assert!(parts.kd.double_value(&[]) > 0.0 && parts.acm.double_value(&[]) > 0.0);
    }
}

/// loss and parts of `spec` on a fixed batch, with the mixup draw fixed by `seed`.
fn run(
    spec: &MixAcmSpec,
    s: &Network,
    t: &Network,
    x: &Tensor,
    y: &Tensor,
) -> (f64, [f64; 3], Option<f64>) {
    let proj = Projections::none(spec, Device::Cpu);
    tch::manual_seed(77);
    let (loss, p) = mixacm_loss(spec, &*s.model, &*t.model, &proj, x, y, Mode::Train).unwrap();
    let v = |t: &Tensor| t.double_value(&[]);
    (v(&loss), [v(&p.ce), v(&p.kd), v(&p.acm)], p.m)
}

#[test]
fn ablation_rungs_enable_exactly_their_terms() {
    let _g = common::rng_lock();
    let (student, teacher) = pair(31);
    let (x, y) = batch();
    let base = small_spec();
    let ladder = ablation_ladder(&base);
    let names: Vec<&str> = ladder.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ABLATION_RUNGS.to_vec());
    let expect = [
        ("mixup-only", true, false, false),
        ("kd-clean", false, true, false),
        ("mixup-kd", true, true, false),
        ("mixup-kd-acm", true, true, true),
        ("acm-only", false, false, true),
    ];
    for ((name, spec), (ename, mixup, kd, acm)) in ladder.iter().zip(expect) {
        assert_eq!(*name, ename);
        assert_eq!((spec.mixup, spec.kd, spec.acm), (mixup, kd, acm), "{name}");
        spec.validate().unwrap();
        assert_eq!(spec.pairs, base.pairs, "{name} keeps the ACM settings");
        let (loss, [ce, kdp, acmp], m) = run(spec, &student, &teacher, &x, &y);
        assert_eq!(m.is_some(), mixup, "{name}: mixup");
        assert_eq!(kdp > 0.0, kd, "{name}: kd part {kdp}");
        assert_eq!(acmp > 0.0, acm, "{name}: acm part {acmp}");
        assert!(ce > 0.0);
        assert!(close(loss, ce + kdp + acmp, 1e-6), "{name}: sum of parts");
        // Zeroing an enabled term's weight removes exactly its part; a disabled term's weight
        // changes nothing.
        let no_kd = MixAcmSpec {
            alpha_kd: 0.0,
            ..spec.clone()
        };
        let no_acm = MixAcmSpec {
            beta_acm: 0.0,
            ..spec.clone()
        };
        let big_kd = MixAcmSpec {
            alpha_kd: 5.0,
            ..spec.clone()
        };
        let big_acm = MixAcmSpec {
            beta_acm: 9.0,
            ..spec.clone()
        };
        let (l_no_kd, ..) = run(&no_kd, &student, &teacher, &x, &y);
        let (l_no_acm, ..) = run(&no_acm, &student, &teacher, &x, &y);
        assert!(close(loss - l_no_kd, kdp, 1e-4), "{name}: kd contribution");
        assert!(
            close(loss - l_no_acm, acmp, 1e-4),
            "{name}: acm contribution"
        );
        let (l_big_kd, ..) = run(&big_kd, &student, &teacher, &x, &y);
        let (l_big_acm, ..) = run(&big_acm, &student, &teacher, &x, &y);
        assert_eq!(l_big_kd == loss, !kd, "{name}: alpha_kd matters iff kd");
        assert_eq!(l_big_acm == loss, !acm, "{name}: beta_acm matters iff acm");
    }
    // The clean rungs: CE and KD on the clean batch, computed independently.
    let s_logits = student.model.forward(&x, &Ctx::train());
    let t_logits = tch::no_grad(|| teacher.model.forward(&x, &Ctx::eval()));
    let ce_clean = (s_logits.log_softmax(-1, Kind::Float) * -1.0)
        .gather(1, &y.unsqueeze(1), false)
        .mean(Kind::Float)
        .double_value(&[]);
    let kd_clean = base.alpha_kd * kd_loss(&s_logits, &t_logits, base.tau).double_value(&[]);
    let (_, [ce, kdp, _], _) = run(&ladder[1].1, &student, &teacher, &x, &y);
    assert!(close(ce, ce_clean, 1e-5), "kd-clean CE {ce} vs {ce_clean}");
    assert!(
        close(kdp, kd_clean, 1e-5),
        "kd-clean KD {kdp} vs {kd_clean}"
    );
    let (_, [ce, ..], _) = run(&ladder[4].1, &student, &teacher, &x, &y);
    assert!(close(ce, ce_clean, 1e-5), "acm-only CE on clean inputs");
    // Mixup with KD on clean inputs: the KD term sees the clean batch.
    let mixed_clean = MixAcmSpec {
        kd_inputs: KdInputs::Clean,
        ..ladder[2].1.clone()
    };
    let (_, [_, kdp, _], m) = run(&mixed_clean, &student, &teacher, &x, &y);
    assert!(m.is_some());
    assert!(
        close(kdp, kd_clean, 1e-5),
        "kd_inputs = clean: {kdp} vs {kd_clean}"
    );
    let (_, [_, kd_mixed, _], _) = run(&ladder[2].1, &student, &teacher, &x, &y);
    assert!(
        (kd_mixed - kd_clean).abs() > 1e-2 * kd_clean.abs(),
        "kd_inputs = mixed differs: {kd_mixed} vs {kd_clean}"
    );
}

#[test]
fn acm_term_matches_its_definition() {
    let _g = common::rng_lock();
    let (student, teacher) = pair(41);
    let (x, y) = batch();
    let spec = MixAcmSpec {
        mixup: false,
        kd: false,
        pairs: vec![[0, 0], [2, 2]],
        mapping: Mapping::MeanAbsPow,
        p: 3.0,
        normalise: Normalise::None,
        distance: Distance::L1,
        ..small_spec()
    };
    let (_, [_, _, acmp], _) = run(&spec, &student, &teacher, &x, &y);
    let fs = student.model.forward_stages(&x, &Ctx::train()).stages;
    let ft = tch::no_grad(|| teacher.model.forward_stages(&x, &Ctx::eval())).stages;
    let mut want = 0.0;
    for k in [0, 2] {
        let a = values(&fs[k].abs().pow_tensor_scalar(3.0).mean_dim(
            &[2i64, 3][..],
            false,
            Kind::Double,
        ));
        let b = values(&ft[k].abs().pow_tensor_scalar(3.0).mean_dim(
            &[2i64, 3][..],
            false,
            Kind::Double,
        ));
        want += a.iter().zip(&b).map(|(p, q)| (p - q).abs()).sum::<f64>() / 8.0;
    }
    want *= spec.beta_acm;
    assert!(close(acmp, want, 1e-4), "acm {acmp} vs {want}");
}

#[test]
fn identical_student_and_teacher_give_zero_acm_and_finite_gradients() {
    let _g = common::rng_lock();
    let (student, teacher) = pair(51);
    tch::no_grad(|| {
        let tv = teacher.variables();
        for (n, mut t) in student.variables() {
            t.copy_(&tv[&n]);
        }
    });
    let (x, y) = batch();
    let spec = MixAcmSpec {
        teacher: Some("t.safetensors".into()),
        ..small_spec().with_rung("acm-only").unwrap()
    };
    let proj = Projections::none(&spec, Device::Cpu);
    // Eval-mode student = the teacher exactly: every distance is 0 (L2 norm at 0).
    let (loss, parts) = mixacm_loss(
        &spec,
        &*student.model,
        &*teacher.model,
        &proj,
        &x,
        &y,
        Mode::Eval,
    )
    .unwrap();
    assert!(parts.acm.double_value(&[]).abs() < 1e-6);
    loss.backward();
    for (n, t) in student.named_tensors() {
        let g = t.grad();
        if g.defined() {
            assert!(
                values(&g).iter().all(|v| v.is_finite()),
                "{n}: non-finite grad"
            );
        }
    }
}

#[test]
fn projections_only_where_channels_differ() {
    let _g = common::rng_lock();
    tch::manual_seed(61);
    let student = Network::new(&arch("small-cnn", None), Device::Cpu).unwrap();
    let teacher = Network::new(&arch("resnet", Some(10)), Device::Cpu).unwrap();
    assert_eq!(stage_channels(&student, [28, 28]), vec![32, 64, 128]);
    assert_eq!(stage_channels(&teacher, [28, 28]), vec![64, 128, 256, 512]);
    let spec = MixAcmSpec {
        pairs: vec![[0, 0], [1, 0], [2, 2]],
        ..small_spec()
    };
    let proj = Projections::new(&spec, &student, &teacher, [28, 28]).unwrap();
    let shapes: Vec<Option<(i64, i64)>> = proj
        .per_pair
        .iter()
        .map(|p| p.as_ref().map(|p| (p.cin, p.cout)))
        .collect();
    assert_eq!(shapes, vec![Some((32, 64)), None, Some((128, 256))]);
    let pw = proj.vs.variables();
    let mut names: Vec<&String> = pw.keys().collect();
    names.sort();
    assert_eq!(names, ["proj.0.weight", "proj.2.weight"]);
    assert_eq!(pw["proj.0.weight"].size(), vec![64, 32, 1, 1]);
    let (x, y) = batch();
    let (loss, _) = mixacm_loss(
        &spec,
        &*student.model,
        &*teacher.model,
        &proj,
        &x,
        &y,
        Mode::Train,
    )
    .unwrap();
    loss.backward();
    assert!(
        pw["proj.0.weight"].grad().defined(),
        "projections are trained"
    );
    for (n, t) in teacher.named_tensors() {
        assert!(!t.grad().defined(), "teacher {n} got a gradient");
    }
    // Without the projection the mismatch is an error, not a panic.
    let none = Projections::none(&spec, Device::Cpu);
    let err = mixacm_loss(
        &spec,
        &*student.model,
        &*teacher.model,
        &none,
        &x,
        &y,
        Mode::Train,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("train.mixacm.pairs[0]"), "{err}");
    // Stage indices out of range name the pair.
    let bad = MixAcmSpec {
        pairs: vec![[0, 0], [3, 1]],
        ..small_spec()
    };
    let err = Projections::new(&bad, &student, &teacher, [28, 28])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("train.mixacm.pairs[1]") && err.contains("student stage 3"),
        "{err}"
    );
    // A teacher with other classes is refused.
    let other = Network::new(
        &ArchSpec {
            num_classes: 7,
            ..arch("small-cnn", None)
        },
        Device::Cpu,
    )
    .unwrap();
    let err = Projections::new(&spec, &student, &other, [28, 28])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("7 classes"), "{err}");
}

#[test]
fn spec_defaults_parsing_and_validation() {
    let spec: MixAcmSpec = toml::from_str(r#"teacher = "t.safetensors""#).unwrap();
    assert_eq!(spec.teacher, Some(PathBuf::from("t.safetensors")));
    assert_eq!(
        spec,
        MixAcmSpec {
            teacher: Some("t.safetensors".into()),
            ..MixAcmSpec::default()
        }
    );
    assert!(spec.mixup && spec.kd && spec.acm);
    assert_eq!(spec.mixup_alpha, 1.0);
    assert_eq!(spec.p, 2.0);
    assert_eq!(spec.pairs, vec![[1, 1], [2, 2], [3, 3]]);
    spec.validate().unwrap();

    let full: MixAcmSpec = toml::from_str(
        r#"
teacher = "rb.safetensors"
mixup = false
kd_inputs = "clean"
mapping = "channel-softmax"
normalise = "none"
distance = "mse"
pairs = [[0, 1]]
[teacher_arch]
name = "preact-resnet18"
num_classes = 10
in_channels = 3
"#,
    )
    .unwrap();
    assert_eq!(full.kd_inputs, KdInputs::Clean);
    assert_eq!(full.mapping, Mapping::ChannelSoftmax);
    assert_eq!(full.normalise, Normalise::None);
    assert_eq!(full.distance, Distance::Mse);
    assert_eq!(full.teacher_arch.as_ref().unwrap().name, "preact-resnet18");
    full.validate().unwrap();
    let abs: MixAcmSpec =
        toml::from_str("teacher = \"t\"\nmapping = \"mean-abs-pow\"\ndistance = \"l1\"").unwrap();
    assert_eq!(
        (abs.mapping, abs.distance),
        (Mapping::MeanAbsPow, Distance::L1)
    );

    let err = toml::from_str::<MixAcmSpec>("teacher = \"t\"\nbeta = 1.0").unwrap_err();
    assert!(err.to_string().contains("beta"), "{err}");

    let bad = |s: MixAcmSpec, field: &str| {
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("train.mixacm.{field}")), "{field}: {e}");
        assert!(e.contains("expected"), "{e}");
    };
    bad(
        MixAcmSpec {
            mixup_alpha: 0.0,
            ..spec.clone()
        },
        "mixup_alpha",
    );
    bad(
        MixAcmSpec {
            alpha_kd: -1.0,
            ..spec.clone()
        },
        "alpha_kd",
    );
    bad(
        MixAcmSpec {
            tau: 0.0,
            ..spec.clone()
        },
        "tau",
    );
    bad(
        MixAcmSpec {
            beta_acm: f64::NAN,
            ..spec.clone()
        },
        "beta_acm",
    );
    bad(
        MixAcmSpec {
            p: 0.5,
            ..spec.clone()
        },
        "p",
    );
    bad(
        MixAcmSpec {
            pairs: vec![],
            ..spec.clone()
        },
        "pairs",
    );
    bad(
        MixAcmSpec {
            pairs: vec![[1, 1], [1, 1]],
            ..spec.clone()
        },
        "pairs",
    );
    bad(
        MixAcmSpec {
            teacher: None,
            ..spec.clone()
        },
        "teacher",
    );
    bad(
        MixAcmSpec {
            teacher_arch: Some(arch("vgg", None)),
            ..spec.clone()
        },
        "teacher_arch.name",
    );
    // No teacher is needed for mixup only; no pairs without ACM.
    let m = MixAcmSpec {
        teacher: None,
        pairs: vec![],
        ..spec.with_rung("mixup-only").unwrap()
    };
    m.validate().unwrap();
    let e = spec.with_rung("kd-only").unwrap_err().to_string();
    assert!(e.contains("mixup-kd-acm"), "{e}");
}

fn python() -> PathBuf {
    let venv = std::env::var_os("ADVTRAIN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    venv.join("bin/python")
}

/// Dump `net`'s names/shapes/dtypes and run write_teacher.py with `args`.
fn write_teacher(net: &Network, dir: &Path, out: &str, args: &[&str]) -> PathBuf {
    let tensors: Vec<serde_json::Value> = net
        .named_tensors()
        .iter()
        .map(|(n, t)| {
            let dtype = if t.kind() == Kind::Int64 {
                "int64"
            } else {
                "float32"
            };
            serde_json::json!({"name": n, "shape": t.size(), "dtype": dtype})
        })
        .collect();
    let spec = dir.join("names.json");
    std::fs::write(&spec, serde_json::json!({ "tensors": tensors }).to_string()).unwrap();
    let file = dir.join(out);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/write_teacher.py");
    let st = std::process::Command::new(python())
        .arg(&script)
        .arg(&spec)
        .arg(&file)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(st.success(), "write_teacher.py failed");
    file
}

#[test]
fn loads_a_pytorch_style_teacher_written_by_python() {
    let _g = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let a = arch("small-cnn", None);
    let probe = Network::new(&a, Device::Cpu).unwrap();
    for (out, extra) in [
        ("drop.safetensors", vec!["--drop-nbt"]),
        ("nbt.safetensors", vec![]),
    ] {
        let mut args = vec![
            "--prefix",
            "module.",
            "--rename",
            "fc=linear",
            "--seed",
            "4",
        ];
        args.extend(extra.iter().copied());
        let file = write_teacher(&probe, dir.path(), out, &args);
        let raw: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .collect();
        assert!(
            raw.contains_key("module.linear.weight"),
            "the file uses foreign names"
        );
        let net = import::load_foreign(&file, &a, Device::Cpu).unwrap();
        let spec = MixAcmSpec {
            teacher: Some(file.clone()),
            teacher_arch: Some(a.clone()),
            ..MixAcmSpec::default()
        };
        let frozen = load_teacher(&spec, Device::Cpu).unwrap();
        for n in [&net, &frozen] {
            for (name, t) in n.named_tensors() {
                let foreign = format!("module.{}", name.replace("fc.", "linear."));
                if name.ends_with("num_batches_tracked") {
                    assert_eq!(raw.contains_key(&foreign), extra.is_empty());
                    assert_eq!(t.int64_value(&[]), 0, "{name} is ignored, left at 0");
                } else {
                    assert!(t.equal(&raw[&foreign]), "{name} differs from {foreign}");
                }
            }
        }
        assert!(frozen
            .vs
            .trainable_variables()
            .iter()
            .all(|t| !t.requires_grad()));
        assert!(!net.variables()["bn1.running_var"].equal(&probe.variables()["bn1.running_var"]));
    }
}

#[test]
fn import_errors_name_the_tensor() {
    let _g = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let a = arch("small-cnn", None);
    let probe = Network::new(&a, Device::Cpu).unwrap();
    let load = |out: &str, args: &[&str]| {
        let file = write_teacher(&probe, dir.path(), out, args);
        let e = import::load_foreign(&file, &a, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&file.display().to_string()),
            "names the file: {e}"
        );
        e
    };
    let e = load(
        "shape.safetensors",
        &["--prefix", "module.", "--bad-shape", "conv2.weight"],
    );
    assert!(
        e.contains("conv2.weight") && e.contains("[64, 32, 3, 3]") && e.contains("[64, 32, 3, 4]"),
        "{e}"
    );
    assert!(e.contains("module.conv2.weight"), "names the file key: {e}");
    let e = load("missing.safetensors", &["--drop", "bn3.running_mean"]);
    assert!(
        e.contains("1 missing") && e.contains("bn3.running_mean"),
        "{e}"
    );
    let e = load(
        "extra.safetensors",
        &["--prefix", "module.", "--extra", "mu"],
    );
    assert!(e.contains("1 unexpected") && e.contains("module.mu"), "{e}");
    // A foreign file without teacher_arch and without our sidecar.
    let file = dir.path().join("extra.safetensors");
    let spec = MixAcmSpec {
        teacher: Some(file),
        ..MixAcmSpec::default()
    };
    let e = load_teacher(&spec, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("teacher_arch"), "{e}");
}

#[test]
fn map_key_resolves_prefixes_and_aliases() {
    let _g = common::rng_lock();
    let resnet = Network::new(&arch("resnet", Some(10)), Device::Cpu).unwrap();
    let ours: HashSet<String> = resnet.variables().into_keys().collect();
    let cases = [
        ("module.conv1.weight", Some("conv1.weight")),
        (
            "module.module.layer1.0.bn1.running_var",
            Some("layer1.0.bn1.running_var"),
        ),
        (
            "layer2.0.shortcut.0.weight",
            Some("layer2.0.downsample.0.weight"),
        ),
        (
            "module.layer2.0.shortcut.1.bias",
            Some("layer2.0.downsample.1.bias"),
        ),
        ("module.linear.weight", Some("fc.weight")),
        ("module.fc.bias", Some("fc.bias")),
        ("layer1.0.shortcut.0.weight", None),
        ("mu", None),
    ];
    for (k, want) in cases {
        assert_eq!(import::map_key(k, &ours).as_deref(), want, "{k}");
    }
    let preact = Network::new(&arch("preact-resnet18", None), Device::Cpu).unwrap();
    let ours: HashSet<String> = preact.variables().into_keys().collect();
    assert_eq!(
        import::map_key("module.fc.weight", &ours).as_deref(),
        Some("linear.weight")
    );
    assert_eq!(
        import::map_key("module.layer2.0.shortcut.0.weight", &ours).as_deref(),
        Some("layer2.0.shortcut.0.weight")
    );
}

#[test]
fn loads_a_teacher_from_our_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let _g = common::rng_lock();
    let (_, teacher) = pair(71);
    let file = dir.path().join("teacher.safetensors");
    let side = checkpoint::Sidecar {
        format: "advtrain-checkpoint-v1".into(),
        advtrain_version: "test".into(),
        architecture: teacher.arch.clone(),
        recipe: serde_json::Value::Null,
        recipe_version: 1,
        epoch: 1,
        metrics: serde_json::Value::Null,
        sha256: String::new(),
        optimizer_sha256: None,
        best_metric: None,
    };
    checkpoint::save(&file, &teacher.named_tensors(), None, side).unwrap();
    let spec = MixAcmSpec {
        teacher: Some(file),
        ..MixAcmSpec::default()
    };
    let loaded = load_teacher(&spec, Device::Cpu).unwrap();
    assert_eq!(loaded.arch, teacher.arch);
    for ((n, a), (_, b)) in teacher.named_tensors().iter().zip(loaded.named_tensors()) {
        assert!(a.equal(&b), "{n}");
    }
    assert!(loaded
        .vs
        .trainable_variables()
        .iter()
        .all(|t| !t.requires_grad()));
    let missing = MixAcmSpec {
        teacher: Some(dir.path().join("nope.safetensors")),
        ..MixAcmSpec::default()
    };
    let e = load_teacher(&missing, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("train.mixacm.teacher") && e.contains("nope"),
        "{e}"
    );
}

/// The objective in the run loop: a small-cnn student distilled from a resnet10 teacher (so
/// two of the pairs need projections), killed after epoch 1 and resumed, ends bit-identical to
/// an uninterrupted run (student, projections and their momentum, mixup draws); the run records
/// the teacher (teacher.json with its sha256 and accuracy), runs no attack (no adversarial
/// training accuracy), and leaves the teacher file untouched. Bad settings are refused by name.
#[test]
fn mixacm_runs_resume_exactly_and_record_the_teacher() {
    use advtrain::train::recipe::Recipe;
    use advtrain::train::{train, RunOptions};
    let _g = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::write_tiny_mnist(&data, 104, 20); // 64 training images after 40 validation
    tch::manual_seed(5);
    let teacher = Network::new(&arch("resnet", Some(10)), Device::Cpu).unwrap();
    let tfile = dir.path().join("teacher.safetensors");
    let side = checkpoint::Sidecar {
        format: "advtrain-checkpoint-v1".into(),
        advtrain_version: "test".into(),
        architecture: teacher.arch.clone(),
        recipe: serde_json::Value::Null,
        recipe_version: 1,
        epoch: 1,
        metrics: serde_json::Value::Null,
        sha256: String::new(),
        optimizer_sha256: None,
        best_metric: None,
    };
    checkpoint::save(&tfile, &teacher.named_tensors(), None, side).unwrap();
    let sha_before = checkpoint::sha256_file(&tfile).unwrap();
    let f = dir.path().join("r.toml");
    let text = common::tiny_recipe_toml(&data, 2)
        .replace("objective = \"pgd-at\"", "objective = \"mixacm\"")
        .replace(
            "[train.attack]\neps = 0.1\nstep_size = 0.05\nsteps = 2\n",
            &format!(
                "[train.mixacm]\nteacher = \"{}\"\npairs = [[0, 1], [1, 2], [2, 3]]\nbeta_acm = 2.0\n",
                tfile.display()
            ),
        )
        .replace(
            "[validation]\npgd_limit = 40\nbatch_size = 20\n",
            "[validation]\npgd_limit = 8\nbatch_size = 20\n[validation.attack]\neps = 0.1\nstep_size = 0.05\nsteps = 2\n",
        );
    std::fs::write(&f, &text).unwrap();
    let r = Recipe::load(&f, &[]).unwrap();
    assert!(r.train.attack().is_none(), "no training attack: {text}");
    let run = |out: &str, resume: bool, stop: Option<usize>| {
        train(
            &r,
            &RunOptions {
                out: dir.path().join(out),
                resume,
                stop_after: stop,
            },
        )
        .unwrap()
    };
    run("whole", false, None);
    run("killed", false, Some(1));
    run("killed", true, None);
    for file in [
        "last.safetensors",
        "projections.safetensors",
        "projections.optim.safetensors",
    ] {
        let a = checkpoint::read_tensors(&dir.path().join("whole/checkpoints").join(file)).unwrap();
        let b =
            checkpoint::read_tensors(&dir.path().join("killed/checkpoints").join(file)).unwrap();
        assert_eq!(a.len(), b.len(), "{file}");
        assert!(!a.is_empty(), "{file}");
        for (k, t) in &a {
            assert!(t.equal(&b[k]), "{file}: {k} differs after resume");
        }
    }
    let proj =
        checkpoint::read_tensors(&dir.path().join("whole/checkpoints/projections.safetensors"))
            .unwrap();
    assert!(
        proj.contains_key("proj.0.weight") && proj.contains_key("proj.2.weight"),
        "{:?}",
        proj.keys()
    );
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("whole/teacher.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["sha256"], sha_before.as_str());
    assert!(rec["val_clean_acc"].is_number() && rec["val_pgd_acc"].is_number());
    assert_eq!(rec["pgd_images"], 8);
    assert_eq!(checkpoint::sha256_file(&tfile).unwrap(), sha_before);
    let csv = std::fs::read_to_string(dir.path().join("whole/metrics.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert!(row[3].parse::<f64>().is_ok() && row[4].is_empty(), "{csv}");
    // Bad settings.
    let e = Recipe::load(&f, &["train.mixacm.tau=0".into()]).unwrap_err();
    assert!(format!("{e:#}").contains("train.mixacm.tau"), "{e:#}");
    let e = Recipe::load(&f, &["train.objective=\"standard\"".into()]).unwrap_err();
    assert!(format!("{e:#}").contains("train.mixacm"), "{e:#}");
    let missing = Recipe::load(
        &f,
        &[format!(
            "train.mixacm.teacher=\"{}\"",
            dir.path().join("nope.safetensors").display()
        )],
    )
    .unwrap();
    let e = train(
        &missing,
        &RunOptions {
            out: dir.path().join("bad"),
            resume: false,
            stop_after: None,
        },
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("nope.safetensors"), "{e:#}");
}
