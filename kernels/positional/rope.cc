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

void RotateWithAngles(const RopeConfig& config, const double* angles, float* row) {
  for (int64_t n = 0; n < config.rotary_dim / 2; ++n) {
    int64_t a = 0, b = 0;
    PairOf(config, n, &a, &b);
    const double c = std::cos(angles[n]), s = std::sin(angles[n]);
    const double xa = row[a], xb = row[b];
    row[a] = static_cast<float>(xa * c - xb * s);
    row[b] = static_cast<float>(xb * c + xa * s);
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

// One tensor to turn: `outer` blocks of `count` rows of d floats, row s of
// each block at position first_position + s.
struct RotationTarget {
  float* data = nullptr;
  int64_t first_position = 0, count = 0;
};

// Pair n of a row turned by the angle whose cosine and sine are cos_row[n]
// and sin_row[n], for each layout; `half` pairs.
inline void RotateHalfLayoutRow(const float* cos_row, const float* sin_row, int64_t half,
                                float* values) {
  // Pairs (n, n + half): two contiguous runs, a vectorised loop.
  float* a = values;
  float* b = values + half;
  for (int64_t n = 0; n < half; ++n) {
    const float xa = a[n], xb = b[n];
    a[n] = xa * cos_row[n] - xb * sin_row[n];
    b[n] = xb * cos_row[n] + xa * sin_row[n];
  }
}

inline void RotateInterleavedRow(const float* cos_row, const float* sin_row, int64_t half,
                                 float* values) {
  for (int64_t n = 0; n < half; ++n) {
    const float xa = values[2 * n], xb = values[2 * n + 1];
    values[2 * n] = xa * cos_row[n] - xb * sin_row[n];
    values[2 * n + 1] = xb * cos_row[n] + xa * sin_row[n];
  }
}

// Turns every row of the targets (d floats each) by its position, in one
// parallel loop over runs of kAnchorRows positions: a run takes cos(phi_n)
// and sin(phi_n) of its positions (sincos of its first position's exact
// double angle (1.6: phi_n = position' * theta_n, formed as RopeAngles
// does), then one step by the fixed rotation theta_n per position in
// double: within ~1e-14 of the direct sincos, far below float rounding),
// as float, then turns the rows of every target at those positions. Runs
// start at the lowest position of the targets' positions, taken as one
// range when they overlap or touch (self-attention, a KV cache: one table
// serves q and k) and as one range each otherwise. One thread team for the
// whole call (a team per step cost as much as the work at S = 128, and a
// wait for a time slice each on a busy machine); no table beyond a run's.
void RotateByPosition(const RopeConfig& config, const std::vector<RotationTarget>& targets,
                      int64_t outer, int64_t d, const ComputeOptions& options) {
  constexpr int64_t kAnchorRows = 64;
  const int64_t half = config.rotary_dim / 2;
  // Position ranges [lo, hi), sorted and merged where they overlap or touch.
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const RotationTarget& t : targets) {
    if (t.count > 0) ranges.emplace_back(t.first_position, t.first_position + t.count);
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<int64_t, int64_t>> merged;
  for (const auto& range : ranges) {
    if (!merged.empty() && range.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, range.second);
    } else {
      merged.push_back(range);
    }
  }
  std::vector<int64_t> run_starts, run_ends;
  for (const auto& [lo, hi] : merged) {
    for (int64_t p0 = lo; p0 < hi; p0 += kAnchorRows) {
      run_starts.push_back(p0);
      run_ends.push_back(std::min(hi, p0 + kAnchorRows));
    }
  }
  // theta_n once (RopeAngles at position 1 gives them, NTK included); linear
  // scaling divides the position, so a step of one position turns by
  // theta_n / s.
  std::vector<double> thetas(static_cast<size_t>(half));
  RopeConfig unscaled = config;
  const bool linear = config.scaling == RopeScaling::kLinear;
  if (linear) unscaled.scaling = RopeScaling::kNone;
  RopeAngles(unscaled, 1.0, thetas.data());
  std::vector<double> step_cos(static_cast<size_t>(half)), step_sin(static_cast<size_t>(half));
  for (int64_t n = 0; n < half; ++n) {
    ::sincos(linear ? thetas[n] / config.scaling_factor : thetas[n], &step_sin[n], &step_cos[n]);
  }
  double rows = 0;
  for (const RotationTarget& t : targets) rows += static_cast<double>(outer * t.count);
  // The turning is memory-bound: a second thread gains little until the
  // work is well past ThreadsFor's threshold (at H=8, D=64, S=128: 20 us on
  // one thread, 27 us on two), so half a unit per pair turned.
  const double work = rows * static_cast<double>(half) / 2;
  const int64_t runs = static_cast<int64_t>(run_starts.size());
  ParallelFor(runs, ThreadsFor(work, options), 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sine(static_cast<size_t>(half)), cosine(static_cast<size_t>(half));
    std::vector<float> cosines(static_cast<size_t>(kAnchorRows * half));
    std::vector<float> sines(static_cast<size_t>(kAnchorRows * half));
    for (int64_t run = begin; run < end; ++run) {
      const int64_t p0 = run_starts[run], p1 = run_ends[run];
      double position = static_cast<double>(p0);
      if (linear) position /= config.scaling_factor;
      for (int64_t n = 0; n < half; ++n) ::sincos(position * thetas[n], &sine[n], &cosine[n]);
      for (int64_t s = 0; s < p1 - p0; ++s) {
        for (int64_t n = 0; n < half; ++n) {
          cosines[s * half + n] = static_cast<float>(cosine[n]);
          sines[s * half + n] = static_cast<float>(sine[n]);
          const double next_sine = sine[n] * step_cos[n] + cosine[n] * step_sin[n];
          cosine[n] = cosine[n] * step_cos[n] - sine[n] * step_sin[n];
          sine[n] = next_sine;
        }
      }
      const auto rotate_rows = [&](auto rotate_row) {
        for (const RotationTarget& t : targets) {
          // The target's rows whose positions fall in [p0, p1).
          const int64_t s0 = std::max(p0, t.first_position) - t.first_position;
          const int64_t s1 = std::min(p1, t.first_position + t.count) - t.first_position;
          for (int64_t b = 0; b < outer; ++b) {
            for (int64_t s = s0; s < s1; ++s) {
              const int64_t table_row = t.first_position + s - p0;
              rotate_row(cosines.data() + table_row * half, sines.data() + table_row * half, half,
                         t.data + (b * t.count + s) * d);
            }
          }
        }
      };
      if (config.layout == RopeLayout::kHalf) {
        rotate_rows(RotateHalfLayoutRow);
      } else {
        rotate_rows(RotateInterleavedRow);
      }
    }
  });
}

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

  absl::StatusOr<PreparedAttention> PrepareAttend(AttendArgs& args,
                                                  const ComputeOptions& options) const override {
    PreparedAttention prepared;
    ATTN_ASSIGN_OR_RETURN(prepared.problem, TakeQkvProblem(args, options));
    AttentionProblem& p = prepared.problem;
    ATTN_ASSIGN_OR_RETURN(const RopeConfig config, MakeConfig(args.params, p.d));
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
    if (args.offset < 0) {
      return absl::InvalidArgumentError(absl::StrCat("offset: must be >= 0, got ", args.offset));
    }
    RotateByPosition(config, {{x.data(), args.offset, x.dim(2)}}, x.dim(0) * x.dim(1), x.dim(3),
                     options);
    TensorMap outputs;
    outputs["y"] = std::move(x);
    return outputs;
  }
};

}  // namespace

void RopeRotateRow(const RopeConfig& config, double position, float* row) {
  std::vector<double> angles(static_cast<size_t>(config.rotary_dim / 2));
  RopeAngles(config, position, angles.data());
  RotateWithAngles(config, angles.data(), row);
}

const PositionalMethod& RopeMethod() {
  static const Rope* const method = new Rope();
  return *method;
}

}  // namespace attnserve::kernels
