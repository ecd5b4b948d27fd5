// transformer_xl: relative encoding with global content and position biases.
// Dai et al. 2019, "Transformer-XL", section 3.3 (terms (a)-(d)); as the
// public RelPartialLearnableMultiHeadAttn (r_w_bias = u, r_r_bias = v,
// r_net = W_R, PositionalEmbedding with concatenated sin | cos halves):
//   f_n        = base^(-2n / d_rel)
//   R(r)       = [sin(r f_0) .. sin(r f_{d_rel/2-1}), cos(r f_0) .. cos(r f_{d_rel/2-1})]
//   rel_h(r)   = R(r) @ w_r[h]                          [D]
//   score(i,j) = scale * ((q_i + u_h) . k_j + (q_i + v_h) . rel_h(q_pos(i) - k_pos(j)))
// The original's pad-and-reshape "relative shift" is an implementation
// technique; here the angle addition formulas split the position term into
// per-query and per-key features (TxlModifier below).
// Non-causal (negative distances) is an EXTENSION (positional-methods.md 2.5).
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

void TransformerXlSinusoid(double r, int64_t d_rel, double base, double* out) {
  const int64_t half = d_rel / 2;
  for (int64_t n = 0; n < half; ++n) {
    const double f = std::pow(base, -static_cast<double>(2 * n) / static_cast<double>(d_rel));
    const double angle = r * f;
    out[n] = std::sin(angle);
    out[half + n] = std::cos(angle);
  }
}

namespace {

constexpr double kDefaultBase = 10000;

absl::StatusOr<int64_t> ResolveDRel(const MethodParams& params) {
  if (params.d_rel < 2 || params.d_rel % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "d_rel: required, even and >= 2 (the width of the relative sinusoid), got ",
        params.d_rel));
  }
  return params.d_rel;
}

// w_r must be [H, d_rel, D]; heads/d of 0 accept any (encode).
absl::Status CheckWr(const Tensor& w_r, int64_t d_rel, int64_t heads, int64_t d) {
  ATTN_RETURN_IF_ERROR(ExpectRank(w_r, "w_r", 3, "[H,d_rel,D]"));
  const std::string text =
      heads > 0 ? absl::StrCat("[H=", heads, ",d_rel=", d_rel, ",D=", d, "] to match q and d_rel")
                : absl::StrCat("[H,d_rel=", d_rel, ",D] to match d_rel");
  if (heads > 0) {
    ATTN_RETURN_IF_ERROR(ExpectDim(w_r, "w_r", 0, heads, text));
    ATTN_RETURN_IF_ERROR(ExpectDim(w_r, "w_r", 2, d, text));
  }
  return ExpectDim(w_r, "w_r", 1, d_rel, text);
}

// rel[h, n, e] = sum_c R(distance_n)[c] * w_r[h, c, e], accumulated in double.
void ProjectSinusoids(const std::vector<double>& distances, const Tensor& w_r, double base,
                      const ComputeOptions& options, float* rel) {
  const int64_t heads = w_r.dim(0), d_rel = w_r.dim(1), d = w_r.dim(2);
  const int64_t count = static_cast<int64_t>(distances.size());
  const double work = static_cast<double>(heads * count) * d_rel * d;
  ParallelFor(count, ThreadsFor(work, options), 64, [&](int64_t begin, int64_t end) {
    std::vector<double> sinusoid(static_cast<size_t>(d_rel));
    std::vector<double> acc(static_cast<size_t>(d));
    for (int64_t n = begin; n < end; ++n) {
      if (IsCancelled(options)) return;  // Encode reports it.
      TransformerXlSinusoid(distances[n], d_rel, base, sinusoid.data());
      for (int64_t h = 0; h < heads; ++h) {
        std::fill(acc.begin(), acc.end(), 0.0);
        const float* w = w_r.data() + h * d_rel * d;
        for (int64_t c = 0; c < d_rel; ++c) {
          for (int64_t e = 0; e < d; ++e) acc[e] += sinusoid[c] * w[c * d + e];
        }
        float* dst = rel + (h * count + n) * d;
        for (int64_t e = 0; e < d; ++e) dst[e] = static_cast<float>(acc[e]);
      }
    }
  });
}

