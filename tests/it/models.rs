//! Model zoo: shapes, PyTorch parameter names and counts, norm-layer bookkeeping, BN modes.
//!
//! Parameter counts (10 classes, BN), derived by hand and checked against the PyTorch
//! reference modules (torchvision ResNet with CIFAR stem; `PreActResNet18` of Rice et al.,
//! robust_overfitting/preactresnet.py; `WideResNet` of Rice et al. / RobustBench):
//!
//! resnet18 = 11,173,962:
//!   conv1 3*64*9 = 1,728 + bn1 128                                            =      1,856
//!   layer1: 2 x (2 x 64*64*9 + 2 x 128)                                       =    147,968
//!   layer2: 64*128*9 + 128*128*9 + 64*128 (downsample) + 3 x 256 = 230,144
//!           + (2 x 128*128*9 + 2 x 256) = 295,424                             =    525,568
//!   layer3: 294,912 + 589,824 + 32,768 + 1,536 + (2 x 589,824 + 1,024)        =  2,099,712
//!   layer4: 1,179,648 + 2,359,296 + 131,072 + 3,072 + (2 x 2,359,296 + 2,048) =  8,393,728
//!   fc 512*10 + 10                                                            =      5,130
//! preact-resnet18 = 11,172,170: as resnet18 minus the stem bn1 (128) and the three
//!   shortcut norms (256 + 512 + 1,024), with each stage's first bn1 over the input channels
//!   (-128 - 256 - 512), plus the final `bn` over 512 channels (+1,024): 11,173,962 - 1,792.
//!   (11,171,146, a figure often quoted, is kuangliu/pytorch-cifar's PreActResNet18, which has
//!   no final `bn`: 11,172,170 - 1,024. The PGD-AT reference has the final `bn`.)
//! wide-resnet-28-10 = 36,479,194: conv1 432; block1 (16->160) 1,640,672;
//!   block2 (160->320) 6,968,000; block3 (320->640) 27,862,400; bn1 1,280; fc 6,410.
//! resnet-cifar-20 = 269,722 (He et al. 2016's "0.27M", option-A shortcuts have no weights):
//!   conv1 3*16*9 = 432 + bn1 32; layer1 3 x (2 x 16*16*9 + 2 x 32) = 14,016;
//!   layer2 (16*32*9 + 32*32*9 + 128) + 2 x (2 x 32*32*9 + 128) = 51,072;
//!   layer3 (32*64*9 + 64*64*9 + 256) + 2 x (2 x 64*64*9 + 256) = 203,520; fc 64*10 + 10 = 650.

use crate::common;

use advtrain::nn::{build_model, ArchSpec, Ctx, Mode, Model, NormKind, Route, ADV, CLEAN};
use std::collections::BTreeSet;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn spec(name: &str, in_channels: i64, depth: Option<i64>, width: Option<i64>) -> ArchSpec {
    common::arch_spec(name, in_channels, depth, width)
}

fn build(spec: &ArchSpec) -> (VarStore, Box<dyn Model>) {
    let vs = VarStore::new(Device::Cpu);
    let model = build_model(&vs.root(), spec).unwrap();
    (vs, model)
}

