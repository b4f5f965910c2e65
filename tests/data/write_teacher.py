"""Write a PyTorch-style teacher state dict as safetensors, without torch (numpy + safetensors).

Reads the tensor list (names, shapes, dtypes) that tests/it/mixacm.rs dumps from a Rust-built
network, fills it with seeded random values and writes it under foreign names:

  python write_teacher.py SPEC.json OUT.safetensors [--prefix module.] [--rename fc=linear]
         [--drop-nbt] [--drop NAME] [--bad-shape NAME] [--extra NAME] [--seed 0]

--rename OURS=THEIRS renames one dot-separated segment (our name -> file name); --drop and
--bad-shape take our names; --extra adds an unknown tensor.
"""
import argparse
import json

import numpy as np
from safetensors.numpy import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("out")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--rename", action="append", default=[])
    ap.add_argument("--drop-nbt", action="store_true")
    ap.add_argument("--drop", action="append", default=[])
    ap.add_argument("--bad-shape", action="append", default=[])
    ap.add_argument("--extra", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    renames = dict(r.split("=", 1) for r in a.rename)
    with open(a.spec) as f:
        spec = json.load(f)
    rng = np.random.default_rng(a.seed)
    out = {}
    for t in spec["tensors"]:
        name, shape, dtype = t["name"], tuple(t["shape"]), t["dtype"]
        if name in a.drop:
            continue
        if name.endswith("num_batches_tracked"):
            if a.drop_nbt:
                continue
            value = np.array(int(rng.integers(0, 1000)), dtype=np.int64)
        else:
            if name in a.bad_shape:
                shape = tuple(shape[:-1]) + (shape[-1] + 1,) if shape else (2,)
            value = rng.standard_normal(shape).astype(np.float32)
            if name.endswith("running_var"):
                value = np.abs(value) + 0.5
        file_name = ".".join(renames.get(s, s) for s in name.split("."))
        out[a.prefix + file_name] = value
    for name in a.extra:
        out[a.prefix + name] = rng.standard_normal((3,)).astype(np.float32)
    save_file(out, a.out)


if __name__ == "__main__":
    main()
