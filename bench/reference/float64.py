"""Run the reference's own code, unchanged, in float64 (used by apgd_check.py and fab_check.py).

The reference casts its inputs (and masks) with `.float()` and makes its buffers and random
starts in torch's default dtype. Inside `float64_everywhere()` the default dtype is float64 and
`Tensor.float()` returns float64, so every tensor of the reference is float64. advtrain's
attacks, given float64 inputs, draw their random starts in float64 likewise
(`noise_kind` in src/attack/mod.rs).
"""
import contextlib

import torch


@contextlib.contextmanager
def float64_everywhere():
    """torch's default dtype float64 and `Tensor.float()` -> float64, restored on exit."""
    dtype, to_float = torch.get_default_dtype(), torch.Tensor.float
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = lambda self, *a, **k: self.double(*a, **k)
    try:
        yield
    finally:
        torch.Tensor.float = to_float
        torch.set_default_dtype(dtype)


def reference_dtype(double):
    """`float64_everywhere()` when `double`, else a context that changes nothing."""
    return float64_everywhere() if double else contextlib.nullcontext()
