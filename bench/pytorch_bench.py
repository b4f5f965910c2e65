#!/usr/bin/env python3
"""PyTorch eager twin of `advtrain bench`, which runs it as a subprocess once per part on the
weights and points it used (usable alone too):

  --weights  safetensors with PyTorch names (an advtrain checkpoint or the fresh model it wrote)
  --data     safetensors with `images` uint8 [N,C,H,W] and `labels` int64 [N]

Parts (--parts, comma-separated), with exactly advtrain's settings (passed by it):
  at          one PGD-k AT step on the first --batch-size points: k L-inf PGD steps in eval mode
              (uniform start, CE, gradients w.r.t. the input only via torch.autograd.grad), then
              one SGD step (lr 0.01, momentum 0.9, weight decay 5e-4) in train mode; --warmup
              untimed steps, then --iters timed ones
  pgd20       over the first --n points in batches of --eval-batch-size: clean forward, PGD-20
              (plain eager loop, step --pgd-step-size), adversarial forward; one untimed batch
              first when --warmup > 0
  autoattack  the reference AutoAttack(norm='Linf', version='standard') imported from
              --autoattack-dir (a checkout of fra31/auto-attack), on the first --n points;
              skipped (a JSON line with "skipped") when no checkout is given

Prints JSON lines: first {"part": "info", ...} (torch version, threads, forward FLOPs per image
counted by torch.utils.flop_counter.FlopCounterMode on one eval-mode forward, and with --gemm the
fp32 GEMM rate measured as advtrain does), then one line per part with images, elapsed_s,
images_per_s (and clean/robust accuracy for pgd20 and autoattack). The reference AutoAttack's own
messages go to stderr."""
import argparse, contextlib, json, math, os, sys, time
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_pgd_at import PreActResNet18, SmallCnn, pgd, train_step  # noqa: E402

GEMM_N, GEMM_REPS, GEMM_TRIALS = 1024, 4, 5


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build(a, dev):
    """The twin module of --arch with --weights loaded strictly (--arch torchscript: --weights
    is a TorchScript module, loaded with torch.jit.load, eval mode, parameters frozen)."""
    if a.arch == "torchscript":
        model = torch.jit.load(a.weights, map_location=dev).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    if a.arch == "small-cnn":
        model = SmallCnn(a.in_channels, a.num_classes)
    elif a.arch == "preact-resnet18":
        model = PreActResNet18(a.in_channels, a.num_classes)
    else:
        raise SystemExit(f"pytorch_bench.py: --arch {a.arch}: no twin module (small-cnn, preact-resnet18)")
    model.load_state_dict(load_file(a.weights), strict=True)
    model = model.to(dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def forward_flops(model, x1):
    """2 x MACs of conv and linear layers of one eval-mode forward of one image."""
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x1)
    return fc.get_total_flops()


def gemm_gflops(dev):
    """Best of GEMM_TRIALS trials of GEMM_REPS n x n fp32 matmuls, 2 n^3 FLOPs each."""
    a = torch.randn(GEMM_N, GEMM_N, device=dev)
    b = torch.randn(GEMM_N, GEMM_N, device=dev)
    for _ in range(2):
        torch.mm(a, b)
    sync(dev)
    best = math.inf
    for _ in range(GEMM_TRIALS):
        t0 = time.perf_counter()
        for _ in range(GEMM_REPS):
            torch.mm(a, b)
        sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * GEMM_N ** 3 * GEMM_REPS / best / 1e9


def as_float(images, dev):
    return images.to(dev).float() / 255.0


