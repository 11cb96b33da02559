// libtorch's autocast for the CPU as well as CUDA: tch's `autocast` turns on
// the CUDA one only. Autocast state is per thread; callers enter and leave on
// the thread that runs the forward pass.
#include <ATen/autocast_mode.h>
#ifdef PIXPRO_NCCL
#include <ATen/cuda/CUDAContext.h>
#endif

extern "C" {

// Turns bfloat16 autocast on for the CPU (`cuda` = 0) or CUDA (1) and
// writes what was set before, for pixpro_autocast_exit to put back.
void pixpro_autocast_enter(int cuda, int* prev_enabled, int* prev_dtype) {
  const auto device = cuda != 0 ? at::kCUDA : at::kCPU;
  *prev_enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
  *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
  at::autocast::set_autocast_dtype(device, at::kBFloat16);
  at::autocast::set_autocast_enabled(device, true);
  at::autocast::increment_nesting();
}

// Restores the state pixpro_autocast_enter saw. The outermost exit drops
// the cache of bfloat16 weight copies: the optimiser changes the weights
// before the next forward pass, so a cached copy would be stale.
void pixpro_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  const auto device = cuda != 0 ? at::kCUDA : at::kCPU;
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(device, prev_enabled != 0);
  at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(prev_dtype));
}

// Writes CUDA device `index`'s compute capability and returns 1, or returns
// 0 where this build has no CUDA headers (PIXPRO_NCCL, see build.rs) or the
// device cannot be asked.
int pixpro_cuda_capability(int index, int* major, int* minor) {
#ifdef PIXPRO_NCCL
  try {
    const auto* prop = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(index));
    *major = prop->major;
    *minor = prop->minor;
    return 1;
  } catch (...) {
    return 0;
  }
#else
  (void)index;
  (void)major;
  (void)minor;
  return 0;
#endif
}

}  // extern "C"
