#include "server/convert.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "kernels/isa.h"
#include "kernels/status_macros.h"
#include "kernels/tensor.h"
#include "server/float16.h"
#include "server/status_util.h"

namespace attnserve::server {
namespace {

// raw_data is little-endian float32 (api.md "Tensors"). On a little-endian
// host with IEEE floats that is the in-memory layout, so a memcpy converts.
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4,
              "raw_data decoding assumes IEEE-754 binary32 floats");

// One little-endian float32 of raw_data on a host of the given byte order
// (both compiled everywhere: Float32RawData runs either).
template <bool kLittleEndian>
float LoadFloat32(const char* bytes) {
  float value;
  if constexpr (kLittleEndian) {
    std::memcpy(&value, bytes, 4);
  } else {
    uint32_t word = 0;
    for (int b = 3; b >= 0; --b) {
      word = (word << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(b)]);
    }
    std::memcpy(&value, &word, 4);
  }
  return value;
}
// One little-endian float16 / bfloat16 of raw_data, widened exactly.
float LoadHalf(const char* bytes) { return HalfToFloat(LoadLittleEndian16(bytes)); }
float LoadBFloat16(const char* bytes) { return BFloat16ToFloat(LoadLittleEndian16(bytes)); }

// raw_data elements of `kBytes` bytes read as floats by `Load`, for
// vector::insert: one pass into the vector's fresh storage (the kernels'
// input buffer), with no zero-fill first and no pointer cast over char
// storage. Only what insert, std::distance and std::advance use.
template <std::ptrdiff_t kBytes, float (*Load)(const char*)>
class RawDataIterator {
 public:
  using iterator_category = std::random_access_iterator_tag;
  using value_type = float;
  using difference_type = std::ptrdiff_t;
  using pointer = const float*;
  using reference = float;

  explicit RawDataIterator(const char* bytes) : bytes_(bytes) {}
  float operator*() const { return Load(bytes_); }
  RawDataIterator& operator++() {
    bytes_ += kBytes;
    return *this;
  }
  RawDataIterator& operator--() {
    bytes_ -= kBytes;
    return *this;
  }
  RawDataIterator& operator+=(difference_type n) {
    bytes_ += kBytes * n;
    return *this;
  }
  difference_type operator-(const RawDataIterator& other) const {
    return (bytes_ - other.bytes_) / kBytes;
  }
  bool operator==(const RawDataIterator& other) const { return bytes_ == other.bytes_; }
  bool operator!=(const RawDataIterator& other) const { return bytes_ != other.bytes_; }

 private:
  const char* bytes_;
};

// Appends raw_data `bytes` read by RawDataIterator<kBytes, Load> to `out`.
template <std::ptrdiff_t kBytes, float (*Load)(const char*)>
void AppendRaw(absl::string_view bytes, std::vector<float>& out) {
  using Iterator = RawDataIterator<kBytes, Load>;
  out.insert(out.end(), Iterator(bytes.data()), Iterator(bytes.data() + bytes.size()));
}

// The wire name of a data type, for messages.
absl::string_view DataTypeName(v1::DataType dtype) {
  switch (dtype) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::DTYPE_FLOAT32: return "float32";
    case v1::DTYPE_FLOAT16: return "float16";
    case v1::DTYPE_BFLOAT16: return "bfloat16";
    default: break;
  }
  return "unknown";
}

// The bytes per element of raw_data of `dtype`: INVALID_ARGUMENT naming
// `field` (e.g. "q.dtype", "output_dtype") for a value this server does not
// know (proto3 enums are open: any int32 can arrive).
absl::StatusOr<int> ElementBytes(v1::DataType dtype, absl::string_view field) {
  switch (dtype) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::DTYPE_FLOAT32: return 4;
    case v1::DTYPE_FLOAT16:
    case v1::DTYPE_BFLOAT16: return 2;
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": unknown value ", static_cast<int>(dtype),
      " (known: 0 unspecified (float32), 1 float32, 2 float16, 3 bfloat16)"));
}

void EncodeLittleEndianFloats(absl::Span<const float> values, std::string* bytes) {
  bytes->resize(values.size() * 4);
  if constexpr (kLittleEndianHost) {
    std::memcpy(bytes->data(), values.data(), bytes->size());
  } else {
    for (size_t i = 0; i < values.size(); ++i) {
      uint32_t word = 0;
      std::memcpy(&word, &values[i], 4);
      for (size_t b = 0; b < 4; ++b) (*bytes)[4 * i + b] = static_cast<char>(word >> (8 * b));
    }
  }
}