fn trainable(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

fn names(vs: &VarStore) -> BTreeSet<String> {
    vs.variables().into_keys().collect()
}

fn input(batch: i64, c: i64, hw: i64) -> Tensor {
    tch::manual_seed(0);
    Tensor::rand([batch, c, hw, hw], (Kind::Float, Device::Cpu))
}

/// Small models exercised by the forward tests: (spec, input channels, input size).
fn small_models() -> Vec<(ArchSpec, i64)> {
    vec![
        (spec("preact-resnet18", 3, None, None), 16),
        (spec("resnet18", 3, None, None), 16),
        (spec("resnet", 1, Some(10), None), 28),
        (spec("resnet", 3, Some(50), None), 16),
        (spec("wide-resnet", 3, Some(16), Some(1)), 16),
        (spec("wide-resnet", 1, Some(10), Some(2)), 28),
        (spec("resnet-cifar", 3, Some(8), None), 16),
        (spec("resnet-cifar", 1, Some(20), None), 28),
    ]
}

#[test]
fn output_and_stage_shapes() {
    let _rng = common::rng_shared();
    for (s, hw) in small_models() {
        let (_vs, m) = build(&s);
        let f = tch::no_grad(|| m.forward_stages(&input(2, s.in_channels, hw), &Ctx::train()));
        assert_eq!(f.logits.size(), [2, 10], "{}", s.name);
        let n_stages = if s.name.contains("wide") || s.name == "resnet-cifar" {
            3
        } else {
            4
        };
        assert_eq!(f.stages.len(), n_stages, "{}", s.name);
        // Spatial size: stride 1 in the first stage, then halved per stage.
        for (k, st) in f.stages.iter().enumerate() {
            let expect = (hw + (1 << k) - 1) >> k;
            assert_eq!(st.size()[0], 2);
            assert_eq!(st.size()[2], expect, "{} stage {k}", s.name);
        }
        let last = f.stages.last().unwrap().size()[1];
        let expect = match (s.name.as_str(), s.depth, s.width) {
            ("resnet", Some(50), _) => 2048,
            ("wide-resnet", _, Some(w)) => 64 * w,
            ("resnet-cifar", _, _) => 64,
            _ => 512,
        };
        assert_eq!(last, expect, "{}", s.name);
        assert!(
            f.logits.isfinite().all().int64_value(&[]) == 1,
            "{}",
            s.name
        );
    }
}

#[test]
fn resnet18_names_and_count() {
    let _rng = common::rng_shared();
    let (vs, m) = build(&spec("resnet18", 3, None, None));
    let n = names(&vs);
    for k in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.1.conv2.weight",
        "layer1.1.bn2.running_var",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.bias",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(n.contains(k), "missing {k}");
    }
    for k in [
        "conv1.bias",
        "layer1.0.downsample.0.weight",
        "layer2.1.downsample.0.weight",
        "layer1.0.conv3.weight",
    ] {
        assert!(!n.contains(k), "unexpected {k}");
    }
    // 20 convs + fc (2) + 20 norms x 5 tensors.
    assert_eq!(n.len(), 122);
    assert_eq!(trainable(&vs), 11_173_962);
    assert_eq!(
        vs.variables()["layer3.0.conv1.weight"].size(),
        [256, 128, 3, 3]
    );
    assert_eq!(
        vs.variables()["layer3.0.downsample.0.weight"].size(),
        [256, 128, 1, 1]
    );

    let norms: Vec<String> = m.norms().into_iter().map(|(k, _)| k).collect();
    assert_eq!(norms.len(), 20);
    assert_eq!(
        &norms[..4],
        ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1"]
    );
    assert_eq!(
        &norms[5..9],
        [
            "layer2.0.bn1",
            "layer2.0.bn2",
            "layer2.0.downsample.1",
            "layer2.1.bn1"
        ]
    );
    assert_eq!(norms.last().unwrap(), "layer4.1.bn2");
}

