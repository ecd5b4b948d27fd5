// The wire side of attention-variants.md in server/convert.h: the variant
// parameters mapped onto the kernels' arguments, 16-bit request tensors
// (section 6) widened exactly with their errors, and output_dtype.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "server/convert.h"
#include "server/float16.h"
#include "server/tensor_store.h"
#include "tests/server/proto_tensors.h"

namespace attnserve::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Little-endian 16-bit raw_data written byte by byte (not by the code under test).
std::string Bytes16(const std::vector<uint16_t>& bits) {
  std::string bytes;
  for (uint16_t b : bits) {
    bytes.push_back(static_cast<char>(b & 0xFF));
    bytes.push_back(static_cast<char>(b >> 8));
  }
  return bytes;
}

v1::Tensor Tensor16(std::vector<int64_t> shape, v1::DataType dtype,
                    const std::vector<uint16_t>& bits) {
  v1::Tensor tensor;
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_dtype(dtype);
  tensor.set_raw_data(Bytes16(bits));
  return tensor;
}

v1::AttendRequest NoneRequest() {
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() = DataTensor({2, 2, 1, 2}, {1, 0, 0, 1, 1, 1, 0, 0});
  *request.mutable_k() = DataTensor({2, 1, 3, 2}, {1, 0, 0, 1, 1, 1, 2, 0, 0, 2, 2, 2});
  *request.mutable_v() = DataTensor({2, 1, 3, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  return request;
}

TEST(ConvertVariantsTest, VariantParametersAreMappedAsTheyAre) {
  v1::AttendRequest request = NoneRequest();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->num_kv_heads, 0);
  EXPECT_TRUE(args->kv_lengths.empty());
  EXPECT_FALSE(args->window.has_value());
  EXPECT_FALSE(args->softcap.has_value());

  request.set_num_kv_heads(1);
  request.add_kv_lengths(3);
  request.add_kv_lengths(2);
  request.set_window(2);
  request.set_softcap(30.0);
  args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->num_kv_heads, 1);
  EXPECT_THAT(args->kv_lengths, ElementsAre(3, 2));
  EXPECT_EQ(args->window, 2);
  EXPECT_EQ(args->softcap, 30.0);

  // Values are the kernels' to judge: convert passes even nonsense through.
  request.set_window(0);
  request.set_softcap(std::numeric_limits<double>::quiet_NaN());
  request.set_num_kv_heads(-4);
  request.add_kv_lengths(-1);
  args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->window, 0);
  EXPECT_EQ(args->num_kv_heads, -4);
  EXPECT_THAT(args->kv_lengths, ElementsAre(3, 2, -1));
}

TEST(ConvertVariantsTest, HalfAndBFloat16RawDataAreWidenedExactly) {
  v1::AttendRequest request = NoneRequest();
  // 1, -2, 0.5, 65504, the smallest subnormal 2^-24, -0.
  *request.mutable_q() =
      Tensor16({1, 1, 3, 2}, v1::DTYPE_FLOAT16, {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x8000});
  // 1, -2, 3.0e38 (0x7F61 = 2^127 * 1.7578125), 2^-133 (a float32 subnormal).
  *request.mutable_k() =
      Tensor16({1, 1, 2, 2}, v1::DTYPE_BFLOAT16, {0x3F80, 0xC000, 0x7F61, 0x0001});
  // float32 raw_data with an explicit dtype is plain float32.
  *request.mutable_v() = DataTensor({1, 1, 2, 2}, {1, 2, 3, 4});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(args->inputs.at("q").shape(), ElementsAre(1, 1, 3, 2));
  EXPECT_THAT(args->inputs.at("q").values(),
              ElementsAre(1.0f, -2.0f, 0.5f, 65504.0f, 0x1p-24f, -0.0f));
  EXPECT_TRUE(std::signbit(args->inputs.at("q").values()[5]));
  EXPECT_THAT(args->inputs.at("k").values(), ElementsAre(1.0f, -2.0f, 0x1.C2p+127f, 0x1p-133f));

  // The deferred path (a merged batch) appends the same widened values.
  DeferredTensors deferred;
  ASSERT_TRUE(ToAttendArgs(request, ConvertLimits{}, nullptr, &deferred).ok());
  std::vector<float> merged = {7.0f};
  ASSERT_TRUE(deferred.at("q").AppendTo(merged).ok());
  EXPECT_THAT(merged, ElementsAre(7.0f, 1.0f, -2.0f, 0.5f, 65504.0f, 0x1p-24f, -0.0f));
}

TEST(ConvertVariantsTest, ExplicitFloat32DtypeIsPlainFloat32) {
  v1::AttendRequest request = NoneRequest();
  request.mutable_v()->set_dtype(v1::DTYPE_FLOAT32);  // on data: allowed
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(args->inputs.at("v").values()[11], 12.0f);
}

