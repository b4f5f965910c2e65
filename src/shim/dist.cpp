// torch.distributed (c10d) for advtrain: a TCPStore rendezvous and a Gloo (or NCCL) process
// group behind a small C API, compiled by build.rs against the wheel's c10d headers and Debian's
// gloo headers (libgloo-dev). Every entry point catches all exceptions and returns the message
// as a malloc'd string (freed by advtrain_dist_free_error): a failed collective never aborts the
// process. Tensors are tch's `C_tensor` pointers, i.e. `at::Tensor*`.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>
#ifdef ADVTRAIN_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int rank;
  int world;
  // The first failed sync-BatchNorm collective (they run inside forward and backward, which
  // cannot return errors): from then on those collectives are skipped (local statistics) and
  // the caller reads the message (advtrain_dist_sync_error) at the end of the step.
  std::string sync_failed;
};

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

// Run `f`; on an exception store its message in *err and return `fail`.
template <typename F, typename R>
R guarded(char** err, R fail, F f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    if (err) *err = dup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    if (err) *err = dup(e.what());
  } catch (...) {
    if (err) *err = dup("unknown C++ exception");
  }
  return fail;
}

// Gloo's collectives take one tensor per call (a list means one tensor per local device).
std::vector<at::Tensor> one(void* t) { return {*static_cast<at::Tensor*>(t)}; }

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& w, const char* what) {
  if (!w->wait(g->timeout)) {
    throw std::runtime_error(std::string(what) + " did not complete");
  }
}

