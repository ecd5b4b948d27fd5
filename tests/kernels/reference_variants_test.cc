// The double-precision reference's variants (attention-variants.md,
// decode-sessions.md): it reproduces every format-2 golden case
// (tests/golden-variants/, tests/golden-generated/) -- attend, encode, decode
// as a session and by equivalence, errors with their code and field -- and
// the variants agree with the plain computations they are defined by: GQA
// with repeated key/value heads, kv_lengths with shorter keys, a huge
// softcap with none, a window covering everything with none.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/kernels/random_args.h"
#include "tests/testing/golden.h"
#include "tests/testing/golden_kernels.h"
#include "tests/testing/naive_float32.h"
#include "tests/testing/reference.h"

namespace attnserve::testing {
namespace {

using kernels::MethodKind;
using kernels::Tensor;

// Against the case's tolerance and, since both references compute in double,
// 1e-9 relative (1e-12 absolute).
std::string CompareRef(const std::string& name, const GoldenTensor& expected, const RefTensor& got,
                       double rtol, double atol) {
  if (got.shape != expected.shape) return name + ": shape differs from the golden one";
  int64_t bad = 0;
  std::string first;
  for (size_t n = 0; n < got.data.size(); ++n) {
    const double exp = expected.data[n];
    const double error = std::abs(got.data[n] - exp);
    const bool ok = error <= atol + rtol * std::abs(exp) && error <= 1e-12 + 1e-9 * std::abs(exp);
    if (!std::isfinite(got.data[n]) || !ok) {
      if (bad++ == 0) first = absl::StrCat(" first at [", n, "]: ", got.data[n], " vs ", exp);
    }
  }
  if (bad == 0) return "";
  return absl::StrCat(name, ": ", bad, " values off", first);
}

std::string CompareAll(const GoldenTensors& expected, const RefOutputs& got, double rtol,
                       double atol) {
  std::string failures;
  for (const auto& [name, tensor] : expected) {
    auto it = got.find(name);
    if (it == got.end()) {
      absl::StrAppend(&failures, name, ": not computed\n");
      continue;
    }
    const std::string diff = CompareRef(name, tensor, it->second, rtol, atol);
    if (!diff.empty()) absl::StrAppend(&failures, diff, "\n");
  }
  return failures;
}

std::string RunAttendOrEncode(const GoldenCase& c) {
  absl::StatusOr<RefOutputs> got = absl::UnknownError("unknown op");
  if (c.op == "attend") {
    auto args = ToAttendArgs(c);
    if (!args.ok()) return std::string(args.status().message());
    got = ReferenceAttend(*args);
  } else {
    auto args = ToEncodeArgs(c);
    if (!args.ok()) return std::string(args.status().message());
    got = ReferenceEncode(*args);
  }
  if (!c.expect_error.empty() || !got.ok()) {
    return CheckExpectedError(c, got.status().code(), got.status().message());
  }
  std::string failures = CompareAll(c.expected, *got, c.rtol, c.atol);
  if (c.op == "encode") {
    for (const auto& [name, tensor] : *got) {
      if (c.expected.count(name) == 0) absl::StrAppend(&failures, name, ": not expected\n");
    }
  }
  return failures;
}

// The case as one session: every response's length and tensors, and the
// error of the last message.
std::string RunSession(const GoldenCase& c) {
  auto open = ToRefDecodeOpen(c);
  if (!open.ok()) return std::string(open.status().message());
  auto session = ReferenceDecodeSession::Open(*std::move(open));
  if (!session.ok() || c.steps.empty()) {
    return CheckExpectedError(c, session.status().code(), session.status().message());
  }
  std::string failures;
  for (size_t n = 0; n < c.steps.size(); ++n) {
    const GoldenStep& step = c.steps[n];
    const std::string where = absl::StrCat("steps[", n, "]: ");
    absl::Status status;
    if (step.kind == "truncate") {
      status = session->Truncate(step.length);
    } else {
      auto out = session->Step(ToTensors(step.inputs));
      status = out.status();
      if (out.ok() && step.expect_error.empty()) {
        GoldenTensors expected = step.expected;
        if (!step.return_probs) expected.erase("probs");
        absl::StrAppend(&failures, CompareAll(expected, *out, c.rtol, c.atol));
      }
    }
    if (!step.expect_error.empty() || !status.ok()) {
      const std::string error =
          CheckExpectedError(step.expect_error, step.expect_field, status.code(), status.message());
      if (!error.empty()) absl::StrAppend(&failures, where, error, "\n");
      if (n + 1 != c.steps.size()) absl::StrAppend(&failures, where, "an error before the last\n");
      break;
    }
    if (step.expected_length && session->Length() != *step.expected_length) {
      absl::StrAppend(&failures, where, "length ", session->Length(), ", expected ",
                      *step.expected_length, "\n");
    }
  }
  return failures;
}

// Each step as the Attend it equals (decode-sessions.md 2).
std::string RunByEquivalence(const GoldenCase& c) {
  std::string failures;
  for (size_t n = 0; n < c.steps.size(); ++n) {
    const GoldenStep& step = c.steps[n];
    if (step.kind != "step" || !step.expect_error.empty()) continue;
    auto attend = DecodeStepAsAttendCase(c, n);
    if (!attend.ok()) return std::string(attend.status().message());
    const std::string diff = RunAttendOrEncode(*attend);
    if (!diff.empty()) absl::StrAppend(&failures, "steps[", n, "] as Attend: ", diff, "\n");
  }
  return failures;
}

class VariantReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VariantReferenceTest, ReferenceReproducesTheCase) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  if (const std::string reason = KernelSkipReason(*c); !reason.empty()) {
    GTEST_SKIP() << "a wire-level case: " << reason;
  }
  if (c->op == "decode") {
    EXPECT_EQ(RunSession(*c), "") << c->name;
    EXPECT_EQ(RunByEquivalence(*c), "") << c->name;
  } else {
    EXPECT_EQ(RunAttendOrEncode(*c), "") << c->name;
  }
}

