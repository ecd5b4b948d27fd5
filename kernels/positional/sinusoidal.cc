// sinusoidal: fixed absolute encoding added to the inputs.
// Vaswani et al. 2017, "Attention Is All You Need", section 3.5:
//   P[p, 2n]   = sin(p / base^(2n / d_model))
//   P[p, 2n+1] = cos(p / base^(2n / d_model))
// Interleaved columns as in the paper; an odd d_model ends in a lone sine
// (EXTENSION, positional-methods.md 2.2). Attend adds P to x_q (positions
// query_offset + i) and x_kv (positions j) before the Q/K/V projections.
#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/parallel.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/positional/tables.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {

void SinusoidRow(double position, int64_t d_model, double base, double* out) {
  for (int64_t c = 0; c < d_model; ++c) {
    const int64_t n = c / 2;
    const double angle =
        position / std::pow(base, static_cast<double>(2 * n) / static_cast<double>(d_model));
    out[c] = (c % 2 == 0) ? std::sin(angle) : std::cos(angle);
  }
}

namespace {

constexpr double kDefaultBase = 10000;

// rows x d_model floats: row s is P[first_position + s].
std::vector<float> SinusoidTable(double first_position, int64_t rows, int64_t d_model,
                                 double base) {
  std::vector<float> table(static_cast<size_t>(rows * d_model));
  std::vector<double> row(static_cast<size_t>(d_model));
  for (int64_t s = 0; s < rows; ++s) {
    SinusoidRow(first_position + static_cast<double>(s), d_model, base, row.data());
    for (int64_t c = 0; c < d_model; ++c) table[s * d_model + c] = static_cast<float>(row[c]);
  }
  return table;
}

class Sinusoidal final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kSinusoidal; }
  absl::string_view description() const override {
    return "Fixed sinusoidal absolute encoding added to the inputs before the Q/K/V "
           "projections, interleaved sin/cos (Vaswani et al. 2017, section 3.5).";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"base", "double", "10000", "finite, > 0", {"encode", "attend"}},
            {"offset", "int", "0", ">= 0; position of row 0", {"encode"}},
            {"num_heads", "int", "", ">= 1; divides the widths of w_q, w_k, w_v", {"attend"}},
            {"x", "tensor", "", "[B,S,d_model]", {"encode"}},
            {"x_q", "tensor", "", "[B,Sq,d_model]", {"attend"}},
            {"x_kv", "tensor", "", "[B,Sk,d_model]", {"attend"}},
            {"w_q", "tensor", "", "[d_model,H*D]", {"attend"}},
            {"w_k", "tensor", "", "[d_model,H*D]", {"attend"}},
            {"w_v", "tensor", "", "[d_model,H*Dv]", {"attend"}}};
  }
  std::vector<InputSpec> attend_inputs() const override {
    return {{"x_q"}, {"x_kv"}, {"w_q"}, {"w_k"}, {"w_v"}};
  }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const double base, ResolvePositive(args.params.base, kDefaultBase, "base"));
    ATTN_ASSIGN_OR_RETURN(const ProjectionGeometry g, CheckProjectionInputs(args, options));
    // Per pair n the angle is position / base^(2n / d_model): the step from
    // one row to the next is a fixed rotation. Each run of kAnchorRows rows
    // starts from sin/cos of its exact double angle (1.6) and rotates in
    // double from there: within ~1e-14 of the direct sin/cos, far below the
    // float rounding of P, at a few multiplies per value instead of a sincos.
    const int64_t d_model = g.d_model, pairs = (g.d_model + 1) / 2;
    std::vector<double> denominators(static_cast<size_t>(pairs));
    std::vector<double> step_cos(static_cast<size_t>(pairs));
    std::vector<double> step_sin(static_cast<size_t>(pairs));
    for (int64_t n = 0; n < pairs; ++n) {
      denominators[n] = std::pow(base, static_cast<double>(2 * n) / static_cast<double>(d_model));
      ::sincos(1.0 / denominators[n], &step_sin[n], &step_cos[n]);
    }
    const AddPositions add = [&](int64_t first, int64_t count, float* x,
                                 const ComputeOptions& opts) {
      constexpr int64_t kAnchorRows = 64;
      const int64_t runs = (count + kAnchorRows - 1) / kAnchorRows;
      const double work = static_cast<double>(count) * static_cast<double>(d_model) * 4;
      ParallelFor(runs, ThreadsFor(work, opts), 1, [&](int64_t begin, int64_t end) {
        std::vector<double> sine(static_cast<size_t>(pairs)), cosine(static_cast<size_t>(pairs));
        for (int64_t run = begin; run < end; ++run) {
          const int64_t s0 = run * kAnchorRows, s1 = std::min(count, s0 + kAnchorRows);
          const double position = static_cast<double>(first + s0);
          for (int64_t n = 0; n < pairs; ++n) {
            ::sincos(position / denominators[n], &sine[n], &cosine[n]);
          }
          for (int64_t s = s0; s < s1; ++s) {
            float* row = x + s * d_model;
            for (int64_t n = 0; n < d_model / 2; ++n) {
              row[2 * n] += static_cast<float>(sine[n]);
              row[2 * n + 1] += static_cast<float>(cosine[n]);
            }
            if (d_model % 2 != 0) row[d_model - 1] += static_cast<float>(sine[pairs - 1]);
            for (int64_t n = 0; n < pairs; ++n) {
              const double next_sine = sine[n] * step_cos[n] + cosine[n] * step_sin[n];
              cosine[n] = cosine[n] * step_cos[n] - sine[n] * step_sin[n];
              sine[n] = next_sine;
            }
          }
        }
      });
    };
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, ProjectWithPositions(args, g, add, options));
    prepared.modifier = std::make_unique<ScaledDotProduct>(prepared.problem.scale);
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override { return {{"x"}}; }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const double base, ResolvePositive(args.params.base, kDefaultBase, "base"));
    Tensor& x = args.inputs.at("x");
    ATTN_RETURN_IF_ERROR(ExpectRank(x, "x", 3, "[B,S,d_model]"));
    ATTN_ASSIGN_OR_RETURN(const int64_t offset, ResolveOffset(args.offset));
    const int64_t batch = x.dim(0), seq = x.dim(1), d_model = x.dim(2);
    ATTN_RETURN_IF_ERROR(
        CheckResultSize({{"y", x.shape()}, {"table", {seq, d_model}}}, options));
    std::vector<float> table = SinusoidTable(static_cast<double>(offset), seq, d_model, base);
    ATTN_RETURN_IF_ERROR(CheckCancelled(options));
    float* y = x.data();
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t n = 0; n < seq * d_model; ++n) y[b * seq * d_model + n] += table[n];
    }
    TensorMap outputs;
    outputs["y"] = std::move(x);
    outputs["table"] = Tensor({seq, d_model}, std::move(table));
    return outputs;
  }
};

}  // namespace

const PositionalMethod& SinusoidalMethod() {
  static const Sinusoidal* const method = new Sinusoidal();
  return *method;
}

}  // namespace attnserve::kernels