// (q_i + u) . k_j is the engine's own product: the fast engine adds u as it
// copies a block's queries (QueryBias); for the plain one u is added to q in
// place.
// (q_i + v) . rel_h(delta) = (W_r[h] (q_i + v)) . R(delta), as rel_h = R W_r[h].
// With delta = q_pos(i) - j = rho_i + sigma_j around the reference position
// p_ref = query_offset (rho_i = i, sigma_j = query_offset - j), the angle
// addition formulas give
//   qr_i . R(rho_i + sigma_j) = qr'_i . R(sigma_j),
// qr'_i being qr_i = W_r[h] (q_i + v) with each (sin, cos) pair n turned by
// rho_i f_n. Both sides are then features of their own row: a_i = scale *
// qr'_i per query, b_j = R(sigma_j) per key (one table for every head), and
// the fast engine folds the term into its Q K^T product as
// [scale (q_i + u) | a_i] . [k_j | b_j], one pass over D + d_rel
// (ScoreModifier::feature_width). Every angle is formed in double from an
// exact integer (sigma_j, or rho at a block's first row, then turned row by
// row), as the direct R(delta) would be.
class TxlModifier final : public ScoreModifier {
 public:
  // key_features: row j is R(query_offset - j), j < Sk; frequencies: f_n;
  // q_holds_u: the problem's q is q + u (else QueryBias gives u).
  TxlModifier(const AttentionProblem& p, const Tensor& u, const Tensor& v, const Tensor& w_r,
              std::vector<float> key_features, const std::vector<double>& frequencies,
              bool q_holds_u)
      : q_(p.q_rows()),
        heads_(p.heads),
        d_(p.d),
        d_rel_(w_r.dim(1)),
        scale_(static_cast<float>(p.scale)),
        frequencies_(frequencies),
        query_shift_(static_cast<size_t>(p.heads * p.d)),
        key_features_(std::move(key_features)) {
    for (int64_t n = 0; n < p.heads * p.d; ++n) {
      query_shift_[n] = q_holds_u ? v.data()[n] - u.data()[n] : v.data()[n];
    }
    if (!q_holds_u) u_.assign(u.data(), u.data() + p.heads * p.d);
    w_r_.reserve(static_cast<size_t>(p.heads));
    for (int64_t h = 0; h < p.heads; ++h) {
      w_r_.emplace_back(w_r.data() + h * d_rel_ * d_, d_rel_, d_);
    }
    for (double f : frequencies_) {
      double sine = 0, cosine = 0;
      ::sincos(f, &sine, &cosine);
      step_sin_.push_back(sine);
      step_cos_.push_back(cosine);
    }
  }

  bool adds_to_scaled_scores() const override { return true; }
  int64_t feature_width() const override { return d_rel_; }

  // q + v and W_r (q + v) for QueryFeatures, then (plain engine) a_i.
  int64_t ScratchFloats(int64_t rows) const override {
    return rows * (d_ + RelativeTable::MaxLd(d_rel_) + d_rel_);
  }

  const float* QueryBias(int64_t h) const override {
    return u_.empty() ? nullptr : u_.data() + h * d_;
  }

  const float* KeyFeatures(int64_t /*b*/, int64_t /*h*/) const override {
    return key_features_.data();
  }