// attention-variants.md 9.3's margin: a float32 emulation of the reference
// (naive_float32.h, the fast engine's 2x-rule baseline) stays within 1/4 of
// atol + rtol * |exp| on every attend tensor of every case (decode steps as
// their equivalent Attend), so a float32 engine has room to pass.
std::string NaiveMargin(const GoldenCase& c) {
  auto args = ToAttendArgs(c);
  if (!args.ok()) return std::string(args.status().message());
  auto naive = NaiveFloat32Attend(*args);
  if (!naive.ok()) return std::string(naive.status().message());
  std::string failures;
  for (const auto& [name, expected] : c.expected) {
    const Tensor& got = name == "out" ? naive->out : naive->probs;
    const std::string diff =
        CompareTensor(name, expected, got.shape(), got.values(), c.rtol / 4, c.atol / 4);
    if (!diff.empty()) absl::StrAppend(&failures, diff, "\n");
  }
  return failures;
}

TEST_P(VariantReferenceTest, NaiveFloat32WithinAQuarterOfTheTolerance) {
  auto c = LoadGoldenCase(GetParam());
  ASSERT_TRUE(c.ok()) << c.status();
  if (!KernelSkipReason(*c).empty() || !c->expect_error.empty() || c->op == "encode") {
    GTEST_SKIP() << "attend and decode cases that succeed only";
  }
  if (c->op == "attend") {
    EXPECT_EQ(NaiveMargin(*c), "") << c->name;
    return;
  }
  for (size_t n = 0; n < c->steps.size(); ++n) {
    if (c->steps[n].kind != "step" || !c->steps[n].expect_error.empty()) continue;
    auto attend = DecodeStepAsAttendCase(*c, n);
    ASSERT_TRUE(attend.ok()) << attend.status();
    EXPECT_EQ(NaiveMargin(*attend), "") << c->name << " steps[" << n << "]";
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, VariantReferenceTest, ::testing::ValuesIn(VariantCaseFiles()),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return GoldenTestName(param.param);
                         });

// ---------------------------------------------------------------------------
// The variants against the computations that define them.

double MaxDiff(const RefTensor& a, const RefTensor& b) {
  if (a.shape != b.shape) return INFINITY;
  double worst = 0;
  for (size_t n = 0; n < a.data.size(); ++n)
    worst = std::max(worst, std::abs(a.data[n] - b.data[n]));
  return worst;
}

