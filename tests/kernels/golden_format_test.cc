// The golden loader itself (tests/testing/golden.h, golden_proto.h): both
// formats load, format 2's additions arrive where the runners expect them,
// and the test side's 16-bit converters (half_float.h) are exact.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/golden.h"
#include "tests/testing/golden_kernels.h"
#include "tests/testing/golden_proto.h"
#include "tests/testing/half_float.h"

namespace attnserve::testing {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

TEST(HalfFloatTest, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfBitsToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(FloatToHalfBits(f) & 0x7c00u, 0x7c00u);
      continue;
    }
    EXPECT_EQ(FloatToHalfBits(f), h) << std::hex << h;
  }
}

TEST(HalfFloatTest, RoundsToNearestEvenAndOverflowsToInfinity) {
  EXPECT_EQ(FloatToHalfBits(1.0f + std::ldexp(1.0f, -11)), 0x3c00u);      // tie -> even (1.0)
  EXPECT_EQ(FloatToHalfBits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02u);  // tie -> even
  EXPECT_EQ(FloatToHalfBits(65504.0f), 0x7bffu);
  EXPECT_EQ(FloatToHalfBits(65519.99f), 0x7bffu);
  EXPECT_EQ(FloatToHalfBits(65520.0f), 0x7c00u);
  EXPECT_EQ(FloatToHalfBits(-1e30f), 0xfc00u);
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -24)), 0x0001u);  // smallest subnormal
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -25)), 0x0000u);  // tie -> even (0)
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.5f, -25)), 0x0001u);
  EXPECT_EQ(FloatToHalfBits(std::ldexp(3.0f, -25)), 0x0002u);  // 1.5 units: tie -> 2
  EXPECT_EQ(FloatToBfloat16Bits(1.0f), 0x3f80u);
  EXPECT_EQ(FloatToBfloat16Bits(FromBits(0x3f808000u)), 0x3f80u);  // tie -> even
  EXPECT_EQ(FloatToBfloat16Bits(FromBits(0x3f818000u)), 0x3f82u);  // tie -> even
  EXPECT_EQ(FloatToBfloat16Bits(FromBits(0x7f7fffffu)), 0x7f80u);  // FLT_MAX -> inf
  EXPECT_TRUE(std::isnan(Bfloat16BitsToFloat(FloatToBfloat16Bits(std::nanf("")))));
}

#if defined(__FLT16_MAX__)
// Against the compiler's own IEEE conversion, over random float bit patterns.
TEST(HalfFloatTest, MatchesTheCompilersFloat16) {
  std::mt19937 rng(14);  // fixed seed
  for (int n = 0; n < 1000000; ++n) {
    const float f = FromBits(static_cast<uint32_t>(rng()));
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    ASSERT_EQ(FloatToHalfBits(f), want) << std::hex << Bits(f);
  }
}
#endif

TEST(HalfFloatTest, UlpOfFollowsTheSpec) {
  EXPECT_EQ(UlpOf(1.0, GoldenDtype::kFloat16), std::ldexp(1.0, -10));
  EXPECT_EQ(UlpOf(-3.0, GoldenDtype::kBfloat16), std::ldexp(1.0, -6));
  EXPECT_EQ(UlpOf(0.0, GoldenDtype::kFloat16), std::ldexp(1.0, -24));
  EXPECT_EQ(UlpOf(1e-6, GoldenDtype::kFloat16), std::ldexp(1.0, -24));
  EXPECT_EQ(UlpOf(1e-39, GoldenDtype::kBfloat16), std::ldexp(1.0, -133));
  EXPECT_EQ(UlpOf(5.0, GoldenDtype::kFloat32), 0.0);
}

TEST(GoldenFormatTest, VersionOneCasesStillLoadAsVersionOne) {
  const std::vector<std::string> files = GoldenCaseFiles(GoldenDir());
  ASSERT_GT(files.size(), 50u);
  for (const std::string& path : files) {
    auto c = LoadGoldenCase(path);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->format_version, 1) << path;
    EXPECT_TRUE(c->steps.empty());
    EXPECT_TRUE(c->expect_field.empty());
    for (const auto& [name, t] : c->inputs) {
      EXPECT_EQ(t.dtype, GoldenDtype::kFloat32);
      EXPECT_EQ(static_cast<int64_t>(t.data.size()), t.NumElements()) << path << " " << name;
    }
  }
}

