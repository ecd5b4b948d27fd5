#include "server/convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "tests/server/proto_tensors.h"

namespace attnserve::server {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::string LittleEndianBytes(const std::vector<float>& values) {
  std::string bytes;
  for (float value : values) {
    uint32_t word = 0;
    std::memcpy(&word, &value, 4);
    for (int b = 0; b < 4; ++b) bytes.push_back(static_cast<char>((word >> (8 * b)) & 0xff));
  }
  return bytes;
}

v1::Tensor RawTensor(std::vector<int64_t> shape, const std::vector<float>& values) {
  v1::Tensor tensor;
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_raw_data(LittleEndianBytes(values));
  return tensor;
}

v1::AttendRequest AlibiRequest() {
  v1::AttendRequest request;
  request.mutable_method()->mutable_alibi();
  *request.mutable_q() = DataTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_k() = DataTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_v() = DataTensor({1, 1, 2, 2}, {1, 2, 3, 4});
  return request;
}

TEST(ConvertTest, AttendCopiesScalarsAndSetTensorsOnly) {
  v1::AttendRequest request = AlibiRequest();
  request.set_num_heads(1);
  request.set_causal(true);
  request.set_scale(0.25);
  request.set_query_offset(3);
  request.set_return_probs(true);
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->method, kernels::MethodKind::kAlibi);
  EXPECT_EQ(args->num_heads, 1);
  EXPECT_TRUE(args->causal);
  EXPECT_EQ(args->scale, 0.25);
  EXPECT_EQ(args->query_offset, 3);
  EXPECT_TRUE(args->return_probs);
  ASSERT_EQ(args->inputs.size(), 3u);
  EXPECT_THAT(args->inputs.at("q").shape(), ElementsAre(1, 1, 2, 2));
  EXPECT_THAT(args->inputs.at("q").values(), ElementsAre(1, 0, 0, 1));
  EXPECT_THAT(args->inputs.at("v").values(), ElementsAre(1, 2, 3, 4));
}

TEST(ConvertTest, UnsetOptionalsStayUnset) {
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(AlibiRequest(), ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_FALSE(args->scale.has_value());
  EXPECT_FALSE(args->query_offset.has_value());
  EXPECT_FALSE(args->causal);
  EXPECT_EQ(args->num_heads, 0);
}

TEST(ConvertTest, DataAndRawDataGiveIdenticalArgs) {
  const std::vector<float> values = {1.5f, -2.25f, 3e-8f, 1e30f, -0.0f, 7.0f};
  v1::AttendRequest with_data = AlibiRequest();
  *with_data.mutable_q() = DataTensor({1, 1, 3, 2}, values);
  v1::AttendRequest with_raw = AlibiRequest();
  *with_raw.mutable_q() = RawTensor({1, 1, 3, 2}, values);

  absl::StatusOr<kernels::AttendArgs> a = ToAttendArgs(with_data, ConvertLimits{});
  absl::StatusOr<kernels::AttendArgs> b = ToAttendArgs(with_raw, ConvertLimits{});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->inputs.at("q").shape(), b->inputs.at("q").shape());
  EXPECT_THAT(b->inputs.at("q").values(), ElementsAreArray(values));
  EXPECT_EQ(std::memcmp(a->inputs.at("q").data(), b->inputs.at("q").data(), 6 * sizeof(float)), 0);
}

