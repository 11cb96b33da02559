// The collective engines of `src/collective.rs`: libtorch's own c10d
// process groups (Gloo for CPU tensors, NCCL for CUDA tensors, the engines
// PyTorch's DDP uses) behind a C interface for Rust, with the torchrun
// rendezvous (a TCPStore at MASTER_ADDR:MASTER_PORT).
//
// Tensors cross the boundary as tch's handles (`at::Tensor*`). Every entry
// point catches C++ exceptions and returns the message in `*err` (freed with
// pixpro_free_error), so nothing throws into Rust.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef PIXPRO_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

void set_error(char** err, const std::string& msg) {
  if (err != nullptr) {
    *err = strdup(msg.c_str());
  }
}

// c10d reads a list of tensors as one tensor's copies on several devices,
// so each tensor goes on its own; callers bucket small tensors together.
void all_reduce_sum(Group* g, std::vector<at::Tensor>& tensors) {
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  for (auto& t : tensors) {
    std::vector<at::Tensor> one{t};
    g->backend->allreduce(one, opts)->wait();
  }
}

void broadcast(Group* g, std::vector<at::Tensor>& tensors, int root) {
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  for (auto& t : tensors) {
    std::vector<at::Tensor> one{t};
    g->backend->broadcast(one, opts)->wait();
  }
}

// The message without the C++ stack trace that c10 errors carry.
void set_error(char** err, const std::exception& e) {
  auto* c10 = dynamic_cast<const c10::Error*>(&e);
  set_error(err, c10 != nullptr ? c10->what_without_backtrace() : e.what());
}

// Sum over ranks in the forward pass and, because every rank's output
// depends on every rank's input, sum of the gradients in the backward pass:
// what SyncBN needs for its batch statistics.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t group) {
    ctx->saved_data["group"] = group;
    std::vector<at::Tensor> t{x.clone()};
    all_reduce_sum(reinterpret_cast<Group*>(group), t);
    return t[0];
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* group = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    std::vector<at::Tensor> t{grads[0].contiguous().clone()};
    all_reduce_sum(group, t);
    return {t[0], at::Tensor()};
  }
};

std::vector<at::Tensor> unwrap(at::Tensor** tensors, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; i++) {
    v.push_back(*tensors[i]);
  }
  return v;
}

}  // namespace

extern "C" {

int pixpro_nccl_compiled() {
#ifdef PIXPRO_NCCL
  return 1;
#else
  return 0;
#endif
}

// `backend` is "gloo" or "nccl". Rank 0 hosts the store unless `is_server`
// is 0 (torchrun's agent hosts it). Every key goes under `prefix`, which
// must differ between groups that may meet in the same store.
void* pixpro_group_new(const char* backend, const char* addr, int port, int rank, int world,
                       int is_server, const char* prefix, int64_t timeout_ms, char** err) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = is_server != 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), so);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto* g = new Group();
    g->store = store;
    std::string name(backend);
    if (name == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && ifname[0] != '\0') {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    } else if (name == "nccl") {
#ifdef PIXPRO_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
      delete g;
      set_error(err, "this pixpro was built without NCCL (its headers were not found at build time)");
      return nullptr;
#endif
    } else {
      delete g;
      set_error(err, "unknown collective engine `" + name + "`");
      return nullptr;
    }
    return g;
  } catch (const std::exception& e) {
    set_error(err, e);
    return nullptr;
  }
}

void pixpro_group_free(void* group) { delete reinterpret_cast<Group*>(group); }

void pixpro_free_error(char* err) { free(err); }

int pixpro_all_reduce_sum(void* group, at::Tensor** tensors, int n, char** err) {
  try {
    auto v = unwrap(tensors, n);
    all_reduce_sum(reinterpret_cast<Group*>(group), v);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, e);
    return -1;
  }
}

int pixpro_broadcast(void* group, at::Tensor** tensors, int n, int root, char** err) {
  try {
    auto v = unwrap(tensors, n);
    broadcast(reinterpret_cast<Group*>(group), v, root);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, e);
    return -1;
  }
}

// A new tch tensor handle, the differentiable sum of `x` over ranks.
at::Tensor* pixpro_all_reduce_sum_autograd(void* group, at::Tensor* x, char** err) {
  try {
    auto y = AllReduceSum::apply(*x, reinterpret_cast<int64_t>(group));
    return new at::Tensor(y);
  } catch (const std::exception& e) {
    set_error(err, e);
    return nullptr;
  }
}

}  // extern "C"
