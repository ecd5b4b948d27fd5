// Conversion between the wire messages of attnserve.v1 and the kernels' types.
// This is the only file where protobuf and kernels types meet.
//
// Requests: every tensor field that is set (message presence) becomes an entry
// of args.inputs under its spec name (q, k, v, x_q, x_kv, w_q, w_k, w_v, x,
// distances, table, pos_bias_u, pos_bias_v, w_r, rel_k, rel_v, dist_w,
// dist_v). Which tensors a method takes is left to the kernels, which reject
// extra or missing ones by name. Here the encoding of each tensor, the size
// limits and the values (every one finite) are checked, the values while
// they are copied, so callers may tell the kernels to skip their own scan
// (kernels::ComputeOptions::inputs_checked).
//
// Thread-safety: pure functions of their arguments; safe from any thread.
#ifndef ATTNSERVE_SERVER_CONVERT_H_
#define ATTNSERVE_SERVER_CONVERT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "attnserve/v1/attention.pb.h"
#include "kernels/attention.h"
#include "kernels/tensor.h"
#include "server/tensor_store.h"

namespace attnserve::server {

// Limits applied while converting a request, before any allocation, and
// where the values go.
struct ConvertLimits {
  // Largest element count of any one input tensor, and of all input tensors
  // of one request together (the --max_elements flag).
  int64_t max_elements = int64_t{1} << 28;
  // Whether float32 values may be read where they are (issue 13 item 4):
  // data, ref, and float32 raw_data on a little-endian host when 4-byte
  // aligned become read-only kernels::Tensor::Views of the request message
  // (or of the TensorStore), which must then outlive the tensors; 16-bit
  // raw_data is widened into a copy either way. False: every tensor owns a
  // copy (for tensors kept past the message, e.g. a decode session's).
  bool in_place = false;
};

// raw_data is little-endian (api.md "Tensors"); on a little-endian host
// with IEEE floats float32 raw_data is the in-memory layout.
inline constexpr bool kLittleEndianHost = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// A request tensor that is checked (encoding, shape, limits) but not yet
// decoded, so that its values can be copied once, straight to where the
// kernels read them: a slot of a merged batch's input (server/batcher.h).
// Points into the request message (and for a ref into the TensorStore),
// which must outlive it.
struct DeferredTensor {
  std::string field;                        // e.g. "q"
  std::vector<int64_t> shape;               // every dimension >= 1
  int64_t size = 0;                         // product(shape)
  const v1::Tensor* message = nullptr;      // the request's tensor
  const kernels::Tensor* stored = nullptr;  // for a ref: the loaded tensor