// The index of the first value of `values` that is not finite, or -1: the
// kernels' vectorised scan over blocks, then a search only in a failing one.
int64_t FirstNonFinite(absl::Span<const float> values) {
  constexpr size_t kBlock = size_t{1} << 16;
  const float* data = values.data();
  for (size_t begin = 0; begin < values.size(); begin += kBlock) {
    const size_t end = std::min(values.size(), begin + kBlock);
    if (kernels::AllFinite(data + begin, static_cast<int64_t>(end - begin))) continue;
    for (size_t i = begin; i < end; ++i) {
      if (!std::isfinite(data[i])) return static_cast<int64_t>(i);
    }
  }
  return -1;
}

// The loaded tensor that `tensor.ref` names, checked as an inline one would be.
absl::StatusOr<DeferredTensor> CheckRef(const v1::Tensor& tensor, absl::string_view field,
                                        const TensorStore* tensors) {
  const StoredTensor* stored = tensors == nullptr ? nullptr : tensors->Find(tensor.ref());
  if (stored == nullptr) {
    return absl::NotFoundError(absl::StrCat(field, ".ref: no tensor named ",
                                            QuoteCallerText(tensor.ref()),
                                            " is loaded on this server"));
  }
  const std::vector<int64_t>& shape = stored->tensor.shape();
  // An empty shape takes the stored one; a given one must agree, so that a
  // caller who states what they expect learns of a changed file.
  if (tensor.shape_size() > 0 && !std::equal(tensor.shape().begin(), tensor.shape().end(),
                                             shape.begin(), shape.end())) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".shape: must be empty or equal the shape of ref ",
                     QuoteCallerText(tensor.ref()), " ", kernels::ShapeToString(shape), ", got ",
                     kernels::ShapeToString(tensor.shape())));
  }
  // Files may hold scalars and empty tensors; the wire cannot.
  const absl::StatusOr<int64_t> count = kernels::CheckedElementCount(shape, field);
  if (!count.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".ref: tensor ", QuoteCallerText(tensor.ref()), " has shape ",
                     kernels::ShapeToString(shape),
                     "; a request tensor needs at least one dimension, each >= 1"));
  }
  DeferredTensor checked;
  checked.shape = shape;
  checked.size = *count;
  checked.stored = &stored->tensor;
  return checked;
}

// Validates `tensor` without allocating for its values.
absl::StatusOr<DeferredTensor> CheckTensor(const v1::Tensor& tensor, absl::string_view field,
                                           const ConvertLimits& limits,
                                           const TensorStore* tensors) {
  std::vector<std::string> encodings;
  if (tensor.data_size() > 0) encodings.emplace_back("data");
  if (!tensor.raw_data().empty()) encodings.emplace_back("raw_data");
  if (!tensor.ref().empty()) encodings.emplace_back("ref");
  if (encodings.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": exactly one of data, raw_data, ref must be set (got ",
                     encodings.empty() ? "none" : absl::StrJoin(encodings, ", "), ")"));
  }
  // attention-variants.md 6: dtype describes raw_data; data and ref are float32.
  ATTN_ASSIGN_OR_RETURN(const int element_bytes,
                        ElementBytes(tensor.dtype(), absl::StrCat(field, ".dtype")));
  if (element_bytes != 4 && tensor.raw_data().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".dtype: ", DataTypeName(tensor.dtype()), " describes raw_data only, but ",
        tensor.data_size() > 0 ? "data" : "ref",
        " is set (data and ref are float32: send the values as raw_data, or leave dtype unset)"));
  }
  DeferredTensor checked;
  if (!tensor.ref().empty()) {
    ATTN_ASSIGN_OR_RETURN(checked, CheckRef(tensor, field, tensors));
  } else {
    ATTN_ASSIGN_OR_RETURN(checked.size, kernels::CheckedElementCount(tensor.shape(), field));
    checked.shape.assign(tensor.shape().begin(), tensor.shape().end());
  }
  checked.field = std::string(field);
  checked.message = &tensor;
  const int64_t count = checked.size;
  if (tensor.data_size() > 0 && tensor.data_size() != count) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".data: shape ",
                                                   kernels::ShapeToString(tensor.shape()),
                                                   " needs ", count, " values, got ",
                                                   tensor.data_size()));
  }
  if (!tensor.raw_data().empty()) {
    int64_t bytes = 0;
    const bool overflow = __builtin_mul_overflow(count, int64_t{element_bytes}, &bytes);
    if (overflow || static_cast<int64_t>(tensor.raw_data().size()) != bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".raw_data: shape ", kernels::ShapeToString(tensor.shape()), " needs ",
          overflow ? absl::StrCat(element_bytes, "*", count) : absl::StrCat(bytes), " bytes (",
          element_bytes, " per ", DataTypeName(tensor.dtype()),
          element_bytes == 4 ? "" : absl::StrCat(", as ", field, ".dtype says"), "), got ",
          tensor.raw_data().size()));
    }
  }
  if (count > limits.max_elements) {
    return absl::ResourceExhaustedError(
        absl::StrCat(field, ": ", count, " elements exceed --max_elements=", limits.max_elements));
  }
  return checked;
}

