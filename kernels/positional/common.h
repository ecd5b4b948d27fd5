// Validation and construction shared by the positional methods: scale and
// query_offset defaults, shape checks with field-naming messages, the q/k/v
// problem, and the projections of the absolute methods.
//
// Every function is pure; errors are INVALID_ARGUMENT unless stated.
#ifndef ATTNSERVE_KERNELS_POSITIONAL_COMMON_H_
#define ATTNSERVE_KERNELS_POSITIONAL_COMMON_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/attention.h"
#include "kernels/positional/method.h"
#include "kernels/tensor.h"

namespace attnserve::kernels {

// scale: unset -> 1/sqrt(d); set -> must be finite (any sign).
absl::StatusOr<double> ResolveScale(std::optional<double> scale, int64_t d);

// The largest explicit query_offset: positions stay exact in double.
inline constexpr int64_t kMaxQueryOffset = int64_t{1} << 53;

// query_offset: unset -> sk - sq; the result must be >= 0 (positional-methods.md 1.2)
// and <= kMaxQueryOffset (a project rule).
absl::StatusOr<int64_t> ResolveQueryOffset(std::optional<int64_t> query_offset, int64_t sq,
                                           int64_t sk);

// Encode's offset (the position of row 0): must be in 0 .. kMaxQueryOffset,
// so that offset + s is exact in double and cannot overflow int64.
absl::StatusOr<int64_t> ResolveOffset(int64_t offset);

// A finite value > 0 (NaN, inf, 0, negative are rejected); unset -> fallback.
absl::StatusOr<double> ResolvePositive(std::optional<double> value, double fallback,
                                       absl::string_view name);

// The tensor's rank must be `rank`; `layout` describes the expected shape in
// the message, e.g. "[B,H,Sq,D]".
absl::Status ExpectRank(const Tensor& t, absl::string_view name, int rank,
                        absl::string_view layout);

// One named dimension of a tensor must equal `expected`; the message shows
// `expected_text` (e.g. "[B=2,H=4,Sk,D=16] to match q") and the shape got.
absl::Status ExpectDim(const Tensor& t, absl::string_view name, int axis, int64_t expected,
                       absl::string_view expected_text);

// RESOURCE_EXHAUSTED when the product of `shape` overflows or exceeds
// options.max_elements; `what` names the tensor.
absl::Status CheckOutputSize(std::initializer_list<int64_t> shape, absl::string_view what,
                             const ComputeOptions& options);

// One tensor of a call's result, for CheckResultSize.
struct ResultTensor {
  absl::string_view name;
  std::vector<int64_t> shape;
};

// Before any compute: RESOURCE_EXHAUSTED when one of `tensors` is above
// options.max_elements (as CheckOutputSize), or all of them together hold
// more than options.max_result_bytes (4 bytes per value: what a response
// message carries of them, raw_data or packed repeated float alike).
absl::Status CheckResultSize(std::initializer_list<ResultTensor> tensors,
                             const ComputeOptions& options);

// CheckResultSize for Attend's out [B,H,Sq,Dv] and, with return_probs,
// probs [B,H,Sq,Sk]: before any projection or other compute.
absl::Status CheckAttendResult(int64_t batch, int64_t heads, int64_t sq, int64_t sk, int64_t dv,
                               bool return_probs, const ComputeOptions& options);

// CANCELLED once options.cancelled is set (the kernels poll it between rows
// or blocks), else OK.
bool IsCancelled(const ComputeOptions& options);
absl::Status CheckCancelled(const ComputeOptions& options);

// For the methods on per-head q, k, v: validates their shapes (k and v with
// H_kv heads, H % H_kv == 0), num_heads and num_kv_heads, resolves scale,
// query_offset and the variants (ResolveVariants), and moves q, k, v into
// the problem.
absl::StatusOr<AttentionProblem> TakeQkvProblem(AttendArgs& args, const ComputeOptions& options);

// attention-variants.md 2, 3, 5: checks args.kv_lengths (empty or `batch`
// values in 1 .. sk), args.window (>= 1) and args.softcap (finite, > 0),
// INVALID_ARGUMENT naming the field, and sets them on `problem`.
absl::Status ResolveVariants(const AttendArgs& args, int64_t batch, int64_t sk,
                             AttentionProblem& problem);

// The absolute methods (sinusoidal, learned) take inputs before projection.
struct ProjectionGeometry {
  int64_t batch = 0, sq = 0, sk = 0, d_model = 0, heads = 0, d = 0, dv = 0;
  int64_t kv_heads = 0;  // H_kv of w_k, w_v: num_kv_heads, or heads when unset
  int64_t query_offset = 0;
};

// Validates x_q, x_kv, w_q, w_k, w_v, num_heads and num_kv_heads
// (positional-methods.md 2.2, attention-variants.md 1: w_k [d_model, H_kv*D],
// w_v [d_model, H_kv*Dv]) and the variants (ResolveVariants).
absl::StatusOr<ProjectionGeometry> CheckProjectionInputs(const AttendArgs& args,
                                                         const ComputeOptions& options);

// Adds the encoding of positions first .. first + count - 1 to `count`
// consecutive rows of d_model floats at x (in place). May run its own
// OpenMP loop with up to options.threads threads.
using AddPositions =
    std::function<void(int64_t first, int64_t count, float* x, const ComputeOptions& options)>;

// q = (x_q + P) @ w_q, k = (x_kv + P) @ w_k, v = (x_kv + P) @ w_v as oneDNN
// matmuls over blocks of rows, with heads interleaved ([B, S, H*D]: column
// h*D+e is head h, feature e; k and v with H_kv heads). Query row i has position query_offset + i, key
// row j position j. Consumes x_q and x_kv: P is added in place, and q and k
// are written over their storage block by block when H*D <= d_model (v, and
// q or k otherwise, get new buffers), so the extra memory is about one of
// q, k, v. INTERNAL if oneDNN fails.
absl::StatusOr<AttentionProblem> ProjectWithPositions(AttendArgs& args,
                                                      const ProjectionGeometry& geometry,
                                                      const AddPositions& add_positions,
                                                      const ComputeOptions& options);

// score = scale * q.k: the modifier of every method without a score term.
class ScaledDotProduct : public ScoreModifier {
 public:
  explicit ScaledDotProduct(double scale) : scale_(static_cast<float>(scale)) {}
  bool scale_only() const override { return true; }
  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override;

