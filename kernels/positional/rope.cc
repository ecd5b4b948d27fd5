// rope: rotary position embedding on q and k.
// Su et al. 2021, "RoFormer", section 3.4 (general form; interleaved pairs
// (2n, 2n+1) as in the public RoFormer code); the "half" layout pairs
// (n, n + r/2) as GPT-NeoX / LLaMA rotate_half. Position interpolation (linear):
// Chen et al. 2023, pos' = pos / s. NTK-aware scaling: base' = base * s^(r/(r-2)).
//   theta_n = base'^(-2n / r),  phi_n = pos' * theta_n   (double, 1.6)
//   x'[a] = x[a] cos(phi_n) - x[b] sin(phi_n)
//   x'[b] = x[b] cos(phi_n) + x[a] sin(phi_n)
// Dims r .. D-1 pass unchanged (partial rotary). Values are not rotated.
#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/isa.h"
#include "kernels/parallel.h"
#include "kernels/positional/common.h"
#include "kernels/positional/method.h"
#include "kernels/positional/tables.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {

void RopeAngles(const RopeConfig& config, double position, double* out) {
  const int64_t r = config.rotary_dim;
  double base = config.base;
  if (config.scaling == RopeScaling::kNtk) {
    base *= std::pow(config.scaling_factor,
                     static_cast<double>(r) / static_cast<double>(r - 2));
  }
  if (config.scaling == RopeScaling::kLinear) position /= config.scaling_factor;
  for (int64_t n = 0; n < r / 2; ++n) {
    const double theta = std::pow(base, -static_cast<double>(2 * n) / static_cast<double>(r));
    out[n] = position * theta;
  }
}

namespace {

constexpr double kDefaultBase = 10000;

// The index pair (a, b) rotated together as pair n.
inline void PairOf(const RopeConfig& config, int64_t n, int64_t* a, int64_t* b) {
  if (config.layout == RopeLayout::kInterleaved) {
    *a = 2 * n;
    *b = 2 * n + 1;
  } else {
    *a = n;
    *b = n + config.rotary_dim / 2;
  }
}

// Validates the parameters for head size d and fills the config.
absl::StatusOr<RopeConfig> MakeConfig(const MethodParams& params, int64_t d) {
  RopeConfig config;
  config.layout = params.rope_layout;
  config.scaling = params.rope_scaling;
  ATTN_ASSIGN_OR_RETURN(config.base, ResolvePositive(params.base, kDefaultBase, "base"));
  // api.md: scaling_factor, when set, must be > 0 even if scaling is none.
  ATTN_ASSIGN_OR_RETURN(config.scaling_factor,
                        ResolvePositive(params.scaling_factor, 1.0, "scaling_factor"));
  if (!params.rotary_dim.has_value()) {
    if (d % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rotary_dim: unset means D, and D=", d,
          " is odd; rotation needs pairs (set an even rotary_dim <= D)"));
    }
    config.rotary_dim = d;
  } else {
    const int64_t r = *params.rotary_dim;
    if (r < 2 || r > d || r % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("rotary_dim: must be even with 2 <= rotary_dim <= D=", d, ", got ", r));
    }
    config.rotary_dim = r;
  }
  if (config.scaling == RopeScaling::kNtk && config.rotary_dim == 2) {
    return absl::InvalidArgumentError(
        "rotary_dim: NTK scaling needs rotary_dim > 2 (base * s^(r/(r-2)) is undefined at r=2)");
  }
  return config;
}

// Row turning on tables laid out per rotated dimension e (ExpandRun):
//   out[e] = in[e] * C[e] + in[partner(e)] * S[e],
// C[a] = C[b] = cos(phi_n), S[a] = -sin(phi_n), S[b] = sin(phi_n) for pair
// n = (a, b): (2n, 2n+1) interleaved, (n, n + half) in the half layout. One
// rounding order everywhere (the product with S, then a fused multiply-add
// where the ISA has one: kernels/simd/micro_kernels.h's TurnRow), so every
// path that turns a row gives the same bits. In place (in == out) or not;
// dims past 2 * half are left alone.
void TurnRow(const float* c, const float* s, int64_t half, bool half_layout, const float* in,
             float* out) {
  Kernels().turn_row(c, s, half, half_layout, in, out);
}

// Runs of positions share the work of their cosines and sines: sincos of
// the run's first position's exact double angle (1.6: phi_n = position' *
// theta_n, formed as RopeAngles does), then one step by the fixed rotation
// theta_n per position in double (within ~1e-14 of the direct sincos, far
// below float rounding), stored as float.
constexpr int64_t kAnchorRows = 64;

