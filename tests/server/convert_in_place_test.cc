// Reading requests in place and writing responses once (issue 13 item 4):
// float32 raw_data, data and the response's out as the kernels see them
// (server/convert.h Float32RawData, ConvertLimits::in_place,
// AttendOutStorage), with the fallbacks a view cannot take: misaligned
// bytes, a big-endian host, 16-bit values, other output encodings.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/convert.h"
#include "server/float16.h"
#include "tests/server/proto_tensors.h"

namespace attnserve::server {
namespace {

using ::testing::ElementsAre;
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

v1::Tensor RawTensor(const std::vector<int64_t>& shape, const std::vector<float>& values) {
  v1::Tensor tensor;
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_raw_data(LittleEndianBytes(values));
  return tensor;
}

// Values whose bits must survive: signed zero, a subnormal, extremes.
const std::vector<float> kValues = {1.5f, -0.0f, 0x1p-140f, -3.4e38f, 6.0f, 1e-30f};

bool SameBits(absl::Span<const float> values, const std::vector<float>& want) {
  return values.size() == want.size() &&
         std::memcmp(values.data(), want.data(), want.size() * sizeof(float)) == 0;
}

TEST(ConvertInPlaceTest, AlignedFloat32RawDataIsReadWhereItLies) {
  if (!kLittleEndianHost) GTEST_SKIP() << "a big-endian host copies (tested below)";
  const std::string bytes = LittleEndianBytes(kValues);
  const kernels::Tensor tensor = Float32RawData({2, 3}, bytes);
  EXPECT_TRUE(tensor.borrowed());
  EXPECT_EQ(static_cast<const void*>(tensor.data()), static_cast<const void*>(bytes.data()));
  EXPECT_THAT(tensor.shape(), ElementsAre(2, 3));
  EXPECT_TRUE(SameBits(tensor.values(), kValues));
}

TEST(ConvertInPlaceTest, MisalignedFloat32RawDataIsCopied) {
  // protobuf's std::string storage is malloc's (aligned); a view one byte in
  // is what a misaligned message would look like.
  const std::string buffer = "x" + LittleEndianBytes(kValues);
  const absl::string_view bytes(buffer.data() + 1, buffer.size() - 1);
  const kernels::Tensor tensor = Float32RawData({6}, bytes);
  EXPECT_FALSE(tensor.borrowed());
  EXPECT_TRUE(SameBits(tensor.values(), kValues));
}

TEST(ConvertInPlaceTest, BigEndianHostPathAssemblesTheSameValues) {
  // The big-endian branch assembles each value from its bytes, which gives
  // the same floats on any host: run here, it is compiled and checked.
  const std::string bytes = LittleEndianBytes(kValues);
  const kernels::Tensor tensor = Float32RawData({3, 2}, bytes, /*little_endian_host=*/false);
  EXPECT_FALSE(tensor.borrowed());
  EXPECT_TRUE(SameBits(tensor.values(), kValues));
}

v1::AttendRequest NoneRequest() {
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() = RawTensor({1, 1, 3, 2}, kValues);
  *request.mutable_k() = DataTensor({1, 1, 3, 2}, kValues);
  v1::Tensor v;
  for (int64_t d : {1, 1, 3, 2}) v.add_shape(d);
  v.set_dtype(v1::DTYPE_FLOAT16);
  std::string half(12, '\0');
  for (size_t i = 0; i < 6; ++i) {
    const uint16_t h = FloatToHalf(static_cast<float>(i) - 2.5f);
    half[2 * i] = static_cast<char>(h & 0xff);
    half[2 * i + 1] = static_cast<char>(h >> 8);
  }
  v.set_raw_data(half);
  *request.mutable_v() = v;
  return request;
}

TEST(ConvertInPlaceTest, InPlaceArgsViewFloat32ValuesAndWidenSixteenBitOnes) {
  const v1::AttendRequest request = NoneRequest();
  absl::StatusOr<kernels::AttendArgs> args =
      ToAttendArgs(request, ConvertLimits{int64_t{1} << 28, /*in_place=*/true});
  ASSERT_TRUE(args.ok()) << args.status();
  const kernels::Tensor& q = args->inputs.at("q");
  const kernels::Tensor& k = args->inputs.at("k");
  const kernels::Tensor& v = args->inputs.at("v");
  if (kLittleEndianHost) {
    EXPECT_TRUE(q.borrowed());
    EXPECT_EQ(static_cast<const void*>(q.data()),
              static_cast<const void*>(request.q().raw_data().data()));
  }
  EXPECT_TRUE(k.borrowed());
  EXPECT_EQ(k.data(), request.k().data().data());
  EXPECT_FALSE(v.borrowed());
  EXPECT_THAT(v.values(), ElementsAre(-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f));
  EXPECT_TRUE(SameBits(q.values(), kValues));
  EXPECT_TRUE(SameBits(k.values(), kValues));

  // The default copies: tensors that outlive the message (decode sessions).
  absl::StatusOr<kernels::AttendArgs> copied = ToAttendArgs(request, ConvertLimits{});
  ASSERT_TRUE(copied.ok()) << copied.status();
  for (const auto& [name, tensor] : copied->inputs) EXPECT_FALSE(tensor.borrowed()) << name;
  EXPECT_TRUE(SameBits(copied->inputs.at("q").values(), kValues));
}

TEST(ConvertInPlaceTest, InPlaceValuesAreStillCheckedFinite) {
  for (const bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "copied");
    const ConvertLimits limits{int64_t{1} << 28, in_place};
    v1::AttendRequest request = NoneRequest();
    std::vector<float> bad = kValues;
    bad[4] = std::numeric_limits<float>::quiet_NaN();
    *request.mutable_q() = RawTensor({1, 1, 3, 2}, bad);
    absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, limits);
    EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(args.status().message(),
                HasSubstr("q.raw_data[4]: must be finite, got nan (float32)"));

