// The libtorch version pixpro was compiled against, for `pixpro doctor`.
#include <torch/version.h>

extern "C" const char* pixpro_torch_version() { return TORCH_VERSION; }
