// Tensor: a dense, row-major float32 array with its shape, owned by value or
// borrowed.
//
// The kernels' only data type. Shapes follow positional-methods.md 1.1 (every
// dimension >= 1). A tensor either owns its values (a std::vector) or
// borrows them from memory its creator keeps alive (View, MutableView): the
// server reads a request's raw_data where it arrived and writes an output
// straight into the response's bytes (issue 13 item 4). A read-only view is
// copied into storage of its own on the first mutable access (data(),
// values() on a non-const tensor), so a kernel that works on an input in
// place (RoPE, the projections) never writes its creator's memory.
//
// Not thread-safe for concurrent mutation (the copy on first mutable access
// included); const access from many threads is fine.
#ifndef ATTNSERVE_KERNELS_TENSOR_H_
#define ATTNSERVE_KERNELS_TENSOR_H_

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace attnserve::kernels {

// std::allocator, except that resize() leaves new elements uninitialized
// (default-initialised): for buffers whose every element is written before
// it is read, where value-initialising them would be a pass over memory for
// nothing.
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>& /*other*/) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// Floats that resize() does not zero.
using UnfilledFloats = std::vector<float, DefaultInitAllocator<float>>;

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

  // A read-only view of `data`: the product(shape) values there (4-byte
  // aligned), not owned; they must outlive the tensor and every copy of it
  // that still borrows them. Mutable access copies them first (see above).
  static Tensor View(std::vector<int64_t> shape, const float* data);
  // A writable view of `data` (as View): mutable access writes `data`
  // itself, so a kernel's output lands in its caller's buffer. Copies of the
  // tensor write the same memory.
  static Tensor MutableView(std::vector<int64_t> shape, float* data);
  // A tensor of `shape` (checked as for the zeros constructor) whose values
  // are unspecified until written: for a kernel's output that its threads
  // write in full, where zeros first would be a serial pass over all of it
  // (16 MiB at S=8192, H=8) before the parallel work starts.
  static Tensor Uninitialized(std::vector<int64_t> shape);

  const std::vector<int64_t>& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i)]; }
  int64_t size() const {
    if (borrowed_ != nullptr) return borrowed_size_;
    return static_cast<int64_t>(unfilled_.empty() ? owned_.size() : unfilled_.size());
  }
  // Whether the values live in memory the tensor does not own (a view that
  // has not been copied yet).
  bool borrowed() const { return borrowed_ != nullptr; }

  const float* data() const {
    if (borrowed_ != nullptr) return borrowed_;
    return unfilled_.empty() ? owned_.data() : unfilled_.data();
  }
  // A read-only view is copied into storage of its own first.
  float* data();
  absl::Span<const float> values() const { return absl::MakeConstSpan(data(), ValueCount()); }
  absl::Span<float> values() { return absl::MakeSpan(data(), ValueCount()); }
  // The values as a vector, leaving the tensor empty (no values, shape
  // kept): the owned storage moved out, a view's values copied.
  std::vector<float> TakeValues();

 private:
  size_t ValueCount() const { return static_cast<size_t>(size()); }

  std::vector<int64_t> shape_;
  std::vector<float> owned_;
  // Uninitialized()'s storage: owned like owned_ (copied with the tensor),
  // used instead of it when not empty.
  UnfilledFloats unfilled_;
  // A view's values (const_cast from View's: never written unless writable_).
  float* borrowed_ = nullptr;
  int64_t borrowed_size_ = 0;
  bool writable_ = false;
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