// A merged batch decodes its requests' q, k, v later, straight into its
// own buffers: here they are checked and described, not decoded.
TEST(ConvertTest, DeferredInputsAreCheckedThenAppendedExactly) {
  v1::AttendRequest request = AlibiRequest();
  *request.mutable_k() = RawTensor({1, 1, 2, 2}, {0.5f, -1.0f, 2.0f, 3.25f});
  DeferredTensors deferred;
  absl::StatusOr<kernels::AttendArgs> args =
      ToAttendArgs(request, ConvertLimits{}, nullptr, &deferred);
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_TRUE(args->inputs.empty());
  ASSERT_EQ(deferred.size(), 3u);
  EXPECT_THAT(deferred.at("k").shape, ElementsAre(1, 1, 2, 2));
  EXPECT_EQ(deferred.at("k").size, 4);
  std::vector<float> merged = {9.0f};  // what an earlier request appended
  ASSERT_TRUE(deferred.at("k").AppendTo(merged).ok());
  ASSERT_TRUE(deferred.at("v").AppendTo(merged).ok());
  EXPECT_THAT(merged, ElementsAre(9.0f, 0.5f, -1.0f, 2.0f, 3.25f, 1, 2, 3, 4));
  // Limits and encodings are still checked up front.
  request.mutable_v()->add_data(5);
  EXPECT_EQ(ToAttendArgs(request, ConvertLimits{}, nullptr, &deferred).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Values are checked while they are copied (the kernels then skip their
// scan): the message names the field, the encoding and the index.
TEST(ConvertTest, NonFiniteValuesAreRejectedNamingFieldAndIndex) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  v1::AttendRequest request = AlibiRequest();
  request.mutable_v()->set_data(2, -inf);
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("v.data[2]: must be finite, got -inf"));

  request = AlibiRequest();
  *request.mutable_k() = RawTensor({1, 1, 2, 2}, {0, 0, 0, nan});
  args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("k.raw_data[3]: must be finite, got nan (float32)"));

  // Deferred: AppendTo reports it, past a block of finite values.
  std::vector<float> values(70000, 0.25f);
  values[69999] = nan;
  request = AlibiRequest();
  *request.mutable_q() = DataTensor({1, 1, 35000, 2}, values);
  DeferredTensors deferred;
  ASSERT_TRUE(ToAttendArgs(request, ConvertLimits{}, nullptr, &deferred).ok());
  std::vector<float> merged;
  const absl::Status status = deferred.at("q").AppendTo(merged);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("q.data[69999]: must be finite, got nan"));
}

TEST(ConvertTest, RawDataOfKnownBytesDecodesAsLittleEndian) {
  v1::AttendRequest request = AlibiRequest();
  request.mutable_v()->clear_data();
  // 1.0f = 0x3f800000, -2.0f = 0xc0000000, 0.5f = 0x3f000000, 4.0f = 0x40800000.
  request.mutable_v()->set_raw_data(
      std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0"
                  "\x00\x00\x00\x3f\x00\x00\x80\x40",
                  16));
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(args->inputs.at("v").values(), ElementsAre(1.0f, -2.0f, 0.5f, 4.0f));
}

TEST(ConvertTest, WrongRawDataLengthNamesTheField) {
  v1::AttendRequest request = AlibiRequest();
  *request.mutable_q() = RawTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  request.mutable_q()->mutable_raw_data()->pop_back();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(),
            "q.raw_data: shape [1,1,2,2] needs 16 bytes (4 per float32), got 15");
}

TEST(ConvertTest, DataCountMismatchNamesTheField) {
  v1::AttendRequest request = AlibiRequest();
  *request.mutable_k() = DataTensor({1, 2, 3}, {1, 2, 3, 4, 5});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(), "k.data: shape [1,2,3] needs 6 values, got 5");
}

TEST(ConvertTest, TwoEncodingsAreInvalid) {
  v1::AttendRequest request = AlibiRequest();
  request.mutable_q()->set_raw_data(LittleEndianBytes({1, 0, 0, 1}));
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(),
            "q: exactly one of data, raw_data, ref must be set (got data, raw_data)");
}

TEST(ConvertTest, NoEncodingIsInvalid) {
  v1::AttendRequest request = AlibiRequest();
  request.mutable_v()->clear_data();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(),
            "v: exactly one of data, raw_data, ref must be set (got none)");
}

TEST(ConvertTest, RefIsNotFound) {
  v1::AttendRequest request = AlibiRequest();
  request.mutable_k()->Clear();
  request.mutable_k()->set_ref("abc");
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(args.status().message(), "k.ref: no tensor named 'abc' is loaded on this server");
}

