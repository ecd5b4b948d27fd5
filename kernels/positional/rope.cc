// rope: rotary position embedding on q and k.
// Su et al. 2021, "RoFormer", section 3.4 (general form; interleaved pairs
// (2n, 2n+1) as in the public RoFormer code); the "half" layout pairs
// (n, n + r/2) as GPT-NeoX / LLaMA rotate_half. Position interpolation (linear):
// Chen et al. 2023, pos' = pos / s. NTK-aware scaling: base' = base * s^(r/(r-2)).
//   theta_n = base'^(-2n / r),  phi_n = pos' * theta_n   (double, 1.6)
//   x'[a] = x[a] cos(phi_n) - x[b] sin(phi_n)
//   x'[b] = x[b] cos(phi_n) + x[a] sin(phi_n)
// Dims r .. D-1 pass unchanged (partial rotary). Values are not rotated.
// Context-extension scalings (attention-variants.md 7; the names and
// defaults of Hugging Face transformers' modeling_rope_utils.py):
//   llama3 (Llama 3.1): per pair, f_n kept below wavelength L0/high, f_n / s
//     above L0/low, a linear blend in between;
//   yarn (Peng et al. 2023, "YaRN", section 3.2 "NTK-by-parts" and 3.4's
//     attention scaling): f_n blended with f_n / s by a ramp over the pairs
//     between the correction dims of beta_fast and beta_slow, and cos, sin
//     multiplied by attention_factor (default 0.1 ln(s) + 1, eq. 22);
//   dynamic_ntk: the NTK base from the call's length L when L > L0:
//     base' = base * (s L / L0 - (s - 1))^(r/(r-2)).
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
namespace {
constexpr double kTwoPi = 2 * 3.14159265358979323846;  // Python's 2 * math.pi
}  // namespace

void RopeFrequencies(const RopeConfig& config, double* out) {
  const int64_t r = config.rotary_dim;
  const double s = config.scaling_factor;
  const double exponent = static_cast<double>(r) / static_cast<double>(r - 2);
  double base = config.base;
  if (config.scaling == RopeScaling::kNtk) base *= std::pow(s, exponent);
  const double l0 = static_cast<double>(config.original_max_position);
  if (config.scaling == RopeScaling::kDynamicNtk && config.length > config.original_max_position) {
    base *= std::pow(s * static_cast<double>(config.length) / l0 - (s - 1), exponent);
  }
  // YaRN's correction range: the pair index at which a wavelength fits n
  // times into L0, c(n) = r ln(L0 / (2 pi n)) / (2 ln base), widened to whole
  // dims and kept in 0 .. r-1 (in double: no integer conversion of a value
  // that may be huge when base is near 1). A beta near 0 or near the double
  // range makes the logarithm infinite, and the ramp then inf / inf; c held
  // within +-1e18 gives the ramp's limit instead (every finite c that
  // matters is far inside).
  double lo = 0, span = 1;
  if (config.scaling == RopeScaling::kYarn) {
    const auto correction = [&](double rotations) {
      return std::clamp(static_cast<double>(r) * std::log(l0 / (kTwoPi * rotations)) /
                            (2 * std::log(base)),
                        -1e18, 1e18);
    };
    lo = std::max(std::floor(correction(config.beta_fast)), 0.0);
    const double hi =
        std::min(std::ceil(correction(config.beta_slow)), static_cast<double>(r - 1));
    span = lo == hi ? (hi + 0.001) - lo : hi - lo;
  }
  for (int64_t n = 0; n < r / 2; ++n) {
    const double f = std::pow(base, -static_cast<double>(2 * n) / static_cast<double>(r));
    switch (config.scaling) {
      case RopeScaling::kLlama3: {
        const double wavelength = kTwoPi / f;
        if (wavelength < l0 / config.high_freq_factor) {
          out[n] = f;
        } else if (wavelength > l0 / config.low_freq_factor) {
          out[n] = f / s;
        } else {
          const double a = (l0 / wavelength - config.low_freq_factor) /
                           (config.high_freq_factor - config.low_freq_factor);
          out[n] = (1 - a) * f / s + a * f;
        }
        break;
      }
      case RopeScaling::kYarn: {
        const double ramp = std::clamp((static_cast<double>(n) - lo) / span, 0.0, 1.0);
        const double e = 1 - ramp;  // The share of the unscaled frequency.
        out[n] = (f / s) * (1 - e) + f * e;
        break;
      }
      case RopeScaling::kNone:
      case RopeScaling::kLinear:  // The position is divided instead (RopeSteps).
      case RopeScaling::kNtk:
      case RopeScaling::kDynamicNtk: out[n] = f; break;
    }
  }
}

