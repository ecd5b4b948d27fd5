// RoPE (positional-methods.md 2.4): the rotation itself, both layouts,
// partial rotary_dim, linear and NTK scaling, relative-position property and
// the parameter rules; the context-extension scalings yarn, llama3 and
// dynamic_ntk of attention-variants.md 7 against Hugging Face's formulas.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/positional/tables.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::RopeLayout;
using kernels::RopeScaling;
using kernels::Tensor;

kernels::EncodeArgs RopeEncode(Tensor x, int64_t offset, kernels::MethodParams params = {}) {
  kernels::EncodeArgs args;
  args.method = MethodKind::kRope;
  args.params = params;
  args.offset = offset;
  args.inputs["x"] = std::move(x);
  return args;
}

kernels::MethodParams Params(RopeLayout layout, RopeScaling scaling = RopeScaling::kNone,
                             std::optional<double> factor = std::nullopt,
                             std::optional<int64_t> rotary_dim = std::nullopt) {
  kernels::MethodParams params;
  params.rope_layout = layout;
  params.rope_scaling = scaling;
  params.scaling_factor = factor;
  params.rotary_dim = rotary_dim;
  return params;
}

// A scaling of attention-variants.md 7 with L0 = l0 and the defaults.
kernels::MethodParams Extended(RopeScaling scaling, double factor, int64_t l0,
                               RopeLayout layout = RopeLayout::kInterleaved,
                               std::optional<int64_t> rotary_dim = std::nullopt) {
  kernels::MethodParams params = Params(layout, scaling, factor, rotary_dim);
  params.original_max_position = l0;
  return params;
}

std::vector<float> Rotate(const Tensor& x, int64_t offset, const kernels::MethodParams& params) {
  auto got = kernels::Encode(RopeEncode(x, offset, params), {});
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return {};
  return got->outputs.at("y").TakeValues();
}

absl::StatusCode EncodeCode(const Tensor& x, const kernels::MethodParams& params,
                            int64_t offset = 0) {
  const kernels::EncodeArgs args = RopeEncode(x, offset, params);
  const absl::StatusCode kernel = kernels::Encode(args, {}).status().code();
  EXPECT_EQ(ReferenceEncode(args).status().code(), kernel) << "reference disagrees";
  return kernel;
}

TEST(RopeTest, RotatesInterleavedPairsByPositionTimesTheta) {
  // D=4, base 10000: theta_0 = 1, theta_1 = 10000^(-1/2) = 0.01; position 3.
  const std::vector<float> y =
      Rotate(Tensor({1, 1, 1, 4}, {1, 0, 1, 0}), 3, Params(RopeLayout::kInterleaved));
  ASSERT_EQ(y.size(), 4u);
  EXPECT_NEAR(y[0], std::cos(3.0), 1e-7);
  EXPECT_NEAR(y[1], std::sin(3.0), 1e-7);
  EXPECT_NEAR(y[2], std::cos(0.03), 1e-7);
  EXPECT_NEAR(y[3], std::sin(0.03), 1e-7);
  // x[b] enters with the opposite sign: (0, 1) -> (-sin, cos).
  const std::vector<float> z =
      Rotate(Tensor({1, 1, 1, 4}, {0, 1, 0, 2}), 3, Params(RopeLayout::kInterleaved));
  EXPECT_NEAR(z[0], -std::sin(3.0), 1e-7);
  EXPECT_NEAR(z[1], std::cos(3.0), 1e-7);
  EXPECT_NEAR(z[2], -2 * std::sin(0.03), 1e-7);
  EXPECT_NEAR(z[3], 2 * std::cos(0.03), 1e-7);
}

TEST(RopeTest, HalfLayoutPairsDimNWithDimNPlusHalf) {
  // Pairs (0, 2) at angle 3 and (1, 3) at angle 0.03.
  const std::vector<float> y =
      Rotate(Tensor({1, 1, 1, 4}, {1, 1, 0, 0}), 3, Params(RopeLayout::kHalf));
  ASSERT_EQ(y.size(), 4u);
  EXPECT_NEAR(y[0], std::cos(3.0), 1e-7);
  EXPECT_NEAR(y[1], std::cos(0.03), 1e-7);
  EXPECT_NEAR(y[2], std::sin(3.0), 1e-7);
  EXPECT_NEAR(y[3], std::sin(0.03), 1e-7);
}

TEST(RopeTest, RotationIsNormPreserving) {
  std::mt19937 rng(11);
  const Tensor x = RandomTensor({2, 2, 7, 12}, rng);
  for (RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalf}) {
    for (std::optional<int64_t> rotary_dim : {std::optional<int64_t>(), std::optional<int64_t>(6)}) {
      const std::vector<float> y =
          Rotate(x, 123, Params(layout, RopeScaling::kLinear, 3.0, rotary_dim));
      ASSERT_EQ(y.size(), x.values().size());
      bool changed = false;
      for (size_t row = 0; row < y.size() / 12; ++row) {
        double before = 0, after = 0;
        for (size_t e = 0; e < 12; ++e) {
          before += std::pow(x.values()[row * 12 + e], 2);
          after += std::pow(y[row * 12 + e], 2);
          changed = changed || y[row * 12 + e] != x.values()[row * 12 + e];
        }
        EXPECT_NEAR(std::sqrt(after), std::sqrt(before), 1e-6 * std::sqrt(before)) << row;
      }
      EXPECT_TRUE(changed);
    }
  }
}