#[test]
fn preact_resnet18_names_and_count() {
    let _rng = common::rng_shared();
    let (vs, m) = build(&spec("preact-resnet18", 3, None, None));
    let n = names(&vs);
    for k in [
        "conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.bias",
        "layer1.0.conv2.weight",
        "layer2.0.shortcut.0.weight",
        "layer4.0.shortcut.0.weight",
        "layer4.1.conv2.weight",
        "bn.weight",
        "bn.bias",
        "bn.running_var",
        "bn.num_batches_tracked",
        "linear.weight",
        "linear.bias",
    ] {
        assert!(n.contains(k), "missing {k}");
    }
    for k in [
        "bn1.weight",
        "layer1.0.shortcut.0.weight",
        "layer2.1.shortcut.0.weight",
        "fc.weight",
    ] {
        assert!(!n.contains(k), "unexpected {k}");
    }
    // 20 convs + linear (2) + 17 norms x 5 tensors.
    assert_eq!(n.len(), 107);
    assert_eq!(trainable(&vs), 11_172_170);
    assert_eq!(vs.variables()["layer2.0.bn1.weight"].size(), [64]);
    assert_eq!(
        vs.variables()["layer2.0.shortcut.0.weight"].size(),
        [128, 64, 1, 1]
    );

    let norms: Vec<String> = m.norms().into_iter().map(|(k, _)| k).collect();
    assert_eq!(norms.len(), 17);
    assert_eq!(
        &norms[..3],
        ["layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1"]
    );
    assert_eq!(norms.last().unwrap(), "bn");
}