def part_at(a, dev, images, labels):
    model = build(a, dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = as_float(images[: a.batch_size], dev).contiguous()
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = labels[: a.batch_size].to(dev)
    for _ in range(a.warmup):
        train_step(model, opt, x, y, a.eps, a.at_step_size, a.steps)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(a.iters):
        train_step(model, opt, x, y, a.eps, a.at_step_size, a.steps)
    sync(dev)
    return {"images": a.batch_size * a.iters, "elapsed_s": time.perf_counter() - t0}


def pgd20_pass(a, model, images, labels, dev):
    """Clean and robust counts: per batch a clean forward, PGD, an adversarial forward."""
    clean = torch.zeros((), dtype=torch.int64, device=dev)
    robust = torch.zeros((), dtype=torch.int64, device=dev)
    for i in range(0, len(labels), a.eval_batch_size):
        xb = as_float(images[i:i + a.eval_batch_size], dev)
        yb = labels[i:i + a.eval_batch_size].to(dev)
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        xa = pgd(model, xb, yb, a.eps, a.pgd_step_size, a.pgd_steps)
        with torch.no_grad():
            ok_adv = model(xa).argmax(1) == yb
        clean += ok.sum()
        robust += (ok & ok_adv).sum()
    return clean.item(), robust.item()


def part_pgd20(a, dev, images, labels):
    model = build(a, dev)
    model.eval()
    x, y = images[: a.n], labels[: a.n]
    if a.warmup > 0:
        pgd20_pass(a, model, x[: a.eval_batch_size], y[: a.eval_batch_size], dev)
        torch.manual_seed(a.seed)
    sync(dev)
    t0 = time.perf_counter()
    clean, robust = pgd20_pass(a, model, x, y, dev)
    sync(dev)
    return {"images": a.n, "elapsed_s": time.perf_counter() - t0,
            "clean_accuracy": clean / a.n, "robust_accuracy": robust / a.n}


def part_autoattack(a, dev, images, labels):
    if not a.autoattack_dir:
        return {"skipped": "no reference AutoAttack checkout (set AUTOATTACK_DIR or give --autoattack-dir)"}
    sys.path.insert(0, a.autoattack_dir)
    from autoattack import AutoAttack
    model = build(a, dev)
    model.eval()
    x, y = as_float(images[: a.n], dev), labels[: a.n].to(dev)
    aa = AutoAttack(model, norm="Linf", eps=a.eps, version="standard", seed=a.seed, device=dev)
    sync(dev)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        xa = aa.run_standard_evaluation(x, y, bs=a.eval_batch_size)
    sync(dev)
    dt = time.perf_counter() - t0
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        robust = clean & (model(xa).argmax(1) == y)
    return {"images": a.n, "elapsed_s": dt, "clean_accuracy": clean.float().mean().item(),
            "robust_accuracy": robust.float().mean().item(),
            "robust_points": "".join("1" if r else "0" for r in robust.tolist())}


PARTS = {"at": part_at, "pgd20": part_pgd20, "autoattack": part_autoattack}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="at,pgd20,autoattack")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--in-channels", type=int, required=True)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-batch-size", type=int, default=500)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, required=True)
    ap.add_argument("--at-step-size", type=float, required=True)
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--pgd-step-size", type=float, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--gemm", action="store_true")
    ap.add_argument("--autoattack-dir", default=os.environ.get("AUTOATTACK_DIR"))
    a = ap.parse_args()
    parts = [p for p in a.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            raise SystemExit(f"pytorch_bench.py: --parts: unknown part '{p}' (at, pgd20, autoattack)")
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    data = load_file(a.data)
    images, labels = data["images"], data["labels"]
    info = {"part": "info", "impl": "pytorch", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(dev),
            "forward_flops": None if a.arch == "torchscript"
            else forward_flops(build(a, dev), as_float(images[:1], dev))}
    if a.gemm:
        info["gemm_gflops_per_s"] = gemm_gflops(dev)
    print(json.dumps(info), flush=True)
    for p in parts:
        torch.manual_seed(a.seed)
        # cuDNN's algorithm search where shapes stay fixed, as advtrain does (src/device.rs).
        torch.backends.cudnn.benchmark = p in ("at", "pgd20")
        r = PARTS[p](a, dev, images, labels)
        if "elapsed_s" in r:
            r["images_per_s"] = r["images"] / r["elapsed_s"]
        print(json.dumps({"part": p, "impl": "pytorch", **r}), flush=True)


if __name__ == "__main__":
    main()
