#!/usr/bin/env python3
"""Write the issue-5 recipes (training objectives, METHODS.md section 2; E12 ARAT ablation ladder)
for Fashion-MNIST (the short budget of recipes/fmnist, used for docs/RESULTS.md) and CIFAR-10 (the
papers' published hyperparameters). Data, model and budget blocks come from gen_norm_recipes.py.
Re-run after editing: python3 scripts/gen_objective_recipes.py"""
from gen_norm_recipes import CIFAR, FMNIST, ROOT

# The ARAT feature hooks: small-cnn's last two conv+BN outputs (stage indices); ResNet-18's four
# BN outputs of the last stage (norm-layer names), as in the paper.
HOOKS = {
    "fmnist": ("[1, 2]", "[1, 2]"),
    "cifar10": ('["layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"]',) * 2,
}

DUAL = 'kind = "batch"\nns_domains = 2\nap_domains = 2'
SINGLE = 'kind = "batch"'


def arat(comment, split, stop_gradient, predictor, symmetric=False):
    """An ARAT rung: split BN or not, and the three switches of train.arat."""
    return dict(
        comment=comment,
        norm=DUAL if split else SINGLE,
        objective="arat",
        attack_bn_mode="train",
        hybrid='passes = "joint"\nclean_route = "clean"\nadv_route = "' + ("adv" if split else "clean") + '"',
        arat=dict(stop_gradient=stop_gradient, predictor=predictor, symmetric=symmetric),
        route="adv" if split else "clean",
        attack_loss="ce",
        init="uniform",
    )


def plain(comment, objective, extra="", norm=SINGLE, hybrid=None, route="clean", loss="ce", init="uniform",
          wd=None, awp=None, overfit=False):
    return dict(comment=comment, norm=norm, objective=objective, attack_bn_mode="eval", extra=extra, hybrid=hybrid,
                route=route, attack_loss=loss, init=init, wd=wd, awp=awp, overfit=overfit)


VARIANTS = {
    "pgd-at": plain("PGD-AT (Madry et al. 2018): CE on PGD examples; attack in eval mode. E12 rung 0.", "pgd-at"),
    "trades": plain("TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(p(x) || p(x')); KL attack from x + 0.001 N(0, I) in eval mode; separate clean and adversarial passes as the reference.",
                    "trades", extra="trades_beta = 6.0", loss="kl", init="normal", wd={"cifar10": "2e-4"},
                    hybrid='passes = "separate"\nclean_route = "clean"\nadv_route = "clean"'),
    "trades-mixed": plain("Mixed-batch TRADES: as trades, but x and x' normalised together in one forward [x'; x] (single BN).",
                          "trades", extra="trades_beta = 6.0", loss="kl", init="normal", wd={"cifar10": "2e-4"},
                          hybrid='passes = "joint"\nclean_route = "clean"\nadv_route = "clean"'),
    "trades-dual-bn": plain("TRADES with Dual BN: clean CE through BN_clean, KL between the clean and adversarial branches; evaluate --route adv.",
                            "trades", extra="trades_beta = 6.0", norm=DUAL,
                            hybrid='passes = "joint"\nclean_route = "clean"\nadv_route = "adv"', route="adv", loss="kl",
                            init="normal", wd={"cifar10": "2e-4"}),
    "mart": plain("MART (Wang et al. 2020): BCE(p(x'), y) + lambda * KL(p(x) || p(x')) * (1 - p_y(x)); lambda 6; separate passes as the reference.",
                  "mart", extra="mart_lambda = 6.0", hybrid='passes = "separate"\nclean_route = "clean"\nadv_route = "clean"'),
    "awp-at": plain("AWP-AT (Wu et al. 2020): PGD-AT with adversarial weight perturbation, gamma 0.01.",
                    "pgd-at", awp="gamma = 0.01\nwarmup_epochs = 0"),
    "awp-trades": plain("AWP-TRADES (Wu et al. 2020): TRADES with adversarial weight perturbation, gamma 0.005.",
                        "trades", extra="trades_beta = 6.0", loss="kl", init="normal", wd={"cifar10": "2e-4"},
                        hybrid='passes = "separate"\nclean_route = "clean"\nadv_route = "clean"',
                        awp="gamma = 0.005\nwarmup_epochs = 0"),
    "fgsm-rs": plain("FGSM-RS (Wong et al. 2020): one FGSM step of 1.25 eps from a uniform start; catastrophic-overfitting check every epoch with rollback.",
                     "fgsm-rs", overfit=True),
    "arat": arat("ARAT (Waseda et al. 2025): split BN + asymmetric invariance with stop-gradient and predictor; auto-balanced CE; attack through BN_adv in train mode; evaluate --route adv. E12 full rung.",
                 True, True, True),
    "e12-inv": arat("E12 rung 1: AT + clean CE + naive invariance 1 - cos(z', z) (no stop-gradient, no predictor), single BN.",
                    False, False, False),
    "e12-inv-sg": arat("E12 rung 2: + stop-gradient on the clean side (asymmetric), single BN, no predictor.",
                       False, True, False),
    "e12-inv-sg-pred": arat("E12 rung 3: + predictor on the adversarial side (stop-gradient + predictor), single BN.",
                            False, True, True),
    "e12-inv-split": arat("E12 split-BN-only rung: naive invariance (no stop-gradient, no predictor) with split BN.",
                          True, False, False),
    "e12-symmetric": arat("E12 symmetric ablation: split BN, stop-gradient and predictor on both sides, (D(h(z'), sg z) + D(h(z), sg z')) / 2.",
                          True, True, True, symmetric=True),
}