TEST(ConvertTest, UnknownEnumValuesAreInvalidAndNamed) {
  v1::AttendRequest request = AlibiRequest();
  request.mutable_method()->mutable_rope()->set_layout(static_cast<v1::RopeLayout>(7));
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("method.rope.layout: unknown value 7"));

  request.mutable_method()->mutable_rope()->set_layout(v1::ROPE_LAYOUT_HALF);
  request.mutable_method()->mutable_rope()->set_scaling(static_cast<v1::RopeScaling>(-3));
  args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("method.rope.scaling: unknown value -3"));
}

// attention-variants.md 8: Rope fields 6-11 and the new scalings reach
// MethodParams; Alibi.slopes becomes the kernel input "slopes".
TEST(ConvertTest, RopeScalingsAndTheirParametersAreMapped) {
  v1::AttendRequest request = AlibiRequest();
  v1::Rope* rope = request.mutable_method()->mutable_rope();
  const std::pair<v1::RopeScaling, kernels::RopeScaling> scalings[] = {
      {v1::ROPE_SCALING_YARN, kernels::RopeScaling::kYarn},
      {v1::ROPE_SCALING_LLAMA3, kernels::RopeScaling::kLlama3},
      {v1::ROPE_SCALING_DYNAMIC_NTK, kernels::RopeScaling::kDynamicNtk}};
  for (const auto& [wire, kernel] : scalings) {
    rope->set_scaling(wire);
    absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
    ASSERT_TRUE(args.ok()) << args.status();
    EXPECT_EQ(args->params.rope_scaling, kernel);
    EXPECT_FALSE(args->params.original_max_position.has_value());
    EXPECT_FALSE(args->params.beta_fast.has_value());
    EXPECT_FALSE(args->params.high_freq_factor.has_value());
  }
  rope->set_original_max_position(4096);
  rope->set_beta_fast(16);
  rope->set_beta_slow(0.5);
  rope->set_attention_factor(1.25);
  rope->set_low_freq_factor(2);
  rope->set_high_freq_factor(8);
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->params.original_max_position, 4096);
  EXPECT_EQ(args->params.beta_fast, 16);
  EXPECT_EQ(args->params.beta_slow, 0.5);
  EXPECT_EQ(args->params.attention_factor, 1.25);
  EXPECT_EQ(args->params.low_freq_factor, 2);
  EXPECT_EQ(args->params.high_freq_factor, 8);
  rope->set_scaling(static_cast<v1::RopeScaling>(7));
  args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("6 dynamic_ntk"));
}

TEST(ConvertTest, AlibiSlopesBecomeTheSlopesInput) {
  v1::AttendRequest request = AlibiRequest();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->inputs.count("slopes"), 0u);
  *request.mutable_method()->mutable_alibi()->mutable_slopes() = DataTensor({1}, {-0.5f});
  args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  ASSERT_EQ(args->inputs.count("slopes"), 1u);
  EXPECT_THAT(args->inputs.at("slopes").values(), ElementsAre(-0.5f));
  *request.mutable_method()->mutable_alibi()->mutable_slopes() =
      DataTensor({1}, {std::numeric_limits<float>::infinity()});
  args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("slopes"));
}

TEST(ConvertTest, MethodNotSetIsInvalid) {
  v1::AttendRequest request = AlibiRequest();
  request.clear_method();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(),
            "method: not set; choose one of none, sinusoidal, learned, rope, transformer_xl, "
            "shaw, alibi, da_transformer");

  v1::EncodeRequest encode;
  encode.mutable_method();  // Present but with no kind.
  EXPECT_EQ(ToEncodeArgs(encode, ConvertLimits{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ConvertTest, OverflowingShapeIsInvalid) {
  v1::AttendRequest request = AlibiRequest();
  *request.mutable_q() = DataTensor({int64_t{1} << 40, int64_t{1} << 40}, {1});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("q.shape"));
  EXPECT_THAT(args.status().message(), HasSubstr("overflows int64"));

  // The same through raw_data (whose byte count 4*N would overflow too).
  *request.mutable_q() = RawTensor({int64_t{1} << 31, int64_t{1} << 31}, {1});
  args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("q.raw_data: shape [2147483648,2147483648]"));
}

