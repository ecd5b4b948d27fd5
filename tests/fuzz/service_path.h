// The request path of attnd's AttentionService, as the fuzz targets drive it
// without a server: the same conversion (server/convert.h) and kernel calls
// (kernels/attention.h) with the options the batcher gives them, only under
// a smaller element limit so that one input costs milliseconds, not seconds.
//
// Thread-safety: the functions are reentrant; the store is immutable.
#ifndef ATTNSERVE_TESTS_FUZZ_SERVICE_PATH_H_
#define ATTNSERVE_TESTS_FUZZ_SERVICE_PATH_H_

#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "kernels/attention.h"
#include "server/convert.h"
#include "server/tensor_store.h"

namespace attnserve::fuzz {

// --max_elements for the fuzz targets: 2^20 floats (4 MiB) per tensor and
// per request, instead of attnd's 2^28. Every rule is the same; only the
// largest work one input can ask for is smaller.
inline constexpr int64_t kMaxElements = int64_t{1} << 20;

inline server::ConvertLimits Limits() { return server::ConvertLimits{kMaxElements}; }

// What Batcher::RunAlone passes to the kernels (one compute thread).
inline kernels::ComputeOptions KernelOptions() {
  kernels::ComputeOptions options;
  options.threads = 1;
  options.max_elements = kMaxElements;
  options.inputs_checked = true;  // by the conversion, as in the service
  return options;
}

// A store with the shapes --tensor_dir can load that a request may not use
// (rank 0, a zero dimension) beside ordinary ones, so refs are fuzzed too.
inline const server::TensorStore& FuzzTensors() {
  static const server::TensorStore* const store = [] {
    std::vector<server::StoredTensor> tensors;
    tensors.push_back({"t/a", "F32", kernels::Tensor({2, 3}, std::vector<float>(6, 0.5f))});
    tensors.push_back({"t/q", "F32", kernels::Tensor({1, 2, 3, 4}, std::vector<float>(24, 0.25f))});
    tensors.push_back({"t/scalar", "F32", kernels::Tensor({}, std::vector<float>{1.0f})});
    tensors.push_back({"t/empty", "F16", kernels::Tensor({0, 4}, std::vector<float>{})});
    return new server::TensorStore(std::move(tensors));
  }();
  return *store;
}

// A broken invariant: report it the way a sanitizer would, so libFuzzer
// keeps the input.
#define ATTN_FUZZ_CHECK(condition, what)                                              \
  do {                                                                                \
    if (!(condition)) {                                                               \
      std::fprintf(stderr, "fuzz invariant broken: %s (%s) at %s:%d\n", what, #condition, \
                   __FILE__, __LINE__);                                               \
      std::abort();                                                                   \
    }                                                                                 \
  } while (false)

// A response the service would send: it serializes.
inline void CheckResponse(const google::protobuf::Message& response) {
  std::string wire;
  ATTN_FUZZ_CHECK(response.SerializeToString(&wire), "the response serializes");
}

// Every error the service can answer with names what is wrong.
inline void CheckError(const absl::Status& status) {
  ATTN_FUZZ_CHECK(!status.ok(), "an error status");
  ATTN_FUZZ_CHECK(!status.message().empty(), "an error carries a message");
}

}  // namespace attnserve::fuzz

#endif  // ATTNSERVE_TESTS_FUZZ_SERVICE_PATH_H_