// Converts a request's tensors into a TensorMap (or, with `deferred`, only
// checks them into it) while keeping the sum of their element counts within
// limits.max_elements.
class InputCollector {
 public:
  InputCollector(const ConvertLimits& limits, const TensorStore* tensors,
                 kernels::TensorMap* inputs, DeferredTensors* deferred = nullptr)
      : limits_(limits), tensors_(tensors), inputs_(inputs), deferred_(deferred) {}

  // Adds `tensor` under `name` when the field is set (`present`).
  absl::Status Add(absl::string_view name, bool present, const v1::Tensor& tensor) {
    if (!present) return absl::OkStatus();
    ATTN_ASSIGN_OR_RETURN(DeferredTensor checked, CheckTensor(tensor, name, limits_, tensors_));
    const int64_t count = checked.size;
    // Both are <= max_elements here, so the sum cannot overflow.
    if (count > limits_.max_elements - total_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          name, ": the request's input tensors total more than --max_elements=",
          limits_.max_elements, " elements (", total_, " before this one's ", count, ")"));
    }
    total_ += count;
    if (deferred_ != nullptr) {
      deferred_->insert_or_assign(std::string(name), std::move(checked));
      return absl::OkStatus();
    }
    ATTN_ASSIGN_OR_RETURN(kernels::Tensor decoded, checked.Decode(limits_.in_place));
    inputs_->insert_or_assign(std::string(name), std::move(decoded));
    return absl::OkStatus();
  }

 private:
  const ConvertLimits& limits_;
  const TensorStore* const tensors_;
  kernels::TensorMap* inputs_;
  DeferredTensors* const deferred_;
  int64_t total_ = 0;
};

absl::StatusOr<kernels::RopeLayout> ToRopeLayout(v1::RopeLayout layout) {
  switch (layout) {
    case v1::ROPE_LAYOUT_UNSPECIFIED:
    case v1::ROPE_LAYOUT_INTERLEAVED: return kernels::RopeLayout::kInterleaved;
    case v1::ROPE_LAYOUT_HALF: return kernels::RopeLayout::kHalf;
    default: break;  // proto3 enums are open: any int32 can arrive.
  }
  return absl::InvalidArgumentError(absl::StrCat("method.rope.layout: unknown value ",
                                                 static_cast<int>(layout),
                                                 " (known: 0 unspecified, 1 interleaved, 2 half)"));
}

absl::StatusOr<kernels::RopeScaling> ToRopeScaling(v1::RopeScaling scaling) {
  switch (scaling) {
    case v1::ROPE_SCALING_UNSPECIFIED:
    case v1::ROPE_SCALING_NONE: return kernels::RopeScaling::kNone;
    case v1::ROPE_SCALING_LINEAR: return kernels::RopeScaling::kLinear;
    case v1::ROPE_SCALING_NTK: return kernels::RopeScaling::kNtk;
    case v1::ROPE_SCALING_YARN: return kernels::RopeScaling::kYarn;
    case v1::ROPE_SCALING_LLAMA3: return kernels::RopeScaling::kLlama3;
    case v1::ROPE_SCALING_DYNAMIC_NTK: return kernels::RopeScaling::kDynamicNtk;
    default: break;  // proto3 enums are open: any int32 can arrive.
  }
  return absl::InvalidArgumentError(
      absl::StrCat("method.rope.scaling: unknown value ", static_cast<int>(scaling),
                   " (known: 0 unspecified, 1 none, 2 linear, 3 ntk, 4 yarn, 5 llama3, "
                   "6 dynamic_ntk)"));
}

