// Autocast controls libtch (tch 0.24) does not expose: CPU autocast and its dtype, the CUDA
// autocast dtype, and the grad-mode query. Compiled by build.rs against the libtorch headers.
#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>

static c10::DeviceType device_type(int device) {
  return device == 1 ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
}

extern "C" {
// Enable (or disable) autocast on device 0 = CPU, 1 = CUDA with dtype 0 = bfloat16,
// 1 = float16. Returns whether it was enabled before, or -1 on an exception.
int advtrain_autocast_set(int device, int enabled, int dtype) {
  try {
    c10::DeviceType d = device_type(device);
    bool before = at::autocast::is_autocast_enabled(d);
    at::autocast::set_autocast_dtype(d, dtype == 1 ? at::kHalf : at::kBFloat16);
    at::autocast::set_autocast_enabled(d, enabled != 0);
    return before ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Drop autocast's cast cache (the lower-precision copies of fp32 leaf tensors that require
// grad, kept while a region is open): Python's autocast does this when its outermost region
// exits.
void advtrain_autocast_clear_cache() { at::autocast::clear_cache(); }

// Diagnostic: the bfloat16 cast autocast gives `t` on device 0 = CPU, 1 = CUDA (the cached
// one when its cache holds it; a new cast fills the cache as a forward would). Returns a new
// tensor handle for the caller to free, or null on an exception.
at::Tensor* advtrain_autocast_cast(const at::Tensor* t, int device) {
  try {
    return new at::Tensor(at::autocast::cached_cast(at::kBFloat16, *t, device_type(device)));
  } catch (...) {
    return nullptr;
  }
}

// Whether autocast is enabled on device 0 = CPU, 1 = CUDA.
int advtrain_autocast_enabled(int device) {
  return at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0;
}

// Whether autograd records operations (false inside no_grad).
int advtrain_grad_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }
}

// Numerics switches of libtorch's global context (torch.backends.* in Python).
#include <ATen/Context.h>

extern "C" {
// TF32 for cuDNN convolutions and cuBLAS matmuls (torch.backends.cudnn.allow_tf32,
// torch.backends.cuda.matmul.allow_tf32). Returns 0, or -1 on an exception.
int advtrain_set_tf32(int cudnn, int cublas) {
  try {
    at::globalContext().setAllowTF32CuDNN(cudnn != 0);
    at::globalContext().setAllowTF32CuBLAS(cublas != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Bit 0: TF32 in cuDNN convolutions, bit 1: TF32 in cuBLAS matmuls.
int advtrain_tf32_state() {
  return (at::globalContext().allowTF32CuDNN() ? 1 : 0) |
         (at::globalContext().allowTF32CuBLAS() ? 2 : 0);
}

// Deterministic algorithms (torch.use_deterministic_algorithms(on, warn_only=True)) and
// deterministic cuDNN (torch.backends.cudnn.deterministic). Returns 0, or -1 on an exception.
int advtrain_set_deterministic(int on) {
  try {
    at::globalContext().setDeterministicAlgorithms(on != 0, /*warn_only=*/true);
    at::globalContext().setDeterministicCuDNN(on != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Bit 0: deterministic algorithms, bit 1: deterministic cuDNN.
int advtrain_deterministic_state() {
  return (at::globalContext().deterministicAlgorithms() ? 1 : 0) |
         (at::globalContext().deterministicCuDNN() ? 2 : 0);
}
}
