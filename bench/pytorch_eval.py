#!/usr/bin/env python3
"""PyTorch twin of `advtrain eval` for the evaluation benchmark (bench/eval.sh): PGD-20, APGD-CE
and AutoAttack-standard on the first N Fashion-MNIST test images against an advtrain small-cnn
checkpoint (its safetensors names are PyTorch's, so it loads strictly into the twin module).

APGD-CE and AutoAttack are the reference implementation (fra31/auto-attack), imported from the
directory given by --autoattack-dir (a checkout of that repository; `pip install
git+https://github.com/fra31/auto-attack` works too). PGD-20 is the plain eager loop.
Prints one JSON line per attack: images/s = N / wall time, and the robust accuracy."""
import argparse, gzip, json, os, sys, time
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_pgd_at import SmallCnn, pgd  # noqa: E402


def read_idx(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(d, stem):
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise SystemExit(f"{stem}(.gz) not found in {d}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--attacks", default="pgd-20,apgd-ce,autoattack")
    ap.add_argument("--autoattack-dir", default=os.environ.get("AUTOATTACK_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.autoattack_dir:
        sys.path.insert(0, a.autoattack_dir)
    model = SmallCnn()
    model.load_state_dict(load_file(a.checkpoint), strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    xs = read_idx(find(a.data_dir, "t10k-images-idx3-ubyte"))[: a.n]
    ys = read_idx(find(a.data_dir, "t10k-labels-idx1-ubyte"))[: a.n]
    x = torch.from_numpy(xs.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(ys.astype(np.int64))
    with torch.no_grad():
        clean = (model(x).argmax(1) == y)
    for attack in a.attacks.split(","):
        t0 = time.perf_counter()
        if attack == "pgd-20":
            torch.manual_seed(0)
            robust = torch.zeros_like(clean)
            for i in range(0, a.n, a.batch_size):
                xb, yb = x[i:i + a.batch_size], y[i:i + a.batch_size]
                xa = pgd(model, xb, yb, a.eps, 2.5 * a.eps / 20, 20)
                with torch.no_grad():
                    robust[i:i + a.batch_size] = model(xa).argmax(1) == yb
            robust &= clean
        elif attack == "apgd-ce":
            from autoattack.autopgd_base import APGDAttack
            apgd = APGDAttack(model, n_iter=100, norm="Linf", n_restarts=1, eps=a.eps, seed=0,
                              loss="ce", eot_iter=1, rho=0.75, device="cpu")
            robust = torch.zeros_like(clean)
            for i in range(0, a.n, a.batch_size):
                xb, yb = x[i:i + a.batch_size], y[i:i + a.batch_size]
                xa = apgd.perturb(xb, yb)
                with torch.no_grad():
                    robust[i:i + a.batch_size] = model(xa).argmax(1) == yb
            robust &= clean
        elif attack == "autoattack":
            from autoattack import AutoAttack
            aa = AutoAttack(model, norm="Linf", eps=a.eps, version="standard", seed=0, device="cpu")
            xa = aa.run_standard_evaluation(x, y, bs=a.batch_size)
            with torch.no_grad():
                robust = clean & (model(xa).argmax(1) == y)
        else:
            raise SystemExit(f"unknown attack {attack}")
        dt = time.perf_counter() - t0
        print(json.dumps({"impl": "pytorch", "attack": attack, "n": a.n, "threads": a.threads,
                          "elapsed_s": dt, "images_per_s": a.n / dt,
                          "clean_accuracy": clean.float().mean().item(),
                          "robust_accuracy": robust.float().mean().item(),
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
