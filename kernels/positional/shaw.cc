// shaw: relative position representations, clipped at K.
// Shaw, Uszkoreit, Vaswani 2018, "Self-Attention with Relative Position
// Representations", section 3 (eqs. 3-4 with the clipping of 3.2); as the
// public tensor2tensor dot_product_attention_relative: key-minus-query
// distance, one table for keys and one for values shared by all heads.
//   idx(i, j)  = clip(k_pos(j) - q_pos(i), -K, K) + K
//   score(i,j) = scale * q_i . (k_j + rel_k[idx])
//   out(i)     = sum_j p(i, j) * (v_j + rel_v[idx])
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/positional/tables.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {
namespace {

absl::StatusOr<int64_t> ResolveK(const MethodParams& params) {
  if (!params.max_relative_position.has_value()) {
    return absl::InvalidArgumentError("max_relative_position: required (K >= 0), not set");
  }
  const int64_t k = *params.max_relative_position;
  if (k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_relative_position: must be >= 0, got ", k));
  }
  return k;
}

// table must be [2K+1, width].
absl::Status CheckRelTable(const Tensor& table, absl::string_view name, int64_t k,
                           int64_t width, absl::string_view width_name,
                           absl::string_view width_source) {
  ATTN_RETURN_IF_ERROR(ExpectRank(table, name, 2, absl::StrCat("[2K+1,", width_name, "]")));
  const std::string text = absl::StrCat("[2K+1=", 2 * k + 1, ",", width_name, "=", width,
                                        "] for max_relative_position=", k, " and ",
                                        width_source);
  ATTN_RETURN_IF_ERROR(ExpectDim(table, name, 0, 2 * k + 1, text));
  return ExpectDim(table, name, 1, width, text);
}

class ShawModifier final : public ScoreModifier {
 public:
  ShawModifier(const AttentionProblem& problem, int64_t max_relative_position, Tensor rel_k,
               Tensor rel_v)
      : q_(problem.q.data()),
        sq_(problem.sq),
        d_(problem.d),
        dv_(problem.dv),
        heads_(problem.heads),
        scale_(problem.scale),
        query_offset_(problem.query_offset),
        k_(max_relative_position),
        rel_k_(std::move(rel_k)),
        rel_v_(std::move(rel_v)) {}

  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override {
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t i = tile.i0 + r;
      const float* q_row = q_ + ((tile.b * heads_ + tile.h) * sq_ + i) * d_;
      float* row = scores + r * ld;
      for (int64_t c = 0; c < tile.cols; ++c) {
        const float* rel = rel_k_.data() + ShawIndex(query_offset_ + i, tile.j0 + c, k_) * d_;
        double dot = 0;
        for (int64_t e = 0; e < d_; ++e) dot += static_cast<double>(q_row[e]) * rel[e];
        row[c] = static_cast<float>(scale_ * (row[c] + dot));
      }
    }
  }

  bool HasValueTerm() const override { return true; }

  // Sums the weight per table row first (clipping sends most keys to rows 0
  // and 2K), then adds each row of rel_v once.
  void AccumulateValueTerm(const ScoreTile& tile, const float* weights, int64_t ldw, float* acc,
                           int64_t lda) const override {
    std::vector<double> mass;
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t q_pos = query_offset_ + tile.i0 + r;
      // idx grows with j, so the tile's rows of rel_v form one range.
      const int64_t first = ShawIndex(q_pos, tile.j0, k_);
      const int64_t last = ShawIndex(q_pos, tile.j0 + tile.cols - 1, k_);
      mass.assign(static_cast<size_t>(last - first + 1), 0.0);
      for (int64_t c = 0; c < tile.cols; ++c) {
        mass[ShawIndex(q_pos, tile.j0 + c, k_) - first] += weights[r * ldw + c];
      }
      float* acc_row = acc + r * lda;
      for (int64_t idx = first; idx <= last; ++idx) {
        const double m = mass[idx - first];
        if (m == 0) continue;
        const float* rel = rel_v_.data() + idx * dv_;
        for (int64_t e = 0; e < dv_; ++e) acc_row[e] += static_cast<float>(m * rel[e]);
      }
    }
  }

 private:
  const float* const q_;  // Owned by the problem, which outlives the modifier's use.
  const int64_t sq_, d_, dv_, heads_;
  const double scale_;
  const int64_t query_offset_, k_;
  const Tensor rel_k_, rel_v_;
};