// The method, its scalar parameters and its tensors (into `inputs`).
absl::Status ConvertMethod(const v1::PositionalMethod& method, kernels::MethodKind* kind,
                           kernels::MethodParams* params, InputCollector* inputs) {
  switch (method.kind_case()) {
    case v1::PositionalMethod::kNone: *kind = kernels::MethodKind::kNone; return absl::OkStatus();
    case v1::PositionalMethod::kSinusoidal: {
      *kind = kernels::MethodKind::kSinusoidal;
      const v1::Sinusoidal& m = method.sinusoidal();
      if (m.has_base()) params->base = m.base();
      return absl::OkStatus();
    }
    case v1::PositionalMethod::kLearned: {
      *kind = kernels::MethodKind::kLearned;
      const v1::Learned& m = method.learned();
      return inputs->Add("table", m.has_table(), m.table());
    }
    case v1::PositionalMethod::kRope: {
      *kind = kernels::MethodKind::kRope;
      const v1::Rope& m = method.rope();
      ATTN_ASSIGN_OR_RETURN(params->rope_layout, ToRopeLayout(m.layout()));
      ATTN_ASSIGN_OR_RETURN(params->rope_scaling, ToRopeScaling(m.scaling()));
      if (m.has_base()) params->base = m.base();
      if (m.has_scaling_factor()) params->scaling_factor = m.scaling_factor();
      if (m.has_rotary_dim()) params->rotary_dim = m.rotary_dim();
      if (m.has_original_max_position()) {
        params->original_max_position = m.original_max_position();
      }
      if (m.has_beta_fast()) params->beta_fast = m.beta_fast();
      if (m.has_beta_slow()) params->beta_slow = m.beta_slow();
      if (m.has_attention_factor()) params->attention_factor = m.attention_factor();
      if (m.has_low_freq_factor()) params->low_freq_factor = m.low_freq_factor();
      if (m.has_high_freq_factor()) params->high_freq_factor = m.high_freq_factor();
      return absl::OkStatus();
    }
    case v1::PositionalMethod::kTransformerXl: {
      *kind = kernels::MethodKind::kTransformerXL;
      const v1::TransformerXL& m = method.transformer_xl();
      params->d_rel = m.d_rel();
      if (m.has_base()) params->base = m.base();
      ATTN_RETURN_IF_ERROR(inputs->Add("pos_bias_u", m.has_pos_bias_u(), m.pos_bias_u()));
      ATTN_RETURN_IF_ERROR(inputs->Add("pos_bias_v", m.has_pos_bias_v(), m.pos_bias_v()));
      return inputs->Add("w_r", m.has_w_r(), m.w_r());
    }
    case v1::PositionalMethod::kShaw: {
      *kind = kernels::MethodKind::kShaw;
      const v1::Shaw& m = method.shaw();
      if (m.has_max_relative_position()) {
        params->max_relative_position = m.max_relative_position();
      }
      ATTN_RETURN_IF_ERROR(inputs->Add("rel_k", m.has_rel_k(), m.rel_k()));
      return inputs->Add("rel_v", m.has_rel_v(), m.rel_v());
    }
    case v1::PositionalMethod::kAlibi: {
      *kind = kernels::MethodKind::kAlibi;
      const v1::Alibi& m = method.alibi();
      return inputs->Add("slopes", m.has_slopes(), m.slopes());
    }
    case v1::PositionalMethod::kDaTransformer: {
      *kind = kernels::MethodKind::kDaTransformer;
      const v1::DaTransformer& m = method.da_transformer();
      ATTN_RETURN_IF_ERROR(inputs->Add("dist_w", m.has_dist_w(), m.dist_w()));
      return inputs->Add("dist_v", m.has_dist_v(), m.dist_v());
    }
    case v1::PositionalMethod::KIND_NOT_SET: break;
  }
  return absl::InvalidArgumentError(
      "method: not set; choose one of none, sinusoidal, learned, rope, transformer_xl, shaw, "
      "alibi, da_transformer");
}

// The error for value `bad` of `tensor` (a DeferredTensor's), which is
// not finite.
absl::Status NonFiniteError(const DeferredTensor& tensor, int64_t bad, float value) {
  const v1::Tensor& message = *tensor.message;
  if (tensor.stored != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(tensor.field, ".ref: value ", bad, " of ",
                                                   QuoteCallerText(message.ref()),
                                                   " must be finite, got ", value));
  }
  if (message.data_size() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(tensor.field, ".data[", bad, "]: must be finite, got ", value));
  }
  // Widening keeps NaN and infinity, so the index is the raw_data element's.
  return absl::InvalidArgumentError(absl::StrCat(tensor.field, ".raw_data[", bad,
                                                 "]: must be finite, got ", value, " (",
                                                 DataTypeName(message.dtype()), ")"));
}

}  // namespace