    request = NoneRequest();
    bad = kValues;
    bad[1] = -std::numeric_limits<float>::infinity();
    *request.mutable_k() = DataTensor({1, 1, 3, 2}, bad);
    args = ToAttendArgs(request, limits);
    EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(args.status().message(), HasSubstr("k.data[1]: must be finite, got -inf"));
  }
}

TEST(ConvertInPlaceTest, Float32RawOutIsWrittenOnceIntoTheResponse) {
  if (!kLittleEndianHost) GTEST_SKIP() << "a big-endian host encodes a copy";
  for (const v1::DataType dtype : {v1::DTYPE_UNSPECIFIED, v1::DTYPE_FLOAT32}) {
    v1::AttendResponse response;
    response.mutable_probs()->add_shape(9);  // an earlier message's, cleared
    const auto storage = AttendOutStorage(OutputEncoding{true, dtype}, &response);
    ASSERT_TRUE(storage);
    float* const out = storage({1, 2, 1, 3});
    ASSERT_NE(out, nullptr);
    EXPECT_FALSE(response.has_probs());
    EXPECT_THAT(response.out().shape(), ElementsAre(1, 2, 1, 3));
    EXPECT_EQ(response.out().raw_data(), std::string(24, '\0'));
    std::memcpy(out, kValues.data(), 24);  // what the engine does

    kernels::AttendResult result;
    result.out = kernels::Tensor::MutableView({1, 2, 1, 3}, out);
    FillAttendResponse(std::move(result), OutputEncoding{true, dtype}, &response);
    EXPECT_EQ(static_cast<const void*>(response.out().raw_data().data()),
              static_cast<const void*>(out));
    EXPECT_EQ(response.out().raw_data(), LittleEndianBytes(kValues));
    EXPECT_THAT(response.out().shape(), ElementsAre(1, 2, 1, 3));
    EXPECT_EQ(response.out().dtype(), dtype);
    EXPECT_EQ(response.out().data_size(), 0);
  }
}

TEST(ConvertInPlaceTest, OtherOutputEncodingsAreLeftToTheKernels) {
  v1::AttendResponse response;
  EXPECT_FALSE(AttendOutStorage(OutputEncoding{false, v1::DTYPE_UNSPECIFIED}, &response));
  EXPECT_FALSE(AttendOutStorage(OutputEncoding{true, v1::DTYPE_FLOAT16}, &response));
  EXPECT_FALSE(AttendOutStorage(OutputEncoding{true, v1::DTYPE_BFLOAT16}, &response));
  // An owned out is still filled (copied) as before.
  kernels::AttendResult result;
  result.out = kernels::Tensor({1, 1, 1, 2}, {0.5f, -1.0f});
  FillAttendResponse(std::move(result), OutputEncoding{true, v1::DTYPE_UNSPECIFIED}, &response);
  EXPECT_EQ(response.out().raw_data(), LittleEndianBytes({0.5f, -1.0f}));
}

}  // namespace
}  // namespace attnserve::server
