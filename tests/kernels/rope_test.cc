// RoPE (positional-methods.md 2.4): the rotation itself, both layouts,
// partial rotary_dim, linear and NTK scaling, relative-position property and
// the parameter rules.
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
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

std::vector<float> Rotate(const Tensor& x, int64_t offset, const kernels::MethodParams& params) {
  auto got = kernels::Encode(RopeEncode(x, offset, params), {});
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return {};
  return got->outputs.at("y").values();
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
  const std::vector<float>& p = got->probs->values();
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

}  // namespace
}  // namespace attnserve::testing