kernels::Tensor Float32RawData(std::vector<int64_t> shape, absl::string_view bytes,
                               bool little_endian_host) {
  if (little_endian_host && reinterpret_cast<uintptr_t>(bytes.data()) % alignof(float) == 0) {
    return kernels::Tensor::View(std::move(shape), reinterpret_cast<const float*>(bytes.data()));
  }
  std::vector<float> values;
  values.reserve(bytes.size() / 4);
  if (little_endian_host) {
    AppendRaw<4, LoadFloat32<true>>(bytes, values);
  } else {
    AppendRaw<4, LoadFloat32<false>>(bytes, values);
  }
  return kernels::Tensor(std::move(shape), std::move(values));
}

namespace {

// Widens n float16 / bfloat16 (`dtype`) little-endian values at `bytes` into
// dst, exactly, and checks them block by block while a block is in cache:
// the index of the first that is not finite, or -1. float16 goes through
// the ISA's conversion instruction where it has one
// (IsaKernels::widen_float16), else (and bfloat16, a shift) through loops
// the compiler vectorises.
int64_t WidenChecked16(v1::DataType dtype, const char* bytes, int64_t n, float* dst) {
  constexpr int64_t kBlock = int64_t{1} << 16;  // 256 KiB of floats: in L2
  const auto widen_float16 = kLittleEndianHost ? kernels::Kernels().widen_float16 : nullptr;
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t count = std::min(kBlock, n - begin);
    const char* src = bytes + 2 * begin;
    float* out = dst + begin;
    if (dtype == v1::DTYPE_FLOAT16 && widen_float16 != nullptr) {
      widen_float16(src, count, out);
    } else if (dtype == v1::DTYPE_FLOAT16) {
      for (int64_t i = 0; i < count; ++i) out[i] = LoadHalf(src + 2 * i);
    } else {
      for (int64_t i = 0; i < count; ++i) out[i] = LoadBFloat16(src + 2 * i);
    }
    const int64_t bad = FirstNonFinite(absl::MakeConstSpan(out, static_cast<size_t>(count)));
    if (bad >= 0) return begin + bad;
  }
  return -1;
}

bool IsRaw16(const v1::Tensor& message) {
  return message.data_size() == 0 &&
         (message.dtype() == v1::DTYPE_FLOAT16 || message.dtype() == v1::DTYPE_BFLOAT16);
}

}  // namespace

absl::Status DeferredTensor::AppendTo(std::vector<float>& out) const {
  const size_t begin = out.size();
  if (stored == nullptr && IsRaw16(*message)) {
    // Zeroed by resize first, but then widened by the ISA's instruction: a
    // merged batch's path (alone, Decode widens into unfilled storage).
    out.resize(begin + static_cast<size_t>(size));
    const int64_t bad = WidenChecked16(message->dtype(), message->raw_data().data(), size,
                                       out.data() + begin);
    if (bad < 0) return absl::OkStatus();
    return NonFiniteError(*this, bad, out[begin + static_cast<size_t>(bad)]);
  }
  if (stored != nullptr) {
    out.insert(out.end(), stored->values().begin(), stored->values().end());
  } else if (message->data_size() > 0) {
    // Pointers, not the field's iterators: insert then copies with memmove.
    const float* data = message->data().data();
    out.insert(out.end(), data, data + message->data_size());
  } else {
    // float32 (CheckTensor refused every other value; 16-bit ones are above).
    AppendRaw<4, LoadFloat32<kLittleEndianHost>>(message->raw_data(), out);
  }
  // Checked here, while the values are in cache, so that the kernels need
  // not scan them again (ComputeOptions::inputs_checked).
  const int64_t bad = FirstNonFinite(absl::MakeConstSpan(out).subspan(begin));
  if (bad < 0) return absl::OkStatus();
  return NonFiniteError(*this, bad, out[begin + static_cast<size_t>(bad)]);
}

