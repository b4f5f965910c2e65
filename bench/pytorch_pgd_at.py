#!/usr/bin/env python3
"""PyTorch eager twin of `advtrain bench`: images/s of one PGD-10 adversarial-training step
(10 L-inf PGD steps through the model in eval mode + one SGD step in train mode), for the same
architectures, batch size, thread count and device. Prints one JSON line per model."""
import argparse, json, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCnn(nn.Module):
    def __init__(self, cin=1, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 32, 3, 1, 1, bias=False); self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, 2, 1, bias=False); self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, 2, 1, bias=False); self.bn3 = nn.BatchNorm2d(128)
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin); self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout); self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class PreActResNet18(nn.Module):
    def __init__(self, cin=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 64, 3, 1, 1, bias=False)
        layers, c = [], 64
        for i, (w, s) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            blocks = [PreActBlock(c, w, s), PreActBlock(w, w, 1)]
            c = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(512); self.linear = nn.Linear(512, classes)

    def forward(self, x):
        out = self.conv1(x)
        for i in range(4):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.relu(self.bn(out))
        return self.linear(out.mean((2, 3)))


def pgd(model, x, y, eps, alpha, steps):
    """L-inf PGD with uniform start; only the input receives gradients."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, [x_adv])
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def train_step(model, opt, x, y, eps, alpha, steps):
    model.eval()
    x_adv = pgd(model, x, y, eps, alpha, steps)
    model.train()
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="small-cnn,preact-resnet18")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    for name in a.models.split(","):
        if name == "small-cnn":
            model, shape, eps = SmallCnn(), (1, 28, 28), 0.1
        else:
            model, shape, eps = PreActResNet18(), (3, 32, 32), 8 / 255
        model = model.to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        x = torch.rand((a.batch_size,) + shape, device=dev)
        y = torch.randint(0, 10, (a.batch_size,), device=dev)
        for _ in range(a.warmup):
            train_step(model, opt, x, y, eps, eps / 4, a.steps)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.iters):
            train_step(model, opt, x, y, eps, eps / 4, a.steps)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(json.dumps({"impl": "pytorch", "model": name, "batch_size": a.batch_size, "threads": a.threads,
                          "device": a.device, "iters": a.iters, "images_per_s": a.batch_size * a.iters / dt,
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main()
