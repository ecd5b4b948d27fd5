// Golden test vectors: loading the JSON cases and comparing results with
// their tolerance. Two formats:
//   format_version 1 (positional-methods.md 3): tests/golden/, attend and
//     encode cases of the eight methods;
//   format_version 2 (attention-variants.md 9, decode-sessions.md 4):
//     tests/golden-variants/ (the public cases) and tests/golden-generated/
//     (the project's own, written by tests/testing/generate_golden.cc):
//     GQA, kv_lengths, window, softcap, 16-bit tensors, the new RoPE
//     scalings, ALiBi slopes, and decode sessions ("op": "decode").
// A version-1 file loads exactly as before; every version-2 addition has a
// default that means "not used".
//
// Independent of the kernels and of the wire format: golden_kernels.h and
// golden_proto.h turn a GoldenCase into a request for each.
//
// Thread-safety: pure functions and plain data.
#ifndef ATTNSERVE_TESTS_TESTING_GOLDEN_H_
#define ATTNSERVE_TESTS_TESTING_GOLDEN_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "tests/testing/half_float.h"

namespace attnserve::testing {

struct GoldenTensor {
  std::vector<int64_t> shape;
  // Inputs are exact float32 values (exact in `dtype` when it is 16-bit);
  // expected values are doubles. Empty when raw_bytes is set.
  std::vector<double> data;
  // Format 2, inputs only: the wire type ("dtype"). A 16-bit tensor travels
  // as raw_data of that type with Tensor.dtype set.
  GoldenDtype dtype = GoldenDtype::kFloat32;
  // Format 2 error cases: "wire": "data" (send `data` with a 16-bit dtype).
  bool wire_data = false;
  // Format 2 error cases: "raw_hex", decoded: exactly these raw_data bytes.
  std::optional<std::string> raw_bytes;

  int64_t NumElements() const;
  // The values as float32: `data`, or raw_bytes decoded as `dtype` (as many
  // whole elements as the bytes hold).
  std::vector<float> AsFloats() const;
  // raw_bytes (if any) holds exactly NumElements() elements of `dtype`.
  bool RawLengthMatches() const;
};

using GoldenTensors = std::map<std::string, GoldenTensor>;

// One message after a decode case's open (decode-sessions.md 4).
struct GoldenStep {
  std::string kind;                        // "step" or "truncate"
  GoldenTensors inputs;                    // step: q, k, v (or x)
  bool return_probs = false;               // step
  int64_t length = 0;                      // truncate: tokens to keep
  GoldenTensors expected;                  // step: out [B,H,n,Dv], probs [B,H,n,expected_length]
  std::optional<int64_t> expected_length;  // the response's length; unset on an error step
  std::string expect_error;                // only on the last step
  std::vector<std::string> expect_field;
};

struct GoldenCase {
  int format_version = 1;
  std::string name, op, method, description;
  // Every scalar parameter; null = unset (the default). Format 2 adds
  // num_kv_heads, kv_lengths (a list), window, softcap, output_dtype, the six
  // RoPE keys, decode's open fields, and "raw_output": false.
  nlohmann::json params;
  GoldenTensors inputs;           // decode: the open's tensors (w_q.. and the method's)
  GoldenTensors expected;         // attend, encode
  std::vector<GoldenStep> steps;  // decode
  std::string expect_error;       // "", "invalid_argument" or "out_of_range".
  // Format 2 error cases: the status message must contain one of these.
  std::vector<std::string> expect_field;
  double rtol = 0, atol = 0;

  // Typed views of params; nullopt when absent or null. Double() also reads
  // the strings "nan", "inf" and "-inf" (format 2 error cases).
  std::optional<double> Double(const std::string& key) const;
  std::optional<int64_t> Int(const std::string& key) const;
  std::optional<bool> Bool(const std::string& key) const;
  std::optional<std::string> String(const std::string& key) const;
  // A list of ints (kv_lengths); nullopt when absent or null.
  std::optional<std::vector<int64_t>> IntList(const std::string& key) const;

  // params.output_dtype (float32 when absent).
  GoldenDtype OutputDtype() const;
  // params "raw_output": false forbids raw_output (attention-variants.md 9.1).
  bool RawOutputForbidden() const;
};

// The directory holding the version-1 cases: $ATTN_GOLDEN_DIR, else the
// source tree's tests/golden (a compile-time default).
std::string GoldenDir();
// The public variant cases: $ATTN_GOLDEN_VARIANTS_DIR, else tests/golden-variants.
std::string GoldenVariantsDir();
// The project's own generated variant cases: $ATTN_GOLDEN_GENERATED_DIR, else
// tests/golden-generated.
std::string GeneratedGoldenDir();

// Sorted paths of every case file in `dir` (manifest.json excluded).
std::vector<std::string> GoldenCaseFiles(const std::string& dir);
// Every format-2 case: GoldenVariantsDir()'s files, then GeneratedGoldenDir()'s
// (whose names start with "gen_", so test names stay unique).
std::vector<std::string> VariantCaseFiles();

// A gtest-friendly name for a case file: its stem with [^A-Za-z0-9] -> '_'.
std::string GoldenTestName(const std::string& path);

absl::StatusOr<GoldenCase> LoadGoldenCase(const std::string& path);
// The same from JSON text already read (`origin` names it in errors).
absl::StatusOr<GoldenCase> ParseGoldenCase(const nlohmann::json& j, const std::string& origin);

// Decode-by-equivalence (decode-sessions.md 2): step `step` of a decode case
// as the attend case it equals: causal, query_offset = t (the tokens cached
// before it, after replaying the earlier steps and truncates), q (or x_q) the
// step's, k/v (or x_kv) the kept history followed by the step's own, the
// open's tensors and parameters, expected and expect_error/field the step's.
// INVALID_ARGUMENT when `step` is not a "step" or the case is not a decode.
absl::StatusOr<GoldenCase> DecodeStepAsAttendCase(const GoldenCase& c, size_t step);

// The status code an expect_error string names (OK for "").
absl::StatusCode ExpectedCode(absl::string_view expect_error);
// The status code a case's expect_error names (OK when it expects none).
absl::StatusCode ExpectedCode(const GoldenCase& c);

// Empty when (code, message) is what the case expects: the code of
// expect_error and, when expect_field is not empty, a message containing at
// least one of its names; else what differs. (grpc::StatusCode values equal
// absl::StatusCode's: pass static_cast<absl::StatusCode>(s.error_code()).)
std::string CheckExpectedError(absl::string_view expect_error,
                               const std::vector<std::string>& expect_field, absl::StatusCode code,
                               absl::string_view message);
std::string CheckExpectedError(const GoldenCase& c, absl::StatusCode code,
                               absl::string_view message);

// Empty when `got` matches `expected` (same shape, every element finite and
// |got - exp| <= atol + rtol * |exp| + UlpOf(exp, output_dtype)); else a
// description of the first mismatches and the count. output_dtype float32
// (the default) adds nothing: the format-1 rule.
std::string CompareTensor(const std::string& name, const GoldenTensor& expected,
                          absl::Span<const int64_t> got_shape, absl::Span<const float> got,
                          double rtol, double atol,
                          GoldenDtype output_dtype = GoldenDtype::kFloat32);

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_GOLDEN_H_
