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
    if (!enabled) at::autocast::clear_cache();
    return before ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Whether autocast is enabled on device 0 = CPU, 1 = CUDA.
int advtrain_autocast_enabled(int device) {
  return at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0;
}

// Whether autograd records operations (false inside no_grad).
int advtrain_grad_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }
}
