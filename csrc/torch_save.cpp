// `torch.save`'s zip format, written by libtorch, for `pixpro export
// --format pth` and `--format mmdet` (src/transfer/export.rs): a dict of
// named tensors that Python's `torch.load(weights_only=True)` reads.
//
// Not `torch::jit::pickle_save`: its pickler tags typed dicts with
// `torch.jit._pickle.restore_type_tag`, a global that `weights_only=True`
// refuses. The same pickler without the tags, in the same archive writer,
// gives a file that `torch.load` reads as a plain dict.
//
// Tensors cross the boundary as tch's handles (`at::Tensor*`). Nothing
// throws into Rust: a C++ exception's message comes back in `*err`.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

namespace {

std::vector<char> archive(const c10::IValue& value) {
  std::vector<char> pickle;
  torch::jit::Pickler pickler(
      [&](const char* buf, size_t len) { pickle.insert(pickle.end(), buf, buf + len); },
      nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  std::vector<char> out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* buf, size_t len) {
    const char* bytes = static_cast<const char*>(buf);
    out.insert(out.end(), bytes, bytes + len);
    return len;
  });
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(),
                                     writer);
  writer.writeEndOfFile();
  return out;
}

}  // namespace

extern "C" {

// The archive of `{names[i]: tensors[i]}` or, with `state_key`, of
// `{state_key: that dict, "meta": {meta_keys[j]: meta_values[j]}}`
// (OpenMMLab's checkpoint layout). Returns 0 with the bytes in `*out`
// (`*out_len` of them), or -1 with the message in `*err`; both are freed
// with pixpro_free.
int pixpro_torch_save(const char* const* names, const at::Tensor* const* tensors, int n,
                      const char* state_key, const char* const* meta_keys,
                      const char* const* meta_values, int n_meta, char** out, size_t* out_len,
                      char** err) {
  try {
    c10::Dict<std::string, at::Tensor> state;
    for (int i = 0; i < n; ++i) {
      state.insert(names[i], *tensors[i]);
    }
    c10::IValue top(state);
    if (state_key != nullptr) {
      c10::Dict<std::string, std::string> meta;
      for (int j = 0; j < n_meta; ++j) {
        meta.insert(meta_keys[j], meta_values[j]);
      }
      c10::impl::GenericDict outer(c10::StringType::get(), c10::AnyType::get());
      outer.insert(state_key, state);
      outer.insert("meta", meta);
      top = c10::IValue(outer);
    }
    std::vector<char> bytes = archive(top);
    *out = static_cast<char*>(std::malloc(bytes.size()));
    if (*out == nullptr) {
      *err = strdup("out of memory for the archive");
      return -1;
    }
    std::memcpy(*out, bytes.data(), bytes.size());
    *out_len = bytes.size();
    return 0;
  } catch (const c10::Error& e) {
    *err = strdup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  }
  return -1;
}

void pixpro_free(void* p) { std::free(p); }

}  // extern "C"