// Heads `pick(h)` of dimension 1 of a [B, H, S, X] tensor, as `count` heads.
Tensor SelectHeads(const Tensor& t, int64_t count, const std::function<int64_t(int64_t)>& pick) {
  const int64_t batch = t.dim(0), heads = t.dim(1), run = t.dim(2) * t.dim(3);
  std::vector<float> out;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < count; ++h) {
      const float* src = t.values().data() + (b * heads + pick(h)) * run;
      out.insert(out.end(), src, src + run);
    }
  }
  return Tensor({batch, count, t.dim(2), t.dim(3)}, std::move(out));
}

// Column groups `pick(h)` of width `width` of a [d_model, H*width] matrix.
Tensor SelectColumns(const Tensor& w, int64_t width, int64_t count,
                     const std::function<int64_t(int64_t)>& pick) {
  const int64_t rows = w.dim(0), cols = w.dim(1);
  std::vector<float> out;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < count; ++h) {
      const float* src = w.values().data() + r * cols + pick(h) * width;
      out.insert(out.end(), src, src + width);
    }
  }
  return Tensor({rows, count * width}, std::move(out));
}

struct GqaCase {
  MethodKind method;
  int64_t heads, kv_heads;
};

class GqaReferenceTest : public ::testing::TestWithParam<GqaCase> {};

// Hugging Face's repeat_kv: GQA equals MHA on key/value heads repeated
// H / H_kv times each; with kv_lengths, a window and softcap on both sides.
TEST_P(GqaReferenceTest, EqualsRepeatedKeyValueHeads) {
  const GqaCase g = GetParam();
  std::mt19937 rng(14000 + static_cast<uint32_t>(g.method) * 10 +
                   static_cast<uint32_t>(g.kv_heads));
  RandomCase c;
  c.method = g.method;
  c.batch = 2;
  c.heads = g.heads;
  c.sq = 5;
  c.sk = 7;
  c.d = 6;
  c.dv = 4;
  c.d_model = 12;
  c.causal = true;
  kernels::AttendArgs mha = RandomAttendArgs(c, rng);
  mha.kv_lengths = {7, 4};
  mha.window = 4;
  mha.softcap = 2.5;
  const int64_t group = g.heads / g.kv_heads;
  kernels::AttendArgs gqa = mha, repeated = mha;
  const auto first_of_group = [&](int64_t kv) { return kv * group; };
  const auto group_of = [&](int64_t h) { return (h / group) * group; };
  if (g.method == MethodKind::kSinusoidal || g.method == MethodKind::kLearned) {
    for (const char* name : {"w_k", "w_v"}) {
      const Tensor& w = mha.inputs.at(name);
      const int64_t width = w.dim(1) / g.heads;
      gqa.inputs[name] = SelectColumns(w, width, g.kv_heads, first_of_group);
      repeated.inputs[name] = SelectColumns(w, width, g.heads, group_of);
    }
    gqa.num_kv_heads = g.kv_heads;
  } else {
    for (const char* name : {"k", "v"}) {
      gqa.inputs[name] = SelectHeads(mha.inputs.at(name), g.kv_heads, first_of_group);
      repeated.inputs[name] = SelectHeads(mha.inputs.at(name), g.heads, group_of);
    }
  }
  auto got = ReferenceAttend(gqa);
  ASSERT_TRUE(got.ok()) << got.status();
  auto want = ReferenceAttend(repeated);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_LE(MaxDiff(got->at("out"), want->at("out")), 1e-12);
  EXPECT_LE(MaxDiff(got->at("probs"), want->at("probs")), 1e-12);
}