absl::StatusOr<kernels::Tensor> DeferredTensor::Decode(bool in_place) const {
  if (stored == nullptr && IsRaw16(*message)) {
    // 16-bit values are widened straight into the kernels' tensor: that one
    // pass is their conversion (no zero-fill before it).
    kernels::Tensor tensor = kernels::Tensor::Uninitialized(shape);
    float* const values = tensor.data();
    const int64_t bad = WidenChecked16(message->dtype(), message->raw_data().data(), size, values);
    if (bad < 0) return tensor;
    return NonFiniteError(*this, bad, values[bad]);
  }
  if (!in_place) {
    std::vector<float> values;
    values.reserve(static_cast<size_t>(size));
    ATTN_RETURN_IF_ERROR(AppendTo(values));
    return kernels::Tensor(shape, std::move(values));
  }
  kernels::Tensor tensor;
  if (stored != nullptr) {
    // The store lives as long as the server and is never written.
    tensor = kernels::Tensor::View(shape, stored->data());
  } else if (message->data_size() > 0) {
    tensor = kernels::Tensor::View(shape, message->data().data());
  } else {
    tensor = Float32RawData(shape, message->raw_data());
  }
  // The one pass over the values that converting has left: the spec's
  // finite check, where they lie.
  // Through a const reference: mutable access would copy a view.
  const absl::Span<const float> values = std::as_const(tensor).values();
  const int64_t bad = FirstNonFinite(values);
  if (bad < 0) return tensor;
  return NonFiniteError(*this, bad, values[static_cast<size_t>(bad)]);
}

absl::StatusOr<kernels::Tensor> ToKernelTensor(const v1::Tensor& tensor, absl::string_view field,
                                               const ConvertLimits& limits,
                                               const TensorStore* tensors) {
  ATTN_ASSIGN_OR_RETURN(const DeferredTensor checked, CheckTensor(tensor, field, limits, tensors));
  return checked.Decode();
}

absl::StatusOr<OutputEncoding> ToOutputEncoding(bool raw_output, v1::DataType output_dtype) {
  ATTN_ASSIGN_OR_RETURN(const int element_bytes, ElementBytes(output_dtype, "output_dtype"));
  if (element_bytes != 4 && !raw_output) {
    return absl::InvalidArgumentError(
        absl::StrCat("output_dtype: ", DataTypeName(output_dtype),
                     " needs raw_output (data is float32); set raw_output or leave "
                     "output_dtype unset"));
  }
  return OutputEncoding{raw_output, output_dtype};
}

absl::StatusOr<kernels::AttendArgs> ToAttendArgs(const v1::AttendRequest& request,
                                                 const ConvertLimits& limits,
                                                 const TensorStore* tensors) {
  return ToAttendArgs(request, limits, tensors, nullptr);
}

absl::StatusOr<kernels::AttendArgs> ToAttendArgs(const v1::AttendRequest& request,
                                                 const ConvertLimits& limits,
                                                 const TensorStore* tensors,
                                                 DeferredTensors* deferred) {
  kernels::AttendArgs args;
  if (deferred != nullptr) deferred->clear();
  InputCollector inputs(limits, tensors, &args.inputs, deferred);
  // The method first: "method: not set" is the most basic mistake to report.
  ATTN_RETURN_IF_ERROR(ConvertMethod(request.method(), &args.method, &args.params, &inputs));
  ATTN_RETURN_IF_ERROR(inputs.Add("q", request.has_q(), request.q()));
  ATTN_RETURN_IF_ERROR(inputs.Add("k", request.has_k(), request.k()));
  ATTN_RETURN_IF_ERROR(inputs.Add("v", request.has_v(), request.v()));
  ATTN_RETURN_IF_ERROR(inputs.Add("x_q", request.has_x_q(), request.x_q()));
  ATTN_RETURN_IF_ERROR(inputs.Add("x_kv", request.has_x_kv(), request.x_kv()));
  ATTN_RETURN_IF_ERROR(inputs.Add("w_q", request.has_w_q(), request.w_q()));
  ATTN_RETURN_IF_ERROR(inputs.Add("w_k", request.has_w_k(), request.w_k()));
  ATTN_RETURN_IF_ERROR(inputs.Add("w_v", request.has_w_v(), request.w_v()));
  args.num_heads = request.num_heads();
  args.causal = request.causal();
  if (request.has_scale()) args.scale = request.scale();
  if (request.has_query_offset()) args.query_offset = request.query_offset();
  args.return_probs = request.return_probs();
  // attention-variants.md 1-5: mapped as they are; the kernels check their
  // values (ranges, H % H_kv) like every other parameter's.
  args.num_kv_heads = request.num_kv_heads();
  args.kv_lengths.assign(request.kv_lengths().begin(), request.kv_lengths().end());
  if (request.has_window()) args.window = request.window();
  if (request.has_softcap()) args.softcap = request.softcap();
  ATTN_RETURN_IF_ERROR(ToOutputEncoding(request.raw_output(), request.output_dtype()).status());
  return args;
}