class RopeSteps {
 public:
  explicit RopeSteps(const RopeConfig& config)
      : half_(config.rotary_dim / 2),
        linear_(config.scaling == RopeScaling::kLinear),
        scaling_factor_(config.scaling_factor),
        thetas_(static_cast<size_t>(half_)),
        step_cos_(static_cast<size_t>(half_)),
        step_sin_(static_cast<size_t>(half_)) {
    // theta_n once (RopeAngles at position 1 gives them, NTK included);
    // linear scaling divides the position, so a step of one position turns
    // by theta_n / s.
    RopeConfig unscaled = config;
    if (linear_) unscaled.scaling = RopeScaling::kNone;
    RopeAngles(unscaled, 1.0, thetas_.data());
    for (int64_t n = 0; n < half_; ++n) {
      ::sincos(linear_ ? thetas_[n] / scaling_factor_ : thetas_[n], &step_sin_[n], &step_cos_[n]);
    }
  }

  // Rows [0, p1 - p0) of cosines and sines (`half` floats each): positions
  // p0 .. p1 - 1, p1 - p0 <= kAnchorRows.
  void FillRun(int64_t p0, int64_t p1, float* cosines, float* sines) const {
    double sine[kMaxPairs], cosine[kMaxPairs];
    double position = static_cast<double>(p0);
    if (linear_) position /= scaling_factor_;
    for (int64_t n0 = 0; n0 < half_; n0 += kMaxPairs) {
      const int64_t pairs = std::min(kMaxPairs, half_ - n0);
      for (int64_t n = 0; n < pairs; ++n) {
        ::sincos(position * thetas_[n0 + n], &sine[n], &cosine[n]);
      }
      for (int64_t s = 0; s < p1 - p0; ++s) {
        for (int64_t n = 0; n < pairs; ++n) {
          cosines[s * half_ + n0 + n] = static_cast<float>(cosine[n]);
          sines[s * half_ + n0 + n] = static_cast<float>(sine[n]);
          const double next_sine = sine[n] * step_cos_[n0 + n] + cosine[n] * step_sin_[n0 + n];
          cosine[n] = cosine[n] * step_cos_[n0 + n] - sine[n] * step_sin_[n0 + n];
          sine[n] = next_sine;
        }
      }
    }
  }

 private:
  static constexpr int64_t kMaxPairs = 128;  // Pairs per pass (stack arrays).

  const int64_t half_;
  const bool linear_;
  const double scaling_factor_;
  std::vector<double> thetas_, step_cos_, step_sin_;
};

// Position ranges [lo, hi), sorted and merged where they overlap or touch
// (self-attention, a KV cache: one table serves q and k), empty ones left
// out.
std::vector<std::pair<int64_t, int64_t>> MergedRanges(
    std::vector<std::pair<int64_t, int64_t>> ranges) {
  ranges.erase(std::remove_if(ranges.begin(), ranges.end(),
                              [](const auto& r) { return r.second <= r.first; }),
               ranges.end());
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<int64_t, int64_t>> merged;
  for (const auto& range : ranges) {
    if (!merged.empty() && range.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, range.second);
    } else {
      merged.push_back(range);
    }
  }
  return merged;
}

// The runs of at most kAnchorRows positions that tile the ranges.
std::vector<std::pair<int64_t, int64_t>> AnchorRuns(
    const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (const auto& [lo, hi] : ranges) {
    for (int64_t p0 = lo; p0 < hi; p0 += kAnchorRows) {
      runs.emplace_back(p0, std::min(hi, p0 + kAnchorRows));
    }
  }
  return runs;
}

// Rows [0, rows) of cosines and sines (half floats each, FillRun) as the C
// and S rows of TurnRow, 2 * half floats each.
void ExpandRun(const RopeConfig& config, const float* cosines, const float* sines, int64_t rows,
               float* c, float* s) {
  const int64_t half = config.rotary_dim / 2;
  for (int64_t row = 0; row < rows; ++row) {
    float* c_row = c + row * 2 * half;
    float* s_row = s + row * 2 * half;
    for (int64_t n = 0; n < half; ++n) {
      int64_t a = 0, b = 0;
      PairOf(config, n, &a, &b);
      c_row[a] = c_row[b] = cosines[row * half + n];
      s_row[a] = -sines[row * half + n];
      s_row[b] = sines[row * half + n];
    }
  }
}

// One tensor to turn: `outer` blocks of `count` rows of d floats, row s of
// each block at position first_position + s.
struct RotationTarget {
  float* data = nullptr;
  int64_t first_position = 0, count = 0;
};