class Shaw final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kShaw; }
  absl::string_view description() const override {
    return "Relative position representations clipped at K, one key and one value table shared "
           "by all heads (Shaw et al. 2018).";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"max_relative_position", "int", "", "K >= 0; required", {"encode", "attend"}},
            {"rel_k", "tensor", "", "[2K+1,D]", {"encode", "attend"}},
            {"rel_v", "tensor", "", "[2K+1,Dv]", {"attend"}},
            {"sq", "int", "", ">= 1", {"encode"}},
            {"sk", "int", "", ">= 1", {"encode"}},
            {"query_offset", "int", "sk - sq", ">= 0", {"encode"}},
            {"q", "tensor", "", "[B,H,Sq,D]", {"attend"}},
            {"k", "tensor", "", "[B,H,Sk,D]", {"attend"}},
            {"v", "tensor", "", "[B,H,Sk,Dv]", {"attend"}}};
  }
  std::vector<InputSpec> attend_inputs() const override {
    return {{"q"}, {"k"}, {"v"}, {"rel_k"}, {"rel_v"}};
  }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const int64_t k, ResolveK(args.params));
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    const AttentionProblem& p = prepared.problem;
    Tensor& rel_k = args.inputs.at("rel_k");
    Tensor& rel_v = args.inputs.at("rel_v");
    ATTN_RETURN_IF_ERROR(CheckRelTable(rel_k, "rel_k", k, p.d, "D", "q"));
    ATTN_RETURN_IF_ERROR(CheckRelTable(rel_v, "rel_v", k, p.dv, "Dv", "v"));
    prepared.modifier =
        std::make_unique<ShawModifier>(p, k, std::move(rel_k), std::move(rel_v));
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override { return {{"rel_k"}}; }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const int64_t k, ResolveK(args.params));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sq, "sq"));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sk, "sk"));
    ATTN_ASSIGN_OR_RETURN(const int64_t offset,
                          ResolveQueryOffset(args.query_offset, args.sq, args.sk));
    const Tensor& rel_k = args.inputs.at("rel_k");
    ATTN_RETURN_IF_ERROR(ExpectRank(rel_k, "rel_k", 2, "[2K+1,D]"));
    ATTN_RETURN_IF_ERROR(ExpectDim(
        rel_k, "rel_k", 0, 2 * k + 1,
        absl::StrCat("[2K+1=", 2 * k + 1, ",D] for max_relative_position=", k)));
    const int64_t sq = args.sq, sk = args.sk, d = rel_k.dim(1);
    ATTN_RETURN_IF_ERROR(CheckOutputSize({sq, sk, d}, "rel_k_gathered", options));
    Tensor index({sq, sk});
    Tensor gathered({sq, sk, d});
    for (int64_t i = 0; i < sq; ++i) {
      for (int64_t j = 0; j < sk; ++j) {
        const int64_t idx = ShawIndex(offset + i, j, k);
        index.data()[i * sk + j] = static_cast<float>(idx);
        std::copy_n(rel_k.data() + idx * d, d, gathered.data() + (i * sk + j) * d);
      }
    }
    TensorMap outputs;
    outputs["rel_index"] = std::move(index);
    outputs["rel_k_gathered"] = std::move(gathered);
    return outputs;
  }
};

}  // namespace

const PositionalMethod& ShawMethod() {
  static const Shaw* const method = new Shaw();
  return *method;
}

}  // namespace attnserve::kernels