TEST(ConvertTest, NonPositiveOrEmptyShapeIsInvalid) {
  v1::AttendRequest request = AlibiRequest();
  *request.mutable_q() = DataTensor({1, 0, 2}, {1});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("q.shape: every dimension must be >= 1"));

  *request.mutable_q() = DataTensor({}, {1});
  args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(), "q.shape: must not be empty");
}

TEST(ConvertTest, TensorAboveMaxElementsIsResourceExhausted) {
  v1::AttendRequest request = AlibiRequest();
  *request.mutable_q() = DataTensor({1, 1, 2, 3}, {1, 2, 3, 4, 5, 6});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{5});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(args.status().message(), "q: 6 elements exceed --max_elements=5");
}

TEST(ConvertTest, SumOfInputsAboveMaxElementsIsResourceExhausted) {
  // q, k, v have 4 elements each: 12 in all.
  EXPECT_TRUE(ToAttendArgs(AlibiRequest(), ConvertLimits{12}).ok());
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(AlibiRequest(), ConvertLimits{11});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(args.status().message(), HasSubstr("v: "));
  EXPECT_THAT(args.status().message(), HasSubstr("--max_elements=11"));
}

TEST(ConvertTest, RopeParametersAndDefaults) {
  v1::AttendRequest request = AlibiRequest();
  v1::Rope* rope = request.mutable_method()->mutable_rope();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->method, kernels::MethodKind::kRope);
  EXPECT_EQ(args->params.rope_layout, kernels::RopeLayout::kInterleaved);
  EXPECT_EQ(args->params.rope_scaling, kernels::RopeScaling::kNone);
  EXPECT_FALSE(args->params.base.has_value());
  EXPECT_FALSE(args->params.scaling_factor.has_value());
  EXPECT_FALSE(args->params.rotary_dim.has_value());

  rope->set_layout(v1::ROPE_LAYOUT_HALF);
  rope->set_scaling(v1::ROPE_SCALING_NTK);
  rope->set_base(500000);
  rope->set_scaling_factor(8);
  rope->set_rotary_dim(64);
  args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->params.rope_layout, kernels::RopeLayout::kHalf);
  EXPECT_EQ(args->params.rope_scaling, kernels::RopeScaling::kNtk);
  EXPECT_EQ(args->params.base, 500000.0);
  EXPECT_EQ(args->params.scaling_factor, 8.0);
  EXPECT_EQ(args->params.rotary_dim, 64);

  rope->set_layout(v1::ROPE_LAYOUT_INTERLEAVED);
  rope->set_scaling(v1::ROPE_SCALING_LINEAR);
  args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->params.rope_layout, kernels::RopeLayout::kInterleaved);
  EXPECT_EQ(args->params.rope_scaling, kernels::RopeScaling::kLinear);
}

