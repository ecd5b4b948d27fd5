// The C++ SDK against the real attnd on the attention variants
// (attention-variants.md): float16 and bfloat16 requests and responses
// (checked bit for bit against the float32 call on the widened values,
// rounded by client/dtype.h), grouped-query attention with a window and key
// lengths against the same call with repeated heads, the RoPE scalings in
// 16 bits, and the server's refusals naming the field.
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/attnd_client_test.h"
#include "tests/testing/server_process.h"

namespace attnserve::client {
namespace {

using ::attnserve::testing::ServerProcess;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pointwise;

std::vector<float> RandomValues(size_t count, uint32_t seed) {
  std::mt19937 random(seed);  // fixed seeds: every run sends the same values
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(count);
  for (float& value : values) value = normal(random);
  return values;
}

// `values` as the server sees them after a trip through `encoding`.
std::vector<float> Rounded(const std::vector<float>& values, TensorEncoding encoding) {
  std::vector<float> rounded = values;
  for (float& value : rounded) {
    value = encoding == TensorEncoding::kRawFloat16
                ? Float16BitsToFloat32(Float32ToFloat16Bits(value))
                : Bfloat16BitsToFloat32(Float32ToBfloat16Bits(value));
  }
  return rounded;
}

// `values` narrowed to `dtype` bits, as the server must round its float32 result.
std::vector<uint16_t> Narrowed(const std::vector<float>& values, v1::DataType dtype) {
  std::vector<uint16_t> bits;
  for (float value : values) {
    bits.push_back(dtype == v1::DTYPE_FLOAT16 ? Float32ToFloat16Bits(value)
                                              : Float32ToBfloat16Bits(value));
  }
  return bits;
}

std::vector<float> Values(const v1::Tensor& tensor) {
  absl::StatusOr<std::vector<float>> values = TensorValues(tensor);
  EXPECT_TRUE(values.ok()) << values.status();
  return values.ok() ? *values : std::vector<float>();
}

// [B, H, S, D] with every head of `kv` (H_kv heads) repeated `times` times
// in place: head h of the result is head h / times of the input.
std::vector<float> RepeatHeads(const std::vector<float>& kv, int64_t batch, int64_t kv_heads,
                               int64_t times) {
  std::vector<float> out;
  const int64_t head_size = static_cast<int64_t>(kv.size()) / (batch * kv_heads);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < kv_heads * times; ++h) {
      const auto begin = kv.begin() + (b * kv_heads + h / times) * head_size;
      out.insert(out.end(), begin, begin + head_size);
    }
  }
  return out;
}

class ClientVariantsTest : public AttndClientTest {};

