#!/usr/bin/env python3
"""Write the issue-4 experiment recipes (METHODS.md section 5: E1, E3, E5, E7, E8, E9, E10) for
Fashion-MNIST (short budget, used for docs/RESULTS.md) and CIFAR-10 (the papers' budget, for a
GPU). Re-run after editing: python3 scripts/gen_norm_recipes.py"""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "recipes"

FMNIST = dict(
    data='''[data]
dataset = "fashion-mnist"
dir = "/usr/share/datasets/fashion-mnist"   # Debian package dataset-fashion-mnist
val_size = 5000
split_seed = 0
train_limit = 8000     # short budget (2-seed comparisons on a 2-core CPU); remove for a full run
crop_padding = 0
hflip = false
''',
    model='''[model]
name = "small-cnn"
num_classes = 10
in_channels = 1
''',
    budget='''epochs = 2
batch_size = 128
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
schedule = "cosine"''',
    attack='''[train.attack]
norm = "linf"
eps = {eps}
step_size = {step}
steps = 5
init = "uniform"
loss = "ce"
''',
    validation='''[validation]
pgd_limit = 200
batch_size = 500
''',
    eps=0.1,
    steps=5,
)

CIFAR = dict(
    data='''[data]
dataset = "cifar10"
dir = "data/cifar-10-batches-bin"   # the CIFAR-10 binary version
val_size = 1000
split_seed = 0
crop_padding = 4
hflip = true
''',
    model='''[model]
name = "resnet18"
num_classes = 10
in_channels = 3
''',
    budget='''epochs = 110
batch_size = 128
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
schedule = "piecewise"
milestones = [100, 105]''',
    attack='''[train.attack]
norm = "linf"
eps = {eps}
step_size = {step}
steps = 10
init = "uniform"
loss = "ce"
''',
    validation='''[validation]
pgd_limit = 1000
batch_size = 500
''',
    eps=8 / 255,
    steps=10,
)

