// alibi: attention with linear biases.
// Press, Smith, Lewis 2022, "Train Short, Test Long" (ICLR), section 3; slopes
// as the public get_slopes and BLOOM's build_alibi_tensor:
//   H a power of two: m_h = 2^(-8h/H), h = 1..H
//   else P = 2^floor(log2 H): m_1..m_P = 2^(-8h/P), then m_{P+j} = 2^(-8(2j-1)/(2P))
//   score(i, j) = scale * (q_i . k_j) - m_h * |q_pos(i) - k_pos(j)|   (bias not scaled)
// Non-causal uses the symmetric |i - j| (EXTENSION, positional-methods.md 2.7).
// Custom slopes (attention-variants.md 7): the optional input `slopes` [H],
// one per query head, any finite value (zero and negative included), in
// place of get_slopes.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/isa.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/positional/tables.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {

std::vector<double> AlibiSlopes(int64_t heads) {
  int64_t power = 1;  // The largest power of two <= heads.
  while (power * 2 <= heads) power *= 2;
  std::vector<double> slopes;
  slopes.reserve(static_cast<size_t>(heads));
  for (int64_t h = 1; h <= power; ++h) {
    slopes.push_back(std::exp2(-8.0 * static_cast<double>(h) / static_cast<double>(power)));
  }
  for (int64_t j = 1; j <= heads - power; ++j) {
    slopes.push_back(
        std::exp2(-8.0 * static_cast<double>(2 * j - 1) / static_cast<double>(2 * power)));
  }
  return slopes;
}

namespace {

// The slopes of a call with `heads` query heads: the input `slopes` when
// sent ([H], finite: Attend and Encode checked its values unless the caller
// vouched for them), else get_slopes.
absl::StatusOr<std::vector<double>> ResolveSlopes(const TensorMap& inputs, int64_t heads) {
  const auto it = inputs.find("slopes");
  if (it == inputs.end()) return AlibiSlopes(heads);
  const Tensor& slopes = it->second;
  if (slopes.rank() != 1 || slopes.dim(0) != heads) {
    return absl::InvalidArgumentError(absl::StrCat("slopes: must be [H=", heads,
                                                   "] (one per query head), got shape ",
                                                   ShapeToString(slopes.shape())));
  }
  std::vector<double> values(slopes.values().begin(), slopes.values().end());
  for (size_t h = 0; h < values.size(); ++h) {
    // Also when the caller vouched for the inputs: a slope outside float's
    // finite range would make every logit of its head NaN or infinite.
    if (!std::isfinite(values[h])) {
      return absl::InvalidArgumentError(
          absl::StrCat("slopes.data[", h, "]: must be finite, got ", values[h]));
    }
  }
  return values;
}

// -m_h * |q_pos - k_pos|, in double.
inline double Bias(double slope, int64_t q_pos, int64_t k_pos) {
  return -slope * static_cast<double>(std::llabs(q_pos - k_pos));
}

class AlibiModifier final : public ScoreModifier {
 public:
  AlibiModifier(double scale, int64_t query_offset, bool causal, std::vector<double> slopes)
      : scale_(scale), query_offset_(query_offset), causal_(causal), slopes_(std::move(slopes)) {}

  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override {
    const double slope = slopes_[static_cast<size_t>(tile.h)];
    const int64_t first_delta = query_offset_ + tile.i0 - tile.j0;
    // Within float's exact integers the tile runs in float, on the ISA's
    // vectors (kernels/isa.h); far positions take the double path.
    constexpr int64_t kExactInFloat = int64_t{1} << 24;
    if (std::llabs(first_delta) + tile.rows + tile.cols < kExactInFloat) {
      const float scale = static_cast<float>(scale_), m = static_cast<float>(slope);
      const auto alibi_row = Kernels().alibi_row;
      for (int64_t r = 0; r < tile.rows; ++r) {
        // scale * s - m * |q_pos - k_pos|, q_pos - k_pos = (q_pos - j0) - c.
        alibi_row(scores + r * ld, tile.VisibleCols(r, query_offset_, causal_), scale, m,
                  static_cast<float>(first_delta + r));
      }
      return;
    }
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t q_pos = query_offset_ + tile.i0 + r;
      float* row = scores + r * ld;
      const int64_t cols = tile.VisibleCols(r, query_offset_, causal_);
      for (int64_t c = 0; c < cols; ++c) {
        row[c] = static_cast<float>(scale_ * row[c] + Bias(slope, q_pos, tile.j0 + c));
      }
    }
  }

 private:
  const double scale_;
  const int64_t query_offset_;
  const bool causal_;
  const std::vector<double> slopes_;
};

class Alibi final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kAlibi; }
  absl::string_view description() const override {
    return "Linear distance bias -m_h*|i-j| added to the scaled scores, slopes of get_slopes "
           "(Press et al. 2022); symmetric when not causal.";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"num_heads", "int", "", ">= 1 (encode); 0 or H (attend)", {"encode", "attend"}},
            {"sq", "int", "", ">= 1", {"encode"}},
            {"sk", "int", "", ">= 1", {"encode"}},
            {"query_offset", "int", "sk - sq", ">= 0", {"encode"}},
            {"slopes", "tensor", "get_slopes(H)",
             "[H], one per query head, finite (zero and negative allowed); encode returns the "
             "slopes used",
             {"encode", "attend"}},
            {"q", "tensor", "", "[B,H,Sq,D]", {"attend"}},
            {"k", "tensor", "", "[B,H,Sk,D]", {"attend"}},
            {"v", "tensor", "", "[B,H,Sk,Dv]", {"attend"}}};
  }
  bool keeps_qkv_values() const override { return true; }
  std::vector<InputSpec> attend_inputs() const override {
    return {{"q"}, {"k"}, {"v"}, {"slopes", false}};
  }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    const AttentionProblem& p = prepared.problem;
    ATTN_ASSIGN_OR_RETURN(std::vector<double> slopes, ResolveSlopes(args.inputs, p.heads));
    prepared.modifier =
        std::make_unique<AlibiModifier>(p.scale, p.query_offset, p.causal, std::move(slopes));
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override { return {{"slopes", false}}; }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.num_heads, "num_heads"));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sq, "sq"));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sk, "sk"));
    ATTN_ASSIGN_OR_RETURN(const int64_t offset,
                          ResolveQueryOffset(args.query_offset, args.sq, args.sk));
    const int64_t heads = args.num_heads, sq = args.sq, sk = args.sk;
    ATTN_RETURN_IF_ERROR(CheckResultSize({{"bias", {heads, sq, sk}}, {"slopes", {heads}}}, options));
    ATTN_ASSIGN_OR_RETURN(const std::vector<double> slopes, ResolveSlopes(args.inputs, heads));
    Tensor slopes_out({heads});
    Tensor bias({heads, sq, sk});
    float* out = bias.data();
    for (int64_t h = 0; h < heads; ++h) {
      slopes_out.data()[h] = static_cast<float>(slopes[h]);
      for (int64_t i = 0; i < sq; ++i) {
        ATTN_RETURN_IF_ERROR(CheckCancelled(options));
        for (int64_t j = 0; j < sk; ++j) {
          out[(h * sq + i) * sk + j] = static_cast<float>(Bias(slopes[h], offset + i, j));
        }
      }
    }
    TensorMap outputs;
    outputs["slopes"] = std::move(slopes_out);
    outputs["bias"] = std::move(bias);
    return outputs;
  }
};

}  // namespace

const PositionalMethod& AlibiMethod() {
  static const Alibi* const method = new Alibi();
  return *method;
}

}  // namespace attnserve::kernels