std::vector<GqaCase> AllGqaCases() {
  std::vector<GqaCase> cases;
  for (MethodKind method : kernels::kAllMethods) {
    cases.push_back({method, 6, 1});
    cases.push_back({method, 6, 3});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllMethods, GqaReferenceTest, ::testing::ValuesIn(AllGqaCases()),
                         [](const ::testing::TestParamInfo<GqaCase>& param) {
                           return absl::StrCat(kernels::MethodName(param.param.method), "_h",
                                               param.param.heads, "_kv", param.param.kv_heads);
                         });

kernels::AttendArgs NoneArgs(int64_t batch, int64_t sq, int64_t sk, std::mt19937& rng) {
  RandomCase c;
  c.batch = batch;
  c.heads = 2;
  c.sq = sq;
  c.sk = sk;
  c.d = 4;
  c.dv = 3;
  return RandomAttendArgs(c, rng);
}

// A batch element with L_b keys equals the same call on its first L_b keys.
TEST(VariantRuleTest, KvLengthsEqualShorterKeys) {
  std::mt19937 rng(1401);
  kernels::AttendArgs args = NoneArgs(1, 3, 8, rng);
  args.query_offset = 2;
  args.kv_lengths = {5};
  kernels::AttendArgs shorter = args;
  shorter.kv_lengths.clear();
  for (const char* name : {"k", "v"}) {
    const Tensor& t = args.inputs.at(name);
    std::vector<float> values;
    for (int64_t h = 0; h < 2; ++h) {
      const float* src = t.values().data() + h * 8 * t.dim(3);
      values.insert(values.end(), src, src + 5 * t.dim(3));
    }
    shorter.inputs[name] = Tensor({1, 2, 5, t.dim(3)}, values);
  }
  auto got = ReferenceAttend(args);
  auto want = ReferenceAttend(shorter);
  ASSERT_TRUE(got.ok() && want.ok());
  EXPECT_LE(MaxDiff(got->at("out"), want->at("out")), 1e-15);
  const RefTensor& probs = got->at("probs");
  for (int64_t row = 0; row < 6; ++row) {
    for (int64_t j = 5; j < 8; ++j) EXPECT_EQ(probs.data[row * 8 + j], 0.0);
  }
}

// A window wider than every distance changes nothing; softcap -> infinity
// tends to no cap; a row with no visible key is zeros (section 4).
TEST(VariantRuleTest, WideWindowHugeSoftcapAndEmptyRows) {
  std::mt19937 rng(1402);
  kernels::AttendArgs args = NoneArgs(2, 4, 6, rng);
  auto plain = ReferenceAttend(args);
  ASSERT_TRUE(plain.ok());
  kernels::AttendArgs wide = args;
  wide.window = 100;
  wide.softcap = 1e7;
  auto got = ReferenceAttend(wide);
  ASSERT_TRUE(got.ok());
  EXPECT_LE(MaxDiff(got->at("out"), plain->at("out")), 1e-12);

  // Causal window 2 at queries 4..7 over keys with lengths [6, 2]: batch 1's
  // queries at 4.. see keys 3.. and there are only 2 valid: empty rows.
  kernels::AttendArgs empty = args;
  empty.causal = true;
  empty.query_offset = 4;
  empty.window = 2;
  empty.kv_lengths = {6, 2};
  auto rows = ReferenceAttend(empty);
  ASSERT_TRUE(rows.ok()) << rows.status();
  const RefTensor& out = rows->at("out");
  for (size_t n = out.data.size() / 2; n < out.data.size(); ++n) EXPECT_EQ(out.data[n], 0.0);
  const RefTensor& probs = rows->at("probs");
  double first_row_sum = 0;
  for (int64_t j = 0; j < 6; ++j) first_row_sum += probs.data[static_cast<size_t>(j)];
  EXPECT_NEAR(first_row_sum, 1.0, 1e-12);  // batch 0, query at 4: keys 3, 4
}

// Softcap bounds every logit by c: with q = k large, the cap flattens the
// softmax towards uniform.
TEST(VariantRuleTest, SoftcapBoundsTheLogits) {
  kernels::AttendArgs args;
  args.method = MethodKind::kNone;
  args.inputs["q"] = Tensor({1, 1, 1, 1}, {100});
  args.inputs["k"] = Tensor({1, 1, 2, 1}, {100, -100});
  args.inputs["v"] = Tensor({1, 1, 2, 1}, {1, 0});
  args.scale = 1;
  args.softcap = 1;
  auto got = ReferenceAttend(args);
  ASSERT_TRUE(got.ok());
  // logits tanh(1e4) = 1 and -1: p0 = e / (e + 1/e).
  EXPECT_NEAR(got->at("probs").data[0], std::exp(1.0) / (std::exp(1.0) + std::exp(-1.0)), 1e-12);
}

// ---------------------------------------------------------------------------
// The RoPE scalings against Hugging Face's modeling_rope_utils.py as
// published (_compute_llama3_parameters: torch.where masks;
// _compute_yarn_parameters: find_correction_range, linear_ramp_factor;
// _compute_dynamic_ntk_parameters), transcribed here in the shape of that
// code (whole-vector masks rather than the reference's per-frequency
// branches), on real models' parameters. The reference's frequencies are read
// back from Encode: a unit x in pair n at position p comes out as
// mscale * (cos p f'_n, sin p f'_n).

struct HfRope {
  std::vector<double> inv_freq;
  double attention_factor = 1;
};

std::vector<double> HfDefault(double base, int64_t dim) {
  std::vector<double> inv_freq;
  for (int64_t i = 0; i < dim; i += 2) {
    inv_freq.push_back(1.0 / std::pow(base, static_cast<double>(i) / static_cast<double>(dim)));
  }
  return inv_freq;
}

HfRope HfLlama3(double base, int64_t dim, double factor, double low_freq_factor,
                double high_freq_factor, double old_context_len) {
  const std::vector<double> inv_freq = HfDefault(base, dim);
  const double low_freq_wavelen = old_context_len / low_freq_factor;
  const double high_freq_wavelen = old_context_len / high_freq_factor;
  HfRope out;
  for (double f : inv_freq) {
    const double wavelen = 2 * M_PI / f;
    double llama = wavelen > low_freq_wavelen ? f / factor : f;
    const double smooth =
        (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
    const double smoothed = (1 - smooth) * llama / factor + smooth * llama;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    out.inv_freq.push_back(medium ? smoothed : llama);
  }
  return out;
}

HfRope HfYarn(double base, int64_t dim, double factor, double max_position_embeddings,
              double beta_fast, double beta_slow) {
  const auto find_correction_dim = [&](double num_rotations) {
    return (static_cast<double>(dim) *
            std::log(max_position_embeddings / (num_rotations * 2 * M_PI))) /
           (2 * std::log(base));
  };
  const double low = std::max(std::floor(find_correction_dim(beta_fast)), 0.0);
  double high = std::min(std::ceil(find_correction_dim(beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  HfRope out;
  out.attention_factor = 0.1 * std::log(factor) + 1.0;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double pos_freq = std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));
    const double extrapolation = 1.0 / pos_freq, interpolation = 1.0 / (factor * pos_freq);
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation_factor = 1 - ramp;
    out.inv_freq.push_back(interpolation * (1 - extrapolation_factor) +
                           extrapolation * extrapolation_factor);
  }
  return out;
}

HfRope HfDynamicNtk(double base, int64_t dim, double factor, double max_position_embeddings,
                    double seq_len) {
  seq_len = seq_len > max_position_embeddings ? seq_len : max_position_embeddings;
  base = base * std::pow(factor * seq_len / max_position_embeddings - (factor - 1),
                         static_cast<double>(dim) / static_cast<double>(dim - 2));
  return HfRope{HfDefault(base, dim), 1.0};
}

// The reference's rotation of pair n at position `offset` (Encode with S = 1,
// so dynamic NTK's length is offset + 1) against Hugging Face's frequencies.
void ExpectReferenceFrequencies(const kernels::MethodParams& params, int64_t dim, int64_t offset,
                                const HfRope& hf) {
  for (int64_t n = 0; n < dim / 2; ++n) {
    kernels::EncodeArgs args;
    args.method = MethodKind::kRope;
    args.params = params;
    args.offset = offset;
    std::vector<float> x(static_cast<size_t>(dim), 0.0f);
    x[static_cast<size_t>(2 * n)] = 1;
    args.inputs["x"] = Tensor({1, 1, 1, dim}, x);
    auto y = ReferenceEncode(args);
    ASSERT_TRUE(y.ok()) << y.status();
    const double c = y->at("y").data[static_cast<size_t>(2 * n)];
    const double sn = y->at("y").data[static_cast<size_t>(2 * n + 1)];
    const double f = hf.inv_freq[static_cast<size_t>(n)];
    const double phi = static_cast<double>(offset) * f;
    // An angle error of 1e-12 relative, and the rounding of cos/sin.
    const double allowed = 1e-12 * phi + 1e-14;
    EXPECT_NEAR(c, hf.attention_factor * std::cos(phi), allowed) << "pair " << n;
    EXPECT_NEAR(sn, hf.attention_factor * std::sin(phi), allowed) << "pair " << n;
  }
}

TEST(HuggingFaceScalingTest, Llama31Frequencies) {
  // Llama 3.1 8B: rope_theta 500000, head_dim 128, factor 8, 1 / 4, 8192.
  kernels::MethodParams p;
  p.rope_scaling = kernels::RopeScaling::kLlama3;
  p.base = 500000;
  p.scaling_factor = 8;
  p.original_max_position = 8192;
  ExpectReferenceFrequencies(p, 128, 1, HfLlama3(500000, 128, 8, 1, 4, 8192));
  // Explicit factors and a small L0, so every band has members.
  p.base = 10000;
  p.scaling_factor = 3;
  p.original_max_position = 64;
  p.low_freq_factor = 0.5;
  p.high_freq_factor = 2;
  ExpectReferenceFrequencies(p, 32, 1, HfLlama3(10000, 32, 3, 0.5, 2, 64));
}

TEST(HuggingFaceScalingTest, YarnFrequenciesAndAttentionFactor) {
  // Qwen2.5-style: rope_theta 1e6, head_dim 128, factor 4, 32768 positions.
  kernels::MethodParams p;
  p.rope_scaling = kernels::RopeScaling::kYarn;
  p.base = 1e6;
  p.scaling_factor = 4;
  p.original_max_position = 32768;
  ExpectReferenceFrequencies(p, 128, 1, HfYarn(1e6, 128, 4, 32768, 32, 1));
  p.base = 10000;
  p.scaling_factor = 16;
  p.original_max_position = 4096;
  p.beta_fast = 16;
  p.beta_slow = 2;
  ExpectReferenceFrequencies(p, 64, 1, HfYarn(10000, 64, 16, 4096, 16, 2));
}

TEST(HuggingFaceScalingTest, DynamicNtkBelowAndAboveL0) {
  kernels::MethodParams p;
  p.rope_scaling = kernels::RopeScaling::kDynamicNtk;
  p.scaling_factor = 2;
  p.original_max_position = 2048;
  // Encode's L is offset + S: 1 + 1 = 2 (below L0), then 4095 + 1 (above).
  ExpectReferenceFrequencies(p, 64, 1, HfDynamicNtk(10000, 64, 2, 2048, 2));
  ExpectReferenceFrequencies(p, 64, 4095, HfDynamicNtk(10000, 64, 2, 2048, 4096));
}

// Session rules beyond the golden cases: dynamic NTK and a short learned
// table are refused at open; truncate then step equals a fresh session.
TEST(ReferenceDecodeTest, TruncateThenStepEqualsAFreshSession) {
  std::mt19937 rng(1403);
  RefDecodeOpen open;
  open.method = MethodKind::kRope;
  open.params.rope_scaling = kernels::RopeScaling::kYarn;
  open.params.scaling_factor = 4;
  open.params.original_max_position = 4;
  open.batch = 1;
  open.num_heads = 4;
  open.num_kv_heads = 2;
  open.head_dim = 8;
  open.max_len = 16;
  open.window = 3;
  const auto tokens = [&](int64_t n) {
    kernels::TensorMap m;
    m["q"] = RandomTensor({1, 4, n, 8}, rng);
    m["k"] = RandomTensor({1, 2, n, 8}, rng);
    m["v"] = RandomTensor({1, 2, n, 8}, rng);
    return m;
  };
  const kernels::TensorMap a = tokens(5), b = tokens(3), c = tokens(2);
  auto rolled = ReferenceDecodeSession::Open(open);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  ASSERT_TRUE(rolled->Step(a).ok());
  ASSERT_TRUE(rolled->Step(b).ok());
  ASSERT_TRUE(rolled->Truncate(5).ok());
  auto got = rolled->Step(c);
  ASSERT_TRUE(got.ok());
  auto fresh = ReferenceDecodeSession::Open(open);
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE(fresh->Step(a).ok());
  auto want = fresh->Step(c);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(MaxDiff(got->at("out"), want->at("out")), 0.0);
  EXPECT_EQ(rolled->Length(), 7);
  EXPECT_EQ(rolled->Truncate(8).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rolled->Step(tokens(10)).status().code(), absl::StatusCode::kOutOfRange);

  RefDecodeOpen dynamic = open;
  dynamic.params.rope_scaling = kernels::RopeScaling::kDynamicNtk;
  auto refused = ReferenceDecodeSession::Open(dynamic);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("scaling"), std::string::npos);
}

}  // namespace
}  // namespace attnserve::testing