absl::StatusOr<kernels::EncodeArgs> ToEncodeArgs(const v1::EncodeRequest& request,
                                                 const ConvertLimits& limits,
                                                 const TensorStore* tensors) {
  kernels::EncodeArgs args;
  InputCollector inputs(limits, tensors, &args.inputs);
  ATTN_RETURN_IF_ERROR(ConvertMethod(request.method(), &args.method, &args.params, &inputs));
  ATTN_RETURN_IF_ERROR(inputs.Add("x", request.has_x(), request.x()));
  ATTN_RETURN_IF_ERROR(inputs.Add("distances", request.has_distances(), request.distances()));
  args.offset = request.offset();
  args.sq = request.sq();
  args.sk = request.sk();
  if (request.has_query_offset()) args.query_offset = request.query_offset();
  args.num_heads = request.num_heads();
  ATTN_RETURN_IF_ERROR(ToOutputEncoding(request.raw_output(), request.output_dtype()).status());
  return args;
}

namespace {

void FillValues(absl::Span<const float> values, const OutputEncoding& encoding,
                v1::Tensor* out) {
  // An explicit output_dtype is echoed in every tensor; unset stays unset.
  if (encoding.raw && encoding.dtype != v1::DTYPE_UNSPECIFIED) out->set_dtype(encoding.dtype);
  if (encoding.raw && encoding.dtype == v1::DTYPE_FLOAT16) {
    out->mutable_raw_data()->resize(values.size() * 2);
    NarrowToHalf(values.data(), values.size(), out->mutable_raw_data()->data());
  } else if (encoding.raw && encoding.dtype == v1::DTYPE_BFLOAT16) {
    out->mutable_raw_data()->resize(values.size() * 2);
    NarrowToBFloat16(values.data(), values.size(), out->mutable_raw_data()->data());
  } else if (encoding.raw) {
    EncodeLittleEndianFloats(values, out->mutable_raw_data());
  } else {
    out->mutable_data()->Reserve(static_cast<int>(values.size()));
    out->mutable_data()->Add(values.begin(), values.end());
  }
}

// Rows [begin, begin + count) of `tensor` (rank >= 1) along dimension 0.
void FillTensorRows(const kernels::Tensor& tensor, int64_t begin, int64_t count,
                    const OutputEncoding& encoding, v1::Tensor* out) {
  out->Clear();
  out->mutable_shape()->Add(tensor.shape().begin(), tensor.shape().end());
  out->set_shape(0, count);
  const size_t row = static_cast<size_t>(tensor.size() / tensor.dim(0));
  FillValues(absl::MakeConstSpan(tensor.values())
                 .subspan(static_cast<size_t>(begin) * row, static_cast<size_t>(count) * row),
             encoding, out);
}

}  // namespace

void FillTensor(const kernels::Tensor& tensor, const OutputEncoding& encoding, v1::Tensor* out) {
  out->Clear();
  out->mutable_shape()->Add(tensor.shape().begin(), tensor.shape().end());
  FillValues(tensor.values(), encoding, out);
}

void FillAttendResponseRows(const kernels::AttendResult& batch, int64_t begin, int64_t count,
                            const OutputEncoding& encoding, v1::AttendResponse* response) {
  response->Clear();
  FillTensorRows(batch.out, begin, count, encoding, response->mutable_out());
  if (batch.probs.has_value()) {
    FillTensorRows(*batch.probs, begin, count, encoding, response->mutable_probs());
  }
}

std::function<float*(absl::Span<const int64_t>)> AttendOutStorage(const OutputEncoding& encoding,
                                                                  v1::AttendResponse* response) {
  const bool float32 =
      encoding.dtype == v1::DTYPE_UNSPECIFIED || encoding.dtype == v1::DTYPE_FLOAT32;
  if (!kLittleEndianHost || !encoding.raw || !float32) return nullptr;
  return [encoding, response](absl::Span<const int64_t> shape) -> float* {
    response->Clear();
    v1::Tensor* out = response->mutable_out();
    out->mutable_shape()->Add(shape.begin(), shape.end());
    if (encoding.dtype != v1::DTYPE_UNSPECIFIED) out->set_dtype(encoding.dtype);
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    // Zero-filled, as the kernels' own output would be.
    std::string* bytes = out->mutable_raw_data();
    bytes->resize(count * sizeof(float));
    if (reinterpret_cast<uintptr_t>(bytes->data()) % alignof(float) != 0) {
      // Never seen (std::string's storage is malloc's), but then the
      // kernels allocate and FillAttendResponse copies.
      response->Clear();
      return nullptr;
    }
    return reinterpret_cast<float*>(bytes->data());
  };
}