TEST(ConvertTest, MethodTensorsGoUnderTheirBareNames) {
  v1::AttendRequest request = AlibiRequest();
  v1::TransformerXL* txl = request.mutable_method()->mutable_transformer_xl();
  txl->set_d_rel(4);
  txl->set_base(100);
  *txl->mutable_pos_bias_u() = DataTensor({1, 2}, {1, 2});
  *txl->mutable_w_r() = DataTensor({1, 4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->method, kernels::MethodKind::kTransformerXL);
  EXPECT_EQ(args->params.d_rel, 4);
  EXPECT_EQ(args->params.base, 100.0);
  EXPECT_THAT(args->inputs.at("pos_bias_u").values(), ElementsAre(1, 2));
  EXPECT_THAT(args->inputs.at("w_r").shape(), ElementsAre(1, 4, 2));
  EXPECT_EQ(args->inputs.count("pos_bias_v"), 0u);  // Unset: left to the kernels to require.

  v1::AttendRequest shaw_request = AlibiRequest();
  v1::Shaw* shaw = shaw_request.mutable_method()->mutable_shaw();
  shaw->set_max_relative_position(0);
  *shaw->mutable_rel_k() = DataTensor({1, 2}, {3, 4});
  *shaw->mutable_rel_v() = DataTensor({1, 2}, {5, 6});
  args = ToAttendArgs(shaw_request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->params.max_relative_position, 0);  // Set to 0, not unset.
  EXPECT_THAT(args->inputs.at("rel_k").values(), ElementsAre(3, 4));
  EXPECT_THAT(args->inputs.at("rel_v").values(), ElementsAre(5, 6));

  v1::AttendRequest da_request = AlibiRequest();
  *da_request.mutable_method()->mutable_da_transformer()->mutable_dist_w() = DataTensor({1}, {2});
  *da_request.mutable_method()->mutable_da_transformer()->mutable_dist_v() = DataTensor({1}, {3});
  args = ToAttendArgs(da_request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->method, kernels::MethodKind::kDaTransformer);
  EXPECT_THAT(args->inputs.at("dist_w").values(), ElementsAre(2));
  EXPECT_THAT(args->inputs.at("dist_v").values(), ElementsAre(3));
}

TEST(ConvertTest, ExtraTensorsPassThroughForTheKernelsToReject) {
  v1::AttendRequest request = AlibiRequest();
  *request.mutable_x_q() = DataTensor({1, 2, 2}, {1, 2, 3, 4});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  ASSERT_EQ(args->inputs.count("x_q"), 1u);
  // And the kernels do reject it, by name.
  absl::StatusOr<kernels::AttendResult> result =
      kernels::Attend(*std::move(args), kernels::ComputeOptions{});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("x_q"));
}

TEST(ConvertTest, EncodeCopiesFieldsAndMethodTensors) {
  v1::EncodeRequest request;
  *request.mutable_method()->mutable_learned()->mutable_table() =
      DataTensor({3, 2}, {1, 2, 3, 4, 5, 6});
  *request.mutable_x() = DataTensor({1, 2, 2}, {0, 0, 0, 0});
  *request.mutable_distances() = DataTensor({2}, {1, 0});
  request.set_offset(1);
  request.set_sq(2);
  request.set_sk(5);
  request.set_query_offset(3);
  request.set_num_heads(4);
  absl::StatusOr<kernels::EncodeArgs> args = ToEncodeArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->method, kernels::MethodKind::kLearned);
  EXPECT_EQ(args->offset, 1);
  EXPECT_EQ(args->sq, 2);
  EXPECT_EQ(args->sk, 5);
  EXPECT_EQ(args->query_offset, 3);
  EXPECT_EQ(args->num_heads, 4);
  ASSERT_EQ(args->inputs.size(), 3u);
  EXPECT_THAT(args->inputs.at("table").shape(), ElementsAre(3, 2));
  EXPECT_THAT(args->inputs.at("distances").values(), ElementsAre(1, 0));

  request.clear_query_offset();
  args = ToEncodeArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_FALSE(args->query_offset.has_value());
}