double RopeMagnitude(const RopeConfig& config) {
  return config.scaling == RopeScaling::kYarn ? config.attention_factor : 1.0;
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

absl::string_view ScalingName(RopeScaling scaling) {
  switch (scaling) {
    case RopeScaling::kNone: return "none";
    case RopeScaling::kLinear: return "linear";
    case RopeScaling::kNtk: return "ntk";
    case RopeScaling::kYarn: return "yarn";
    case RopeScaling::kLlama3: return "llama3";
    case RopeScaling::kDynamicNtk: return "dynamic_ntk";
  }
  return "unknown";
}

// The parameters of yarn, llama3 and dynamic_ntk (attention-variants.md 7);
// a scaling's unused ones are ignored, as api.md ignores unused scalars.
absl::Status ResolveContextExtension(const MethodParams& params, RopeConfig& config) {
  const RopeScaling scaling = config.scaling;
  if (scaling != RopeScaling::kYarn && scaling != RopeScaling::kLlama3 &&
      scaling != RopeScaling::kDynamicNtk) {
    return absl::OkStatus();
  }
  const absl::string_view name = ScalingName(scaling);
  if (!params.original_max_position.has_value() || *params.original_max_position < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "original_max_position: required by the ", name,
        " scaling (the pre-trained context length L0), must be >= 1, ",
        params.original_max_position.has_value()
            ? absl::StrCat("got ", *params.original_max_position)
            : std::string("not set")));
  }
  config.original_max_position = *params.original_max_position;
  // ResolvePositive already refused NaN, infinities and values <= 0.
  if (config.scaling_factor < 1) {
    return absl::InvalidArgumentError(absl::StrCat("scaling_factor: must be >= 1 with the ", name,
                                                   " scaling, got ", config.scaling_factor));
  }
  switch (scaling) {
    case RopeScaling::kYarn: {
      ATTN_ASSIGN_OR_RETURN(config.beta_fast,
                            ResolvePositive(params.beta_fast, 32.0, "beta_fast"));
      ATTN_ASSIGN_OR_RETURN(config.beta_slow,
                            ResolvePositive(params.beta_slow, 1.0, "beta_slow"));
      ATTN_ASSIGN_OR_RETURN(
          config.attention_factor,
          ResolvePositive(params.attention_factor, 0.1 * std::log(config.scaling_factor) + 1,
                          "attention_factor"));
      // The correction range divides by ln(base).
      if (config.base == 1) {
        return absl::InvalidArgumentError(
            "base: the yarn scaling needs base != 1 (its correction range divides by ln(base))");
      }
      break;
    }
    case RopeScaling::kLlama3: {
      ATTN_ASSIGN_OR_RETURN(config.low_freq_factor,
                            ResolvePositive(params.low_freq_factor, 1.0, "low_freq_factor"));
      ATTN_ASSIGN_OR_RETURN(config.high_freq_factor,
                            ResolvePositive(params.high_freq_factor, 4.0, "high_freq_factor"));
      if (!(config.low_freq_factor < config.high_freq_factor)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "high_freq_factor: must be > low_freq_factor=", config.low_freq_factor, ", got ",
            config.high_freq_factor));
      }
      break;
    }
    case RopeScaling::kDynamicNtk:
      if (config.rotary_dim == 2) {
        return absl::InvalidArgumentError(
            "rotary_dim: the dynamic_ntk scaling needs rotary_dim > 2 (base' has the exponent "
            "r/(r-2))");
      }
      break;
    case RopeScaling::kNone:
    case RopeScaling::kLinear:
    case RopeScaling::kNtk: break;
  }
  return absl::OkStatus();
}