  void QueryFeatures(const ScoreTile& block, float* dst, int64_t ld) const override {
    float* qv = block.scratch;  // [rows x D]: q + v
    float* qr = qv + block.rows * d_;
    const RelativeTable::Window all = w_r_[block.h].WindowOf(0, d_rel_ - 1);
    const float* shift = query_shift_.data() + block.h * d_;
    for (int64_t r = 0; r < block.rows; ++r) {
      const float* q = q_.Row(block.b * heads_ + block.h, block.i0 + r);
      for (int64_t e = 0; e < d_; ++e) qv[r * d_ + e] = q[e] + shift[e];
    }
    w_r_[block.h].Multiply(all, block.rows, qv, d_, qr, all.ld);
    // Turn pair n of row r by rho_r f_n, rho_r = i0 + r: sincos at the
    // first row, then one rotation by f_n per row, in double.
    const int64_t half = d_rel_ / 2;
    std::vector<double> sine(static_cast<size_t>(half)), cosine(static_cast<size_t>(half));
    const double rho = static_cast<double>(block.i0);
    for (int64_t n = 0; n < half; ++n) ::sincos(rho * frequencies_[n], &sine[n], &cosine[n]);
    // Restrict-qualified locals: the pairs are independent, and the
    // compiler vectorises the loop only when it knows nothing aliases.
    double* __restrict s = sine.data();
    double* __restrict c = cosine.data();
    const double* __restrict step_s = step_sin_.data();
    const double* __restrict step_c = step_cos_.data();
    const double scale = scale_;
    for (int64_t r = 0; r < block.rows; ++r) {
      const float* __restrict x = qr + r * all.ld;  // the sin weights, then the cos weights
      const float* __restrict y = x + half;
      float* __restrict a_sin = dst + r * ld;
      float* __restrict a_cos = a_sin + half;
      for (int64_t n = 0; n < half; ++n) {
        const double xs = x[n], ys = y[n];
        a_sin[n] = static_cast<float>(scale * (xs * c[n] - ys * s[n]));
        a_cos[n] = static_cast<float>(scale * (xs * s[n] + ys * c[n]));
        const double next_sine = s[n] * step_c[n] + c[n] * step_s[n];
        c[n] = c[n] * step_c[n] - s[n] * step_s[n];
        s[n] = next_sine;
      }
    }
  }

  // The plain engine's path (one query row per block): a_i . b_j added to
  // the scaled dot products.
  void BeginQueryBlock(const ScoreTile& block) const override {
    QueryFeatures(block, QueryFeaturesIn(block), d_rel_);
  }

  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override {
    const float* a = QueryFeaturesIn(tile);
    for (int64_t r = 0; r < tile.rows; ++r) {
      for (int64_t c = 0; c < tile.cols; ++c) {
        const float* b = key_features_.data() + (tile.j0 + c) * d_rel_;
        double dot = 0;
        for (int64_t e = 0; e < d_rel_; ++e) dot += static_cast<double>(a[r * d_rel_ + e]) * b[e];
        scores[r * ld + c] += static_cast<float>(dot);
      }
    }
  }

 private:
  float* QueryFeaturesIn(const ScoreTile& block) const {
    return block.scratch + block.rows * (d_ + RelativeTable::MaxLd(d_rel_));
  }

  const HeadRows q_;  // Owned by the problem, which outlives the modifier's use.
  const int64_t heads_, d_, d_rel_;
  const float scale_;
  const std::vector<double> frequencies_;  // f_n, n < d_rel / 2
  std::vector<double> step_sin_, step_cos_;
  std::vector<float> query_shift_;  // [H, D]: v, or v - u where q holds q + u
  std::vector<float> u_;            // [H, D] where q does not hold it, else empty
  std::vector<RelativeTable> w_r_;  // per head: rows c of W_r[h], width D
  const std::vector<float> key_features_;  // [Sk x d_rel]: R(query_offset - j)
};