CIFAR_ARAT_BUDGET = '''epochs = 100
batch_size = 128
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
schedule = "piecewise"
milestones = [75, 90]'''


def render(ds, prefix, name, v):
    eps = ds["eps"]
    step = round(2.5 * eps / ds["steps"], 6)
    budget = ds["budget"]
    if prefix == "cifar10" and v["objective"] == "arat":
        budget = CIFAR_ARAT_BUDGET
    wd = (v.get("wd") or {}).get(prefix)
    if wd:
        budget = budget.replace("weight_decay = 5e-4", f"weight_decay = {wd}")
    predictors = ""
    if v["objective"] == "arat" and (v["arat"]["predictor"] or v["arat"]["symmetric"]):
        predictors = f"predictors = {HOOKS[prefix][0]}\n"
    out = [f"# {v['comment']}", "# Generated by scripts/gen_objective_recipes.py; see README 'Training objectives'.",
           f'name = "{prefix}-{name}"', "seed = 0", 'device = "auto"', "", ds["data"], ds["model"] + predictors,
           "[model.norm]", v["norm"], "", "[train]", f'objective = "{v["objective"]}"', budget]
    if v.get("extra"):
        out.append(v["extra"])
    out += [f'attack_bn_mode = "{v["attack_bn_mode"]}"   # BN mode while generating training attacks', ""]
    if v.get("hybrid"):
        out += ["[train.hybrid]", v["hybrid"], ""]
    if v["objective"] == "arat":
        a = v["arat"]
        b = lambda x: "true" if x else "false"
        out += ["[train.arat]", "lambda = 30.0", f"hooks = {HOOKS[prefix][1]}", "auto_balance = true",
                f"stop_gradient = {b(a['stop_gradient'])}", f"predictor = {b(a['predictor'])}",
                f"symmetric = {b(a['symmetric'])}"]
        out.append("")
        if prefix == "cifar10":
            out += ["[train.swa]", "start_epoch = 76   # SWA from ~76% of training; BN statistics re-estimated at the end", ""]
    if v.get("awp"):
        out += ["[train.awp]", v["awp"], ""]
    if v.get("overfit"):
        out += ["[train.overfit_check]", "n = 512", "steps = 10", "drop = 0.2", "rollback = true", ""]
    attack = ds["attack"].format(eps=eps if prefix != "cifar10" else "0.031372549",
                                 step=round(1.25 * eps, 6) if v["objective"] == "fgsm-rs" else step)
    attack = attack.replace('init = "uniform"', f'init = "{v["init"]}"').replace('loss = "ce"', f'loss = "{v["attack_loss"]}"')
    out.append(attack)
    out.append(ds["validation"].rstrip())
    out.append(f'route = "{v["route"]}"')
    return "\n".join(out) + "\n"


def main():
    for prefix, ds in [("fmnist", FMNIST), ("cifar10", CIFAR)]:
        d = ROOT / prefix
        d.mkdir(parents=True, exist_ok=True)
        for name, v in VARIANTS.items():
            (d / f"{name}.toml").write_text(render(ds, prefix, name, v))
    print("recipes written under", ROOT)


if __name__ == "__main__":
    main()