// The manifest lists exactly the files, and every file loads as version 2.
void CheckVariantDir(const std::string& dir) {
  std::ifstream in(dir + "/manifest.json");
  ASSERT_TRUE(in) << dir;
  const nlohmann::json manifest = nlohmann::json::parse(in);
  EXPECT_EQ(manifest.at("format_version").get<int>(), 2);
  std::set<std::string> listed;
  for (const auto& entry : manifest.at("cases")) listed.insert(entry.at("name").get<std::string>());
  EXPECT_EQ(manifest.at("count").get<size_t>(), listed.size());
  std::set<std::string> found;
  for (const std::string& path : GoldenCaseFiles(dir)) {
    auto c = LoadGoldenCase(path);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->format_version, 2) << path;
    found.insert(c->name);
    EXPECT_EQ(GoldenTestName(path), c->name);
    if (!c->expect_error.empty()) {
      EXPECT_FALSE(c->expect_field.empty()) << path;
    }
    if (c->op == "decode") {
      EXPECT_FALSE(c->steps.empty() && c->expect_error.empty()) << path;
      for (const GoldenStep& step : c->steps) {
        if (step.kind == "step" && step.expect_error.empty()) {
          EXPECT_TRUE(step.expected_length.has_value()) << path;
          EXPECT_EQ(step.expected.count("probs") > 0, step.return_probs) << path;
        }
      }
    }
  }
  EXPECT_EQ(found, listed) << dir;
}

TEST(GoldenFormatTest, PublicVariantCasesLoadAsVersionTwo) {
  CheckVariantDir(GoldenVariantsDir());
  EXPECT_EQ(GoldenCaseFiles(GoldenVariantsDir()).size(), 64u);
}

TEST(GoldenFormatTest, GeneratedCasesLoadAsVersionTwoWithUniqueNames) {
  CheckVariantDir(GeneratedGoldenDir());
  std::set<std::string> names;
  for (const std::string& path : VariantCaseFiles()) {
    EXPECT_TRUE(names.insert(GoldenTestName(path)).second) << path;
  }
  EXPECT_GT(names.size(), 64u + 100u);
}

absl::StatusOr<GoldenCase> Variant(const std::string& name) {
  return LoadGoldenCase(GoldenVariantsDir() + "/" + name + ".json");
}

TEST(GoldenFormatTest, ReadsTheNewParametersAndTensorKeys) {
  auto combo = Variant("att_learned_gqa_h4_kv2_combo");
  ASSERT_TRUE(combo.ok()) << combo.status();
  auto args = ToAttendArgs(*combo);
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->num_kv_heads, 2);
  EXPECT_EQ(args->kv_lengths, (std::vector<int64_t>{7, 5}));
  EXPECT_EQ(args->window, 3);
  EXPECT_EQ(args->softcap, 3.0);
  EXPECT_EQ(args->query_offset, 3);

  auto nan = Variant("err_att_none_softcap_nan");
  ASSERT_TRUE(nan.ok());
  EXPECT_TRUE(std::isnan(*nan->Double("softcap")));
  EXPECT_EQ(nan->expect_field, std::vector<std::string>{"softcap"});
  auto inf = Variant("err_att_none_softcap_inf");
  ASSERT_TRUE(inf.ok());
  EXPECT_EQ(*inf->Double("softcap"), std::numeric_limits<double>::infinity());

  auto yarn = Variant("enc_rope_yarn_explicit_interleaved");
  ASSERT_TRUE(yarn.ok());
  auto params = ToMethodParams(*yarn);
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(params->rope_scaling, kernels::RopeScaling::kYarn);
  EXPECT_TRUE(params->original_max_position.has_value());
}

TEST(GoldenFormatTest, SixteenBitInputsTravelAsRawDataWithTheirDtype) {
  auto c = Variant("att_rope_bf16_in_bf16_out");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->OutputDtype(), GoldenDtype::kBfloat16);
  for (WireEncoding encoding : {WireEncoding::kData, WireEncoding::kRawData}) {
    auto request = ToAttendRequest(*c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    EXPECT_EQ(request->q().dtype(), v1::DTYPE_BFLOAT16);
    EXPECT_EQ(request->q().data_size(), 0);
    EXPECT_EQ(static_cast<int64_t>(request->q().raw_data().size()),
              2 * c->inputs.at("q").NumElements());
    // Exact: decoding the bytes gives the case's values back.
    const std::vector<float> back = DecodeRaw(request->q().raw_data(), GoldenDtype::kBfloat16);
    EXPECT_EQ(back, c->inputs.at("q").AsFloats());
    EXPECT_TRUE(request->raw_output());
    EXPECT_EQ(request->output_dtype(), v1::DTYPE_BFLOAT16);
  }
  auto on_data = Variant("err_att_none_fp16_dtype_on_data");
  ASSERT_TRUE(on_data.ok());
  auto request = ToAttendRequest(*on_data, WireEncoding::kRawData);
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->q().dtype(), v1::DTYPE_FLOAT16);
  EXPECT_GT(request->q().data_size(), 0);
  EXPECT_TRUE(request->q().raw_data().empty());
  EXPECT_NE(KernelSkipReason(*on_data), "");

  auto raw = Variant("err_att_none_bf16_raw_length");
  ASSERT_TRUE(raw.ok());
  request = ToAttendRequest(*raw, WireEncoding::kData);
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->k().raw_data().size(), 48u);
  EXPECT_EQ(request->k().dtype(), v1::DTYPE_BFLOAT16);

  auto no_raw = Variant("err_att_none_fp16_output_without_raw_output");
  ASSERT_TRUE(no_raw.ok());
  request = ToAttendRequest(*no_raw, WireEncoding::kRawData);
  ASSERT_TRUE(request.ok());
  EXPECT_FALSE(request->raw_output());
  EXPECT_EQ(request->output_dtype(), v1::DTYPE_FLOAT16);
}

