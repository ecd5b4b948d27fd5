// Tensor: a dense, row-major float32 array with its shape, owned by value.
//
// The kernels' only data type. Shapes follow positional-methods.md 1.1 (every
// dimension >= 1). Not thread-safe for concurrent mutation; const access from
// many threads is fine.
#ifndef ATTNSERVE_KERNELS_TENSOR_H_
#define ATTNSERVE_KERNELS_TENSOR_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace attnserve::kernels {

class Tensor {
 public:
  Tensor() = default;
  // A tensor of `shape` filled with zeros. The caller has checked the shape
  // (see CheckedElementCount); the element count must fit in memory.
  explicit Tensor(std::vector<int64_t> shape);
  // Takes `data` as the row-major values of `shape`; their counts must agree
  // (checked by the caller, e.g. with Tensor::Create).
  Tensor(std::vector<int64_t> shape, std::vector<float> data);

  // Validates that every dimension is >= 1, that the product does not
  // overflow and equals data.size(); errors name `field`.
  static absl::StatusOr<Tensor> Create(std::vector<int64_t> shape, std::vector<float> data,
                                       absl::string_view field);

  const std::vector<int64_t>& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i)]; }
  int64_t size() const { return static_cast<int64_t>(data_.size()); }

  float* data() { return data_.data(); }
  const float* data() const { return data_.data(); }
  std::vector<float>& values() { return data_; }
  const std::vector<float>& values() const { return data_; }

 private:
  std::vector<int64_t> shape_;
  std::vector<float> data_;
};

// "[2,3,7,16]"; past 8 dimensions only the first 8 and the count,
// "[1,1,1,1,1,1,1,1,... (1000 dimensions)]" (shapes come from callers, and
// error messages quote them).
std::string ShapeToString(absl::Span<const int64_t> shape);

// The element count of `shape`: INVALID_ARGUMENT naming `field` when a
// dimension is < 1 or the product overflows int64.
absl::StatusOr<int64_t> CheckedElementCount(absl::Span<const int64_t> shape,
                                            absl::string_view field);

// Whether values[0..n) are all finite (no NaN, no infinity): the kernels'
// vectorised scan for the active ISA (kernels/isa.h), e.g. for the server's
// decode.
bool AllFinite(const float* values, int64_t n);

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_TENSOR_H_
