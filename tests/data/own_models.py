"""Fixtures and PyTorch-side checks for tests/it/own_models.rs (run by the venv's Python).

  own_models.py check-export MODEL.pt POINTS.safetensors OUT.safetensors
      torch.jit.load the exported module, logits of the points' x -> OUT (tensor 'logits')
  own_models.py state-dict CKPT.safetensors OUT.safetensors
      the checkpoint's tensors under DataParallel names ('module.' prefix), 'fc' -> 'linear'
  own_models.py modules DIR
      a small BN CNN (1x28x28, 10 classes) as DIR/scripted.pt (torch.jit.script, eval),
      DIR/traced_train.pt (torch.jit.trace in train mode), DIR/wrong_input.pt (expects 3
      channels), DIR/pickle.pt (torch.save of the state dict)
  own_models.py points IN.safetensors OUT.safetensors KIND
      rewrite a points file: KIND = float (x / 255 as float32), or a broken variant
"""
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file


class Net(nn.Module):
    def __init__(self, channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


def main():
    cmd = sys.argv[1]
    if cmd == "check-export":
        m = torch.jit.load(sys.argv[2])
        x = load_file(sys.argv[3])["x"].float() / 255.0
        with torch.no_grad():
            z = m(x)
        save_file({"logits": z.contiguous()}, sys.argv[4])
    elif cmd == "state-dict":
        sd = load_file(sys.argv[2])
        out = {}
        for k, v in sd.items():
            k = k.replace("fc.", "linear.") if k.startswith("fc.") else k
            out["module." + k] = v.contiguous()
        save_file(out, sys.argv[3])
    elif cmd == "modules":
        d = sys.argv[2]
        torch.manual_seed(0)
        m = Net()
        with torch.no_grad():
            m.bn.running_mean.uniform_(-0.1, 0.1)
            m.bn.running_var.uniform_(0.5, 1.5)
        m.eval()
        torch.jit.script(m).save(f"{d}/scripted.pt")
        x = torch.rand(4, 1, 28, 28)
        m.train()
        torch.jit.trace(m, x).save(f"{d}/traced_train.pt")
        m.eval()
        torch.jit.script(Net(3).eval()).save(f"{d}/wrong_input.pt")
        torch.save(m.state_dict(), f"{d}/pickle.pt")
    elif cmd == "points":
        p = load_file(sys.argv[2])
        x, y = p["x"], p["y"]
        kind = sys.argv[4]
        if kind == "float":
            out = {"x": x.float() / 255.0, "y": y}
        elif kind == "above-one":
            out = {"x": x.float(), "y": y}
        elif kind == "int32-labels":
            out = {"x": x, "y": y.int()}
        elif kind == "label-range":
            y = y.clone()
            y[3] = 12
            out = {"x": x, "y": y}
        elif kind == "short-labels":
            out = {"x": x, "y": y[:-1].contiguous()}
        elif kind == "no-x":
            out = {"images": x, "y": y}
        elif kind == "3d":
            out = {"x": x[:, 0].contiguous(), "y": y}
        else:
            raise SystemExit(f"unknown kind {kind}")
        save_file(out, sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
