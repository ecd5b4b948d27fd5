// TensorStore: float32 tensors that attnd loads once at start-up from the
// safetensors files of --tensor_dir, so that requests can name them (a
// Tensor's `ref`) instead of resending large tables and weights every call.
//
// Files: every regular file (or symlink to one) directly in the directory
// whose name ends in ".safetensors"; subdirectories are not searched. A
// tensor's ref is "<file stem>/<tensor name>", e.g. "shaw/rel_k" for tensor
// "rel_k" of shaw.safetensors.
//
// Format (Hugging Face safetensors): an 8-byte little-endian unsigned header
// length N, N bytes of JSON header, then the data region. The header is an
// object {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...} with an
// optional "__metadata__" object of strings; offsets are relative to the data
// region. Checked strictly, as the reference implementation does: N <= 100 MB
// and within the file; JSON that parses, with no duplicate names and no
// unknown keys; dtype F32, F16 or BF16 (others are refused, not skipped);
// shape of non-negative integers whose product times the dtype's size equals
// end - begin; the tensors' byte ranges tile the data region exactly (no gap,
// no overlap, nothing after the last). F16 and BF16 values are widened to
// float32 exactly (subnormals, signed zeros, infinities and NaN included);
// non-finite values load as they are and are refused by the kernels when a
// request uses them, as for inline data.
//
// Shapes are kept as in the file, so a rank-0 or zero-sized tensor loads but
// is INVALID_ARGUMENT when a request refers to it (wire tensors need every
// dimension >= 1).
//
// Thread-safety: immutable once loaded; Find and tensors() may be called from
// any number of threads.
#ifndef ATTNSERVE_SERVER_TENSOR_STORE_H_
#define ATTNSERVE_SERVER_TENSOR_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"

namespace attnserve::server {

// One tensor of a safetensors file, widened to float32.
struct StoredTensor {
  std::string ref;         // "<file stem>/<tensor name>"
  std::string dtype;       // as in the file: "F32", "F16" or "BF16"
  kernels::Tensor tensor;  // shape as in the file (may be [] or hold a 0)
};

// The tensors of the safetensors file at `path`, refs prefixed with the
// file's stem, in the order of their data offsets. INVALID_ARGUMENT naming
// the file, the tensor (where there is one) and the rule it breaks;
// NOT_FOUND / FAILED_PRECONDITION when the file cannot be opened or read.
absl::StatusOr<std::vector<StoredTensor>> ReadSafetensorsFile(const std::string& path);

class TensorStore {
 public:
  // An empty store (no --tensor_dir): every ref is unknown.
  TensorStore() = default;

  // Loads every *.safetensors file in `dir` (see the file comment). An empty
  // directory gives an empty store. Errors name --tensor_dir and the file:
  // NOT_FOUND or FAILED_PRECONDITION when `dir` is missing, not a directory
  // or unreadable; ReadSafetensorsFile's errors; INVALID_ARGUMENT when a
  // tensor has more than `max_elements` elements (no request could use it).
  static absl::StatusOr<std::unique_ptr<TensorStore>> Load(const std::string& dir,
                                                           int64_t max_elements);

  // A store holding `tensors` (refs must be unique; for tests).
  explicit TensorStore(std::vector<StoredTensor> tensors);

  TensorStore(const TensorStore&) = delete;
  TensorStore& operator=(const TensorStore&) = delete;

  // The tensor loaded under `ref`, or nullptr. Valid as long as the store.
  const StoredTensor* Find(absl::string_view ref) const;

  // Every loaded tensor, sorted by ref.
  const std::vector<StoredTensor>& tensors() const { return tensors_; }

 private:
  std::vector<StoredTensor> tensors_;                 // sorted by ref
  std::map<std::string, size_t, std::less<>> index_;  // ref -> position in tensors_
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_TENSOR_STORE_H_
