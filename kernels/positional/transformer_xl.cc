// transformer_xl: relative encoding with global content and position biases.
// Dai et al. 2019, "Transformer-XL", section 3.3 (terms (a)-(d)); as the
// public RelPartialLearnableMultiHeadAttn (r_w_bias = u, r_r_bias = v,
// r_net = W_R, PositionalEmbedding with concatenated sin | cos halves):
//   f_n        = base^(-2n / d_rel)
//   R(r)       = [sin(r f_0) .. sin(r f_{d_rel/2-1}), cos(r f_0) .. cos(r f_{d_rel/2-1})]
//   rel_h(r)   = R(r) @ w_r[h]                          [D]
//   score(i,j) = scale * ((q_i + u_h) . k_j + (q_i + v_h) . rel_h(q_pos(i) - k_pos(j)))
// The original's pad-and-reshape "relative shift" is an implementation
// technique; here rel_h is tabulated once per distance the call can meet.
// Non-causal (negative distances) is an EXTENSION (positional-methods.md 2.5).
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/micro_kernels.h"
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

// (q_i + u) . k_j is the engine's own product: u is added to q in place.
// (q_i + v) . rel_h(delta) = (W_r[h] (q_i + v)) . R(delta), as rel_h = R W_r[h].
// With delta = q_pos(i) - j = rho_i + sigma_j around a reference position
// p_ref of the query block (rho_i = q_pos(i) - p_ref, sigma_j = p_ref - j),
// the angle addition formulas give
//   qr_i . R(rho_i + sigma_j) = qr'_i . R(sigma_j),
// qr'_i being qr_i = W_r[h] (q_i + v) with each (sin, cos) pair n turned by
// rho_i f_n. So per query block qr' ([rows x d_rel]), and per tile one
// product with the rows of R for the tile's keys, added straight into the
// scores: as Q K^T, no [rows x distances] buffer. R is tabulated once per
// call, shared by the heads ((Sq + Sk + 32) x d_rel floats); p_ref is chosen
// so that a tile's first R row starts a packed panel.
class TxlModifier final : public ScoreModifier {
 public:
  // sinusoids: row n is R(-(min_relative + n)), i.e. rows ordered by
  // k_pos - q_pos = min_relative + n; frequencies: f_n.
  TxlModifier(const AttentionProblem& p, const Tensor& u, const Tensor& v, const Tensor& w_r,
              const std::vector<float>& sinusoids, int64_t rows,
              const std::vector<double>& frequencies)
      : q_(p.q_rows()),
        heads_(p.heads),
        sq_(p.sq),
        d_(p.d),
        d_rel_(w_r.dim(1)),
        scale_(static_cast<float>(p.scale)),
        frequencies_(frequencies),
        v_minus_u_(static_cast<size_t>(p.heads * p.d)),
        sinusoids_(sinusoids.data(), rows, d_rel_) {
    for (int64_t n = 0; n < p.heads * p.d; ++n) v_minus_u_[n] = v.data()[n] - u.data()[n];
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

  int64_t ScratchFloats(int64_t rows) const override {
    return rows * (d_ + RelativeTable::MaxLd(d_rel_));
  }

  void BeginQueryBlock(const ScoreTile& block) const override {
    float* qv = block.scratch;  // [rows x D]: q + v (q holds q + u)
    float* qr = qv + block.rows * d_;
    const RelativeTable::Window all = w_r_[block.h].WindowOf(0, d_rel_ - 1);
    const float* shift = v_minus_u_.data() + block.h * d_;
    for (int64_t r = 0; r < block.rows; ++r) {
      const float* q = q_.Row(block.b * heads_ + block.h, block.i0 + r);
      for (int64_t e = 0; e < d_; ++e) qv[r * d_ + e] = q[e] + shift[e];
    }
    w_r_[block.h].Multiply(all, block.rows, qv, d_, qr);
    // Turn pair n of row r by rho_r f_n, rho_r = ReferenceShift + r: sincos
    // at the first row, then one rotation by f_n per row, in double.
    const int64_t half = d_rel_ / 2;
    std::vector<double> sine(static_cast<size_t>(half)), cosine(static_cast<size_t>(half));
    const double rho = static_cast<double>(ReferenceShift(block.i0));
    for (int64_t n = 0; n < half; ++n) ::sincos(rho * frequencies_[n], &sine[n], &cosine[n]);
    for (int64_t r = 0; r < block.rows; ++r) {
      float* row = qr + r * all.ld;
      for (int64_t n = 0; n < half; ++n) {
        const double a = row[n], b = row[half + n];  // the sin and cos weights
        row[n] = static_cast<float>(scale_ * (a * cosine[n] - b * sine[n]));
        row[half + n] = static_cast<float>(scale_ * (a * sine[n] + b * cosine[n]));
        const double next_sine = sine[n] * step_cos_[n] + cosine[n] * step_sin_[n];
        cosine[n] = cosine[n] * step_cos_[n] - sine[n] * step_sin_[n];
        sine[n] = next_sine;
      }
    }
  }

  void ModifyScores(const ScoreTile& tile, float* scores, int64_t ld) const override {
    const float* qr = tile.scratch + tile.rows * d_;
    const int64_t ld_qr = w_r_[tile.h].WindowOf(0, d_rel_ - 1).ld;
    // R rows for keys j0.. around p_ref = q_pos(i0) - shift: sigma = p_ref - j
    // is table row j - p_ref - min_relative = j0 - i0 + shift + Sq - 1 + c.
    RelativeTable::Window w;
    w.base = tile.j0 - tile.i0 + ReferenceShift(tile.i0) + sq_ - 1;
    w.ld = simd::RoundUpToPanel(tile.cols);
    sinusoids_.MultiplyAdd(w, tile.rows, qr, ld_qr, scores, ld);
  }

 private:
  // q_pos(i0) - p_ref in [0, 16): makes j0 - p_ref - min_relative a multiple
  // of 16 for the tiles' j0 (multiples of 16).
  int64_t ReferenceShift(int64_t i0) const {
    return ((i0 - sq_ + 1) % simd::kPanel + simd::kPanel) % simd::kPanel;
  }

  const HeadRows q_;  // Owned by the problem, which outlives the modifier's use.
  const int64_t heads_, sq_, d_, d_rel_;
  const float scale_;
  const std::vector<double> frequencies_;  // f_n, n < d_rel / 2
  std::vector<double> step_sin_, step_cos_;
  std::vector<float> v_minus_u_;    // [H, D]
  std::vector<RelativeTable> w_r_;  // per head: rows c of W_r[h], width D
  const RelativeTable sinusoids_;   // rows by k_pos - q_pos, width d_rel
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
    // Fold u into q: the engine's q . k is then (q + u) . k.
    {
      const float* bias = u.data();
      float* q = prepared.problem.q.data();
      for (int64_t row = 0; row < p.batch * p.heads * p.sq; ++row) {
        const float* u_h = bias + (row / p.sq % p.heads) * p.d;
        for (int64_t e = 0; e < p.d; ++e) q[row * p.d + e] += u_h[e];
      }
    }
    // R for every k_pos - q_pos the call can meet, smallest first, and 32
    // rows past them: a tile's panels, taken around p_ref, may reach there.
    const int64_t count = p.sq + p.sk + 32;
    ATTN_RETURN_IF_ERROR(
        CheckOutputSize({p.sq + p.sk - 1, d_rel}, "R (per distance)", options));
    const int64_t min_relative = -(p.query_offset + p.sq - 1);
    std::vector<float> sinusoids(static_cast<size_t>(count * d_rel));
    const int64_t half = d_rel / 2;
    std::vector<double> frequencies(static_cast<size_t>(half));
    for (int64_t n = 0; n < half; ++n) {
      frequencies[n] = std::pow(base, -static_cast<double>(2 * n) / static_cast<double>(d_rel));
    }
    ParallelFor(count, ThreadsFor(static_cast<double>(count) * d_rel * 32, options), 64,
                [&](int64_t begin, int64_t end) {
                  for (int64_t n = begin; n < end; ++n) {
                    // As TransformerXlSinusoid, with the frequencies once.
                    const double r = static_cast<double>(-(min_relative + n));
                    float* row = sinusoids.data() + n * d_rel;
                    for (int64_t c = 0; c < half; ++c) {
                      double sine = 0, cosine = 0;
                      ::sincos(r * frequencies[c], &sine, &cosine);
                      row[c] = static_cast<float>(sine);
                      row[half + c] = static_cast<float>(cosine);
                    }
                  }
                });
    prepared.modifier =
        std::make_unique<TxlModifier>(p, u, v, w_r, sinusoids, count, frequencies);
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
    ATTN_RETURN_IF_ERROR(CheckOutputSize({count, d_rel}, "rel_table", options));
    std::vector<double> distances(distances_in.values().begin(), distances_in.values().end());
    Tensor table({count, d_rel});
    std::vector<double> row(static_cast<size_t>(d_rel));
    for (int64_t n = 0; n < count; ++n) {
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