TEST(ConvertTest, AttendResponseRawAndDataRoundTrip) {
  const std::vector<float> out = {1.0f, -2.0f, 0.5f, 3.25f};
  const std::vector<float> probs = {1.0f, 0.0f, 0.25f, 0.75f};
  auto make_result = [&] {
    kernels::AttendResult result;
    result.out = kernels::Tensor({1, 1, 2, 2}, out);
    result.probs = kernels::Tensor({1, 1, 2, 2}, probs);
    return result;
  };

  v1::AttendResponse as_data;
  FillAttendResponse(make_result(), OutputEncoding{/*raw=*/false}, &as_data);
  EXPECT_THAT(as_data.out().shape(), ElementsAre(1, 1, 2, 2));
  EXPECT_THAT(as_data.out().data(), ElementsAreArray(out));
  EXPECT_TRUE(as_data.out().raw_data().empty());
  EXPECT_THAT(as_data.probs().data(), ElementsAreArray(probs));

  v1::AttendResponse as_raw;
  FillAttendResponse(make_result(), OutputEncoding{/*raw=*/true}, &as_raw);
  EXPECT_THAT(as_raw.out().shape(), ElementsAre(1, 1, 2, 2));
  EXPECT_EQ(as_raw.out().data_size(), 0);
  EXPECT_EQ(as_raw.out().raw_data(), LittleEndianBytes(out));
  EXPECT_EQ(as_raw.out().raw_data().substr(0, 4), std::string("\x00\x00\x80\x3f", 4));
  EXPECT_EQ(as_raw.probs().raw_data(), LittleEndianBytes(probs));

  // Either response, read back as a request tensor, gives the same values.
  absl::StatusOr<kernels::Tensor> from_data = ToKernelTensor(as_data.out(), "out", {});
  absl::StatusOr<kernels::Tensor> from_raw = ToKernelTensor(as_raw.out(), "out", {});
  ASSERT_TRUE(from_data.ok() && from_raw.ok());
  EXPECT_EQ(from_data->values(), out);
  EXPECT_EQ(from_raw->values(), out);

  kernels::AttendResult no_probs;
  no_probs.out = kernels::Tensor({1}, {9.0f});
  v1::AttendResponse response;
  FillAttendResponse(std::move(no_probs), OutputEncoding{}, &response);
  EXPECT_FALSE(response.has_probs());
  EXPECT_THAT(response.out().data(), ElementsAre(9.0f));
}

TEST(ConvertTest, EncodeResponseKeepsOutputNames) {
  kernels::EncodeResult result;
  result.outputs.emplace("slopes", kernels::Tensor({2}, {0.0625f, 0.00390625f}));
  result.outputs.emplace("bias", kernels::Tensor({2, 1, 1}, {0.0f, -1.0f}));
  v1::EncodeResponse response;
  FillEncodeResponse(std::move(result), OutputEncoding{/*raw=*/false}, &response);
  ASSERT_EQ(response.outputs_size(), 2);
  EXPECT_THAT(response.outputs().at("slopes").data(), ElementsAre(0.0625f, 0.00390625f));
  EXPECT_THAT(response.outputs().at("bias").shape(), ElementsAre(2, 1, 1));

  kernels::EncodeResult raw_result;
  raw_result.outputs.emplace("y", kernels::Tensor({1}, {1.0f}));
  FillEncodeResponse(std::move(raw_result), OutputEncoding{/*raw=*/true}, &response);
  ASSERT_EQ(response.outputs_size(), 1);  // Cleared first.
  EXPECT_EQ(response.outputs().at("y").raw_data(), std::string("\x00\x00\x80\x3f", 4));
}

TEST(ConvertTest, ListMethodsCarriesEveryMethodAndTheLimits) {
  v1::ListMethodsResponse response;
  FillListMethodsResponse(kernels::DescribeMethods(), 1024, 99, "attnd 9.9.9", &response);
  ASSERT_EQ(response.methods_size(), 8);
  EXPECT_EQ(response.methods(0).name(), "none");
  EXPECT_EQ(response.methods(7).name(), "da_transformer");
  EXPECT_EQ(response.limits().max_message_bytes(), 1024);
  EXPECT_EQ(response.limits().max_elements(), 99);
  EXPECT_EQ(response.server(), "attnd 9.9.9");
  bool found_rotary_dim = false;
  for (const v1::ParameterInfo& p : response.methods(3).parameters()) {
    if (p.name() == "rotary_dim") {
      found_rotary_dim = true;
      EXPECT_EQ(p.type(), "int");
      EXPECT_FALSE(p.rule().empty());
      EXPECT_GE(p.ops_size(), 1);
    }
  }
  EXPECT_TRUE(found_rotary_dim);
}

}  // namespace
}  // namespace attnserve::server