// Validates the parameters for head size d and fills the config; `length`
// is the call's L of dynamic_ntk (Attend: max(Sk, query_offset + Sq),
// Encode: offset + S).
absl::StatusOr<RopeConfig> MakeConfig(const MethodParams& params, int64_t d, int64_t length) {
  RopeConfig config;
  config.layout = params.rope_layout;
  config.scaling = params.rope_scaling;
  config.length = length;
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
  ATTN_RETURN_IF_ERROR(ResolveContextExtension(params, config));
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
// f'_n, position / s for linear scaling), then one step by the fixed rotation
// theta_n per position in double (within ~1e-14 of the direct sincos, far
// below float rounding), stored as float.
constexpr int64_t kAnchorRows = 64;

class RopeSteps {
 public:
  explicit RopeSteps(const RopeConfig& config)
      : half_(config.rotary_dim / 2),
        linear_(config.scaling == RopeScaling::kLinear),
        scaling_factor_(config.scaling_factor),
        magnitude_(RopeMagnitude(config)),
        thetas_(static_cast<size_t>(half_)),
        step_cos_(static_cast<size_t>(half_)),
        step_sin_(static_cast<size_t>(half_)) {
    // f'_n once (every scaling's frequencies); linear scaling divides the
    // position, so a step of one position turns by theta_n / s.
    RopeFrequencies(config, thetas_.data());
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
          // YaRN's attention_factor (1 otherwise: the same bits) in double,
          // then one rounding to float.
          cosines[s * half_ + n0 + n] = static_cast<float>(cosine[n] * magnitude_);
          sines[s * half_ + n0 + n] = static_cast<float>(sine[n] * magnitude_);
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
  const double magnitude_;  // RopeMagnitude: cos and sin are multiplied by it.
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
  int64_t outer = 0;  // the target's own head count (k under GQA); 0: the call's
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
  for (const RotationTarget& t : targets) {
    rows += static_cast<double>((t.outer > 0 ? t.outer : outer) * t.count);
  }
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
                    const int64_t heads = t.outer > 0 ? t.outer : outer;
                    for (int64_t b = 0; b < heads; ++b) {
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
           "partial rotary_dim, linear (position interpolation), NTK-aware, YaRN, Llama 3 or "
           "dynamic NTK scaling.";
  }
  std::vector<ParameterInfo> parameters() const override {
    return {{"layout", "enum", "interleaved", "interleaved | half", {"encode", "attend"}},
            {"base", "double", "10000", "finite, > 0; != 1 with yarn", {"encode", "attend"}},
            {"scaling", "enum", "none", "none | linear | ntk | yarn | llama3 | dynamic_ntk",
             {"encode", "attend"}},
            {"scaling_factor", "double", "1",
             "finite, > 0 (checked even when scaling = none); >= 1 with yarn, llama3, "
             "dynamic_ntk",
             {"encode", "attend"}},
            {"rotary_dim", "int", "D", "even, 2 <= rotary_dim <= D; > 2 with ntk, dynamic_ntk",
             {"encode", "attend"}},
            {"original_max_position", "int", "",
             "L0, the pre-trained context length: required (>= 1) by yarn, llama3, dynamic_ntk; "
             "dynamic_ntk rescales the base when max(Sk, query_offset + Sq) (encode: offset + S) "
             "> L0",
             {"encode", "attend"}},
            {"beta_fast", "double", "32", "yarn: finite, > 0", {"encode", "attend"}},
            {"beta_slow", "double", "1", "yarn: finite, > 0", {"encode", "attend"}},
            {"attention_factor", "double", "0.1*ln(scaling_factor)+1",
             "yarn: finite, > 0; multiplies cos and sin of the rotated dims", {"encode", "attend"}},
            {"low_freq_factor", "double", "1", "llama3: finite, > 0", {"encode", "attend"}},
            {"high_freq_factor", "double", "4", "llama3: finite, > low_freq_factor",
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
    // dynamic_ntk's L: the longest position range of the call (both ends
    // are at most 2^53 + S: no overflow).
    const int64_t length = std::max(p.sk, p.query_offset + p.sq);
    ATTN_ASSIGN_OR_RETURN(const RopeConfig config, MakeConfig(args.params, p.d, length));
    if (options.engine == Engine::kFast) {
      prepared.modifier = std::make_unique<RopeModifier>(p, config, options);
      return prepared;
    }
    // k has B * H_kv heads (grouped-query attention).
    RotateByPosition(config,
                     {{p.q.data(), p.query_offset, p.sq},
                      {p.k.data(), 0, p.sk, p.batch * p.KvHeads()}},
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
    ATTN_ASSIGN_OR_RETURN(const int64_t offset, ResolveOffset(args.offset));
    ATTN_ASSIGN_OR_RETURN(const RopeConfig config,
                          MakeConfig(args.params, x.dim(3), offset + x.dim(2)));
    ATTN_RETURN_IF_ERROR(CheckResultSize({{"y", x.shape()}}, options));
    RotateByPosition(config, {{x.data(), offset, x.dim(2)}}, x.dim(0) * x.dim(1), x.dim(3),
                     options);
    ATTN_RETURN_IF_ERROR(CheckCancelled(options));
    // Attend checks its output; Encode's y can leave float32 too (x near
    // its limit turned by 45 degrees, a huge attention_factor).
    if (!AllFinite(x.data(), x.size())) {
      return absl::InvalidArgumentError(
          "x, attention_factor: the rotated values overflow float32 (y is not finite); scale "
          "the inputs down");
    }
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