# name -> (comment, norm table lines, heads, objective, hybrid table lines or None, validation route)
PAIRED = 'clean_weight = 0.5\npaired = true\n'
VARIANTS = {
    "e7-single-cat": ("E7: single BN, clean and adversarial rows normalised together in one batch [x'; x] (\"cat\").",
                      'kind = "batch"', 1, "hybrid", PAIRED + 'passes = "joint"\nclean_route = "clean"\nadv_route = "clean"', "clean"),
    "e7-single-separate": ("E7: single BN, separate clean and adversarial passes (batch statistics per pass, running statistics see both).",
                           'kind = "batch"', 1, "hybrid", PAIRED + 'passes = "separate"\nclean_route = "clean"\nadv_route = "clean"', "clean"),
    "e7-dual-bn": ("E7/E9: Dual BN (MBN): statistics and affine per domain. Evaluate both branches (--route adv / clean).",
                   'kind = "batch"\nns_domains = 2\nap_domains = 2', 1, "hybrid", PAIRED + 'passes = "joint"\nclean_route = "clean"\nadv_route = "adv"', "adv"),
    "e7-dual-ap": ("E7/E10: Dual-AP = BN-affine adapters: shared statistics from the joint batch, affine per domain. Interpolate with eval --soup w.",
                   'kind = "batch"\nns_domains = 1\nap_domains = 2', 1, "hybrid", PAIRED + 'passes = "joint"\nclean_route = "clean"\nadv_route = "adv"', "adv"),
    "e7-dual-ns": ("E7: Dual-NS: statistics per domain, shared affine.",
                   'kind = "batch"\nns_domains = 2\nap_domains = 1', 1, "hybrid", PAIRED + 'passes = "joint"\nclean_route = "clean"\nadv_route = "adv"', "adv"),
    "e7-cross-bn": ("Cross-BN: adversarial rows normalised with the clean rows' batch statistics and adversarial affine (running statistics per domain).",
                    'kind = "batch"\nns_domains = 2\nap_domains = 2', 1, "hybrid", PAIRED + 'passes = "joint"\nclean_route = "clean"\nadv_route = "ns=clean,ap=adv"', "ns=clean,ap=adv"),
    "e10-dual-linear": ("E10: Dual-Linear: shared backbone and BN, one classifier head per domain (selected by route ap).",
                        'kind = "batch"', 2, "hybrid", PAIRED + 'passes = "joint"\nclean_route = "clean"\nadv_route = "adv"', "adv"),
    "advprop": ("AdvProp (Xie et al. 2020): clean CE through the main BN + adversarial CE through the auxiliary BN; attack through aux; evaluate main.",
                'kind = "batch"\nns_domains = 2\nap_domains = 2', 1, "advprop", 'passes = "joint"\nclean_route = "main"\nadv_route = "aux"', "main"),
    "e1-single-r0": ("E1: single BN, clean fraction r = 0 (adversarial-only batch).",
                     'kind = "batch"', 1, "hybrid", 'clean_fraction = 0.0\nclean_weight = 0.0\npaired = false\npasses = "joint"\nclean_route = "clean"\nadv_route = "clean"', "clean"),
    "e1-single-r25": ("E1: single BN, clean fraction r = 0.25 mixed into one batch (loss = batch mean: a = r).",
                      'kind = "batch"', 1, "hybrid", 'clean_fraction = 0.25\nclean_weight = 0.25\npaired = false\npasses = "joint"\nclean_route = "clean"\nadv_route = "clean"', "clean"),
    "e1-single-r50": ("E1: single BN, clean fraction r = 0.5 mixed into one batch (loss = batch mean: a = r).",
                      'kind = "batch"', 1, "hybrid", 'clean_fraction = 0.5\nclean_weight = 0.5\npaired = false\npasses = "joint"\nclean_route = "clean"\nadv_route = "clean"', "clean"),
    "e3-mbn-r50": ("E3: Dual BN (MBN, Xie & Yuille), clean fraction r = 0.5; evaluate both branches (--route adv / clean).",
                   'kind = "batch"\nns_domains = 2\nap_domains = 2', 1, "hybrid", 'clean_fraction = 0.5\nclean_weight = 0.5\npaired = false\npasses = "joint"\nclean_route = "clean"\nadv_route = "adv"', "adv"),
    "e5-group-r0": ("E5: GroupNorm (no batch statistics), clean fraction r = 0.",
                    'kind = "group"\ngroups = 16', 1, "hybrid", 'clean_fraction = 0.0\nclean_weight = 0.0\npaired = false\npasses = "joint"\nclean_route = "clean"\nadv_route = "clean"', "clean"),
    "e5-group-r50": ("E5: GroupNorm under mixing, clean fraction r = 0.5 (prediction: no mixing penalty).",
                     'kind = "group"\ngroups = 16', 1, "hybrid", 'clean_fraction = 0.5\nclean_weight = 0.5\npaired = false\npasses = "joint"\nclean_route = "clean"\nadv_route = "clean"', "clean"),
    "e8-clean": ("E8: standard (clean) training; then advtrain analyze domain-gap --run RUN --eps EPS.",
                 'kind = "batch"', 1, "standard", None, "clean"),
}


def render(ds, prefix, name, v):
    comment, norm, heads, objective, hybrid, vroute = v
    eps = ds["eps"]
    step = round(2.5 * eps / ds["steps"], 6)
    out = [f"# {comment}", "# Generated by scripts/gen_norm_recipes.py; see README 'Multi-domain normalisation'.",
           f'name = "{prefix}-{name}"', "seed = 0", 'device = "auto"', "", ds["data"], ds["model"].rstrip()]
    if heads != 1:
        out.append(f"heads = {heads}")
    out += ["", "[model.norm]", norm, "", "[train]", f'objective = "{objective}"', ds["budget"],
            'attack_bn_mode = "eval"   # BN mode while generating training attacks', ""]
    if hybrid:
        out += ["[train.hybrid]", hybrid, ""]
    if objective != "standard":
        out.append(ds["attack"].format(eps=eps if prefix != "cifar10" else "0.031372549", step=step))
    out.append(ds["validation"].rstrip())
    out.append(f'route = "{vroute}"')
    return "\n".join(out) + "\n"


FMNIST_02 = dict(FMNIST, eps=0.2)


def main():
    for prefix, ds, folder in [("fmnist", FMNIST, "fmnist"), ("fmnist-eps0.2", FMNIST_02, "fmnist-eps0.2"),
                               ("cifar10", CIFAR, "cifar10")]:
        d = ROOT / folder
        d.mkdir(parents=True, exist_ok=True)
        for name, v in VARIANTS.items():
            (d / f"{name}.toml").write_text(render(ds, prefix, name, v))
    print("recipes written under", ROOT)


if __name__ == "__main__":
    main()