// Turns every row of the targets (d floats each) by its position, in one
// parallel loop over the anchor runs of their positions: a run fills its
// cosines and sines, then turns the rows of every target at those
// positions. One thread team for the whole call (a team per step cost as
// much as the work at S = 128, and a wait for a time slice each on a busy
// machine); no table beyond a run's. (Encode, and attend on the plain
// engine; the fast engine turns rows as it reads them, RopeModifier.)
void RotateByPosition(const RopeConfig& config, const std::vector<RotationTarget>& targets,
                      int64_t outer, int64_t d, const ComputeOptions& options) {
  const int64_t half = config.rotary_dim / 2;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const RotationTarget& t : targets) {
    ranges.emplace_back(t.first_position, t.first_position + t.count);
  }
  const std::vector<std::pair<int64_t, int64_t>> runs = AnchorRuns(MergedRanges(ranges));
  const RopeSteps steps(config);
  double rows = 0;
  for (const RotationTarget& t : targets) rows += static_cast<double>(outer * t.count);
  // The turning is memory-bound: a second thread gains little until the
  // work is well past ThreadsFor's threshold (at H=8, D=64, S=128: 20 us on
  // one thread, 27 us on two), so half a unit per pair turned.
  const double work = rows * static_cast<double>(half) / 2;
  ParallelFor(static_cast<int64_t>(runs.size()), ThreadsFor(work, options), 1,
              [&](int64_t begin, int64_t end) {
                std::vector<float> cosines(static_cast<size_t>(kAnchorRows * half));
                std::vector<float> sines(static_cast<size_t>(kAnchorRows * half));
                std::vector<float> c(static_cast<size_t>(kAnchorRows * 2 * half));
                std::vector<float> sn(static_cast<size_t>(kAnchorRows * 2 * half));
                const bool half_layout = config.layout == RopeLayout::kHalf;
                for (int64_t run = begin; run < end; ++run) {
                  // The caller's Encode reports the cancellation.
                  if (IsCancelled(options)) return;
                  const auto [p0, p1] = runs[static_cast<size_t>(run)];
                  steps.FillRun(p0, p1, cosines.data(), sines.data());
                  ExpandRun(config, cosines.data(), sines.data(), p1 - p0, c.data(), sn.data());
                  for (const RotationTarget& t : targets) {
                    // The target's rows whose positions fall in [p0, p1).
                    const int64_t s0 = std::max(p0, t.first_position) - t.first_position;
                    const int64_t s1 = std::min(p1, t.first_position + t.count) - t.first_position;
                    for (int64_t b = 0; b < outer; ++b) {
                      for (int64_t s = s0; s < s1; ++s) {
                        const int64_t table_row = t.first_position + s - p0;
                        float* row = t.data + (b * t.count + s) * d;
                        TurnRow(c.data() + table_row * 2 * half, sn.data() + table_row * 2 * half,
                                half, half_layout, row, row);
                      }
                    }
                  }
                }
              });
}

// The fast engine's RoPE: q and k stay as sent, and the engine turns each
// row as it reads it (TurnRows: keys as it packs them, queries into its
// block copy), on the thread that then uses it, instead of a pass over q
// and k before the call. The C and S rows of every query and key position
// are made once per call (O(S * rotary_dim) floats) by the same anchor runs
// and TurnRow as RotateByPosition, so the turned rows are bit for bit the
// ones it gives.
class RopeModifier final : public ScaledDotProduct {
 public:
  RopeModifier(const AttentionProblem& p, const RopeConfig& config, const ComputeOptions& options)
      : ScaledDotProduct(p.scale),
        d_(p.d),
        half_(config.rotary_dim / 2),
        half_layout_(config.layout == RopeLayout::kHalf),
        ranges_(MergedRanges({{p.query_offset, p.query_offset + p.sq}, {0, p.sk}})) {
    int64_t rows = 0;
    for (const auto& [lo, hi] : ranges_) {
      range_starts_.push_back(rows);
      rows += hi - lo;
    }
    const int64_t width = 2 * half_;
    cos_.resize(static_cast<size_t>(rows * width));
    sin_.resize(static_cast<size_t>(rows * width));
    const std::vector<std::pair<int64_t, int64_t>> runs = AnchorRuns(ranges_);
    const RopeSteps steps(config);
    ParallelFor(static_cast<int64_t>(runs.size()),
                ThreadsFor(static_cast<double>(rows * half_) * 4, options), 1,
                [&](int64_t begin, int64_t end) {
                  std::vector<float> cosines(static_cast<size_t>(kAnchorRows * half_));
                  std::vector<float> sines(static_cast<size_t>(kAnchorRows * half_));
                  for (int64_t run = begin; run < end; ++run) {
                    const auto [p0, p1] = runs[static_cast<size_t>(run)];
                    steps.FillRun(p0, p1, cosines.data(), sines.data());
                    const int64_t row = TableRow(p0);
                    ExpandRun(config, cosines.data(), sines.data(), p1 - p0,
                              cos_.data() + row * width, sin_.data() + row * width);
                  }
                });
  }