// Attend under RoPE, [1, 4, 16, 32]: each 16-bit encoding in, each 16-bit type out.
TEST_F(ClientVariantsTest, SixteenBitInAndOutMatchTheFloat32CallBitForBit) {
  const std::vector<int64_t> shape = {1, 4, 16, 32};
  const std::vector<float> q = RandomValues(4 * 16 * 32, 1);
  const std::vector<float> k = RandomValues(4 * 16 * 32, 2);
  const std::vector<float> v = RandomValues(4 * 16 * 32, 3);
  for (TensorEncoding in : {TensorEncoding::kRawFloat16, TensorEncoding::kRawBfloat16}) {
    for (v1::DataType out_type : {v1::DTYPE_FLOAT16, v1::DTYPE_BFLOAT16}) {
      SCOPED_TRACE(absl::StrCat(in == TensorEncoding::kRawFloat16 ? "float16" : "bfloat16", " in, ",
                                v1::DataType_Name(out_type), " out"));
      v1::AttendRequest request;
      request.mutable_method()->mutable_rope()->set_layout(v1::ROPE_LAYOUT_HALF);
      request.set_causal(true);
      request.set_return_probs(true);
      request.set_raw_output(true);
      // The same call in float32 on the values the 16-bit request carries.
      v1::AttendRequest wide = request;
      *request.mutable_q() = MakeTensor(shape, q, in);
      *request.mutable_k() = MakeTensor(shape, k, in);
      *request.mutable_v() = MakeTensor(shape, v, in);
      *wide.mutable_q() = MakeTensor(shape, Rounded(q, in), TensorEncoding::kRawData);
      *wide.mutable_k() = MakeTensor(shape, Rounded(k, in), TensorEncoding::kRawData);
      *wide.mutable_v() = MakeTensor(shape, Rounded(v, in), TensorEncoding::kRawData);
      EXPECT_LT(request.ByteSizeLong(), wide.ByteSizeLong() * 51 / 100);
      request.set_output_dtype(out_type);

      absl::StatusOr<v1::AttendResponse> narrow = client_->Attend(request);
      ASSERT_TRUE(narrow.ok()) << narrow.status();
      absl::StatusOr<v1::AttendResponse> reference = client_->Attend(wide);
      ASSERT_TRUE(reference.ok()) << reference.status();
      for (const auto& [got, want] : {std::make_pair(&narrow->out(), &reference->out()),
                                      std::make_pair(&narrow->probs(), &reference->probs())}) {
        EXPECT_EQ(got->dtype(), out_type);
        EXPECT_EQ(got->raw_data().size(), 2 * Values(*want).size());
        absl::StatusOr<std::vector<uint16_t>> bits = TensorBits16(*got);
        ASSERT_TRUE(bits.ok()) << bits.status();
        EXPECT_EQ(*bits, Narrowed(Values(*want), out_type));
      }
    }
  }
}

TEST_F(ClientVariantsTest, EncodeRopeYarnInBfloat16) {
  v1::EncodeRequest request;
  v1::Rope* rope = request.mutable_method()->mutable_rope();
  rope->set_scaling(v1::ROPE_SCALING_YARN);
  rope->set_scaling_factor(4.0);
  rope->set_original_max_position(16);
  request.set_offset(40);
  const std::vector<float> x = RandomValues(2 * 3 * 8 * 16, 4);
  *request.mutable_x() = MakeTensor({2, 3, 8, 16}, x, TensorEncoding::kRawBfloat16);
  request.set_raw_output(true);
  v1::EncodeRequest wide = request;
  *wide.mutable_x() =
      MakeTensor({2, 3, 8, 16}, Rounded(x, TensorEncoding::kRawBfloat16), TensorEncoding::kData);
  wide.set_raw_output(false);
  request.set_output_dtype(v1::DTYPE_BFLOAT16);

  absl::StatusOr<v1::EncodeResponse> narrow = client_->Encode(request);
  ASSERT_TRUE(narrow.ok()) << narrow.status();
  absl::StatusOr<v1::EncodeResponse> reference = client_->Encode(wide);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_TRUE(narrow->outputs().contains("y"));
  const v1::Tensor& y = narrow->outputs().at("y");
  EXPECT_EQ(y.dtype(), v1::DTYPE_BFLOAT16);
  EXPECT_THAT(y.shape(), ElementsAre(2, 3, 8, 16));
  const std::vector<float> want = Values(reference->outputs().at("y"));
  EXPECT_EQ(*TensorBits16(y), Narrowed(want, v1::DTYPE_BFLOAT16));
  // TensorValues widens them: within bfloat16's half unit of the float32 result.
  const std::vector<float> got = Values(y);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(std::fabs(got[i] - want[i]), std::ldexp(std::fabs(want[i]), -8) + 1e-30f) << i;
  }
}

