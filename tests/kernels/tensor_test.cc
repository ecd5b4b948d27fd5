// kernels::Tensor's borrowed forms (issue 13 item 4): a read-only View reads
// its creator's memory in place and copies it on the first mutable access,
// a MutableView writes its creator's memory; and Attend over views (inputs
// viewed, out in the caller's buffer through ComputeOptions::out_storage)
// gives bitwise the owned tensors' result on every method and both engines,
// without writing the viewed inputs.
#include "kernels/tensor.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/kernels/random_args.h"

namespace attnserve::testing {
namespace {

using kernels::Tensor;
using ::testing::ElementsAre;

// Bitwise equality of two tensors' shapes and values (NaN payloads, -0).
bool SameBits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), static_cast<size_t>(a.size()) * sizeof(float)) == 0;
}

TEST(TensorTest, ViewReadsTheCallersValuesInPlace) {
  const std::vector<float> source = {1, 2, 3, 4, 5, 6};
  const Tensor view = Tensor::View({2, 3}, source.data());
  EXPECT_TRUE(view.borrowed());
  EXPECT_EQ(view.data(), source.data());
  EXPECT_EQ(view.size(), 6);
  EXPECT_EQ(view.dim(1), 3);
  EXPECT_THAT(view.values(), ElementsAre(1, 2, 3, 4, 5, 6));
  // Copies share the borrowed values.
  const Tensor copy = view;
  EXPECT_EQ(copy.data(), source.data());
}

TEST(TensorTest, MutableAccessToAViewCopiesItFirst) {
  const std::vector<float> source = {1, 2, 3, 4};
  Tensor view = Tensor::View({4}, source.data());
  float* const data = view.data();  // non-const: the copy
  EXPECT_NE(data, source.data());
  EXPECT_FALSE(view.borrowed());
  data[0] = 42;
  view.values()[3] = -1;
  EXPECT_THAT(source, ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(static_cast<const Tensor&>(view).values(), ElementsAre(42, 2, 3, -1));
  EXPECT_EQ(view.size(), 4);
}

TEST(TensorTest, MutableViewWritesTheCallersMemory) {
  std::vector<float> buffer(3, 0.0f);
  Tensor view = Tensor::MutableView({3}, buffer.data());
  EXPECT_TRUE(view.borrowed());
  EXPECT_EQ(view.data(), buffer.data());
  view.values()[1] = 7;
  EXPECT_TRUE(view.borrowed());
  EXPECT_THAT(buffer, ElementsAre(0, 7, 0));
}

TEST(TensorTest, TakeValuesMovesOwnedStorageAndCopiesAView) {
  Tensor owned({2}, {1.5f, 2.5f});
  const float* storage = owned.data();
  std::vector<float> taken = owned.TakeValues();
  EXPECT_EQ(taken.data(), storage);
  EXPECT_EQ(owned.size(), 0);

  const std::vector<float> source = {3, 4};
  Tensor view = Tensor::View({2}, source.data());
  taken = view.TakeValues();
  EXPECT_NE(taken.data(), source.data());
  EXPECT_THAT(taken, ElementsAre(3, 4));
  EXPECT_FALSE(view.borrowed());
  EXPECT_EQ(view.size(), 0);
}

TEST(TensorTest, UninitializedOwnsItsValuesAndCopiesThemWithTheTensor) {
  Tensor fresh = Tensor::Uninitialized({2, 3});
  EXPECT_FALSE(fresh.borrowed());
  EXPECT_EQ(fresh.size(), 6);
  EXPECT_EQ(fresh.dim(0), 2);
  float* const data = fresh.data();
  EXPECT_EQ(data, static_cast<const Tensor&>(fresh).data());  // writable in place
  for (int i = 0; i < 6; ++i) data[i] = static_cast<float>(i);
  // A copy is a tensor of its own, as for the zeros constructor.
  Tensor copy = fresh;
  EXPECT_NE(copy.data(), data);
  copy.values()[0] = 9;
  EXPECT_THAT(static_cast<const Tensor&>(fresh).values(), ElementsAre(0, 1, 2, 3, 4, 5));
  EXPECT_THAT(static_cast<const Tensor&>(copy).values(), ElementsAre(9, 1, 2, 3, 4, 5));
  // A move takes the storage; TakeValues hands the values over as a vector.
  Tensor moved = std::move(fresh);
  EXPECT_EQ(static_cast<const Tensor&>(moved).data(), data);
  EXPECT_THAT(moved.TakeValues(), ElementsAre(0, 1, 2, 3, 4, 5));
  EXPECT_EQ(moved.size(), 0);
}

// Every differential case (every method, the variants, multi-block
// geometries) on both engines: owned inputs vs views of the same values with
// out in a caller's buffer. One test, not one per case: each is
// milliseconds, a process per case would cost CI seconds.
TEST(TensorViewAttendTest, ViewsGiveBitwiseTheOwnedResultAndLeaveTheInputsAlone) {
  int cases = 0;
  for (const DiffCase& d : AllDiffCases()) {
    for (kernels::Engine engine : {kernels::Engine::kFast, kernels::Engine::kPlain}) {
      SCOPED_TRACE(::testing::PrintToString(d));
      SCOPED_TRACE(engine == kernels::Engine::kFast ? "fast" : "plain");
      std::mt19937 rng(d.seed);
      const kernels::AttendArgs owned = RandomAttendArgs(d.c, rng);
      kernels::AttendArgs viewed = owned;
      for (auto& [name, tensor] : viewed.inputs) {
        tensor = Tensor::View(tensor.shape(), owned.inputs.at(name).data());
      }
      const kernels::AttendArgs before = owned;  // deep copies, to compare after
      kernels::ComputeOptions options;
      options.engine = engine;
      absl::StatusOr<kernels::AttendResult> want = kernels::Attend(owned, options);
      std::vector<float> buffer;
      std::vector<int64_t> asked;
      options.out_storage = [&](absl::Span<const int64_t> shape) {
        asked.assign(shape.begin(), shape.end());
        int64_t count = 1;
        for (int64_t dim : shape) count *= dim;
        // Poisoned: the engines write every value (their own outputs are
        // Tensor::Uninitialized), so a value left unwritten shows as NaN.
        buffer.assign(static_cast<size_t>(count), std::numeric_limits<float>::quiet_NaN());
        return buffer.data();
      };
      absl::StatusOr<kernels::AttendResult> got = kernels::Attend(std::move(viewed), options);
      ASSERT_EQ(got.status(), want.status());
      for (const auto& [name, tensor] : before.inputs) {
        EXPECT_TRUE(SameBits(owned.inputs.at(name), tensor)) << name << " was written";
      }
      if (!want.ok()) continue;
      ++cases;
      EXPECT_EQ(got->out.data(), buffer.data());
      EXPECT_EQ(asked, want->out.shape());
      EXPECT_TRUE(SameBits(got->out, want->out));
      ASSERT_EQ(got->probs.has_value(), want->probs.has_value());
      if (want->probs.has_value()) {
        EXPECT_TRUE(SameBits(*got->probs, *want->probs));
      }
    }
  }
  EXPECT_GT(cases, 100);
}

}  // namespace
}  // namespace attnserve::testing