class TransformerXl final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kTransformerXL; }
  absl::string_view description() const override {
    return "Relative sinusoid projected by W_R with global content (u) and position (v) biases "
           "(Dai et al. 2019); memory via query_offset.";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"d_rel", "int", "", "even, >= 2; required", {"encode", "attend"}},
            {"base", "double", "10000", "finite, > 0", {"encode", "attend"}},
            {"pos_bias_u", "tensor", "", "[H,D]", {"attend"}},
            {"pos_bias_v", "tensor", "", "[H,D]", {"attend"}},
            {"w_r", "tensor", "", "[H,d_rel,D]; optional for encode", {"encode", "attend"}},
            {"distances", "tensor", "", "[N] real distances", {"encode"}},
            {"q", "tensor", "", "[B,H,Sq,D]", {"attend"}},
            {"k", "tensor", "", "[B,H,Sk,D]", {"attend"}},
            {"v", "tensor", "", "[B,H,Sk,Dv]", {"attend"}}};
  }
  std::vector<InputSpec> attend_inputs() const override {
    return {{"q"}, {"k"}, {"v"}, {"pos_bias_u"}, {"pos_bias_v"}, {"w_r"}};
  }
  // The fast engine gets q, k, v unchanged (u is added as it copies the
  // queries); only the plain engine's q holds q + u, and Attend checks
  // those values itself.
  bool keeps_qkv_values() const override { return true; }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const int64_t d_rel, ResolveDRel(args.params));
    ATTN_ASSIGN_OR_RETURN(const double base,
                          ResolvePositive(args.params.base, kDefaultBase, "base"));
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    const AttentionProblem& p = prepared.problem;
    Tensor& u = args.inputs.at("pos_bias_u");
    Tensor& v = args.inputs.at("pos_bias_v");
    const Tensor& w_r = args.inputs.at("w_r");
    const std::string hd_text = absl::StrCat("[H=", p.heads, ",D=", p.d, "] to match q");
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"pos_bias_u", &u},
                                  std::pair<const char*, const Tensor*>{"pos_bias_v", &v}}) {
      ATTN_RETURN_IF_ERROR(ExpectRank(*t, name, 2, "[H,D]"));
      ATTN_RETURN_IF_ERROR(ExpectDim(*t, name, 0, p.heads, hd_text));
      ATTN_RETURN_IF_ERROR(ExpectDim(*t, name, 1, p.d, hd_text));
    }
    ATTN_RETURN_IF_ERROR(CheckWr(w_r, d_rel, p.heads, p.d));
    // For the plain engine u is folded into q: its q . k is then (q + u) . k.
    // The fast engine adds u as it copies each block's queries, on its own
    // threads (QueryBias), and q, k, v reach it unchanged.
    const bool fold_u = options.engine != Engine::kFast;
    if (fold_u) {
      const float* bias = u.data();
      float* q = prepared.problem.q.data();
      for (int64_t row = 0; row < p.batch * p.heads * p.sq; ++row) {
        const float* u_h = bias + (row / p.sq % p.heads) * p.d;
        for (int64_t e = 0; e < p.d; ++e) q[row * p.d + e] += u_h[e];
      }
    }
    // b_j = R(query_offset - j) for every key. Per pair n the step from one
    // key to the next is a fixed rotation by -f_n: each run of kAnchorRows
    // keys starts from sincos of its exact double angle and rotates in
    // double from there (within ~1e-14 of the direct sincos, far below the
    // float rounding of the table), a few multiplies per value.
    ATTN_RETURN_IF_ERROR(CheckOutputSize({p.sk, d_rel}, "R (per key)", options));
    const int64_t half = d_rel / 2;
    std::vector<double> frequencies(static_cast<size_t>(half));
    std::vector<double> step_sin(static_cast<size_t>(half)), step_cos(static_cast<size_t>(half));
    for (int64_t n = 0; n < half; ++n) {
      frequencies[n] = std::pow(base, -static_cast<double>(2 * n) / static_cast<double>(d_rel));
      ::sincos(frequencies[n], &step_sin[n], &step_cos[n]);
    }
    std::vector<float> key_features(static_cast<size_t>(p.sk * d_rel));
    constexpr int64_t kAnchorRows = 64;
    const int64_t runs = (p.sk + kAnchorRows - 1) / kAnchorRows;
    ParallelFor(runs, ThreadsFor(static_cast<double>(p.sk) * d_rel * 4, options), 1,
                [&](int64_t begin, int64_t end) {
                  std::vector<double> sine(static_cast<size_t>(half));
                  std::vector<double> cosine(static_cast<size_t>(half));
                  for (int64_t run = begin; run < end; ++run) {
                    const int64_t j0 = run * kAnchorRows;
                    const int64_t j1 = std::min(p.sk, j0 + kAnchorRows);
                    const double sigma = static_cast<double>(p.query_offset - j0);
                    for (int64_t n = 0; n < half; ++n) {
                      ::sincos(sigma * frequencies[n], &sine[n], &cosine[n]);
                    }
                    for (int64_t j = j0; j < j1; ++j) {
                      float* row = key_features.data() + j * d_rel;
                      for (int64_t n = 0; n < half; ++n) {
                        row[n] = static_cast<float>(sine[n]);
                        row[half + n] = static_cast<float>(cosine[n]);
                        // sigma - 1: turn by -f_n.
                        const double next_sine = sine[n] * step_cos[n] - cosine[n] * step_sin[n];
                        cosine[n] = cosine[n] * step_cos[n] + sine[n] * step_sin[n];
                        sine[n] = next_sine;
                      }
                    }
                  }
                });
    prepared.modifier = std::make_unique<TxlModifier>(p, u, v, w_r, std::move(key_features),
                                                      frequencies, fold_u);
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override {
    return {{"distances"}, {"w_r", /*required=*/false}};
  }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    ATTN_ASSIGN_OR_RETURN(const int64_t d_rel, ResolveDRel(args.params));
    ATTN_ASSIGN_OR_RETURN(const double base,
                          ResolvePositive(args.params.base, kDefaultBase, "base"));
    const Tensor& distances_in = args.inputs.at("distances");
    ATTN_RETURN_IF_ERROR(ExpectRank(distances_in, "distances", 1, "[N]"));
    const auto w_r = args.inputs.find("w_r");
    if (w_r != args.inputs.end()) ATTN_RETURN_IF_ERROR(CheckWr(w_r->second, d_rel, 0, 0));
    const int64_t count = distances_in.dim(0);
    if (w_r == args.inputs.end()) {
      ATTN_RETURN_IF_ERROR(CheckResultSize({{"rel_table", {count, d_rel}}}, options));
    } else {
      ATTN_RETURN_IF_ERROR(CheckResultSize(
          {{"rel_table", {count, d_rel}},
           {"rel_proj", {w_r->second.dim(0), count, w_r->second.dim(2)}}},
          options));
    }
    std::vector<double> distances(distances_in.values().begin(), distances_in.values().end());
    Tensor table({count, d_rel});
    std::vector<double> row(static_cast<size_t>(d_rel));
    for (int64_t n = 0; n < count; ++n) {
      ATTN_RETURN_IF_ERROR(CheckCancelled(options));
      TransformerXlSinusoid(distances[n], d_rel, base, row.data());
      for (int64_t c = 0; c < d_rel; ++c) table.data()[n * d_rel + c] = static_cast<float>(row[c]);
    }
    TensorMap outputs;
    outputs["rel_table"] = std::move(table);
    if (w_r != args.inputs.end()) {
      const int64_t heads = w_r->second.dim(0), d = w_r->second.dim(2);
      ATTN_RETURN_IF_ERROR(CheckOutputSize({heads, count, d}, "rel_proj", options));
      Tensor proj({heads, count, d});
      ProjectSinusoids(distances, w_r->second, base, options, proj.data());
      ATTN_RETURN_IF_ERROR(CheckCancelled(options));
      outputs["rel_proj"] = std::move(proj);
    }
    return outputs;
  }
};

}  // namespace

const PositionalMethod& TransformerXlMethod() {
  static const TransformerXl* const method = new TransformerXl();
  return *method;
}

}  // namespace attnserve::kernels
