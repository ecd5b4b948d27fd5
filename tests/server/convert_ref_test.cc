// ToAttendArgs / ToEncodeArgs with `ref` tensors resolved from a TensorStore,
// and the ListMethods entries of the loaded tensors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "server/convert.h"
#include "server/tensor_store.h"
#include "tests/server/proto_tensors.h"

namespace attnserve::server {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

v1::Tensor RefTensor(const std::string& ref, std::vector<int64_t> shape = {}) {
  v1::Tensor tensor;
  tensor.set_ref(ref);
  for (int64_t d : shape) tensor.add_shape(d);
  return tensor;
}

StoredTensor Stored(std::string ref, std::string dtype, std::vector<int64_t> shape,
                    std::vector<float> values) {
  return StoredTensor{std::move(ref), std::move(dtype),
                      kernels::Tensor(std::move(shape), std::move(values))};
}

// k [1,1,2,2], rel_k/rel_v [3,2] (Shaw K=1), a scalar, and an empty tensor.
TensorStore MakeStore() {
  std::vector<StoredTensor> tensors;
  tensors.push_back(Stored("shaw/rel_v", "F16", {3, 2}, {0.5f, 1, 1.5f, 2, 2.5f, 3}));
  tensors.push_back(Stored("shaw/rel_k", "F32", {3, 2}, {1, 2, 3, 4, 5, 6}));
  tensors.push_back(Stored("qkv/k", "BF16", {1, 1, 2, 2}, {1, 0, 0, 1}));
  tensors.push_back(Stored("misc/scalar", "F32", {}, {4}));
  tensors.push_back(Stored("misc/empty", "F32", {0, 2}, {}));
  return TensorStore(std::move(tensors));
}

v1::AttendRequest ShawRequest() {
  v1::AttendRequest request;
  request.mutable_method()->mutable_shaw()->set_max_relative_position(1);
  *request.mutable_q() = DataTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_k() = RefTensor("qkv/k");
  *request.mutable_v() = DataTensor({1, 1, 2, 2}, {1, 2, 3, 4});
  *request.mutable_method()->mutable_shaw()->mutable_rel_k() = RefTensor("shaw/rel_k");
  *request.mutable_method()->mutable_shaw()->mutable_rel_v() = RefTensor("shaw/rel_v", {3, 2});
  return request;
}

TEST(ConvertRefTest, RefsResolveToTheStoredShapeAndValues) {
  const TensorStore store = MakeStore();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(ShawRequest(), ConvertLimits{}, &store);
  ASSERT_TRUE(args.ok()) << args.status();
  const kernels::Tensor& k = args->inputs.at("k");
  EXPECT_THAT(k.shape(), ElementsAre(1, 1, 2, 2));
  EXPECT_THAT(k.values(), ElementsAre(1, 0, 0, 1));
  EXPECT_THAT(args->inputs.at("rel_k").values(),
              ElementsAreArray(store.Find("shaw/rel_k")->tensor.values()));
  EXPECT_THAT(args->inputs.at("rel_v").shape(), ElementsAre(3, 2));
  EXPECT_THAT(args->inputs.at("rel_v").values(), ElementsAre(0.5f, 1, 1.5f, 2, 2.5f, 3));
}

TEST(ConvertRefTest, RefsAreCopiesTheKernelsMayChange) {
  const TensorStore store = MakeStore();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(ShawRequest(), ConvertLimits{}, &store);
  ASSERT_TRUE(args.ok()) << args.status();
  args->inputs.at("k").values()[0] = 42;
  EXPECT_EQ(store.Find("qkv/k")->tensor.values()[0], 1.0f);
}

// Files may hold NaN and infinity (they load as they are); a request that
// uses one is refused, as an inline value would be.
TEST(ConvertRefTest, NonFiniteStoredValuesAreRefusedWhenUsed) {
  std::vector<StoredTensor> tensors;
  tensors.push_back(
      Stored("qkv/k", "F32", {1, 1, 2, 2}, {1, 0, std::numeric_limits<float>::infinity(), 1}));
  const TensorStore store(std::move(tensors));
  v1::AttendRequest request = ShawRequest();
  request.mutable_method()->mutable_shaw()->clear_rel_k();
  request.mutable_method()->mutable_shaw()->clear_rel_v();
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{}, &store);
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(), "k.ref: value 2 of 'qkv/k' must be finite, got inf");
}