TEST(RopeTest, ScoresDependOnlyOnQueryMinusKeyPosition) {
  std::mt19937 rng(12);
  const Tensor q = RandomTensor({1, 1, 1, 16}, rng);
  const Tensor k = RandomTensor({1, 1, 1, 16}, rng);
  const auto score = [&](int64_t q_pos, int64_t k_pos, const kernels::MethodParams& params) {
    const std::vector<float> a = Rotate(q, q_pos, params), b = Rotate(k, k_pos, params);
    double dot = 0;
    for (size_t e = 0; e < a.size(); ++e) dot += static_cast<double>(a[e]) * b[e];
    return dot;
  };
  for (const kernels::MethodParams& params :
       {Params(RopeLayout::kInterleaved), Params(RopeLayout::kHalf),
        Params(RopeLayout::kHalf, RopeScaling::kLinear, 4.0),
        Params(RopeLayout::kInterleaved, RopeScaling::kNtk, 8.0, 10)}) {
    const double base = score(9, 4, params);
    for (int64_t shift : {1, 17, 1000}) {
      EXPECT_NEAR(score(9 + shift, 4 + shift, params), base, 2e-5) << "shift " << shift;
    }
    // Not a constant: a different distance gives a different score.
    EXPECT_GT(std::abs(score(9, 2, params) - base), 1e-3);
  }
}

TEST(RopeTest, AttendScoresDependOnlyOnRelativePosition) {
  // Same q and k rows, queries at offset 10 vs keys 0..: shifting every key
  // and query by the same amount is the same as a query_offset that keeps
  // q_pos - k_pos, so compare rows with equal distances.
  kernels::AttendArgs args;
  args.method = MethodKind::kRope;
  std::mt19937 rng(13);
  const Tensor q_row = RandomTensor({1, 1, 1, 8}, rng);
  const Tensor k_row = RandomTensor({1, 1, 1, 8}, rng);
  std::vector<float> q, k;
  for (int i = 0; i < 2; ++i) q.insert(q.end(), q_row.values().begin(), q_row.values().end());
  for (int j = 0; j < 6; ++j) k.insert(k.end(), k_row.values().begin(), k_row.values().end());
  args.inputs["q"] = Tensor({1, 1, 2, 8}, q);
  args.inputs["k"] = Tensor({1, 1, 6, 8}, k);
  std::vector<float> v(6);
  for (int j = 0; j < 6; ++j) v[j] = static_cast<float>(j);
  args.inputs["v"] = Tensor({1, 1, 6, 1}, v);
  args.query_offset = 7;
  args.return_probs = true;
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  // Query 1 (position 8) against keys 1..5 sees the distances query 0
  // (position 7) sees against keys 0..4, so its scores are shifted by one key;
  // the logits ratio p(1, j+1) / p(1, 1) equals p(0, j) / p(0, 0).
  const absl::Span<const float> p = got->probs->values();
  for (int j = 1; j < 5; ++j) {
    EXPECT_NEAR(std::log(p[6 + j + 1] / p[6 + 1]), std::log(p[j] / p[0]), 1e-5) << j;
  }
}

TEST(RopeTest, HalfAndInterleavedCoincideForD2) {
  std::mt19937 rng(14);
  const Tensor x = RandomTensor({2, 1, 5, 2}, rng);
  const std::vector<float> a = Rotate(x, 7, Params(RopeLayout::kInterleaved));
  const std::vector<float> b = Rotate(x, 7, Params(RopeLayout::kHalf));
  ASSERT_EQ(a.size(), 20u);
  for (size_t n = 0; n < a.size(); ++n) EXPECT_FLOAT_EQ(a[n], b[n]) << n;
  EXPECT_NE(a, x.values());
}

TEST(RopeTest, PartialRotaryLeavesDimsFromRotaryDimUntouched) {
  std::mt19937 rng(15);
  const Tensor x = RandomTensor({1, 2, 3, 10}, rng);
  for (RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalf}) {
    const std::vector<float> y = Rotate(x, 5, Params(layout, RopeScaling::kNone, {}, 4));
    ASSERT_EQ(y.size(), 60u);
    for (size_t row = 0; row < 6; ++row) {
      for (size_t e = 4; e < 10; ++e) EXPECT_EQ(y[row * 10 + e], x.values()[row * 10 + e]);
      bool rotated = false;
      for (size_t e = 0; e < 4; ++e) rotated = rotated || y[row * 10 + e] != x.values()[row * 10 + e];
      EXPECT_TRUE(rotated) << row;
    }
    // Rotary dims 0..3 equal a full rotation of a D=4 vector (theta over r, not D).
    Tensor head({1, 1, 1, 4}, {x.values()[10], x.values()[11], x.values()[12], x.values()[13]});
    const std::vector<float> full = Rotate(head, 6, Params(layout));
    for (size_t e = 0; e < 4; ++e) EXPECT_FLOAT_EQ(y[10 + e], full[e]) << e;
  }
}

TEST(RopeTest, LinearScalingDividesThePosition) {
  std::mt19937 rng(16);
  const Tensor x = RandomTensor({1, 1, 3, 8}, rng);
  // Rows at 8, 9, 10 under factor 4 are rows at 2, 2.25, 2.5 unscaled: compare row 0.
  const std::vector<float> scaled =
      Rotate(x, 8, Params(RopeLayout::kHalf, RopeScaling::kLinear, 4.0));
  const std::vector<float> plain = Rotate(x, 2, Params(RopeLayout::kHalf));
  for (size_t e = 0; e < 8; ++e) EXPECT_NEAR(scaled[e], plain[e], 1e-6) << e;
}

TEST(RopeTest, NtkScalingMultipliesTheBaseBySToTheRotaryDimOverRotaryDimMinusTwo) {
  std::mt19937 rng(17);
  const Tensor x = RandomTensor({1, 1, 2, 8}, rng);
  // r = 6: base' = 10000 * 2^(6/4).
  const std::vector<float> ntk =
      Rotate(x, 50, Params(RopeLayout::kInterleaved, RopeScaling::kNtk, 2.0, 6));
  kernels::MethodParams rebased = Params(RopeLayout::kInterleaved, RopeScaling::kNone, {}, 6);
  rebased.base = 10000 * std::pow(2.0, 1.5);
  const std::vector<float> plain = Rotate(x, 50, rebased);
  for (size_t n = 0; n < plain.size(); ++n) EXPECT_NEAR(ntk[n], plain[n], 1e-6) << n;
  const std::vector<float> unscaled = Rotate(x, 50, Params(RopeLayout::kInterleaved, {}, {}, 6));
  EXPECT_GT(std::abs(unscaled[2] - ntk[2]) + std::abs(unscaled[3] - ntk[3]), 1e-3);
}

