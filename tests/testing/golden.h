// Golden test vectors (positional-methods.md section 3): loading the JSON
// cases under tests/golden/ and comparing results with their tolerance.
//
// Independent of the kernels and of the wire format: golden_kernels.h and
// golden_proto.h turn a GoldenCase into a request for each.
#ifndef ATTNSERVE_TESTS_TESTING_GOLDEN_H_
#define ATTNSERVE_TESTS_TESTING_GOLDEN_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace attnserve::testing {

struct GoldenTensor {
  std::vector<int64_t> shape;
  std::vector<double> data;  // Inputs are exact float32 values; expected values are doubles.
  std::vector<float> AsFloats() const { return std::vector<float>(data.begin(), data.end()); }
};

struct GoldenCase {
  std::string name, op, method, description;
  nlohmann::json params;  // Every scalar parameter; null = use the default.
  std::map<std::string, GoldenTensor> inputs;
  std::map<std::string, GoldenTensor> expected;
  std::string expect_error;  // "", "invalid_argument" or "out_of_range".
  double rtol = 0, atol = 0;

  // Typed views of params; nullopt when absent or null.
  std::optional<double> Double(const std::string& key) const;
  std::optional<int64_t> Int(const std::string& key) const;
  std::optional<bool> Bool(const std::string& key) const;
  std::optional<std::string> String(const std::string& key) const;
};

// The directory holding the cases: $ATTN_GOLDEN_DIR, else the source tree's
// tests/golden (a compile-time default).
std::string GoldenDir();

// Sorted paths of every case file in `dir` (manifest.json excluded).
std::vector<std::string> GoldenCaseFiles(const std::string& dir);

// A gtest-friendly name for a case file: its stem with [^A-Za-z0-9] -> '_'.
std::string GoldenTestName(const std::string& path);

absl::StatusOr<GoldenCase> LoadGoldenCase(const std::string& path);

// Empty when `got` matches `expected` (same shape, every element finite and
// |got - exp| <= atol + rtol * |exp|); else a description of the first
// mismatches and the count.
std::string CompareTensor(const std::string& name, const GoldenTensor& expected,
                          absl::Span<const int64_t> got_shape, absl::Span<const float> got,
                          double rtol, double atol);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_GOLDEN_H_
