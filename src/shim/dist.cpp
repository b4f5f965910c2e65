// torch.distributed (c10d) for advtrain: a TCPStore rendezvous and a Gloo (or NCCL) process
// group behind a small C API, compiled by build.rs against the wheel's c10d headers and Debian's
// gloo headers (libgloo-dev). Every entry point catches all exceptions and returns the message
// as a malloc'd string (freed by advtrain_dist_free_error): a failed collective never aborts the
// process. Tensors are tch's `C_tensor` pointers, i.e. `at::Tensor*`.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
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
    auto g = new Group{store, {}, timeout};
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
}