TEST(GoldenFormatTest, ExpectedErrorNeedsTheCodeAndOneField) {
  GoldenCase c;
  c.expect_error = "invalid_argument";
  c.expect_field = {"k.shape", "num_kv_heads"};
  EXPECT_EQ(CheckExpectedError(c, absl::StatusCode::kInvalidArgument, "num_kv_heads: 3 ..."), "");
  EXPECT_NE(CheckExpectedError(c, absl::StatusCode::kInvalidArgument, "q.shape: ..."), "");
  EXPECT_NE(CheckExpectedError(c, absl::StatusCode::kOutOfRange, "k.shape"), "");
}

// A 16-bit output may be off by one ulp of its type on top of the tolerance.
TEST(GoldenFormatTest, SixteenBitOutputsGetOneUlp) {
  GoldenTensor expected{{1}, {1.0}, GoldenDtype::kFloat32, false, std::nullopt};
  const float got[] = {1.0f + std::ldexp(1.0f, -7)};
  const int64_t shape[] = {1};
  EXPECT_NE(CompareTensor("out", expected, shape, got, 1e-4, 1e-5), "");
  EXPECT_EQ(CompareTensor("out", expected, shape, got, 1e-4, 1e-5, GoldenDtype::kBfloat16), "");
  EXPECT_NE(CompareTensor("out", expected, shape, got, 1e-4, 1e-5, GoldenDtype::kFloat16), "");
}

TEST(GoldenFormatTest, DecodeCasesBecomeStreamsAndEquivalentAttends) {
  auto c = Variant("dec_alibi_slopes_truncate");
  ASSERT_TRUE(c.ok());
  auto messages = ToDecodeRequests(*c, WireEncoding::kRawData);
  ASSERT_TRUE(messages.ok()) << messages.status();
  ASSERT_EQ(messages->size(), c->steps.size() + 1);
  EXPECT_TRUE((*messages)[0].has_open());
  EXPECT_EQ((*messages)[0].open().num_heads(), 3);
  EXPECT_EQ((*messages)[0].open().method().alibi().slopes().shape_size(), 1);
  EXPECT_EQ((*messages)[0].open().max_len(), 8);
  // prefill 5, step 1, truncate 3, step 1, step 2 (the case's description).
  ASSERT_EQ(c->steps[2].kind, "truncate");
  EXPECT_TRUE((*messages)[3].has_truncate());
  EXPECT_EQ((*messages)[3].truncate().length(), 3);
  auto after_truncate = DecodeStepAsAttendCase(*c, 3);
  ASSERT_TRUE(after_truncate.ok()) << after_truncate.status();
  EXPECT_EQ(after_truncate->Int("query_offset"), 3);
  EXPECT_EQ(after_truncate->Bool("causal"), true);
  EXPECT_EQ(after_truncate->inputs.at("k").shape, (std::vector<int64_t>{1, 3, 4, 4}));
  EXPECT_EQ(after_truncate->inputs.at("slopes").shape, (std::vector<int64_t>{3}));
  // The kept history is the prefill's first 3 keys, then the new one.
  const std::vector<float> prefill = c->steps[0].inputs.at("k").AsFloats();
  const std::vector<float> joined = after_truncate->inputs.at("k").AsFloats();
  for (int h = 0; h < 3; ++h) {
    for (int e = 0; e < 12; ++e) EXPECT_EQ(joined[h * 16 + e], prefill[h * 20 + e]);
  }
  EXPECT_FALSE(DecodeStepAsAttendCase(*c, 2).ok());  // a truncate

  auto learned = Variant("dec_learned_single_steps_scale");
  ASSERT_TRUE(learned.ok());
  auto second = DecodeStepAsAttendCase(*learned, 1);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->inputs.at("x_q").shape, (std::vector<int64_t>{2, 1, 8}));
  EXPECT_EQ(second->inputs.at("x_kv").shape, (std::vector<int64_t>{2, 2, 8}));
  EXPECT_EQ(second->inputs.count("x"), 0u);
  EXPECT_EQ(second->inputs.count("table"), 1u);
  auto attend = ToAttendArgs(*second);
  ASSERT_TRUE(attend.ok());
  EXPECT_EQ(attend->num_heads, 2);
  EXPECT_EQ(attend->scale, 0.6);
}

}  // namespace
}  // namespace attnserve::testing