TEST(RopeTest, NtkWithRotaryDimTwoIsInvalid) {
  const Tensor d2({1, 1, 1, 2}, {1, 0});
  EXPECT_EQ(EncodeCode(d2, Params(RopeLayout::kInterleaved, RopeScaling::kNtk, 2.0)),
            absl::StatusCode::kInvalidArgument);
  const Tensor d8({1, 1, 1, 8}, std::vector<float>(8, 1.0f));
  EXPECT_EQ(EncodeCode(d8, Params(RopeLayout::kHalf, RopeScaling::kNtk, 2.0, 2)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeCode(d8, Params(RopeLayout::kHalf, RopeScaling::kNtk, 2.0, 4)),
            absl::StatusCode::kOk);
  // Linear scaling with rotary_dim 2 is fine.
  EXPECT_EQ(EncodeCode(d2, Params(RopeLayout::kInterleaved, RopeScaling::kLinear, 2.0)),
            absl::StatusCode::kOk);
}

TEST(RopeTest, OddHeadSizeNeedsAnExplicitEvenRotaryDim) {
  const Tensor d5({1, 1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  EXPECT_EQ(EncodeCode(d5, Params(RopeLayout::kInterleaved)), absl::StatusCode::kInvalidArgument);
  const std::vector<float> y = Rotate(d5, 1, Params(RopeLayout::kHalf, {}, {}, 4));
  ASSERT_EQ(y.size(), 10u);
  EXPECT_EQ(y[4], 5.0f);
  EXPECT_EQ(y[9], 10.0f);
  // Attend too.
  kernels::AttendArgs args;
  args.method = MethodKind::kRope;
  args.inputs["q"] = d5;
  args.inputs["k"] = d5;
  args.inputs["v"] = d5;
  EXPECT_EQ(kernels::Attend(args, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceAttend(args).status().code(), absl::StatusCode::kInvalidArgument);
  args.params.rotary_dim = 4;
  EXPECT_TRUE(kernels::Attend(args, {}).ok());
}

TEST(RopeTest, RotaryDimMustBeEvenAndBetweenTwoAndD) {
  const Tensor d10({1, 1, 1, 10}, std::vector<float>(10, 1.0f));
  for (int64_t rotary_dim : {-2, 0, 1, 3, 9, 12}) {
    EXPECT_EQ(EncodeCode(d10, Params(RopeLayout::kInterleaved, {}, {}, rotary_dim)),
              absl::StatusCode::kInvalidArgument)
        << rotary_dim;
  }
  for (int64_t rotary_dim : {2, 8, 10}) {
    EXPECT_EQ(EncodeCode(d10, Params(RopeLayout::kInterleaved, {}, {}, rotary_dim)),
              absl::StatusCode::kOk)
        << rotary_dim;
  }
}

TEST(RopeTest, ScalingFactorAndBaseMustBePositiveEvenWithoutScaling) {
  const Tensor x({1, 1, 1, 4}, {1, 2, 3, 4});
  for (double bad : {0.0, -1.0, std::nan("")}) {
    EXPECT_EQ(EncodeCode(x, Params(RopeLayout::kInterleaved, RopeScaling::kNone, bad)),
              absl::StatusCode::kInvalidArgument)
        << bad;
    kernels::MethodParams params;
    params.base = bad;
    EXPECT_EQ(EncodeCode(x, params), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RopeTest, NegativeEncodeOffsetIsInvalid) {
  const Tensor x({1, 1, 1, 4}, {1, 2, 3, 4});
  EXPECT_EQ(EncodeCode(x, Params(RopeLayout::kInterleaved), -1),
            absl::StatusCode::kInvalidArgument);
}

TEST(RopeTest, ValuesAreNotRotated) {
  // With q = 0 every score is 0, so out is the plain mean of the values.
  kernels::AttendArgs args;
  args.method = MethodKind::kRope;
  args.inputs["q"] = Tensor({1, 1, 1, 2}, {0, 0});
  args.inputs["k"] = Tensor({1, 1, 2, 2}, {1, 2, 3, 4});
  args.inputs["v"] = Tensor({1, 1, 2, 2}, {1, 0, 0, 3});
  auto got = kernels::Attend(args, {});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FLOAT_EQ(got->out.values()[0], 0.5f);
  EXPECT_FLOAT_EQ(got->out.values()[1], 1.5f);
}

// The fast engine turns q and k as it reads them (keys while packing, a
// query block's rows into its copy) instead of in a pass before the call:
// its output must be, bit for bit, that of method none on q and k turned by
// Encode (the pass the plain engine and encode use), for every layout and
// scaling, partial rotary, a query offset far from the keys (two position
// ranges: a KV cache), a key count that ends inside a 16-key panel, several
// query blocks, causal and with probs.
TEST(RopeTest, FastEngineTurnsRowsExactlyAsEncodeDoes) {
  struct Case {
    kernels::MethodParams params;
    int64_t sq, sk, d, query_offset;
    bool causal, probs;
  };
  const Case cases[] = {
      {Params(RopeLayout::kInterleaved), 200, 200, 64, 0, true, false},
      {Params(RopeLayout::kHalf), 37, 101, 16, 64, false, false},
      {Params(RopeLayout::kHalf, RopeScaling::kLinear, 4.0), 5, 77, 32, 1000000, false, true},
      {Params(RopeLayout::kInterleaved, RopeScaling::kNtk, 8.0, 10), 130, 130, 12, 0, true, true},
      {Params(RopeLayout::kHalf, RopeScaling::kNone, std::nullopt, 6), 3, 9, 7, 6, false, false},
      {Extended(RopeScaling::kYarn, 4, 16, RopeLayout::kHalf, 6), 37, 101, 10, 64, true, true},
      {Extended(RopeScaling::kLlama3, 8, 40), 20, 70, 16, 50, false, false},
      // Dynamic NTK: Encode's L of q (query_offset + Sq) and of k (Sk) equal
      // Attend's max of both, so the bases agree.
      {Extended(RopeScaling::kDynamicNtk, 3, 30, RopeLayout::kHalf), 20, 90, 12, 70, true, false},
  };
  std::mt19937 rng(29);
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "sq=" << c.sq << " sk=" << c.sk << " d=" << c.d
                                      << " query_offset=" << c.query_offset);
    const int64_t batch = 2, heads = 3;
    const Tensor q = RandomTensor({batch, heads, c.sq, c.d}, rng);
    const Tensor k = RandomTensor({batch, heads, c.sk, c.d}, rng);
    const Tensor v = RandomTensor({batch, heads, c.sk, 5}, rng);
    kernels::AttendArgs rope;
    rope.method = MethodKind::kRope;
    rope.params = c.params;
    rope.query_offset = c.query_offset;
    rope.causal = c.causal;
    rope.return_probs = c.probs;
    rope.inputs = {{"q", q}, {"k", k}, {"v", v}};
    kernels::AttendArgs turned = rope;
    turned.method = MethodKind::kNone;
    turned.params = {};
    // Encode turns [B,H,S,D] rows at offset + s: the queries' positions
    // start at query_offset, the keys' at 0.
    turned.inputs["q"] = Tensor(q.shape(), Rotate(q, c.query_offset, c.params));
    turned.inputs["k"] = Tensor(k.shape(), Rotate(k, 0, c.params));
    kernels::ComputeOptions options;
    options.threads = 2;
    auto got = kernels::Attend(rope, options);
    auto want = kernels::Attend(turned, options);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got->out.values(), want->out.values());
    if (c.probs) {
      ASSERT_EQ(got->probs->values(), want->probs->values());
    }
  }
}

// ---- attention-variants.md 7: yarn, llama3, dynamic_ntk ----

// The RopeConfig of a scaling with every parameter given (tables.h).
kernels::RopeConfig Config(RopeScaling scaling, double base, double factor, int64_t rotary_dim,
                           int64_t original_max_position) {
  kernels::RopeConfig config;
  config.base = base;
  config.scaling = scaling;
  config.scaling_factor = factor;
  config.rotary_dim = rotary_dim;
  config.original_max_position = original_max_position;
  config.attention_factor = 0.1 * std::log(factor) + 1;
  return config;
}

// inv_freq as Hugging Face transformers' modeling_rope_utils.py computes it
// (_compute_default/_dynamic_ntk/_yarn/_llama3_parameters), written again
// here from those formulas in their own shape (1 / base^(2i/dim), the
// wavelength masks, find_correction_range, linear_ramp_factor) and in
// double, independent of rope.cc. seq_len: dynamic NTK's length.
std::vector<double> HfInvFreq(const kernels::RopeConfig& c, int64_t seq_len) {
  const int64_t dim = c.rotary_dim;
  const double factor = c.scaling_factor;
  const double l0 = static_cast<double>(c.original_max_position);
  double base = c.base;
  if (c.scaling == RopeScaling::kDynamicNtk && static_cast<double>(seq_len) > l0) {
    base = base * std::pow((factor * static_cast<double>(seq_len) / l0) - (factor - 1),
                           static_cast<double>(dim) / static_cast<double>(dim - 2));
  }
  std::vector<double> inv_freq;
  for (int64_t i = 0; i < dim; i += 2) {
    inv_freq.push_back(1.0 / std::pow(base, static_cast<double>(i) / static_cast<double>(dim)));
  }
  if (c.scaling == RopeScaling::kLlama3) {
    const double low_freq_wavelen = l0 / c.low_freq_factor;
    const double high_freq_wavelen = l0 / c.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2 * M_PI / f;
      const double inv_freq_llama = wavelen > low_freq_wavelen ? f / factor : f;
      const double smooth_factor =
          (l0 / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
      const double smoothed =
          (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama;
      const bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      f = is_medium ? smoothed : inv_freq_llama;
    }
  }
  if (c.scaling == RopeScaling::kYarn) {
    const auto find_correction_dim = [&](double num_rotations) {
      return (static_cast<double>(dim) * std::log(l0 / (num_rotations * 2 * M_PI))) /
             (2 * std::log(base));
    };
    const double low = std::max(std::floor(find_correction_dim(c.beta_fast)), 0.0);
    double high =
        std::min(std::ceil(find_correction_dim(c.beta_slow)), static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    for (size_t i = 0; i < inv_freq.size(); ++i) {
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double extrapolation_factor = 1 - ramp;
      const double interpolation = inv_freq[i] / factor;
      inv_freq[i] = interpolation * (1 - extrapolation_factor) +
                    inv_freq[i] * extrapolation_factor;
    }
  }
  return inv_freq;
}

std::vector<double> KernelFrequencies(const kernels::RopeConfig& config) {
  std::vector<double> out(static_cast<size_t>(config.rotary_dim / 2));
  kernels::RopeFrequencies(config, out.data());
  return out;
}

void ExpectFrequenciesMatchHf(const kernels::RopeConfig& config, int64_t seq_len = 0) {
  kernels::RopeConfig with_length = config;
  with_length.length = seq_len;
  const std::vector<double> got = KernelFrequencies(with_length);
  const std::vector<double> want = HfInvFreq(config, seq_len);
  ASSERT_EQ(got.size(), want.size());
  for (size_t n = 0; n < got.size(); ++n) {
    EXPECT_NEAR(got[n], want[n], 1e-14 * want[n]) << "pair " << n;
  }
}

TEST(RopeTest, Llama3FrequenciesFollowTheWavelengthBands) {
  // Llama 3.1 8B: base 500000, head_dim 128, factor 8, L0 8192, low 1, high 4.
  kernels::RopeConfig llama = Config(RopeScaling::kLlama3, 500000, 8, 128, 8192);
  ExpectFrequenciesMatchHf(llama);
  // All three bands occur: kept (wavelength < 2048), divided (> 8192), blended.
  const std::vector<double> f = KernelFrequencies(llama);
  int kept = 0, divided = 0, blended = 0;
  for (int64_t n = 0; n < 64; ++n) {
    const double plain = std::pow(500000.0, -static_cast<double>(2 * n) / 128);
    if (f[n] == plain) {
      ++kept;
    } else if (std::abs(f[n] - plain / 8) <= 1e-15 * plain) {
      ++divided;
    } else {
      EXPECT_GT(f[n], plain / 8) << n;
      EXPECT_LT(f[n], plain) << n;
      ++blended;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
  // Explicit factors, other bases and a partial rotary width.
  kernels::RopeConfig other = Config(RopeScaling::kLlama3, 10000, 4, 14, 64);
  other.low_freq_factor = 2;
  other.high_freq_factor = 8;
  ExpectFrequenciesMatchHf(other);
  other.low_freq_factor = 0.5;
  other.high_freq_factor = 1.5;
  other.scaling_factor = 1;  // s = 1: every band is the plain frequency.
  ExpectFrequenciesMatchHf(other);
}

TEST(RopeTest, YarnFrequenciesFollowTheRampBetweenTheCorrectionDims) {
  // Qwen2.5 / DeepSeek-style: head_dim 128, factor 4, L0 32768, betas 32, 1.
  kernels::RopeConfig qwen = Config(RopeScaling::kYarn, 1000000, 4, 128, 32768);
  ExpectFrequenciesMatchHf(qwen);
  const std::vector<double> f = KernelFrequencies(qwen);
  int ramped = 0;
  for (int64_t n = 0; n < 64; ++n) {
    const double plain = std::pow(1000000.0, -static_cast<double>(2 * n) / 128);
    if (f[n] != plain && std::abs(f[n] - plain / 4) > 1e-15 * plain) ++ramped;
  }
  EXPECT_GT(ramped, 0);
  EXPECT_EQ(f[0], 1.0);                                        // Below lo: kept.
  EXPECT_NEAR(f[63], std::pow(1e6, -126.0 / 128) / 4, 1e-30);  // Above hi: divided.
  for (const auto& [beta_fast, beta_slow] :
       {std::pair<double, double>{16, 2}, {8, 0.5}, {1, 32} /* lo > hi */}) {
    kernels::RopeConfig c = Config(RopeScaling::kYarn, 10000, 3, 10, 128);
    c.beta_fast = beta_fast;
    c.beta_slow = beta_slow;
    SCOPED_TRACE(::testing::Message() << beta_fast << " " << beta_slow);
    ExpectFrequenciesMatchHf(c);
  }
  ExpectFrequenciesMatchHf(Config(RopeScaling::kYarn, 10000, 8, 8, 512));  // Partial rotary.
  // Betas at the ends of the double range: c(n) is infinite in the formula;
  // the frequencies stay finite, between f_n / s and f_n.
  for (const auto& [beta_fast, beta_slow] :
       {std::pair<double, double>{5e-324, 1}, {1.7e308, 1}, {32, 5e-324}, {32, 1.7e308}}) {
    kernels::RopeConfig c = Config(RopeScaling::kYarn, 10000, 3, 10, 128);
    c.beta_fast = beta_fast;
    c.beta_slow = beta_slow;
    const std::vector<double> extreme = KernelFrequencies(c);
    for (int64_t n = 0; n < 5; ++n) {
      const double plain = std::pow(10000.0, -static_cast<double>(2 * n) / 10);
      EXPECT_GE(extreme[n], plain / 3 * (1 - 1e-15)) << beta_fast << " " << beta_slow << " " << n;
      EXPECT_LE(extreme[n], plain * (1 + 1e-15)) << beta_fast << " " << beta_slow << " " << n;
    }
  }
}

TEST(RopeTest, YarnRampWithLoEqualToHiUsesHiPlusAThousandth) {
  // L0 = 6 < 2 pi: c(beta_slow = 1) is just below 0, so hi = ceil(c) = 0 and
  // lo = max(floor(c(32)), 0) = 0: the ramp is i / 0.001, so pair 0 keeps
  // f_0 and every other pair is divided by s.
  const kernels::RopeConfig c = Config(RopeScaling::kYarn, 10000, 4, 8, 6);
  ExpectFrequenciesMatchHf(c);
  const std::vector<double> f = KernelFrequencies(c);
  EXPECT_EQ(f[0], 1.0);
  for (int64_t n = 1; n < 4; ++n) {
    EXPECT_NEAR(f[n], std::pow(10000.0, -static_cast<double>(2 * n) / 8) / 4, 1e-18) << n;
  }
  // Both at the top: c(beta_fast) in [r-1, r), so lo = hi = r - 1 = 3 and
  // every pair (i <= 1 < 3) keeps its frequency.
  kernels::RopeConfig top = Config(RopeScaling::kYarn, 10000, 4, 4, 1);
  // c(32) = 2 ln(L0 / (64 pi)) / ln(10000) = 3.5 -> L0 = 64 pi e^(1.75 ln 10000).
  top.original_max_position =
      static_cast<int64_t>(64 * M_PI * std::exp(1.75 * std::log(10000.0)));
  ExpectFrequenciesMatchHf(top);
  const std::vector<double> g = KernelFrequencies(top);
  EXPECT_EQ(g[0], 1.0);
  EXPECT_EQ(g[1], std::pow(10000.0, -0.5));
}

TEST(RopeTest, DynamicNtkRebasesOnlyAboveTheOriginalLength) {
  const kernels::RopeConfig c = Config(RopeScaling::kDynamicNtk, 10000, 2, 8, 32);
  for (int64_t length : {int64_t{1}, int64_t{31}, int64_t{32}, int64_t{33}, int64_t{37},
                         int64_t{1000}, int64_t{1} << 53}) {
    SCOPED_TRACE(length);
    ExpectFrequenciesMatchHf(c, length);
  }
  kernels::RopeConfig at_l0 = c;
  at_l0.length = 32;
  kernels::RopeConfig plain = c;
  plain.scaling = RopeScaling::kNone;
  EXPECT_EQ(KernelFrequencies(at_l0), KernelFrequencies(plain));
}

// Encode's y against a rotation by Hugging Face's frequencies done here in
// double: YaRN's attention_factor on cos and sin of the rotated pairs, the
// dims from rotary_dim copied unchanged, both layouts.
TEST(RopeTest, EncodeRotatesByTheScaledFrequenciesAndYarnsAttentionFactor) {
  std::mt19937 rng(41);
  struct Case {
    kernels::MethodParams params;
    int64_t d, offset;
  };
  kernels::MethodParams yarn_explicit = Extended(RopeScaling::kYarn, 3, 128);
  yarn_explicit.beta_fast = 16;
  yarn_explicit.beta_slow = 2;
  yarn_explicit.attention_factor = 1.5;
  kernels::MethodParams llama_explicit = Extended(RopeScaling::kLlama3, 4, 64, RopeLayout::kHalf);
  llama_explicit.low_freq_factor = 2;
  llama_explicit.high_freq_factor = 8;
  llama_explicit.base = 500000;
  const Case cases[] = {
      {Extended(RopeScaling::kYarn, 8, 512, RopeLayout::kHalf, 8), 12, 3000},
      {yarn_explicit, 10, 200},
      {Extended(RopeScaling::kLlama3, 8, 256), 16, 1500},
      {llama_explicit, 14, 90},
      {Extended(RopeScaling::kDynamicNtk, 2, 32, RopeLayout::kHalf), 8, 37},
      {Extended(RopeScaling::kDynamicNtk, 4, 64), 6, 10},
  };
  for (const Case& c : cases) {
    const int64_t s = 4;
    const Tensor x = RandomTensor({2, 1, s, c.d}, rng);
    SCOPED_TRACE(::testing::Message() << "d=" << c.d << " offset=" << c.offset);
    const std::vector<float> y = Rotate(x, c.offset, c.params);
    ASSERT_EQ(y.size(), x.values().size());
    const int64_t r = c.params.rotary_dim.value_or(c.d);
    kernels::RopeConfig config =
        Config(c.params.rope_scaling, c.params.base.value_or(10000), *c.params.scaling_factor, r,
               *c.params.original_max_position);
    config.beta_fast = c.params.beta_fast.value_or(32);
    config.beta_slow = c.params.beta_slow.value_or(1);
    config.low_freq_factor = c.params.low_freq_factor.value_or(1);
    config.high_freq_factor = c.params.high_freq_factor.value_or(4);
    const double mscale = c.params.rope_scaling != RopeScaling::kYarn
                              ? 1.0
                              : c.params.attention_factor.value_or(config.attention_factor);
    const std::vector<double> inv_freq = HfInvFreq(config, c.offset + s);
    const bool half = c.params.rope_layout == RopeLayout::kHalf;
    for (int64_t row = 0; row < 2 * s; ++row) {
      const double position = static_cast<double>(c.offset + row % s);
      const float* in = x.values().data() + row * c.d;
      const float* out = y.data() + row * c.d;
      for (int64_t n = 0; n < r / 2; ++n) {
        const int64_t a = half ? n : 2 * n, b = half ? n + r / 2 : 2 * n + 1;
        const double cosine = std::cos(position * inv_freq[n]) * mscale;
        const double sine = std::sin(position * inv_freq[n]) * mscale;
        EXPECT_NEAR(out[a], in[a] * cosine - in[b] * sine, 2e-6) << row << " pair " << n;
        EXPECT_NEAR(out[b], in[b] * cosine + in[a] * sine, 2e-6) << row << " pair " << n;
      }
      for (int64_t e = r; e < c.d; ++e) EXPECT_EQ(out[e], in[e]) << row << " dim " << e;
    }
  }
}

TEST(RopeTest, UnsetParametersMeanTheSpecDefaultsAndExplicitOnesAreKept) {
  std::mt19937 rng(42);
  const Tensor x = RandomTensor({1, 2, 3, 16}, rng);
  kernels::MethodParams yarn = Extended(RopeScaling::kYarn, 4, 64);
  kernels::MethodParams yarn_defaults = yarn;
  yarn_defaults.beta_fast = 32;
  yarn_defaults.beta_slow = 1;
  yarn_defaults.attention_factor = 0.1 * std::log(4.0) + 1;
  EXPECT_EQ(Rotate(x, 100, yarn), Rotate(x, 100, yarn_defaults));
  // An explicit attention_factor of 1 is not replaced by the default.
  kernels::MethodParams yarn_one = yarn;
  yarn_one.attention_factor = 1;
  const std::vector<float> one = Rotate(x, 100, yarn_one), dflt = Rotate(x, 100, yarn);
  for (size_t e = 0; e < 16; ++e) {
    EXPECT_NEAR(dflt[e], one[e] * (0.1 * std::log(4.0) + 1), 2e-6) << e;
  }
  kernels::MethodParams llama = Extended(RopeScaling::kLlama3, 8, 32);
  kernels::MethodParams llama_defaults = llama;
  llama_defaults.low_freq_factor = 1;
  llama_defaults.high_freq_factor = 4;
  EXPECT_EQ(Rotate(x, 100, llama), Rotate(x, 100, llama_defaults));
  // Unused scalars are ignored (api.md): yarn's betas under llama3, llama3's
  // factors under yarn, all of them under linear scaling.
  kernels::MethodParams noise = llama;
  noise.beta_fast = -1;
  noise.attention_factor = std::nan("");
  EXPECT_EQ(Rotate(x, 100, llama), Rotate(x, 100, noise));
  noise = yarn;
  noise.low_freq_factor = 5;
  noise.high_freq_factor = 1;
  EXPECT_EQ(Rotate(x, 100, yarn), Rotate(x, 100, noise));
  noise = Params(RopeLayout::kInterleaved, RopeScaling::kLinear, 0.5);
  noise.beta_slow = 0;
  noise.original_max_position = -3;
  EXPECT_EQ(Rotate(x, 100, Params(RopeLayout::kInterleaved, RopeScaling::kLinear, 0.5)),
            Rotate(x, 100, noise));
}

// Dynamic NTK is plain RoPE with base' from the call's length L: bit for
// bit the rotation by an explicit base', in Encode (L = offset + S) and
// Attend (L = max(Sk, query_offset + Sq)) on both engines, below L0 (base'
// = base), with L = Sk and with a query_offset beyond Sk - Sq.
TEST(RopeTest, DynamicNtkIsPlainRopeWithTheBaseOfTheCallsLength) {
  const auto rebased = [](double base, double s, int64_t length, int64_t l0, int64_t r) {
    kernels::MethodParams p = Params(RopeLayout::kHalf);
    p.base = length <= l0 ? base
                          : base * std::pow(s * static_cast<double>(length) / l0 - (s - 1),
                                            static_cast<double>(r) / (r - 2));
    return p;
  };
  std::mt19937 rng(43);
  const Tensor x = RandomTensor({1, 2, 5, 8}, rng);
  const kernels::MethodParams dynamic =
      Extended(RopeScaling::kDynamicNtk, 2, 32, RopeLayout::kHalf);
  EXPECT_EQ(Rotate(x, 37, dynamic), Rotate(x, 37, rebased(10000, 2, 42, 32, 8)));
  EXPECT_EQ(Rotate(x, 10, dynamic), Rotate(x, 10, Params(RopeLayout::kHalf)));  // L = 15 < 32
  EXPECT_NE(Rotate(x, 37, dynamic), Rotate(x, 37, Params(RopeLayout::kHalf)));

  struct Case {
    int64_t sq, sk, query_offset, length;
  };
  for (const Case& c : {Case{3, 12, 14, 17}, Case{2, 40, 5, 40}, Case{4, 9, 5, 9}}) {
    SCOPED_TRACE(::testing::Message() << "sq=" << c.sq << " sk=" << c.sk
                                      << " query_offset=" << c.query_offset);
    kernels::AttendArgs args;
    args.method = MethodKind::kRope;
    args.params = Extended(RopeScaling::kDynamicNtk, 3, 10, RopeLayout::kHalf);
    args.query_offset = c.query_offset;
    args.causal = true;
    args.inputs["q"] = RandomTensor({1, 2, c.sq, 8}, rng);
    args.inputs["k"] = RandomTensor({1, 2, c.sk, 8}, rng);
    args.inputs["v"] = RandomTensor({1, 2, c.sk, 3}, rng);
    kernels::AttendArgs plain = args;
    plain.params = rebased(10000, 3, c.length, 10, 8);
    for (const kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
      kernels::ComputeOptions options;
      options.engine = engine;
      auto got = kernels::Attend(args, options);
      auto want = kernels::Attend(plain, options);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_EQ(got->out.values(), want->out.values()) << static_cast<int>(engine);
    }
  }
}

TEST(RopeTest, ScaledRopeKeepsFarPositionsExactAndFinite) {
  // Positions up to the 2^53 cap: the angle is formed in double from an
  // exact position; nothing overflows and y stays finite and norm-preserving
  // (attention_factor 1).
  const Tensor x({1, 1, 3, 8}, std::vector<float>(24, 0.5f));
  for (RopeScaling scaling :
       {RopeScaling::kYarn, RopeScaling::kLlama3, RopeScaling::kDynamicNtk}) {
    kernels::MethodParams params = Extended(scaling, 16, 4096);
    params.attention_factor = 1;
    const std::vector<float> y = Rotate(x, (int64_t{1} << 53) - 3, params);
    ASSERT_EQ(y.size(), 24u);
    for (size_t row = 0; row < 3; ++row) {
      double norm = 0;
      for (size_t e = 0; e < 8; ++e) norm += std::pow(y[row * 8 + e], 2);
      EXPECT_NEAR(norm, 2.0, 1e-5) << static_cast<int>(scaling);
    }
    kernels::AttendArgs args;
    args.method = MethodKind::kRope;
    args.params = params;
    args.query_offset = int64_t{1} << 53;
    args.inputs["q"] = Tensor({1, 1, 1, 8}, std::vector<float>(8, 0.5f));
    args.inputs["k"] = x;
    args.inputs["v"] = x;
    for (const kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
      kernels::ComputeOptions options;
      options.engine = engine;
      auto got = kernels::Attend(args, options);
      ASSERT_TRUE(got.ok()) << got.status();
      for (float value : got->out.values()) EXPECT_FLOAT_EQ(value, 0.5f);
    }
  }
}

// Every rule of attention-variants.md 7: INVALID_ARGUMENT naming the field,
// in Encode and in Attend on both engines.
TEST(RopeTest, ContextExtensionParameterRulesNameTheField) {
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  struct Bad {
    kernels::MethodParams params;
    std::string field;
  };
  std::vector<Bad> bad;
  for (RopeScaling scaling :
       {RopeScaling::kYarn, RopeScaling::kLlama3, RopeScaling::kDynamicNtk}) {
    kernels::MethodParams unset = Params(RopeLayout::kInterleaved, scaling, 2.0);
    bad.push_back({unset, "original_max_position: required"});
    for (int64_t l0 : {0, -5}) {
      kernels::MethodParams p = Extended(scaling, 2, l0);
      bad.push_back({p, "original_max_position"});
    }
    for (double s : {0.5, 0.999}) {
      bad.push_back({Extended(scaling, s, 16), "scaling_factor: must be >= 1"});
    }
    bad.push_back({Extended(scaling, nan, 16), "scaling_factor"});
  }
  // Each must be finite and > 0 when set, under the scaling that reads it.
  const struct {
    std::optional<double> kernels::MethodParams::*field;
    RopeScaling scaling;
    const char* name;
  } positive[] = {{&kernels::MethodParams::beta_fast, RopeScaling::kYarn, "beta_fast"},
                  {&kernels::MethodParams::beta_slow, RopeScaling::kYarn, "beta_slow"},
                  {&kernels::MethodParams::attention_factor, RopeScaling::kYarn,
                   "attention_factor"},
                  {&kernels::MethodParams::low_freq_factor, RopeScaling::kLlama3,
                   "low_freq_factor"},
                  {&kernels::MethodParams::high_freq_factor, RopeScaling::kLlama3,
                   "high_freq_factor"}};
  for (double value : {0.0, -1.0, nan, inf, -inf}) {
    for (const auto& f : positive) {
      kernels::MethodParams p = Extended(f.scaling, 2, 16);
      p.*f.field = value;
      bad.push_back({p, f.name});
    }
  }
  for (const auto& [low, high] : {std::pair<double, double>{4, 4}, {5, 4}, {2, 1.5}}) {
    kernels::MethodParams p = Extended(RopeScaling::kLlama3, 2, 16);
    p.low_freq_factor = low;
    p.high_freq_factor = high;
    bad.push_back({p, "high_freq_factor: must be > low_freq_factor"});
  }
  bad.push_back({Extended(RopeScaling::kDynamicNtk, 2, 16, RopeLayout::kHalf, 2),
                 "rotary_dim: the dynamic_ntk scaling needs rotary_dim > 2"});
  kernels::MethodParams base_one = Extended(RopeScaling::kYarn, 2, 16);
  base_one.base = 1;
  bad.push_back({base_one, "base: the yarn scaling needs base != 1"});

  const Tensor x({1, 1, 2, 8}, std::vector<float>(16, 0.5f));
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.field);
    const absl::Status encode = kernels::Encode(RopeEncode(x, 0, b.params), {}).status();
    EXPECT_EQ(encode.code(), absl::StatusCode::kInvalidArgument) << encode;
    EXPECT_THAT(std::string(encode.message()), ::testing::HasSubstr(b.field));
    kernels::AttendArgs args;
    args.method = MethodKind::kRope;
    args.params = b.params;
    args.inputs = {{"q", x}, {"k", x}, {"v", x}};
    for (const kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
      kernels::ComputeOptions options;
      options.engine = engine;
      const absl::Status attend = kernels::Attend(args, options).status();
      EXPECT_EQ(attend.code(), absl::StatusCode::kInvalidArgument) << attend;
      EXPECT_THAT(std::string(attend.message()), ::testing::HasSubstr(b.field));
    }
  }
  // The boundaries themselves are valid: s = 1, L0 = 1, rotary_dim 4.
  EXPECT_TRUE(kernels::Encode(RopeEncode(x, 0, Extended(RopeScaling::kYarn, 1, 1)), {}).ok());
  EXPECT_TRUE(
      kernels::Encode(RopeEncode(x, 9, Extended(RopeScaling::kDynamicNtk, 1, 1, {}, 4)), {}).ok());
}

TEST(RopeTest, EncodeRefusesRotatedValuesBeyondFloat) {
  kernels::MethodParams params = Extended(RopeScaling::kYarn, 2, 16);
  params.attention_factor = 1e30;
  const Tensor x({1, 1, 1, 4}, {1e10f, 1e10f, 1, 1});
  const absl::Status status = kernels::Encode(RopeEncode(x, 3, params), {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("attention_factor"));
}

// The fast engine against the plain one (double accumulation) for every new
// scaling: the same logits up to float rounding.
TEST(RopeTest, FastAndPlainEnginesAgreeOnEveryScaling) {
  std::mt19937 rng(44);
  kernels::MethodParams yarn_partial = Extended(RopeScaling::kYarn, 4, 16, RopeLayout::kHalf, 6);
  kernels::MethodParams llama = Extended(RopeScaling::kLlama3, 8, 48, RopeLayout::kHalf);
  llama.base = 500000;
  for (const kernels::MethodParams& params :
       {yarn_partial, llama, Extended(RopeScaling::kYarn, 2, 8),
        Extended(RopeScaling::kDynamicNtk, 3, 10)}) {
    for (const bool causal : {false, true}) {
      kernels::AttendArgs args;
      args.method = MethodKind::kRope;
      args.params = params;
      args.causal = causal;
      args.query_offset = 20;
      args.return_probs = true;
      const int64_t d = 10;
      args.inputs["q"] = RandomTensor({2, 3, 7, d}, rng);
      args.inputs["k"] = RandomTensor({2, 3, 33, d}, rng);
      args.inputs["v"] = RandomTensor({2, 3, 33, 5}, rng);
      kernels::ComputeOptions fast, plain;
      fast.threads = 2;
      plain.engine = kernels::Engine::kPlain;
      auto a = kernels::Attend(args, fast);
      auto b = kernels::Attend(args, plain);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(b.ok()) << b.status();
      for (size_t n = 0; n < a->out.values().size(); ++n) {
        EXPECT_NEAR(a->out.values()[n], b->out.values()[n], 2e-6) << n;
      }
      for (size_t n = 0; n < a->probs->values().size(); ++n) {
        EXPECT_NEAR(a->probs->values()[n], b->probs->values()[n], 2e-6) << n;
      }
    }
  }
}

TEST(RopeTest, ListMethodsDescribesTheScalingParameters) {
  for (const kernels::MethodInfo& method : kernels::DescribeMethods()) {
    if (method.kind != MethodKind::kRope) continue;
    std::map<std::string, kernels::ParameterInfo> by_name;
    for (const kernels::ParameterInfo& param : method.parameters) by_name[param.name] = param;
    EXPECT_THAT(by_name["scaling"].rule, ::testing::HasSubstr("yarn | llama3 | dynamic_ntk"));
    const std::pair<const char*, const char*> defaults[] = {
        {"original_max_position", ""},    {"beta_fast", "32"},     {"beta_slow", "1"},
        {"attention_factor", "0.1*ln(scaling_factor)+1"}, {"low_freq_factor", "1"},
        {"high_freq_factor", "4"}};
    for (const auto& [name, default_value] : defaults) {
      ASSERT_EQ(by_name.count(name), 1u) << name;
      EXPECT_EQ(by_name[name].default_value, default_value) << name;
      EXPECT_EQ(by_name[name].ops, (std::vector<std::string>{"encode", "attend"})) << name;
      EXPECT_FALSE(by_name[name].rule.empty()) << name;
    }
  }
}

}  // namespace
}  // namespace attnserve::testing