#[test]
fn wide_resnet_names_and_counts() {
    let _rng = common::rng_shared();
    let (vs, m) = build(&spec("wide-resnet", 3, None, None)); // defaults: 28-10
    let n = names(&vs);
    for k in [
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.conv1.weight",
        "block1.layer.0.bn2.running_mean",
        "block1.layer.0.conv2.weight",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.3.conv2.weight",
        "bn1.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(n.contains(k), "missing {k}");
    }
    assert!(!n.contains("block1.layer.1.convShortcut.weight"));
    assert!(!n.contains("block3.layer.4.conv1.weight"));
    assert_eq!(trainable(&vs), 36_479_194);
    assert_eq!(
        vs.variables()["fc.bias"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    let norms: Vec<String> = m.norms().into_iter().map(|(k, _)| k).collect();
    assert_eq!(norms.len(), 25);
    assert_eq!(&norms[..2], ["block1.layer.0.bn1", "block1.layer.0.bn2"]);
    assert_eq!(norms.last().unwrap(), "bn1");

    // WRN-16-1: equal in/out in block1 (16 -> 16), so no convShortcut there.
    let (vs, _) = build(&spec("wide-resnet", 3, Some(16), Some(1)));
    assert_eq!(trainable(&vs), 175_066);
    assert!(!names(&vs).contains("block1.layer.0.convShortcut.weight"));
}

#[test]
fn resnet_depth_counts() {
    let _rng = common::rng_shared();
    // torchvision counts with CIFAR stem (3x3 conv1) and a 10-class fc.
    for (depth, count) in [(10, 4_903_242), (34, 21_282_122), (50, 23_520_842)] {
        let (vs, _) = build(&spec("resnet", 3, Some(depth), None));
        assert_eq!(trainable(&vs), count, "resnet{depth}");
    }
    let (vs, _) = build(&spec("resnet", 3, Some(50), None));
    let n = names(&vs);
    assert!(n.contains("layer1.0.conv3.weight") && n.contains("layer1.0.bn3.weight"));
    assert!(n.contains("layer1.0.downsample.0.weight")); // 64 -> 256 channels
                                                         // Stride on the 3x3 conv (v1.5), shapes as torchvision.
    assert_eq!(
        vs.variables()["layer2.0.conv2.weight"].size(),
        [128, 128, 3, 3]
    );
    assert_eq!(
        vs.variables()["layer2.0.conv3.weight"].size(),
        [512, 128, 1, 1]
    );
}

#[test]
fn norms_cover_every_norm_variable() {
    let _rng = common::rng_shared();
    for (s, _) in small_models() {
        let (vs, m) = build(&s);
        let n = names(&vs);
        let listed: BTreeSet<String> = m
            .norms()
            .into_iter()
            .map(|(k, _)| format!("{k}.running_mean"))
            .collect();
        let stored: BTreeSet<String> = n
            .iter()
            .filter(|k| k.ends_with(".running_mean"))
            .cloned()
            .collect();
        assert_eq!(listed, stored, "{}", s.name);
    }
}

fn running_snapshot(m: &dyn Model) -> Vec<Tensor> {
    m.norms()
        .iter()
        .flat_map(|(_, n)| {
            n.stats.iter().flat_map(|s| {
                [
                    s.running_mean.copy(),
                    s.running_var.copy(),
                    s.num_batches_tracked.copy(),
                ]
            })
        })
        .collect()
}

fn all_moved(a: &[Tensor], b: &[Tensor]) -> bool {
    a.iter().zip(b).all(|(x, y)| !x.equal(y))
}

fn none_moved(a: &[Tensor], b: &[Tensor]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.equal(y))
}

#[test]
fn running_stats_follow_mode() {
    let _rng = common::rng_shared();
    for (s, hw) in small_models() {
        let (_vs, m) = build(&s);
        let x = input(4, s.in_channels, hw);
        for mode in [Mode::Eval, Mode::TrainFrozen] {
            let before = running_snapshot(m.as_ref());
            let _ = tch::no_grad(|| m.forward(&x, &Ctx::train().with_mode(mode)));
            assert!(
                none_moved(&before, &running_snapshot(m.as_ref())),
                "{} {mode}",
                s.name
            );
        }
        // A training step's forward (with autograd) updates every running statistic.
        let before = running_snapshot(m.as_ref());
        m.forward(&x, &Ctx::train()).sum(Kind::Float).backward();
        assert!(
            all_moved(&before, &running_snapshot(m.as_ref())),
            "{} train",
            s.name
        );
    }
}

#[test]
fn eval_output_is_batch_independent() {
    let _rng = common::rng_shared();
    for (s, hw) in small_models() {
        let (_vs, m) = build(&s);
        let x = input(3, s.in_channels, hw);
        let _ = tch::no_grad(|| m.forward(&x, &Ctx::train())); // non-trivial running stats
        let (alone, batched, train) = tch::no_grad(|| {
            (
                m.forward(&x.narrow(0, 0, 1), &Ctx::eval()),
                m.forward(&x, &Ctx::eval()).narrow(0, 0, 1),
                m.forward(&x, &Ctx::train().with_mode(Mode::TrainFrozen))
                    .narrow(0, 0, 1),
            )
        });
        assert!(alone.allclose(&batched, 1e-4, 1e-5, false), "{}", s.name);
        assert!(
            !alone.allclose(&train, 1e-4, 1e-5, false),
            "{}: batch stats should differ",
            s.name
        );
    }
}

#[test]
fn unsupported_depths_are_errors() {
    let _rng = common::rng_shared();
    let err = |s: ArchSpec| {
        let vs = VarStore::new(Device::Cpu);
        build_model(&vs.root(), &s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err(spec("resnet", 3, Some(20), None));
    assert!(
        e.contains("20") && e.contains("18") && e.contains("152"),
        "{e}"
    );
    assert!(!err(spec("resnet", 3, None, None)).is_empty());
    for depth in [27, 4, -2] {
        assert!(
            err(spec("wide-resnet", 3, Some(depth), Some(1))).contains("6n+4"),
            "{depth}"
        );
    }
    assert!(!err(spec("wide-resnet", 3, Some(16), Some(0))).is_empty());
}

#[test]
fn norm_kinds_and_domains_come_from_the_spec() {
    let _rng = common::rng_shared();
    // No norm: no norm variables at all, forward still works.
    let mut s = spec("preact-resnet18", 3, None, None);
    s.norm.kind = NormKind::None;
    let (vs, m) = build(&s);
    assert!(names(&vs).iter().all(|k| !k.contains("bn")));
    assert_eq!(
        tch::no_grad(|| m.forward(&input(2, 3, 16), &Ctx::eval())).size(),
        [2, 10]
    );

    // GroupNorm: affine only.
    let mut s = spec("wide-resnet", 3, Some(10), Some(2));
    s.norm.kind = NormKind::Group;
    s.norm.groups = 4;
    let (vs, m) = build(&s);
    assert!(names(&vs).contains("block1.layer.0.bn1.weight"));
    assert!(!names(&vs).contains("block1.layer.0.bn1.running_mean"));
    assert_eq!(
        tch::no_grad(|| m.forward(&input(2, 3, 16), &Ctx::train())).size(),
        [2, 10]
    );

    // Dual BN: per-domain sets, and a forward through one domain moves only its statistics.
    let mut s = spec("resnet", 3, Some(10), None);
    s.norm.ns_domains = 2;
    s.norm.ap_domains = 2;
    let (vs, m) = build(&s);
    let n = names(&vs);
    assert!(
        n.contains("layer1.0.bn1.1.running_mean") && n.contains("layer2.0.downsample.1.0.weight")
    );
    let x = input(4, 3, 16);
    let _ = tch::no_grad(|| m.forward(&x, &Ctx::new(Route::domain(ADV), Mode::Train)));
    for (k, norm) in m.norms() {
        assert_eq!(
            norm.stats_for(CLEAN).num_batches_tracked.int64_value(&[]),
            0,
            "{k}"
        );
        assert_eq!(
            norm.stats_for(ADV).num_batches_tracked.int64_value(&[]),
            1,
            "{k}"
        );
    }
}

#[test]
fn resnet_cifar_counts_names_and_depth_rule() {
    let _rng = common::rng_shared();
    // n = (depth - 2) / 6 blocks per stage; each extra block of stage k adds 2 convs + 2 norms.
    let per_block = [
        2 * 16 * 16 * 9 + 64,
        2 * 32 * 32 * 9 + 128,
        2 * 64 * 64 * 9 + 256,
    ];
    for depth in [20i64, 32, 56, 110] {
        let (vs, m) = build(&spec("resnet-cifar", 3, Some(depth), None));
        let extra = (depth - 20) / 6;
        let want = 269_722 + extra * per_block.iter().sum::<i64>();
        assert_eq!(trainable(&vs), want, "resnet-cifar-{depth}");
        assert_eq!(m.norms().len() as i64, 1 + 2 * 3 * (depth - 2) / 6);
    }
    let (vs, _) = build(&spec("resnet-cifar", 3, Some(20), None));
    let n = names(&vs);
    for k in [
        "conv1.weight",
        "bn1.running_var",
        "layer3.2.conv2.weight",
        "fc.bias",
    ] {
        assert!(n.contains(k), "{k}");
    }
    assert!(n
        .iter()
        .all(|k| !k.contains("shortcut") && !k.contains("downsample")));
    for bad in [21, 6, 2, -4] {
        let vs = VarStore::new(Device::Cpu);
        let e = build_model(&vs.root(), &spec("resnet-cifar", 3, Some(bad), None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("6n+2") && e.contains(&bad.to_string()), "{e}");
    }
}

/// PyTorch twin of the CIFAR ResNet (He et al. 2016, option-A shortcuts), written from the
/// paper: the same state-dict names load strictly, and logits agree in eval and train mode.
const RESNET_CIFAR_TWIN: &str = r#"
import sys, torch, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import load_file, save_file
class Block(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.bn1 = nn.BatchNorm2d(cout)
        s.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.bn2 = nn.BatchNorm2d(cout)
        s.stride, s.extra = stride, cout - cin
    def forward(s, x):
        h = s.bn2(s.conv2(F.relu(s.bn1(s.conv1(x)))))
        sc = x
        if s.stride != 1 or s.extra:
            sc = F.pad(x[:, :, ::s.stride, ::s.stride], (0, 0, 0, 0, s.extra // 2, s.extra - s.extra // 2))
        return F.relu(h + sc)
class Net(nn.Module):
    def __init__(s, cin, n, k):
        super().__init__()
        s.conv1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False); s.bn1 = nn.BatchNorm2d(16)
        c, layers = 16, []
        for i, w in enumerate([16, 32, 64]):
            blocks = []
            for j in range(n):
                blocks.append(Block(c, w, 2 if i > 0 and j == 0 else 1)); c = w
            setattr(s, f"layer{i+1}", nn.Sequential(*blocks))
        s.fc = nn.Linear(64, k)
    def forward(s, x):
        h = F.relu(s.bn1(s.conv1(x)))
        h = s.layer3(s.layer2(s.layer1(h)))
        return s.fc(h.mean((2, 3)))
w = load_file(sys.argv[1]); x = w.pop("input")
net = Net(x.shape[1], int(sys.argv[2]), 10)
net.load_state_dict(w, strict=True)
with torch.no_grad():
    out = {"eval": net.eval()(x)}
    out["train"] = net.train()(x)
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False)
    with fc:
        net.eval()(x[:1])
    out["flops"] = torch.tensor([float(fc.get_total_flops())], dtype=torch.float64)
    fc = FlopCounterMode(display=False)
    with fc:
        net.eval()(torch.zeros(1, x.shape[1], 28, 28))
    out["flops28"] = torch.tensor([float(fc.get_total_flops())], dtype=torch.float64)
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[3])
"#;

#[test]
fn resnet_cifar_matches_a_pytorch_twin() {
    let _rng = common::rng_shared();
    let dir = tempfile::tempdir().unwrap();
    let (vs, m) = build(&spec("resnet-cifar", 3, Some(8), None));
    // Non-trivial running statistics, so eval mode differs from train mode.
    tch::no_grad(|| {
        for (k, v) in vs.variables() {
            if k.ends_with("running_var") {
                let _ = v.shallow_clone().fill_(1.7);
            } else if k.ends_with("running_mean") {
                let _ = v.shallow_clone().fill_(0.05);
            }
        }
    });
    let x = input(6, 3, 16);
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    named.push(("input".into(), x.shallow_clone()));
    let wfile = dir.path().join("w.safetensors");
    Tensor::write_safetensors(&named, &wfile).unwrap();
    let script = dir.path().join("twin.py");
    std::fs::write(&script, RESNET_CIFAR_TWIN).unwrap();
    let ofile = dir.path().join("out.safetensors");
    let python = std::env::var_os("ADVTRAIN_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"))
        .join("bin/python");
    let st = std::process::Command::new(&python)
        .args([
            script.as_os_str(),
            wfile.as_os_str(),
            "1".as_ref(),
            ofile.as_os_str(),
        ])
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(st.success(), "the PyTorch twin failed");
    let out: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&ofile)
        .unwrap()
        .into_iter()
        .collect();
    // Eval first: the train-mode forward updates running statistics (in both twins).
    let ours_eval = tch::no_grad(|| m.forward(&x, &Ctx::eval()));
    let ours_train = tch::no_grad(|| m.forward(&x, &Ctx::train()));
    for (mode, ours) in [("eval", ours_eval), ("train", ours_train)] {
        let diff = (&ours - &out[mode]).abs().max().double_value(&[]);
        let scale = out[mode].abs().max().double_value(&[]);
        assert!(diff <= 1e-4 * scale.max(1.0), "{mode}: max |diff| {diff}");
    }
    let gap = (&out["eval"] - &out["train"]).abs().max().double_value(&[]);
    assert!(gap > 1e-3, "eval and train mode must differ here ({gap})");
    // torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate of convs and linears.
    let macs = advtrain::nn::models::resnet_cifar::macs_per_image(8, 3, [16, 16], 10).unwrap();
    assert_eq!(2 * macs, out["flops"].double_value(&[0]) as i64);
    let macs = advtrain::nn::models::resnet_cifar::macs_per_image(8, 3, [28, 28], 10).unwrap();
    assert_eq!(2 * macs, out["flops28"].double_value(&[0]) as i64);
}