// H = 6 query heads over H_kv = 2 key/value heads, a causal window of 3 and
// key lengths [9, 5], for the q/k/v methods: the same as repeating every
// key/value head 3 times (attention-variants.md 1), and hidden keys get
// probability 0.
TEST_F(ClientVariantsTest, GqaWithWindowAndLengthsEqualsRepeatedHeads) {
  constexpr int64_t kB = 2, kH = 6, kHkv = 2, kSq = 4, kSk = 9, kD = 8;
  const std::vector<float> q = RandomValues(kB * kH * kSq * kD, 5);
  const std::vector<float> k = RandomValues(kB * kHkv * kSk * kD, 6);
  const std::vector<float> v = RandomValues(kB * kHkv * kSk * kD, 7);
  for (const char* method : {"none", "rope", "alibi", "shaw"}) {
    SCOPED_TRACE(method);
    v1::AttendRequest gqa;
    if (std::string(method) == "none") gqa.mutable_method()->mutable_none();
    if (std::string(method) == "rope") gqa.mutable_method()->mutable_rope();
    if (std::string(method) == "alibi") gqa.mutable_method()->mutable_alibi();
    if (std::string(method) == "shaw") {
      v1::Shaw* shaw = gqa.mutable_method()->mutable_shaw();
      shaw->set_max_relative_position(2);
      *shaw->mutable_rel_k() = MakeTensor({5, kD}, RandomValues(5 * kD, 8));
      *shaw->mutable_rel_v() = MakeTensor({5, kD}, RandomValues(5 * kD, 9));
    }
    gqa.set_causal(true);
    gqa.set_return_probs(true);
    gqa.set_raw_output(true);
    gqa.set_window(3);
    gqa.add_kv_lengths(9);
    gqa.add_kv_lengths(5);
    v1::AttendRequest mha = gqa;
    *gqa.mutable_q() = MakeTensor({kB, kH, kSq, kD}, q, TensorEncoding::kRawData);
    *gqa.mutable_k() = MakeTensor({kB, kHkv, kSk, kD}, k, TensorEncoding::kRawData);
    *gqa.mutable_v() = MakeTensor({kB, kHkv, kSk, kD}, v, TensorEncoding::kRawData);
    gqa.set_num_kv_heads(kHkv);  // optional for q/k/v methods; equal to k.shape[1]
    *mha.mutable_q() = gqa.q();
    *mha.mutable_k() = MakeTensor({kB, kH, kSk, kD}, RepeatHeads(k, kB, kHkv, kH / kHkv),
                                  TensorEncoding::kRawData);
    *mha.mutable_v() = MakeTensor({kB, kH, kSk, kD}, RepeatHeads(v, kB, kHkv, kH / kHkv),
                                  TensorEncoding::kRawData);

    absl::StatusOr<v1::AttendResponse> grouped = client_->Attend(gqa);
    ASSERT_TRUE(grouped.ok()) << grouped.status();
    absl::StatusOr<v1::AttendResponse> repeated = client_->Attend(mha);
    ASSERT_TRUE(repeated.ok()) << repeated.status();
    EXPECT_THAT(grouped->out().shape(), ElementsAre(kB, kH, kSq, kD));
    EXPECT_THAT(Values(grouped->out()),
                Pointwise(::testing::FloatNear(1e-5f), Values(repeated->out())));
    const std::vector<float> probs = Values(grouped->probs());
    EXPECT_THAT(probs, Pointwise(::testing::FloatNear(1e-6f), Values(repeated->probs())));
    // Query i sits at position Sk - Sq + i = 5 + i; with W = 3 it sees keys
    // 3 + i .. 5 + i, and batch 1 only keys < 5: its rows i >= 2 see none
    // (attention-variants.md 4: all zeros, never NaN).
    for (int64_t b = 0; b < kB; ++b) {
      for (int64_t h = 0; h < kH; ++h) {
        for (int64_t i = 0; i < kSq; ++i) {
          for (int64_t j = 0; j < kSk; ++j) {
            const bool visible = j > 2 + i && j <= 5 + i && j < (b == 0 ? 9 : 5);
            const float p = probs[((b * kH + h) * kSq + i) * kSk + j];
            EXPECT_EQ(p > 0.0f, visible) << b << " " << h << " " << i << " " << j << ": " << p;
            EXPECT_GE(p, 0.0f);
          }
        }
      }
    }
  }
}

