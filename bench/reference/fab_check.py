#!/usr/bin/env python3
"""Compare advtrain's FAB / FAB-T (src/attack/fab.rs) with the reference implementation,
AutoAttack's `FABAttack_PT` (fra31/auto-attack, autoattack/fab_pt.py), on CPU.

Inputs (written by `cargo test --release --test it -- --ignored attack_fab::dump_for_reference`,
into $FAB_CHECK_DIR, default /tmp/fab_check):
  model.safetensors   the test model's state dict (small-cnn, PyTorch names)
  batch.safetensors   x (float32 [N,1,28,28]) and y (int64 [N])
  <tag>.json          one FabConfig (serde JSON) per setting
  <tag>.safetensors   our x_adv and robust mask for that setting; a float64 x_adv (tags ending
                      in _f64) means our attack ran in float64, and the reference is run in
                      float64 too: the weights and images converted (exactly) to float64 and the
                      reference's code unchanged with every tensor in float64 (float64.py)

For every setting this runs the reference on the same model and batch (seed from the config,
torch's generator seeded by the reference's perturb as ours does) and prints whether the
robust masks agree, the largest |x_adv(ours) - x_adv(reference)|, both sums |x' - x| and the
reference's per-point perturbation norms.
Exit status 1 if a mask differs or an example differs by more than --tol (--tol64 in float64).

  python bench/reference/fab_check.py --dir /tmp/fab_check --autoattack /path/to/auto-attack
"""
import argparse
import glob
import json
import os
import sys

import torch
from safetensors.torch import load_file


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pytorch_pgd_at import SmallCnn  # noqa: E402  (twin of src/nn/models/small_cnn.rs)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from float64 import reference_dtype  # noqa: E402


def per_sample_norm(d, norm):
    d = d.reshape(d.shape[0], -1)
    return d.abs().max(1)[0] if norm == "Linf" else (d ** 2).sum(-1).sqrt()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.environ.get("FAB_CHECK_DIR", "/tmp/fab_check"))
    ap.add_argument("--autoattack", required=True,
                    help="a checkout of fra31/auto-attack (the folder holding autoattack/)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--tol64", type=float, default=1e-9)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    sys.path.insert(0, a.autoattack)
    from autoattack.fab_pt import FABAttack_PT

    torch.set_num_threads(a.threads)
    state = load_file(os.path.join(a.dir, "model.safetensors"))
    batch = load_file(os.path.join(a.dir, "batch.safetensors"))

    failed = False
    for cfg_path in sorted(glob.glob(os.path.join(a.dir, "*.json"))):
        tag = os.path.basename(cfg_path)[:-5]
        cfg = json.load(open(cfg_path))
        ours = load_file(os.path.join(a.dir, tag + ".safetensors"))
        double = ours["x_adv"].dtype == torch.float64
        with reference_dtype(double):
            model = SmallCnn()
            model.load_state_dict(state, strict=True)  # copies into the default dtype
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            x = batch["x"].to(torch.get_default_dtype())
            y = batch["y"]
            with torch.no_grad():
                clean_ok = model(x).max(1)[1] == y
            norm = {"linf": "Linf", "l2": "L2"}[cfg["norm"]]
            seed = cfg["seed"] if cfg["seed"] is not None else 0
            attack = FABAttack_PT(model, norm=norm, n_restarts=cfg["n_restarts"],
                                  n_iter=cfg["n_iter"], eps=cfg["eps"],
                                  alpha_max=cfg["alpha_max"], eta=cfg["eta"], beta=cfg["beta"],
                                  seed=seed, targeted=cfg["targeted"],
                                  n_target_classes=cfg["n_target_classes"],
                                  device=torch.device("cpu"))
            adv = attack.perturb(x.clone(), y.clone())
            with torch.no_grad():
                wrong = model(adv).max(1)[1] != y
            fooled = clean_ok & wrong & (per_sample_norm(adv - x, norm) <= cfg["eps"])
            robust_ref = clean_ok & ~fooled
        robust_ours = ours["robust"].bool()
        mask = lambda m: "".join(str(int(v)) for v in m.tolist())
        diff = (adv - ours["x_adv"]).abs().max().item()
        l1_ref = (adv.double() - x.double()).abs().sum().item()
        l1_ours = (ours["x_adv"].double() - x.double()).abs().sum().item()
        same_mask = torch.equal(robust_ref, robust_ours)
        ok = same_mask and diff <= (a.tol64 if double else a.tol)
        failed |= not ok
        print(json.dumps({
            "setting": tag, "dtype": str(adv.dtype), "ok": ok, "mask_ref": mask(robust_ref),
            "mask_ours": mask(robust_ours),
            "max_abs_diff": diff, "bitwise_equal": torch.equal(adv, ours["x_adv"]),
            "sum_abs_pert_ref": l1_ref, "sum_abs_pert_ours": l1_ours,
            "norms_ref": per_sample_norm(adv - x, norm).tolist(),
        }))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