TEST(ConvertVariantsTest, SixteenBitDtypeOnDataOrRefNamesTheDtype) {
  v1::AttendRequest request = NoneRequest();
  request.mutable_k()->set_dtype(v1::DTYPE_FLOAT16);
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(),
              HasSubstr("k.dtype: float16 describes raw_data only, but data is set"));

  std::vector<StoredTensor> stored;
  stored.push_back({"t/v", "F16", kernels::Tensor({2, 1, 3, 2}, std::vector<float>(12, 1.0f))});
  const TensorStore store(std::move(stored));
  request = NoneRequest();
  request.mutable_v()->Clear();
  request.mutable_v()->set_ref("t/v");
  ASSERT_TRUE(ToAttendArgs(request, ConvertLimits{}, &store).ok());
  request.mutable_v()->set_dtype(v1::DTYPE_BFLOAT16);
  args = ToAttendArgs(request, ConvertLimits{}, &store);
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(),
              HasSubstr("v.dtype: bfloat16 describes raw_data only, but ref is set"));
}

TEST(ConvertVariantsTest, UnknownDtypeIsInvalidAndNamed) {
  v1::AttendRequest request = NoneRequest();
  *request.mutable_q() =
      Tensor16({2, 2, 1, 2}, static_cast<v1::DataType>(9), {1, 2, 3, 4, 5, 6, 7, 8});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(), HasSubstr("q.dtype: unknown value 9"));

  v1::EncodeRequest encode;
  encode.mutable_method()->mutable_sinusoidal();
  *encode.mutable_x() = DataTensor({1, 1, 2}, {0, 0});
  encode.set_raw_output(true);
  encode.set_output_dtype(static_cast<v1::DataType>(-1));
  absl::StatusOr<kernels::EncodeArgs> encode_args = ToEncodeArgs(encode, ConvertLimits{});
  EXPECT_EQ(encode_args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(encode_args.status().message(), HasSubstr("output_dtype: unknown value -1"));
}

TEST(ConvertVariantsTest, SixteenBitRawDataOfTheWrongLengthNamesRawData) {
  v1::AttendRequest request = NoneRequest();
  // 12 elements need 24 bytes; 48 (as float32) is wrong.
  request.mutable_v()->clear_data();
  request.mutable_v()->set_dtype(v1::DTYPE_BFLOAT16);
  request.mutable_v()->set_raw_data(std::string(48, '\0'));
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(),
            "v.raw_data: shape [2,1,3,2] needs 24 bytes (2 per bfloat16, as v.dtype says), got 48");
}

TEST(ConvertVariantsTest, NonFinite16BitValueNamesFieldAndIndex) {
  v1::AttendRequest request = NoneRequest();
  // float16 NaN (0x7E00) at flat index 5, as the golden error case has it.
  *request.mutable_v() = Tensor16({2, 1, 3, 2}, v1::DTYPE_FLOAT16,
                                  {0x3C00, 0x3C00, 0x3C00, 0x3C00, 0x3C00, 0x7E00, 0x3C00, 0x3C00,
                                   0x3C00, 0x3C00, 0x3C00, 0x3C00});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(args.status().message(),
              HasSubstr("v.raw_data[5]: must be finite, got nan (float16)"));

  // bfloat16 -infinity (0xFF80) at index 2, found by the deferred path too.
  *request.mutable_v() =
      Tensor16({2, 1, 3, 2}, v1::DTYPE_BFLOAT16, {0, 0, 0xFF80, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  DeferredTensors deferred;
  ASSERT_TRUE(ToAttendArgs(request, ConvertLimits{}, nullptr, &deferred).ok());
  std::vector<float> merged;
  const absl::Status status = deferred.at("v").AppendTo(merged);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("v.raw_data[2]: must be finite, got -inf (bfloat16)"));
}

TEST(ConvertVariantsTest, SixteenBitOutputDtypeNeedsRawOutput) {
  for (v1::DataType dtype : {v1::DTYPE_FLOAT16, v1::DTYPE_BFLOAT16}) {
    v1::AttendRequest request = NoneRequest();
    request.set_output_dtype(dtype);
    absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{});
    EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(args.status().message(), HasSubstr("output_dtype: "));
    EXPECT_THAT(args.status().message(), HasSubstr("needs raw_output"));
    request.set_raw_output(true);
    EXPECT_TRUE(ToAttendArgs(request, ConvertLimits{}).ok());
  }
  // float32, explicit or not, goes with either encoding.
  v1::AttendRequest request = NoneRequest();
  request.set_output_dtype(v1::DTYPE_FLOAT32);
  EXPECT_TRUE(ToAttendArgs(request, ConvertLimits{}).ok());
  EXPECT_FALSE(ToOutputEncoding(false, v1::DTYPE_BFLOAT16).ok());
  EXPECT_TRUE(ToOutputEncoding(false, v1::DTYPE_UNSPECIFIED).ok());
}