void FillAttendResponse(kernels::AttendResult&& result, const OutputEncoding& encoding,
                        v1::AttendResponse* response) {
  // Written by the engine into the response itself (AttendOutStorage).
  const bool out_in_place =
      result.out.borrowed() && response->has_out() &&
      result.out.data() == reinterpret_cast<const float*>(response->out().raw_data().data());
  if (out_in_place) {
    response->clear_probs();
  } else {
    response->Clear();
    FillTensor(result.out, encoding, response->mutable_out());
  }
  if (result.probs.has_value()) FillTensor(*result.probs, encoding, response->mutable_probs());
  result = kernels::AttendResult();  // Release the kernel buffers now, not at the caller.
}

void FillEncodeResponse(kernels::EncodeResult&& result, const OutputEncoding& encoding,
                        v1::EncodeResponse* response) {
  response->Clear();
  auto& outputs = *response->mutable_outputs();
  for (const auto& [name, tensor] : result.outputs) FillTensor(tensor, encoding, &outputs[name]);
  result.outputs.clear();
}

void FillListMethodsResponse(const std::vector<kernels::MethodInfo>& methods,
                             int64_t max_message_bytes, int64_t max_elements,
                             absl::string_view server, v1::ListMethodsResponse* response) {
  response->Clear();
  for (const kernels::MethodInfo& method : methods) {
    v1::MethodInfo* info = response->add_methods();
    info->set_name(method.name);
    info->set_description(method.description);
    for (const kernels::ParameterInfo& param : method.parameters) {
      v1::ParameterInfo* p = info->add_parameters();
      p->set_name(param.name);
      p->set_type(param.type);
      p->set_default_value(param.default_value);
      p->set_rule(param.rule);
      for (const std::string& op : param.ops) p->add_ops(op);
    }
    // The response encoding is the server's, not a kernel parameter
    // (attention-variants.md 6); for every op the method has.
    v1::ParameterInfo* output_dtype = info->add_parameters();
    output_dtype->set_name("output_dtype");
    output_dtype->set_type("enum");
    output_dtype->set_default_value("float32");
    output_dtype->set_rule(
        "float32, float16 or bfloat16: the type of every response tensor's raw_data (round to "
        "nearest even, overflow to infinity); float16 and bfloat16 need raw_output");
    const bool has_encode =
        std::any_of(method.parameters.begin(), method.parameters.end(),
                    [](const kernels::ParameterInfo& param) {
                      return std::find(param.ops.begin(), param.ops.end(), "encode") !=
                             param.ops.end();
                    });
    if (has_encode) output_dtype->add_ops("encode");
    output_dtype->add_ops("attend");
  }
  response->mutable_limits()->set_max_message_bytes(max_message_bytes);
  response->mutable_limits()->set_max_elements(max_elements);
  response->set_server(std::string(server));
}

void AddLoadedTensors(const TensorStore& tensors, v1::ListMethodsResponse* response) {
  for (const StoredTensor& stored : tensors.tensors()) {
    v1::LoadedTensor* loaded = response->add_tensors();
    loaded->set_ref(stored.ref);
    loaded->mutable_shape()->Add(stored.tensor.shape().begin(), stored.tensor.shape().end());
    loaded->set_dtype(stored.dtype);
  }
}

std::optional<kernels::MethodKind> MethodKindOf(const v1::PositionalMethod& method) {
  switch (method.kind_case()) {
    case v1::PositionalMethod::kNone: return kernels::MethodKind::kNone;
    case v1::PositionalMethod::kSinusoidal: return kernels::MethodKind::kSinusoidal;
    case v1::PositionalMethod::kLearned: return kernels::MethodKind::kLearned;
    case v1::PositionalMethod::kRope: return kernels::MethodKind::kRope;
    case v1::PositionalMethod::kTransformerXl: return kernels::MethodKind::kTransformerXL;
    case v1::PositionalMethod::kShaw: return kernels::MethodKind::kShaw;
    case v1::PositionalMethod::kAlibi: return kernels::MethodKind::kAlibi;
    case v1::PositionalMethod::kDaTransformer: return kernels::MethodKind::kDaTransformer;
    case v1::PositionalMethod::KIND_NOT_SET: break;
  }
  return std::nullopt;
}

}  // namespace attnserve::server