// Sum `t` over the workers for sync BatchNorm; false (and the group's sync_failed set) when
// the collective fails or an earlier one did.
bool sync_allreduce(Group* g, at::Tensor& t, const char* what) {
  if (!g->sync_failed.empty()) return false;
  try {
    std::vector<at::Tensor> v{t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = g->timeout;
    wait(g, g->backend->allreduce(v, o), what);
    return true;
  } catch (const c10::Error& e) {
    g->sync_failed = std::string(what) + ": " + e.what_without_backtrace();
  } catch (const std::exception& e) {
    g->sync_failed = std::string(what) + ": " + e.what();
  }
  return false;
}

// `[1, C, 1, ...]` for an input of `dim` dimensions.
std::vector<int64_t> channel_shape(int64_t dim, int64_t c) {
  std::vector<int64_t> s(static_cast<size_t>(dim), 1);
  s[1] = c;
  return s;
}

// Synchronised BatchNorm statistics (the moments half of PyTorch's SyncBatchNorm,
// torch/nn/modules/_functions.py, rewritten as a C++ autograd Function).
//
// Forward: every worker's per-channel count n_r, mean m_r and centred sum of squares
// M2_r = sum (x - m_r)^2 (two-pass, in the input's precision) are gathered (an all-reduce of a
// [world, 2C + 1] float64 buffer in which each worker fills its row) and combined in float64
// (Chan et al.'s pairwise update): N = sum n_r, mean = sum n_r m_r / N,
// var = sum (M2_r + n_r (m_r - mean)^2) / N (biased). Outputs: mean [C], var [C] in the
// input's float type, N ([1] float64, not differentiable).
//
// Backward: the global loss is L = sum_r c_r L_r over the workers' losses L_r. A training
// loss is the mean over the worker's rows and data-parallel training weights its gradients by
// the share c_r = n_r / N before summing them; a summed loss (an attack's input gradient,
// `summed`) has c_r = 1. The gradients of L with respect to (mean, var) are
// G = sum_r c_r (dL_r/dmean, dL_r/dvar) (one all-reduce of 2C float64 values, PyTorch's
// sum_dy / sum_dy_xmu); in the scale of this worker's loss (divided by c_r):
// dx_i = (G_mean + 2 G_var (x_i - mean)) / (N c_r). (PyTorch sums with c_r = 1 and DDP
// divides by the world size: the same when the shares are equal.)
struct SyncMoments : public torch::autograd::Function<SyncMoments> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& x, int64_t gp,
                                                bool summed) {
    auto g = reinterpret_cast<Group*>(gp);
    TORCH_CHECK(x.dim() >= 2, "sync BatchNorm: input must be [N, C, ...], got ", x.dim(),
                " dimensions");
    const int64_t c = x.size(1);
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < x.dim(); ++d)
      if (d != 1) dims.push_back(d);
    auto kind = at::isFloatingType(x.scalar_type()) && x.scalar_type() != at::kHalf &&
                        x.scalar_type() != at::kBFloat16
                    ? x.scalar_type()
                    : at::kFloat;
    auto xf = x.to(kind);
    const double n = static_cast<double>(x.numel() / std::max<int64_t>(c, 1));
    auto opts = x.options().dtype(at::kDouble);
    auto all = at::zeros({g->world, 2 * c + 1}, opts);
    auto fill = [&]() {
      if (n == 0) return;
      auto vm = at::var_mean(xf, dims, /*correction=*/0, /*keepdim=*/false);
      auto row = all.select(0, g->rank);
      row.narrow(0, 0, 1).fill_(n);
      row.narrow(0, 1, c).copy_(std::get<1>(vm));
      row.narrow(0, 1 + c, c).copy_(std::get<0>(vm) * n);
    };
    fill();
    if (!sync_allreduce(g, all, "sync BatchNorm statistics all-reduce")) {
      // Failed: this worker's statistics only (the step is abandoned by the caller).
      all.zero_();
      fill();
    }
    auto counts = all.narrow(1, 0, 1);            // [W, 1]
    auto means = all.narrow(1, 1, c);             // [W, C]
    auto m2s = all.narrow(1, 1 + c, c);           // [W, C]
    auto total = counts.sum();                    // N
    TORCH_CHECK(total.item<double>() > 0, "sync BatchNorm: no rows on any worker");
    auto mean = (counts * means).sum(0) / total;  // [C]
    auto m2 = (m2s + counts * (means - mean).square()).sum(0);
    auto var = m2 / total;
    auto mean_k = mean.to(kind);
    ctx->save_for_backward({xf, mean_k});
    ctx->saved_data["g"] = gp;
    ctx->saved_data["n"] = n;
    ctx->saved_data["total"] = total.item<double>();
    ctx->saved_data["summed"] = summed;
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    auto count = total.reshape({1});
    ctx->mark_non_differentiable({count});
    return {mean_k, var.to(kind), count};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto g = reinterpret_cast<Group*>(ctx->saved_data["g"].toInt());
    auto saved = ctx->get_saved_variables();
    auto& xf = saved[0];
    auto& mean = saved[1];
    const double n = ctx->saved_data["n"].toDouble();
    const double total = ctx->saved_data["total"].toDouble();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const int64_t c = xf.size(1);
    auto opts = xf.options().dtype(at::kDouble);
    auto gm = grads[0].defined() ? grads[0].to(at::kDouble) : at::zeros({c}, opts);
    auto gv = grads[1].defined() ? grads[1].to(at::kDouble) : at::zeros({c}, opts);
    const double share = ctx->saved_data["summed"].toBool() ? 1.0 : n / total;
    auto buf = at::cat({gm, gv}) * share;
    if (!sync_allreduce(g, buf, "sync BatchNorm gradient all-reduce")) {
      buf = at::cat({gm, gv}) * share;  // local only; the caller abandons the step
    }
    at::Tensor dx;
    if (n > 0) {
      auto shape = channel_shape(xf.dim(), c);
      auto k = xf.scalar_type();
      const double scale = total * share;
      auto g_mean = (buf.narrow(0, 0, c) / scale).to(k).view(shape);
      auto g_var = (buf.narrow(0, c, c) * (2.0 / scale)).to(k).view(shape);
      dx = (g_mean + g_var * (xf - mean.view(shape))).to(dtype);
    } else {
      dx = at::zeros_like(xf).to(dtype);
    }
    return {dx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Whether NCCL was compiled in.
int advtrain_dist_has_nccl() {
#ifdef ADVTRAIN_NCCL
  return 1;
#else
  return 0;
#endif
}

void advtrain_dist_free_error(char* err) { std::free(err); }

// Rendezvous at addr:port and create a process group. backend: 0 = gloo, 1 = nccl.
// server: 1 = this process hosts the TCPStore (rank 0 without an agent store), 0 = client.
// timeout_ms bounds the rendezvous and every collective. Returns null with *err on failure.
void* advtrain_dist_init(int backend, const char* addr, int port, int rank, int world,
                         int server, long timeout_ms, char** err) {
  return guarded(err, static_cast<void*>(nullptr), [&]() -> void* {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    o.isServer = server != 0;
    o.numWorkers = std::nullopt;  // the agent store or rank 0 serves; nobody waits at construction
    o.waitWorkers = false;
    o.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), o);
    auto store = c10::make_intrusive<c10d::PrefixStore>("advtrain/pg0", tcp);
    auto g = new Group{store, {}, timeout, rank, world};
    try {
      if (backend == 0) {
        auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
      } else {
#ifdef ADVTRAIN_NCCL
        auto opts = c10d::ProcessGroupNCCL::Options::create();
        opts->timeout = timeout;
        g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
        throw std::runtime_error("this build of advtrain has no NCCL (the nccl headers were "
                                 "not found when it was compiled)");
#endif
      }
    } catch (...) {
      delete g;
      throw;
    }
    return g;
  });
}