TEST_F(ClientVariantsTest, ServerRefusalsNameTheField) {
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() =
      MakeTensor({1, 4, 2, 4}, RandomValues(32, 10), TensorEncoding::kRawFloat16);
  *request.mutable_k() =
      MakeTensor({1, 3, 2, 4}, RandomValues(24, 11), TensorEncoding::kRawFloat16);
  *request.mutable_v() =
      MakeTensor({1, 3, 2, 4}, RandomValues(24, 12), TensorEncoding::kRawFloat16);
  // H % H_kv != 0.
  absl::Status status = client_->Attend(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("k.shape"));

  *request.mutable_k() =
      MakeTensor({1, 2, 2, 4}, RandomValues(16, 11), TensorEncoding::kRawFloat16);
  *request.mutable_v() =
      MakeTensor({1, 2, 2, 4}, RandomValues(16, 12), TensorEncoding::kRawFloat16);
  ASSERT_TRUE(client_->Attend(request).ok());
  const struct {
    const char* field;
    std::function<void(v1::AttendRequest&)> spoil;
  } cases[] = {
      {"output_dtype", [](v1::AttendRequest& r) { r.set_output_dtype(v1::DTYPE_FLOAT16); }},
      {"window", [](v1::AttendRequest& r) { r.set_window(0); }},
      {"softcap", [](v1::AttendRequest& r) { r.set_softcap(-1.0); }},
      {"kv_lengths", [](v1::AttendRequest& r) { r.add_kv_lengths(3); }},
      {"q.dtype",
       [](v1::AttendRequest& r) {
         *r.mutable_q() = MakeTensor({1, 4, 2, 4}, RandomValues(32, 10));
         r.mutable_q()->set_dtype(v1::DTYPE_BFLOAT16);
       }},
      {"v.raw_data", [](v1::AttendRequest& r) { r.mutable_v()->mutable_raw_data()->resize(30); }},
      // float16 infinity (0x7c00) in element 5 of k.
      {"k.raw_data[5]",
       [](v1::AttendRequest& r) {
         std::string& raw = *r.mutable_k()->mutable_raw_data();
         raw[10] = '\x00';
         raw[11] = '\x7c';
       }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.field);
    v1::AttendRequest bad = request;
    c.spoil(bad);
    status = client_->Attend(bad).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.field));
  }
}

TEST_F(ClientVariantsTest, StreamCarriesSixteenBitRequestsAndResponses) {
  std::vector<v1::AttendRequest> requests;
  for (uint32_t i = 0; i < 3; ++i) {
    v1::AttendRequest request;
    request.mutable_method()->mutable_alibi();
    request.set_raw_output(true);
    request.set_output_dtype(i == 1 ? v1::DTYPE_BFLOAT16 : v1::DTYPE_FLOAT16);
    *request.mutable_q() =
        MakeTensor({1, 2, 3, 4}, RandomValues(24, 20 + i), TensorEncoding::kRawFloat16);
    *request.mutable_k() =
        MakeTensor({1, 1, 5, 4}, RandomValues(20, 30 + i), TensorEncoding::kRawBfloat16);
    *request.mutable_v() =
        MakeTensor({1, 1, 5, 4}, RandomValues(20, 40 + i), TensorEncoding::kRawFloat16);
    requests.push_back(request);
  }
  Client::StreamResult result = client_->AttendStream(requests);
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.responses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    absl::StatusOr<v1::AttendResponse> unary = client_->Attend(requests[i]);
    ASSERT_TRUE(unary.ok()) << unary.status();
    EXPECT_EQ(result.responses[i].out().dtype(), requests[i].output_dtype());
    EXPECT_EQ(result.responses[i].out().raw_data(), unary->out().raw_data());
  }
}

}  // namespace
}  // namespace attnserve::client
