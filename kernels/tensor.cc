#include "kernels/tensor.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/isa.h"

namespace attnserve::kernels {

Tensor::Tensor(std::vector<int64_t> shape) : shape_(std::move(shape)) {
  int64_t count = 1;
  for (int64_t d : shape_) count *= d;
  owned_.assign(static_cast<size_t>(count), 0.0f);
}

Tensor::Tensor(std::vector<int64_t> shape, std::vector<float> data)
    : shape_(std::move(shape)), owned_(std::move(data)) {}

Tensor Tensor::View(std::vector<int64_t> shape, const float* data) {
  Tensor view = MutableView(std::move(shape), const_cast<float*>(data));
  view.writable_ = false;
  return view;
}

Tensor Tensor::MutableView(std::vector<int64_t> shape, float* data) {
  Tensor view;
  view.shape_ = std::move(shape);
  int64_t count = 1;
  for (int64_t d : view.shape_) count *= d;
  view.borrowed_ = data;
  view.borrowed_size_ = count;
  view.writable_ = true;
  return view;
}

Tensor Tensor::Uninitialized(std::vector<int64_t> shape) {
  Tensor tensor;
  tensor.shape_ = std::move(shape);
  int64_t count = 1;
  for (int64_t d : tensor.shape_) count *= d;
  tensor.unfilled_.resize(static_cast<size_t>(count));
  return tensor;
}

float* Tensor::data() {
  if (borrowed_ != nullptr && !writable_) {
    // Copy on write: the borrowed memory is its creator's (a request's
    // bytes), and stays as it arrived.
    owned_.assign(borrowed_, borrowed_ + borrowed_size_);
    borrowed_ = nullptr;
    borrowed_size_ = 0;
  }
  if (borrowed_ != nullptr) return borrowed_;
  return unfilled_.empty() ? owned_.data() : unfilled_.data();
}

std::vector<float> Tensor::TakeValues() {
  std::vector<float> values;
  if (borrowed_ != nullptr) {
    values.assign(borrowed_, borrowed_ + borrowed_size_);
    borrowed_ = nullptr;
    borrowed_size_ = 0;
  } else if (!unfilled_.empty()) {
    values.assign(unfilled_.begin(), unfilled_.end());
    unfilled_.clear();
    unfilled_.shrink_to_fit();
  } else {
    values.swap(owned_);
  }
  return values;
}

absl::StatusOr<Tensor> Tensor::Create(std::vector<int64_t> shape, std::vector<float> data,
                                      absl::string_view field) {
  absl::StatusOr<int64_t> count = CheckedElementCount(shape, field);
  if (!count.ok()) return count.status();
  if (*count != static_cast<int64_t>(data.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".data: shape ", ShapeToString(shape), " needs ", *count,
                     " values, got ", data.size()));
  }
  return Tensor(std::move(shape), std::move(data));
}

std::string ShapeToString(absl::Span<const int64_t> shape) {
  // A caller can send a shape of millions of dimensions; an error message
  // quotes a short prefix of it (a status larger than a client's metadata
  // limit would hide the error itself).
  constexpr size_t kMaxDims = 8;
  if (shape.size() <= kMaxDims) return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
  return absl::StrCat("[", absl::StrJoin(shape.subspan(0, kMaxDims), ","), ",... (",
                      shape.size(), " dimensions)]");
}

absl::StatusOr<int64_t> CheckedElementCount(absl::Span<const int64_t> shape,
                                            absl::string_view field) {
  if (shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".shape: must not be empty"));
  }
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".shape: every dimension must be >= 1, got ",
                                                     ShapeToString(shape)));
    }
    if (__builtin_mul_overflow(count, shape[i], &count)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".shape: element count of ", ShapeToString(shape), " overflows int64"));
    }
  }
  return count;
}

bool AllFinite(const float* values, int64_t n) { return Kernels().all_finite(values, n); }

}  // namespace attnserve::kernels
