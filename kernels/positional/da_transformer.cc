// da_transformer: distance-aware re-scaling of ReLU'd scores.
// Wu, Wu, Huang 2021, "DA-Transformer: Distance-aware Transformer" (NAACL),
// method section (per-head weighted distance, learnable sigmoid):
//   x          = w_h * |q_pos(i) - k_pos(j)|
//   Rhat_h     = (1 + exp(v_h)) / (1 + exp(v_h - x))
//   score(i,j) = max(0, q_i . k_j) * Rhat_h * scale
// Rhat is evaluated as (1 + exp(v)) * sigmoid(x - v) with a stable sigmoid,
// or as exp(softplus(v) - softplus(v - x)) where exp(v) would overflow.
// Causal use is an EXTENSION (positional-methods.md 2.8).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "kernels/isa.h"
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

void DaCoefficients(double w, double v, int64_t first_distance, int64_t count, double* out) {
  // Rhat = (1 + e^v) / (1 + e^E), E = v - w d, by runs of kAnchorDistances
  // distances (E is linear in d, so its ends bound a run):
  //   E <= -kSaturated:     1 + e^E rounds to 1, Rhat = 1 + e^v exactly;
  //   |E| <= kExpRange:     e^E from the run's exact first value, then one
  //                         multiply by e^(-w) per distance (~1e-16 relative
  //                         per step, under 1e-14 per run);
  //   kSaturated <= E <= 700: (1 + e^v) g / (1 + g), g = e^(-E) stepped by e^w
  //                         (normal doubles: no underflow);
  //   otherwise, and v >= 700 (e^v overflows): DaCoefficient per distance.
  constexpr int64_t kAnchorDistances = 64;
  constexpr double kSaturated = 40;  // e^-40 < 2^-53
  constexpr double kExpRange = 600;
  constexpr double kMaxExponent = 700;
  const double numerator = v < kMaxExponent ? 1.0 + std::exp(v) : 0;
  for (int64_t n0 = 0; n0 < count; n0 += kAnchorDistances) {
    const int64_t n1 = std::min(count, n0 + kAnchorDistances);
    const double e0 = v - w * static_cast<double>(first_distance + n0);
    const double e1 = v - w * static_cast<double>(first_distance + n1 - 1);
    const double low = std::min(e0, e1), high = std::max(e0, e1);
    if (v >= kMaxExponent) {
      // Falls through to the direct form below.
    } else if (high <= -kSaturated) {
      std::fill(out + n0, out + n1, numerator);
      continue;
    } else if (low >= -kExpRange && high <= kExpRange) {
      const double step = std::exp(-w);
      double power = std::exp(e0);
      for (int64_t n = n0; n < n1; ++n) {
        out[n] = numerator / (1.0 + power);
        power *= step;
      }
      continue;
    } else if (low >= kSaturated && high <= kMaxExponent) {
      const double step = std::exp(w);
      double g = std::exp(-e0);
      for (int64_t n = n0; n < n1; ++n) {
        out[n] = numerator * g / (1.0 + g);
        g *= step;
      }
      continue;
    }
    for (int64_t n = n0; n < n1; ++n) {
      out[n] = DaCoefficient(w, v, static_cast<double>(first_distance + n));
    }
  }
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

// Rhat depends only on the head and |q_pos - k_pos|, so it is tabulated once
// per head over the distances the call can meet (at most Sq + Sk - 1 of them,
// a contiguous range): no exp per score.
class DaModifier final : public ScoreModifier {
 public:
  DaModifier(const AttentionProblem& p, absl::Span<const float> w, absl::Span<const float> v)
      : scale_(p.scale),
        query_offset_(p.query_offset),
        causal_(p.causal),
        // q_pos in [a, a + Sq - 1], k_pos in [0, Sk - 1], a = query_offset >= 0.
        min_distance_(std::max<int64_t>(0, p.query_offset - (p.sk - 1))),
        count_(std::max(p.query_offset + p.sq - 1, p.sk - 1 - p.query_offset) - min_distance_ + 1),
        table_(static_cast<size_t>(p.heads * count_)) {
    bool fits_float = true;
    for (int64_t h = 0; h < p.heads; ++h) {
      double* rhat = table_.data() + h * count_;
      DaCoefficients(w[h], v[h], min_distance_, count_, rhat);
      for (int64_t n = 0; n < count_; ++n) {
        fits_float = fits_float && std::fabs(rhat[n] * scale_) <= std::numeric_limits<float>::max();
      }
    }
    if (!fits_float) return;
    // The usual case: scale * Rhat in float, once in distance order and once
    // reversed, so both runs of a tile row read ascending (vectorised).
    scaled_.resize(table_.size());
    reversed_.resize(table_.size());
    for (int64_t h = 0; h < p.heads; ++h) {
      for (int64_t n = 0; n < count_; ++n) {
        const float value = static_cast<float>(table_[h * count_ + n] * scale_);
        scaled_[h * count_ + n] = value;
        reversed_[h * count_ + (count_ - 1 - n)] = value;
      }
    }
  }

  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override {
    if (!scaled_.empty()) return ModifyInFloat(tile, scores, ld);
    const double* rhat = table_.data() + tile.h * count_;
    const double scale = scale_;
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t delta = query_offset_ + tile.i0 + r - tile.j0;  // q_pos - j0
      float* row = scores + r * ld;
      // Keys up to the query's position, then after it: each a contiguous
      // (descending, then ascending) run of the table.
      const int64_t split = std::clamp<int64_t>(delta + 1, 0, tile.cols);
      if (split > 0) {
        const double* before = rhat + (delta - min_distance_);  // [-c] for c < split
        for (int64_t c = 0; c < split; ++c) {
          // A non-positive dot product scores exactly 0, whatever Rhat is.
          row[c] = row[c] > 0 ? static_cast<float>(row[c] * before[-c] * scale) : 0.0f;
        }
      }
      // Keys after the query: masked under causal masking, where the
      // engine overwrites them, so they are left as they are.
      const int64_t end = causal_ ? split : tile.cols;
      for (int64_t c = split; c < end; ++c) {
        const double coefficient = rhat[c - delta - min_distance_];
        row[c] = row[c] > 0 ? static_cast<float>(row[c] * coefficient * scale) : 0.0f;
      }
    }
  }

 private:
  void ModifyInFloat(const ScoreTile& tile, float* scores, int64_t ld) const {
    const float* forward = scaled_.data() + tile.h * count_;
    const float* backward = reversed_.data() + tile.h * count_;
    // max(x, 0) * Rhat per run, on the ISA's vectors (kernels/isa.h): exactly
    // 0 for x <= 0 (Rhat is finite here), and branch-free.
    const auto relu_times_row = Kernels().relu_times_row;
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t delta = query_offset_ + tile.i0 + r - tile.j0;  // q_pos - j0
      float* row = scores + r * ld;
      const int64_t split = std::clamp<int64_t>(delta + 1, 0, tile.cols);
      if (split > 0) {
        // distance delta - c at reversed index count - 1 - (delta - c - min).
        const float* run = backward + (count_ - 1 - delta + min_distance_);
        relu_times_row(row, run, split);
      }
      if (split < tile.cols && !causal_) {  // Keys after the query (masked if causal).
        const float* run = forward + (split - delta - min_distance_);  // distance c - delta
        relu_times_row(row + split, run, tile.cols - split);
      }
    }
  }

  const double scale_;
  const int64_t query_offset_;
  const bool causal_;
  const int64_t min_distance_, count_;
  std::vector<double> table_;  // [H, count]: Rhat_h(min_distance + n)
  // [H, count]: float(scale * Rhat), in distance order and reversed; empty
  // when some value passes float's range (then the double path runs).
  std::vector<float> scaled_, reversed_;
};

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
  bool keeps_qkv_values() const override { return true; }
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
    prepared.modifier = std::make_unique<DaModifier>(p, dist_w.values(), dist_v.values());
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
    ATTN_RETURN_IF_ERROR(CheckResultSize({{"coeff", {heads, sq, sk}}}, options));
    Tensor coeff({heads, sq, sk});
    float* out = coeff.data();
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < sq; ++i) {
        ATTN_RETURN_IF_ERROR(CheckCancelled(options));
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