  bool turns_rows() const override { return true; }

  void TurnRows(int64_t first_position, int64_t count, const float* src, int64_t lds, float* dst,
                int64_t ldd) const override {
    const int64_t width = 2 * half_;
    for (int64_t r = 0; r < count; ++r) {
      const float* in = src + r * lds;
      float* out = dst + r * ldd;
      const int64_t row = TableRow(first_position + r);
      TurnRow(cos_.data() + row * width, sin_.data() + row * width, half_, half_layout_, in, out);
      std::copy(in + width, in + d_,
                out + width);  // Past rotary_dim: unchanged.
    }
  }

 private:
  // The table row of `position` (inside one of the ranges).
  int64_t TableRow(int64_t position) const {
    size_t n = 0;
    while (n + 1 < ranges_.size() && position >= ranges_[n + 1].first) ++n;
    return range_starts_[n] + position - ranges_[n].first;
  }

  const int64_t d_, half_;
  const bool half_layout_;
  const std::vector<std::pair<int64_t, int64_t>> ranges_;
  std::vector<int64_t> range_starts_;  // The table row of each range's first position.
  std::vector<float> cos_, sin_;       // [rows x rotary_dim]: TurnRow's C and S
};

class Rope final : public PositionalMethod {
 public:
  MethodKind kind() const override { return MethodKind::kRope; }
  absl::string_view description() const override {
    return "Rotary position embedding on q and k (Su et al. 2021), interleaved or half layout, "
           "partial rotary_dim, linear (position interpolation) or NTK-aware scaling.";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"layout", "enum", "interleaved", "interleaved | half", {"encode", "attend"}},
            {"base", "double", "10000", "finite, > 0", {"encode", "attend"}},
            {"scaling", "enum", "none", "none | linear | ntk", {"encode", "attend"}},
            {"scaling_factor", "double", "1", "finite, > 0 (checked even when scaling = none)",
             {"encode", "attend"}},
            {"rotary_dim", "int", "D", "even, 2 <= rotary_dim <= D; > 2 with ntk",
             {"encode", "attend"}},
            {"offset", "int", "0", ">= 0; position of row 0", {"encode"}},
            {"x", "tensor", "", "[B,H,S,D]", {"encode"}},
            {"q", "tensor", "", "[B,H,Sq,D]", {"attend"}},
            {"k", "tensor", "", "[B,H,Sk,D]", {"attend"}},
            {"v", "tensor", "", "[B,H,Sk,Dv]", {"attend"}}};
  }
  std::vector<InputSpec> attend_inputs() const override { return {{"q"}, {"k"}, {"v"}}; }
  // The fast engine turns q and k as it reads them (RopeModifier); only the
  // plain engine's are turned in place, and Attend checks those itself.
  bool keeps_qkv_values() const override { return true; }

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    AttentionProblem& p = prepared.problem;
    ATTN_ASSIGN_OR_RETURN(const RopeConfig config, MakeConfig(args.params, p.d));
    if (options.engine == Engine::kFast) {
      prepared.modifier = std::make_unique<RopeModifier>(p, config, options);
      return prepared;
    }
    RotateByPosition(config,
                     {{p.q.data(), p.query_offset, p.sq}, {p.k.data(), 0, p.sk}},
                     p.batch * p.heads, p.d, options);
    prepared.modifier = std::make_unique<ScaledDotProduct>(p.scale);
    return prepared;
  }

  bool has_encode() const override { return true; }
  std::vector<InputSpec> encode_inputs() const override { return {{"x"}}; }

  absl::StatusOr<TensorMap> Encode(EncodeArgs& args,
                                   const ComputeOptions& options) const override {
    Tensor& x = args.inputs.at("x");
    ATTN_RETURN_IF_ERROR(ExpectRank(x, "x", 4, "[B,H,S,D]"));
    ATTN_ASSIGN_OR_RETURN(const RopeConfig config, MakeConfig(args.params, x.dim(3)));
    ATTN_ASSIGN_OR_RETURN(const int64_t offset, ResolveOffset(args.offset));
    ATTN_RETURN_IF_ERROR(CheckResultSize({{"y", x.shape()}}, options));
    RotateByPosition(config, {{x.data(), offset, x.dim(2)}}, x.dim(0) * x.dim(1), x.dim(3),
                     options);
    ATTN_RETURN_IF_ERROR(CheckCancelled(options));
    TensorMap outputs;
    outputs["y"] = std::move(x);
    return outputs;
  }
};

}  // namespace

const PositionalMethod& RopeMethod() {
  static const Rope* const method = new Rope();
  return *method;
}

}  // namespace attnserve::kernels
