// da_transformer: distance-aware re-scaling of ReLU'd scores.
// Wu, Wu, Huang 2021, "DA-Transformer: Distance-aware Transformer" (NAACL),
// method section (per-head weighted distance, learnable sigmoid):
//   x          = w_h * |q_pos(i) - k_pos(j)|
//   Rhat_h     = (1 + exp(v_h)) / (1 + exp(v_h - x))
//   score(i,j) = max(0, q_i . k_j) * Rhat_h * scale
// Rhat is evaluated as (1 + exp(v)) * sigmoid(x - v) with a stable sigmoid,
// or as exp(softplus(v) - softplus(v - x)) where exp(v) would overflow.
// Causal use is an EXTENSION (positional-methods.md 2.8).
#include <cmath>
#include <cstdlib>
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
namespace {

double StableSigmoid(double t) {
  if (t >= 0) return 1.0 / (1.0 + std::exp(-t));
  const double e = std::exp(t);
  return e / (1.0 + e);
}

// log(1 + exp(t)) without overflow.
double Softplus(double t) { return std::max(t, 0.0) + std::log1p(std::exp(-std::abs(t))); }

}  // namespace

double DaCoefficient(double w, double v, double distance) {
  const double x = w * distance;
  if (v < 700) return (1.0 + std::exp(v)) * StableSigmoid(x - v);
  return std::exp(Softplus(v) - Softplus(v - x));
}

namespace {

// dist_w and dist_v: [H] each, H matching `heads` when heads > 0.
absl::Status CheckDistanceParams(const Tensor& dist_w, const Tensor& dist_v, int64_t heads,
                                 absl::string_view heads_source) {
  ATTN_RETURN_IF_ERROR(ExpectRank(dist_w, "dist_w", 1, "[H]"));
  ATTN_RETURN_IF_ERROR(ExpectRank(dist_v, "dist_v", 1, "[H]"));
  if (heads > 0) {
    const std::string text = absl::StrCat("[H=", heads, "] to match ", heads_source);
    ATTN_RETURN_IF_ERROR(ExpectDim(dist_w, "dist_w", 0, heads, text));
    ATTN_RETURN_IF_ERROR(ExpectDim(dist_v, "dist_v", 0, heads, text));
  } else {
    ATTN_RETURN_IF_ERROR(ExpectDim(dist_v, "dist_v", 0, dist_w.dim(0),
                                   absl::StrCat("[H=", dist_w.dim(0), "] to match dist_w")));
  }
  return absl::OkStatus();
}

class DaModifier final : public ScoreModifier {
 public:
  DaModifier(double scale, int64_t query_offset, std::vector<double> w, std::vector<double> v)
      : scale_(scale), query_offset_(query_offset), w_(std::move(w)), v_(std::move(v)) {}

  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override {
    const double w = w_[static_cast<size_t>(tile.h)], v = v_[static_cast<size_t>(tile.h)];
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t q_pos = query_offset_ + tile.i0 + r;
      float* row = scores + r * ld;
      for (int64_t c = 0; c < tile.cols; ++c) {
        // A non-positive dot product scores exactly 0, whatever Rhat is.
        if (row[c] <= 0) {
          row[c] = 0;
          continue;
        }
        const double distance = static_cast<double>(std::llabs(q_pos - (tile.j0 + c)));
        row[c] = static_cast<float>(row[c] * DaCoefficient(w, v, distance) * scale_);
      }
    }
  }

 private:
  const double scale_;
  const int64_t query_offset_;
  const std::vector<double> w_, v_;
};

std::vector<double> ToDoubles(const Tensor& t) {
  return std::vector<double>(t.values().begin(), t.values().end());
}

class DaTransformer final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kDaTransformer; }
  absl::string_view description() const override {
    return "Distance-aware re-scaling: ReLU'd scores times a learnable sigmoid of the weighted "
           "distance w_h*|i-j| (Wu et al. 2021).";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"dist_w", "tensor", "", "[H]; any finite values", {"encode", "attend"}},
            {"dist_v", "tensor", "", "[H]; any finite values", {"encode", "attend"}},
            {"sq", "int", "", ">= 1", {"encode"}},
            {"sk", "int", "", ">= 1", {"encode"}},
            {"query_offset", "int", "sk - sq", ">= 0", {"encode"}},
            {"q", "tensor", "", "[B,H,Sq,D]", {"attend"}},
            {"k", "tensor", "", "[B,H,Sk,D]", {"attend"}},
            {"v", "tensor", "", "[B,H,Sk,Dv]", {"attend"}}};
  }
  std::vector<InputSpec> attend_inputs() const override {
    return {{"q"}, {"k"}, {"v"}, {"dist_w"}, {"dist_v"}};
  }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    const AttentionProblem& p = prepared.problem;
    const Tensor& dist_w = args.inputs.at("dist_w");
    const Tensor& dist_v = args.inputs.at("dist_v");
    ATTN_RETURN_IF_ERROR(CheckDistanceParams(dist_w, dist_v, p.heads, "q"));
    prepared.modifier = std::make_unique<DaModifier>(p.scale, p.query_offset, ToDoubles(dist_w),
                                                     ToDoubles(dist_v));
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override { return {{"dist_w"}, {"dist_v"}}; }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    const Tensor& dist_w = args.inputs.at("dist_w");
    const Tensor& dist_v = args.inputs.at("dist_v");
    ATTN_RETURN_IF_ERROR(CheckDistanceParams(dist_w, dist_v, 0, ""));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sq, "sq"));
    ATTN_RETURN_IF_ERROR(ExpectPositive(args.sk, "sk"));
    ATTN_ASSIGN_OR_RETURN(const int64_t offset,
                          ResolveQueryOffset(args.query_offset, args.sq, args.sk));
    const int64_t heads = dist_w.dim(0), sq = args.sq, sk = args.sk;
    ATTN_RETURN_IF_ERROR(CheckOutputSize({heads, sq, sk}, "coeff", options));
    Tensor coeff({heads, sq, sk});
    float* out = coeff.data();
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < sq; ++i) {
        for (int64_t j = 0; j < sk; ++j) {
          const double distance = static_cast<double>(std::llabs(offset + i - j));
          out[(h * sq + i) * sk + j] =
              static_cast<float>(DaCoefficient(dist_w.data()[h], dist_v.data()[h], distance));
        }
      }
    }
    for (int64_t n = 0; n < coeff.size(); ++n) {
      if (!std::isfinite(out[n])) {
        return absl::InvalidArgumentError(
            "dist_w, dist_v: the coefficient (1 + exp(v)) * sigmoid(w * |i - j| - v) exceeds "
            "float32 for these distances");
      }
    }
    TensorMap outputs;
    outputs["coeff"] = std::move(coeff);
    return outputs;
  }
};

}  // namespace

const PositionalMethod& DaTransformerMethod() {
  static const DaTransformer* const method = new DaTransformer();
  return *method;
}

}  // namespace attnserve::kernels
