//! `Sgd::step` (ATen foreach ops through src/shim/optim.cpp) against the per-parameter update it
//! replaced, kept here as the reference: bit-identical parameters and momentum buffers over
//! several steps, with and without momentum, weight decay and Nesterov, a parameter without a
//! gradient left alone, and a changing learning rate.

use crate::common;
use advtrain::train::optim::Sgd;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The update before foreach, as it was in src/train/optim.rs: per parameter
/// `g = grad + w * wd; b = b * mu + g; step = nesterov ? g + b * mu : b; w += step * -lr`.
fn reference_step(sgd: &mut Sgd, lr: f64) {
    tch::no_grad(|| {
        for ((_, p), b) in sgd.params.iter_mut().zip(sgd.buffers.iter_mut()) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = if sgd.weight_decay != 0.0 {
                &g + &*p * sgd.weight_decay
            } else {
                g
            };
            let update = if sgd.momentum != 0.0 {
                let _ = b.g_mul_scalar_(sgd.momentum).g_add_(&g);
                if sgd.nesterov {
                    g + &*b * sgd.momentum
                } else {
                    b.shallow_clone()
                }
            } else {
                g
            };
            let _ = p.g_add_(&(update * (-lr)));
        }
    });
}

/// Three parameters (one never gets a gradient) with fixed starting values.
fn store() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let a = root.var("a", &[7, 5], tch::nn::Init::Const(0.0));
    let b = root.var("b", &[5], tch::nn::Init::Const(0.0));
    let c = root.var("unused", &[3], tch::nn::Init::Const(0.0));
    tch::no_grad(|| {
        let r = |n: i64, s: f64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * s).sin();
        a.shallow_clone().copy_(&r(35, 0.7).view([7, 5]));
        b.shallow_clone().copy_(&r(5, 1.3));
        c.shallow_clone().copy_(&r(3, 2.1));
    });
    vs
}

/// A loss with non-trivial gradients for `a` and `b`, none for `unused`.
fn backward(sgd: &mut Sgd, step: usize) {
    sgd.zero_grad();
    let p = |n: &str| {
        sgd.params
            .iter()
            .find(|(m, _)| m == n)
            .unwrap()
            .1
            .shallow_clone()
    };
    let x = (Tensor::arange(20, (Kind::Float, Device::Cpu)) * (0.3 + step as f64 * 0.1))
        .cos()
        .view([4, 5]);
    let h = x.matmul(&p("a").tr()).tanh();
    let loss = (h.square().sum(Kind::Float) + p("b").exp().sum(Kind::Float)) * 0.5;
    loss.backward();
}

fn bits(t: &Tensor) -> Vec<u32> {
    Vec::<f32>::try_from(t.flatten(0, -1))
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn foreach_step_equals_the_per_parameter_update_bit_for_bit() {
    let _rng = common::rng_shared();
    for (mu, wd, nesterov) in [
        (0.9, 5e-4, false),
        (0.9, 5e-4, true),
        (0.9, 0.0, false),
        (0.0, 1e-2, false),
        (0.0, 0.0, false),
    ] {
        let (va, vb) = (store(), store());
        let mut a = Sgd::new(&va, mu, wd, nesterov);
        let mut b = Sgd::new(&vb, mu, wd, nesterov);
        assert_eq!(a.params.len(), 3);
        let what = format!("mu {mu} wd {wd} nesterov {nesterov}");
        for step in 0..6 {
            let lr = 0.1 / (1 + step) as f64;
            backward(&mut a, step);
            backward(&mut b, step);
            a.step(lr);
            reference_step(&mut b, lr);
            for (((n, p), (_, q)), (ba, bb)) in a
                .params
                .iter()
                .zip(&b.params)
                .zip(a.buffers.iter().zip(&b.buffers))
            {
                assert_eq!(bits(p), bits(q), "{what}, step {step}: parameter {n}");
                assert_eq!(bits(ba), bits(bb), "{what}, step {step}: buffer of {n}");
            }
        }
        // The parameters moved (the comparison is not of two idle optimisers), except the one
        // without a gradient.
        let start = store();
        let moved = |n: &str| {
            let p = &a.params.iter().find(|(m, _)| m == n).unwrap().1;
            !p.equal(&start.variables()[n])
        };
        assert!(moved("a") && moved("b"), "{what}: nothing moved");
        assert!(
            !moved("unused"),
            "{what}: a parameter without gradient moved"
        );
    }
}