 private:
  const float scale_;
};

// Products of query-side rows with the rows of a table, for a window of
// table rows: Shaw's q_i . rel_k[t] over relative positions, and
// Transformer-XL's W_r[h] (q_i + v). The table is packed once
// (transposed into 16-row panels for the engine's micro-kernel); const methods
// are thread-safe.
class RelativeTable {
 public:
  // table: `count` rows of `width` floats, row-major (copied).
  RelativeTable(const float* table, int64_t count, int64_t width);

  // Table rows base .. base + ld - 1: a window covering rows first .. last
  // (0 <= first <= last < count), whole panels.
  struct Window {
    int64_t base = 0, ld = 0;
  };
  Window WindowOf(int64_t first, int64_t last) const;
  // An upper bound of WindowOf(...).ld over windows of `span` rows.
  static int64_t MaxLd(int64_t span);

  // out[r * ldo + (n - w.base)] = a[r * lda + 0 .. width) . table[n] for the
  // window's rows n and r < rows (rows past count give 0); ldo >= w.ld.
  void Multiply(const Window& w, int64_t rows, const float* a, int64_t lda, float* out,
                int64_t ldo) const;

 private:
  const int64_t width_;
  std::vector<float> panels_;
};

// Used by Encode forms: the spec's sq/sk/num_heads must be >= 1.
absl::Status ExpectPositive(int64_t value, absl::string_view name);

// OpenMP thread count for a loop of `work` inner-product FLOPs: small work
// runs inline, where a thread team costs more than it saves.
int ThreadsFor(double work, const ComputeOptions& options);

// INVALID_ARGUMENT naming the first value of `tensor` that is NaN or
// infinite ("q.data[17]: must be finite, got nan"), else OK.
absl::Status CheckFiniteValues(const Tensor& tensor, absl::string_view name);

// The INVALID_ARGUMENT of an Attend whose output is not finite (its scores
// overflowed float32), from either engine.
absl::Status OutputOverflowError();

}  // namespace attnserve::kernels

#endif  // ATTNSERVE_KERNELS_POSITIONAL_COMMON_H_