TEST(ConvertRefTest, UnknownRefIsNotFoundNamingFieldAndRef) {
  const TensorStore store = MakeStore();
  v1::AttendRequest request = ShawRequest();
  *request.mutable_method()->mutable_shaw()->mutable_rel_k() = RefTensor("shaw/rel_q");
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{}, &store);
  EXPECT_EQ(args.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(args.status().message(),
            "rel_k.ref: no tensor named 'shaw/rel_q' is loaded on this server");
}

TEST(ConvertRefTest, GivenShapeMustEqualTheStoredOne) {
  const TensorStore store = MakeStore();
  v1::AttendRequest request = ShawRequest();
  *request.mutable_k() = RefTensor("qkv/k", {1, 2, 1, 2});
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{}, &store);
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(),
            "k.shape: must be empty or equal the shape of ref 'qkv/k' [1,1,2,2], got [1,2,1,2]");
}

TEST(ConvertRefTest, RefWithValuesIsTwoEncodings) {
  const TensorStore store = MakeStore();
  v1::AttendRequest request = ShawRequest();
  request.mutable_k()->add_data(1);
  absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{}, &store);
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(args.status().message(),
            "k: exactly one of data, raw_data, ref must be set (got data, ref)");
}

TEST(ConvertRefTest, ScalarAndEmptyStoredTensorsAreInvalidInARequest) {
  const TensorStore store = MakeStore();
  for (const char* ref : {"misc/scalar", "misc/empty"}) {
    v1::AttendRequest request = ShawRequest();
    *request.mutable_k() = RefTensor(ref);
    absl::StatusOr<kernels::AttendArgs> args = ToAttendArgs(request, ConvertLimits{}, &store);
    EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument) << ref;
    EXPECT_THAT(args.status().message(),
                HasSubstr(std::string("k.ref: tensor '") + ref + "' has shape ["));
    EXPECT_THAT(args.status().message(),
                HasSubstr("a request tensor needs at least one dimension, each >= 1"));
  }
}

TEST(ConvertRefTest, RefsCountTowardMaxElements) {
  const TensorStore store = MakeStore();
  // rel_k alone (6 elements) is over a limit of 5.
  absl::StatusOr<kernels::AttendArgs> args =
      ToAttendArgs(ShawRequest(), ConvertLimits{5}, &store);
  EXPECT_EQ(args.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(args.status().message(), "rel_k: 6 elements exceed --max_elements=5");
  // Each fits in 6, but rel_k + rel_v + q + k (6+6+4+4) do not fit in 19.
  args = ToAttendArgs(ShawRequest(), ConvertLimits{19}, &store);
  EXPECT_EQ(args.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(args.status().message(), HasSubstr("k: the request's input tensors total more than "
                                                 "--max_elements=19 elements (16 before"));
  EXPECT_TRUE(ToAttendArgs(ShawRequest(), ConvertLimits{24}, &store).ok());
}

TEST(ConvertRefTest, EncodeResolvesRefsToo) {
  const TensorStore store = MakeStore();
  v1::EncodeRequest request;
  request.mutable_method()->mutable_shaw()->set_max_relative_position(1);
  *request.mutable_method()->mutable_shaw()->mutable_rel_k() = RefTensor("shaw/rel_k");
  request.set_sq(2);
  request.set_sk(2);
  absl::StatusOr<kernels::EncodeArgs> args = ToEncodeArgs(request, ConvertLimits{}, &store);
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(args->inputs.at("rel_k").values(), ElementsAre(1, 2, 3, 4, 5, 6));
}

TEST(ConvertRefTest, ListMethodsListsTheLoadedTensorsInRefOrder) {
  const TensorStore store = MakeStore();
  v1::ListMethodsResponse response;
  FillListMethodsResponse({}, 1, 2, "attnd test", &response);
  AddLoadedTensors(store, &response);
  ASSERT_EQ(response.tensors_size(), 5);
  std::vector<std::string> refs;
  for (const v1::LoadedTensor& t : response.tensors()) refs.push_back(t.ref());
  EXPECT_THAT(refs,
              ElementsAre("misc/empty", "misc/scalar", "qkv/k", "shaw/rel_k", "shaw/rel_v"));
  EXPECT_THAT(response.tensors(2).shape(), ElementsAre(1, 1, 2, 2));
  EXPECT_EQ(response.tensors(2).dtype(), "BF16");
  EXPECT_THAT(response.tensors(0).shape(), ElementsAre(0, 2));
  EXPECT_TRUE(response.tensors(1).shape().empty());
}

}  // namespace
}  // namespace attnserve::server
