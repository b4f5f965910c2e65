// SGD over a list of parameters with ATen's foreach ops (one multi-tensor kernel per step of
// the update on CUDA instead of one kernel per parameter; on the CPU the foreach ops run the
// ordinary per-tensor kernels, so the numbers are those of the per-tensor update). Compiled by
// build.rs against the libtorch headers.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

extern "C" {
// g = grad + wd * w;  b = mu * b + g;  step = nesterov ? g + mu * b : b;  w -= lr * step,
// with the operations (and their rounding) of src/train/optim.rs: g = grad + (w * wd),
// b.mul_(mu).add_(g), g + (b * mu), w.add_(step * -lr). wd = 0 skips the decay, mu = 0 the
// buffers. Returns 0, or -1 on an exception.
int advtrain_sgd_foreach(at::Tensor* const* params, at::Tensor* const* grads,
                         at::Tensor* const* bufs, int n, double lr, double mu, double wd,
                         int nesterov) {
  try {
    c10::AutoGradMode no_grad(false);
    std::vector<at::Tensor> p, g, b;
    p.reserve(n);
    g.reserve(n);
    b.reserve(n);
    for (int i = 0; i < n; i++) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      b.push_back(*bufs[i]);
    }
    if (n == 0) return 0;
    if (wd != 0.0) g = at::_foreach_add(g, at::_foreach_mul(p, wd));
    std::vector<at::Tensor> step = g;
    if (mu != 0.0) {
      at::_foreach_mul_(b, mu);
      at::_foreach_add_(b, g);
      step = nesterov ? at::_foreach_add(g, at::_foreach_mul(b, mu)) : b;
    }
    at::_foreach_add_(p, at::_foreach_mul(step, -lr));
    return 0;
  } catch (...) {
    return -1;
  }
}
}