  // Appends the `size` values to `out` (one copy, no zero-fill first) and
  // checks that each is finite: INVALID_ARGUMENT naming the field and the
  // value's index otherwise, after which `out` holds some of them.
  absl::Status AppendTo(std::vector<float>& out) const;
  // The tensor on its own, values checked as by AppendTo: one copy, or
  // with `in_place` (ConvertLimits::in_place) a view of the message's or
  // the store's values where it can be, checked where they lie.
  absl::StatusOr<kernels::Tensor> Decode(bool in_place = false) const;
};
using DeferredTensors = std::map<std::string, DeferredTensor, std::less<>>;

// The kernel tensor of `tensor`, whose field name is `field` (e.g. "q").
// Exactly one of data, raw_data and ref must be set; raw_data holds
// little-endian values of tensor.dtype (float32, or float16 / bfloat16,
// widened exactly: attention-variants.md 6), data and ref are float32;
// shape must have every dimension >= 1 and a count that fits in int64 (for a
// ref: be empty or equal the stored shape, which must have every dimension
// >= 1). `tensors` may be null (no store: every ref is unknown); not owned.
// Errors (messages name `field`):
//   INVALID_ARGUMENT   encodings set != 1, bad shape, value or byte count not
//                      matching product(shape), a value that is not finite
//                      (`q.raw_data[5]`, `q.data[5]`), a dtype this server
//                      does not know or a 16-bit one on data or ref
//                      (`q.dtype`)
//   NOT_FOUND          ref names no tensor of `tensors`
//   RESOURCE_EXHAUSTED product(shape) > limits.max_elements
absl::StatusOr<kernels::Tensor> ToKernelTensor(const v1::Tensor& tensor, absl::string_view field,
                                               const ConvertLimits& limits,
                                               const TensorStore* tensors = nullptr);

// float32 raw_data `bytes` (little-endian; product(shape) * 4 of them, as
// the caller has checked) as a kernel tensor: a read-only view of the bytes
// themselves (no copy; they must outlive it) when the host is little-endian
// and the bytes are 4-byte aligned, else a copy (assembled byte by byte on a
// big-endian host). `little_endian_host` is the build's byte order; tests
// pass false to run the big-endian path on any host. Values are not checked.
kernels::Tensor Float32RawData(std::vector<int64_t> shape, absl::string_view bytes,
                               bool little_endian_host = kLittleEndianHost);

// How a response carries its tensors (api.md "Tensors",
// attention-variants.md 6): raw_data of `dtype` when `raw`, else data
// (float32). An explicit dtype is echoed in every response tensor's dtype.
struct OutputEncoding {
  bool raw = false;
  v1::DataType dtype = v1::DTYPE_UNSPECIFIED;  // unspecified: float32, dtype left unset
};

// The encoding a request's raw_output and output_dtype ask for.
// INVALID_ARGUMENT naming output_dtype for a value this server does not know,
// or a 16-bit one without raw_output.
absl::StatusOr<OutputEncoding> ToOutputEncoding(bool raw_output, v1::DataType output_dtype);

// The kernels' arguments for an Attend request. The variant parameters
// (num_kv_heads, kv_lengths, window, softcap) are copied as they are: the
// kernels check their values. Besides ToKernelTensor's errors:
// INVALID_ARGUMENT when no method is set, an enum holds a value this server
// does not know, or output_dtype is refused by ToOutputEncoding (checked
// here so that a request fails before compute); RESOURCE_EXHAUSTED when all input tensors
// together exceed limits.max_elements. Refs resolve in `tensors` (may be
// null; not owned).
absl::StatusOr<kernels::AttendArgs> ToAttendArgs(const v1::AttendRequest& request,
                                                 const ConvertLimits& limits,
                                                 const TensorStore* tensors = nullptr);

// As above, but every tensor is only checked, not decoded: args.inputs is
// left empty and `*deferred` (cleared first) describes the tensors instead,
// for the caller to decode where and when it needs them (a merged batch
// writes each request's q, k, v straight into its rows, and decodes the
// shared parameters once). Errors as above, but for non-finite values,
// which DeferredTensor reports when decoding.
absl::StatusOr<kernels::AttendArgs> ToAttendArgs(const v1::AttendRequest& request,
                                                 const ConvertLimits& limits,
                                                 const TensorStore* tensors,
                                                 DeferredTensors* deferred);

// The kernels' arguments for an Encode request; errors as ToAttendArgs.
absl::StatusOr<kernels::EncodeArgs> ToEncodeArgs(const v1::EncodeRequest& request,
                                                 const ConvertLimits& limits,
                                                 const TensorStore* tensors = nullptr);

// Writes `tensor` into `out` (cleared first): its shape, and its values in
// `encoding`: little-endian bytes of encoding.dtype in raw_data (16-bit types
// rounded to nearest, ties to even, overflow to infinity), or float32 in data.
void FillTensor(const kernels::Tensor& tensor, const OutputEncoding& encoding, v1::Tensor* out);

// Rows [begin, begin + count) along B of a merged batch's result as one
// request's response (cleared first), copied straight from `batch`.
void FillAttendResponseRows(const kernels::AttendResult& batch, int64_t begin, int64_t count,
                            const OutputEncoding& encoding, v1::AttendResponse* response);

// Storage for an Attend call's out straight in `response`'s out.raw_data
// (kernels::ComputeOptions::out_storage), so the engine writes the bytes
// that are sent and FillAttendResponse copies nothing: set when `encoding`
// is float32 raw_data and the host little-endian, else empty (the kernels
// allocate). When called it clears `response`, writes out's shape (and an
// explicit dtype) and sizes raw_data for the values; `response` must
// outlive the call's result.
std::function<float*(absl::Span<const int64_t>)> AttendOutStorage(const OutputEncoding& encoding,
                                                                  v1::AttendResponse* response);

// Moves `result` into `response` (cleared first): out [B,H,Sq,Dv], and probs
// [B,H,Sq,Sk] when the result has them. An out the kernels wrote into
// `response` itself (AttendOutStorage) stays where it is.
void FillAttendResponse(kernels::AttendResult&& result, const OutputEncoding& encoding,
                        v1::AttendResponse* response);

// Moves `result` into `response` (cleared first): one `outputs` entry per
// kernel output, under the same name.
void FillEncodeResponse(kernels::EncodeResult&& result, const OutputEncoding& encoding,
                        v1::EncodeResponse* response);

// ListMethods: `methods` as the kernels describe them, the server's limits and
// its name and version (e.g. "attnd 0.1.0"). Clears `response` first.
void FillListMethodsResponse(const std::vector<kernels::MethodInfo>& methods,
                             int64_t max_message_bytes, int64_t max_elements,
                             absl::string_view server, v1::ListMethodsResponse* response);

// Appends one ListMethodsResponse.tensors entry (ref, shape, dtype in the
// file) per tensor of `tensors`, in ref order.
void AddLoadedTensors(const TensorStore& tensors, v1::ListMethodsResponse* response);

// The kernels' kind of `method`, or nullopt when none is set (for metric
// labels; ToAttendArgs reports the error).
std::optional<kernels::MethodKind> MethodKindOf(const v1::PositionalMethod& method);

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_CONVERT_H_