TEST(ConvertVariantsTest, ResponsesInSixteenBitRoundToNearestEvenWithTheirDtype) {
  // 1 + 2^-11 ties to 1 in float16; 1e5 overflows to infinity; 1 + 2^-8
  // ties to 1 in bfloat16 (and is exact in float16).
  const std::vector<float> out = {1.0f, 1.0f + 0x1p-11f, -3.0f, 1e5f};
  const std::vector<float> probs = {0.25f, 1.0f + 0x1p-8f, 0.0f, 1.0f};
  const auto make_result = [&] {
    kernels::AttendResult result;
    result.out = kernels::Tensor({1, 1, 2, 2}, out);
    result.probs = kernels::Tensor({1, 1, 2, 2}, probs);
    return result;
  };
  v1::AttendResponse response;
  FillAttendResponse(make_result(), OutputEncoding{true, v1::DTYPE_FLOAT16}, &response);
  EXPECT_EQ(response.out().dtype(), v1::DTYPE_FLOAT16);
  EXPECT_EQ(response.probs().dtype(), v1::DTYPE_FLOAT16);
  EXPECT_EQ(response.out().data_size(), 0);
  EXPECT_EQ(response.out().raw_data(), Bytes16({0x3C00, 0x3C00, 0xC200, 0x7C00}));
  EXPECT_EQ(response.probs().raw_data(), Bytes16({0x3400, 0x3C04, 0x0000, 0x3C00}));

  FillAttendResponse(make_result(), OutputEncoding{true, v1::DTYPE_BFLOAT16}, &response);
  EXPECT_EQ(response.out().dtype(), v1::DTYPE_BFLOAT16);
  EXPECT_EQ(response.out().raw_data(), Bytes16({0x3F80, 0x3F80, 0xC040, 0x47C3}));
  EXPECT_EQ(response.probs().raw_data(), Bytes16({0x3E80, 0x3F80, 0x0000, 0x3F80}));

  // Rows of a merged batch, and an explicit float32: raw float32 with dtype set.
  FillAttendResponseRows(make_result(), 0, 1, OutputEncoding{true, v1::DTYPE_FLOAT32}, &response);
  EXPECT_EQ(response.out().dtype(), v1::DTYPE_FLOAT32);
  EXPECT_EQ(response.out().raw_data().size(), 16u);
  // Unset stays unset (the responses of before are unchanged).
  FillAttendResponse(make_result(), OutputEncoding{true}, &response);
  EXPECT_EQ(response.out().dtype(), v1::DTYPE_UNSPECIFIED);

  kernels::EncodeResult encoded;
  encoded.outputs.emplace("y", kernels::Tensor({2}, {2.0f, -0.5f}));
  encoded.outputs.emplace("table", kernels::Tensor({1}, {65504.0f}));
  v1::EncodeResponse encode_response;
  FillEncodeResponse(std::move(encoded), OutputEncoding{true, v1::DTYPE_FLOAT16}, &encode_response);
  EXPECT_EQ(encode_response.outputs().at("y").dtype(), v1::DTYPE_FLOAT16);
  EXPECT_EQ(encode_response.outputs().at("y").raw_data(), Bytes16({0x4000, 0xB800}));
  EXPECT_EQ(encode_response.outputs().at("table").raw_data(), Bytes16({0x7BFF}));
}

TEST(ConvertVariantsTest, ListMethodsListsTheVariantParametersWithTheirOps) {
  v1::ListMethodsResponse response;
  FillListMethodsResponse(kernels::DescribeMethods(), 1024, 99, "attnd", &response);
  ASSERT_EQ(response.methods_size(), 8);
  for (const v1::MethodInfo& method : response.methods()) {
    std::map<std::string, const v1::ParameterInfo*> params;
    for (const v1::ParameterInfo& p : method.parameters()) params[p.name()] = &p;
    for (const char* name : {"num_kv_heads", "kv_lengths", "window", "softcap"}) {
      ASSERT_EQ(params.count(name), 1u) << method.name() << " " << name;
      EXPECT_THAT(params[name]->ops(), ElementsAre("attend")) << method.name() << " " << name;
      EXPECT_FALSE(params[name]->rule().empty());
    }
    ASSERT_EQ(params.count("output_dtype"), 1u) << method.name();
    const v1::ParameterInfo& output_dtype = *params["output_dtype"];
    EXPECT_EQ(output_dtype.type(), "enum");
    EXPECT_EQ(output_dtype.default_value(), "float32");
    EXPECT_THAT(output_dtype.rule(), HasSubstr("need raw_output"));
    // `none` has no encode form.
    if (method.name() == "none") {
      EXPECT_THAT(output_dtype.ops(), ElementsAre("attend"));
    } else {
      EXPECT_THAT(output_dtype.ops(), ElementsAre("encode", "attend")) << method.name();
    }
  }
}

}  // namespace
}  // namespace attnserve::server