void advtrain_dist_free(void* g) { delete static_cast<Group*>(g); }

// Sum a (contiguous) tensor in place across all ranks.
int advtrain_dist_allreduce_sum(void* gp, void* t, char** err) {
  return guarded(err, -1, [&]() {
    auto g = static_cast<Group*>(gp);
    auto v = one(t);
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = g->timeout;
    wait(g, g->backend->allreduce(v, o), "allreduce");
    return 0;
  });
}

// Overwrite a (contiguous) tensor with rank `root`'s values.
int advtrain_dist_broadcast(void* gp, void* t, int root, char** err) {
  return guarded(err, -1, [&]() {
    auto g = static_cast<Group*>(gp);
    auto v = one(t);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.rootTensor = 0;
    o.timeout = g->timeout;
    wait(g, g->backend->broadcast(v, o), "broadcast");
    return 0;
  });
}

// Wait until every rank has arrived.
int advtrain_dist_barrier(void* gp, char** err) {
  return guarded(err, -1, [&]() {
    auto g = static_cast<Group*>(gp);
    c10d::BarrierOptions o;
    o.timeout = g->timeout;
    wait(g, g->backend->barrier(o), "barrier");
    return 0;
  });
}

// The first failed sync-BatchNorm collective's message (malloc'd, free with
// advtrain_dist_free_error), or null when none failed; clears it when `clear`.
char* advtrain_dist_sync_error(void* gp, int clear) {
  auto g = static_cast<Group*>(gp);
  if (g->sync_failed.empty()) return nullptr;
  char* m = dup(g->sync_failed);
  if (clear) g->sync_failed.clear();
  return m;
}

// Synchronised BatchNorm statistics of `x` ([N, C, ...]) over every worker (SyncMoments
// above): new tensors mean [C] and biased var [C] (differentiable through the group), and the
// global row count per channel in *count. Every worker must call it for the same layers in the
// same order (and, when the outputs take part in the loss, run the backward).
// `summed`: the loss differentiated is a sum over rows (weight 1 per worker), else a mean
// weighted by the worker's share.
int advtrain_dist_sync_moments(void* gp, void* x, int summed, void** mean, void** var,
                               double* count, char** err) {
  return guarded(err, -1, [&]() {
    auto out = SyncMoments::apply(*static_cast<at::Tensor*>(x),
                                  reinterpret_cast<int64_t>(gp), summed != 0);
    *count = out[2].item<double>();
    *mean = new at::Tensor(out[0]);
    *var = new at::Tensor(out[1]);
    return 0;
  });
}
}
