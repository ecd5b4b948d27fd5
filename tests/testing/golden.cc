#include "tests/testing/golden.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnserve::testing {
namespace {

absl::StatusOr<GoldenDtype> ParseDtype(const std::string& name) {
  if (name == "float32") return GoldenDtype::kFloat32;
  if (name == "float16") return GoldenDtype::kFloat16;
  if (name == "bfloat16") return GoldenDtype::kBfloat16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype \"", name, "\""));
}

absl::StatusOr<std::string> ParseHex(const std::string& hex) {
  if (hex.size() % 2 != 0) return absl::InvalidArgumentError("raw_hex: odd length");
  std::string bytes;
  for (size_t n = 0; n < hex.size(); n += 2) {
    int value = 0;
    for (size_t k = n; k < n + 2; ++k) {
      const char ch = static_cast<char>(std::tolower(static_cast<unsigned char>(hex[k])));
      if (!std::isxdigit(static_cast<unsigned char>(ch))) {
        return absl::InvalidArgumentError("raw_hex: not hexadecimal");
      }
      value =
          value * 16 + (std::isdigit(static_cast<unsigned char>(ch)) ? ch - '0' : ch - 'a' + 10);
    }
    bytes.push_back(static_cast<char>(value));
  }
  return bytes;
}

// Throws nlohmann::json::exception on a malformed value (caught by the
// caller, which names the file).
absl::StatusOr<GoldenTensor> ParseTensor(const nlohmann::json& j) {
  GoldenTensor t;
  for (const auto& d : j.at("shape")) t.shape.push_back(d.get<int64_t>());
  if (j.contains("raw_hex")) {
    auto bytes = ParseHex(j["raw_hex"].get<std::string>());
    if (!bytes.ok()) return bytes.status();
    t.raw_bytes = *std::move(bytes);
  } else {
    for (const auto& x : j.at("data")) t.data.push_back(x.get<double>());
  }
  if (j.contains("dtype") && !j["dtype"].is_null()) {
    auto dtype = ParseDtype(j["dtype"].get<std::string>());
    if (!dtype.ok()) return dtype.status();
    t.dtype = *dtype;
  }
  t.wire_data = j.value("wire", std::string()) == "data";
  return t;
}

absl::StatusOr<GoldenTensors> ParseTensors(const nlohmann::json& j) {
  GoldenTensors out;
  if (!j.is_object()) return out;
  for (const auto& [name, value] : j.items()) {
    auto t = ParseTensor(value);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": ", t.status().message()));
    out[name] = *std::move(t);
  }
  return out;
}

void ParseExpectations(const nlohmann::json& j, std::string* expect_error,
                       std::vector<std::string>* expect_field) {
  if (j.contains("expect_error") && !j["expect_error"].is_null()) {
    *expect_error = j["expect_error"].get<std::string>();
  }
  if (j.contains("expect_field") && j["expect_field"].is_array()) {
    for (const auto& f : j["expect_field"]) expect_field->push_back(f.get<std::string>());
  }
}

absl::StatusOr<GoldenStep> ParseStep(const nlohmann::json& j) {
  GoldenStep step;
  step.kind = j.at("kind").get<std::string>();
  if (step.kind != "step" && step.kind != "truncate") {
    return absl::InvalidArgumentError(absl::StrCat("unknown step kind \"", step.kind, "\""));
  }
  auto inputs = ParseTensors(j.value("inputs", nlohmann::json::object()));
  if (!inputs.ok()) return inputs.status();
  step.inputs = *std::move(inputs);
  auto expected = ParseTensors(j.value("expected", nlohmann::json::object()));
  if (!expected.ok()) return expected.status();
  step.expected = *std::move(expected);
  step.return_probs = j.value("return_probs", false);
  step.length = j.value("length", int64_t{0});
  if (j.contains("expected_length") && !j["expected_length"].is_null()) {
    step.expected_length = j["expected_length"].get<int64_t>();
  }
  ParseExpectations(j, &step.expect_error, &step.expect_field);
  return step;
}

const nlohmann::json* Param(const nlohmann::json& params, const std::string& key) {
  if (!params.is_object() || !params.contains(key) || params[key].is_null()) return nullptr;
  return &params[key];
}

std::string DirFromEnv(const char* variable, const char* fallback) {
  if (const char* dir = std::getenv(variable); dir != nullptr && *dir != '\0') return dir;
  return fallback;
}

}  // namespace

int64_t GoldenTensor::NumElements() const {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

std::vector<float> GoldenTensor::AsFloats() const {
  if (raw_bytes) return DecodeRaw(*raw_bytes, dtype);
  return std::vector<float>(data.begin(), data.end());
}

bool GoldenTensor::RawLengthMatches() const {
  return !raw_bytes ||
         static_cast<int64_t>(raw_bytes->size()) == NumElements() * GoldenDtypeSize(dtype);
}

std::optional<double> GoldenCase::Double(const std::string& key) const {
  const nlohmann::json* value = Param(params, key);
  if (value == nullptr) return std::nullopt;
  if (value->is_string()) {
    const std::string text = value->get<std::string>();
    if (text == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (text == "inf") return std::numeric_limits<double>::infinity();
    if (text == "-inf") return -std::numeric_limits<double>::infinity();
  }
  return value->get<double>();
}
std::optional<int64_t> GoldenCase::Int(const std::string& key) const {
  const nlohmann::json* value = Param(params, key);
  if (value == nullptr) return std::nullopt;
  return value->get<int64_t>();
}
std::optional<bool> GoldenCase::Bool(const std::string& key) const {
  const nlohmann::json* value = Param(params, key);
  if (value == nullptr) return std::nullopt;
  return value->get<bool>();
}
std::optional<std::string> GoldenCase::String(const std::string& key) const {
  const nlohmann::json* value = Param(params, key);
  if (value == nullptr) return std::nullopt;
  return value->get<std::string>();
}
std::optional<std::vector<int64_t>> GoldenCase::IntList(const std::string& key) const {
  const nlohmann::json* value = Param(params, key);
  if (value == nullptr) return std::nullopt;
  std::vector<int64_t> list;
  for (const auto& x : *value) list.push_back(x.get<int64_t>());
  return list;
}

GoldenDtype GoldenCase::OutputDtype() const {
  const std::optional<std::string> text = String("output_dtype");
  if (!text) return GoldenDtype::kFloat32;
  auto dtype = ParseDtype(*text);
  return dtype.ok() ? *dtype : GoldenDtype::kFloat32;  // Checked by ParseGoldenCase.
}

bool GoldenCase::RawOutputForbidden() const { return Bool("raw_output") == false; }

std::string GoldenDir() { return DirFromEnv("ATTN_GOLDEN_DIR", ATTN_SOURCE_DIR "/tests/golden"); }

std::string GoldenVariantsDir() {
  return DirFromEnv("ATTN_GOLDEN_VARIANTS_DIR", ATTN_SOURCE_DIR "/tests/golden-variants");
}

std::string GeneratedGoldenDir() {
  return DirFromEnv("ATTN_GOLDEN_GENERATED_DIR", ATTN_SOURCE_DIR "/tests/golden-generated");
}

std::vector<std::string> GoldenCaseFiles(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::filesystem::path& path = entry.path();
    if (path.extension() == ".json" && path.filename() != "manifest.json") {
      files.push_back(path.string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> VariantCaseFiles() {
  std::vector<std::string> files = GoldenCaseFiles(GoldenVariantsDir());
  if (std::filesystem::is_directory(GeneratedGoldenDir())) {
    for (std::string& path : GoldenCaseFiles(GeneratedGoldenDir()))
      files.push_back(std::move(path));
  }
  return files;
}

std::string GoldenTestName(const std::string& path) {
  std::string name = std::filesystem::path(path).stem().string();
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name;
}

absl::StatusOr<GoldenCase> LoadGoldenCase(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  try {
    return ParseGoldenCase(nlohmann::json::parse(in), path);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::StatusOr<GoldenCase> ParseGoldenCase(const nlohmann::json& j, const std::string& origin) {
  try {
    GoldenCase c;
    c.format_version = j.value("format_version", 1);
    if (c.format_version != 1 && c.format_version != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": format_version ", c.format_version, " is not 1 or 2"));
    }
    c.name = j.at("name").get<std::string>();
    c.op = j.at("op").get<std::string>();
    c.method = j.at("method").get<std::string>();
    c.description = j.value("description", "");
    c.params = j.value("params", nlohmann::json::object());
    auto inputs = ParseTensors(j.value("inputs", nlohmann::json::object()));
    if (!inputs.ok())
      return absl::InvalidArgumentError(absl::StrCat(origin, ": ", inputs.status().message()));
    c.inputs = *std::move(inputs);
    auto expected = ParseTensors(j.value("expected", nlohmann::json::object()));
    if (!expected.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ": ", expected.status().message()));
    }
    c.expected = *std::move(expected);
    if (j.contains("steps") && j["steps"].is_array()) {
      for (const auto& s : j["steps"]) {
        auto step = ParseStep(s);
        if (!step.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat(origin, ": steps: ", step.status().message()));
        }
        c.steps.push_back(*std::move(step));
      }
    }
    ParseExpectations(j, &c.expect_error, &c.expect_field);
    if (auto dtype = c.String("output_dtype"); dtype && !ParseDtype(*dtype).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ": output_dtype ", *dtype));
    }
    const nlohmann::json tolerance = j.value("tolerance", nlohmann::json::object());
    c.rtol = tolerance.value("rtol", 0.0);
    c.atol = tolerance.value("atol", 0.0);
    return c;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", e.what()));
  }
}

namespace {

// `a` followed by `b` along `axis` (equal other dimensions; checked).
absl::StatusOr<GoldenTensor> Concat(const GoldenTensor& a, const GoldenTensor& b, size_t axis) {
  if (a.shape.size() != b.shape.size() || axis >= a.shape.size()) {
    return absl::InvalidArgumentError("decode history: ranks differ");
  }
  for (size_t d = 0; d < a.shape.size(); ++d) {
    if (d != axis && a.shape[d] != b.shape[d]) {
      return absl::InvalidArgumentError("decode history: shapes differ");
    }
  }
  int64_t outer = 1, inner = 1;
  for (size_t d = 0; d < axis; ++d) outer *= a.shape[d];
  for (size_t d = axis + 1; d < a.shape.size(); ++d) inner *= a.shape[d];
  const std::vector<float> av = a.AsFloats(), bv = b.AsFloats();
  GoldenTensor out;
  out.shape = a.shape;
  out.shape[axis] += b.shape[axis];
  const int64_t a_run = a.shape[axis] * inner, b_run = b.shape[axis] * inner;
  for (int64_t o = 0; o < outer; ++o) {
    out.data.insert(out.data.end(), av.begin() + o * a_run, av.begin() + (o + 1) * a_run);
    out.data.insert(out.data.end(), bv.begin() + o * b_run, bv.begin() + (o + 1) * b_run);
  }
  return out;
}

// The first `length` entries of `t` along `axis`.
GoldenTensor Prefix(const GoldenTensor& t, size_t axis, int64_t length) {
  int64_t outer = 1, inner = 1;
  for (size_t d = 0; d < axis; ++d) outer *= t.shape[d];
  for (size_t d = axis + 1; d < t.shape.size(); ++d) inner *= t.shape[d];
  const std::vector<float> values = t.AsFloats();
  GoldenTensor out;
  out.shape = t.shape;
  out.shape[axis] = length;
  const int64_t run = t.shape[axis] * inner;
  for (int64_t o = 0; o < outer; ++o) {
    out.data.insert(out.data.end(), values.begin() + o * run,
                    values.begin() + o * run + length * inner);
  }
  return out;
}

// The sequence axis of a step tensor: x [B,n,d_model]; k, v [B,H_kv,n,D].
size_t SeqAxis(const std::string& name) { return name == "x" ? 1 : 2; }

}  // namespace

absl::StatusOr<GoldenCase> DecodeStepAsAttendCase(const GoldenCase& c, size_t step) {
  if (c.op != "decode" || step >= c.steps.size() || c.steps[step].kind != "step") {
    return absl::InvalidArgumentError(
        absl::StrCat(c.name, ": steps[", step, "] is not a decode step"));
  }
  // Replay the earlier messages: the kept history of k and v (or x).
  GoldenTensors history;
  int64_t length = 0;
  for (size_t n = 0; n < step; ++n) {
    const GoldenStep& s = c.steps[n];
    if (!s.expect_error.empty()) break;  // Only the last message may fail.
    if (s.kind == "truncate") {
      if (s.length < 0 || s.length > length) {
        return absl::InvalidArgumentError(absl::StrCat(c.name, ": truncate beyond the cache"));
      }
      for (auto& [name, t] : history) t = Prefix(t, SeqAxis(name), s.length);
      length = s.length;
      continue;
    }
    int64_t n_new = 0;
    for (const auto& [name, t] : s.inputs) {
      if (name == "q") continue;
      n_new = t.shape.size() > SeqAxis(name) ? t.shape[SeqAxis(name)] : 0;
      auto it = history.find(name);
      if (it == history.end() || length == 0) {
        GoldenTensor copy;
        copy.shape = t.shape;
        const std::vector<float> values = t.AsFloats();
        copy.data.assign(values.begin(), values.end());
        history[name] = std::move(copy);
      } else {
        auto joined = Concat(it->second, t, SeqAxis(name));
        if (!joined.ok()) return joined.status();
        it->second = *std::move(joined);
      }
    }
    length += n_new;
  }
  const GoldenStep& s = c.steps[step];
  GoldenCase a;
  a.format_version = 2;
  a.name = absl::StrCat(c.name, "_step", step);
  a.op = "attend";
  a.method = c.method;
  a.description = absl::StrCat("steps[", step, "] of ", c.name, " as Attend");
  a.params = c.params;
  for (const char* key : {"batch", "head_dim", "value_dim", "max_len"}) a.params.erase(key);
  a.params["causal"] = true;
  a.params["query_offset"] = length;
  a.params["kv_lengths"] = nullptr;
  a.inputs = c.inputs;
  for (const auto& [name, t] : s.inputs) {
    std::string attend_name = name == "x" ? "x_kv" : name;
    if (name == "q") {
      a.inputs["q"] = t;
      continue;
    }
    if (name == "x") a.inputs["x_q"] = t;
    auto it = history.find(name);
    if (it == history.end() || length == 0) {
      a.inputs[attend_name] = t;
    } else {
      auto joined = Concat(it->second, t, SeqAxis(name));
      if (!joined.ok()) return joined.status();
      a.inputs[attend_name] = *std::move(joined);
    }
  }
  a.expected = s.expected;
  a.expect_error = s.expect_error;
  a.expect_field = s.expect_field;
  a.rtol = c.rtol;
  a.atol = c.atol;
  return a;
}

absl::StatusCode ExpectedCode(absl::string_view expect_error) {
  if (expect_error == "invalid_argument") return absl::StatusCode::kInvalidArgument;
  if (expect_error == "out_of_range") return absl::StatusCode::kOutOfRange;
  if (expect_error == "failed_precondition") return absl::StatusCode::kFailedPrecondition;
  if (expect_error == "resource_exhausted") return absl::StatusCode::kResourceExhausted;
  if (expect_error.empty()) return absl::StatusCode::kOk;
  return absl::StatusCode::kUnknown;
}

absl::StatusCode ExpectedCode(const GoldenCase& c) { return ExpectedCode(c.expect_error); }

std::string CheckExpectedError(absl::string_view expect_error,
                               const std::vector<std::string>& expect_field, absl::StatusCode code,
                               absl::string_view message) {
  const absl::StatusCode want = ExpectedCode(expect_error);
  if (code != want) {
    return absl::StrCat("expected ", expect_error.empty() ? "OK" : expect_error, ", got ",
                        absl::StatusCodeToString(code), ": ", message);
  }
  if (code == absl::StatusCode::kOk || expect_field.empty()) return "";
  for (const std::string& field : expect_field) {
    if (absl::StrContains(message, field)) return "";
  }
  return absl::StrCat("the message \"", message, "\" names none of [",
                      absl::StrJoin(expect_field, ", "), "]");
}

std::string CheckExpectedError(const GoldenCase& c, absl::StatusCode code,
                               absl::string_view message) {
  return CheckExpectedError(c.expect_error, c.expect_field, code, message);
}

std::string CompareTensor(const std::string& name, const GoldenTensor& expected,
                          absl::Span<const int64_t> got_shape, absl::Span<const float> got,
                          double rtol, double atol, GoldenDtype output_dtype) {
  if (std::vector<int64_t>(got_shape.begin(), got_shape.end()) != expected.shape) {
    return absl::StrCat(name, ": shape [", absl::StrJoin(got_shape, ","), "], expected [",
                        absl::StrJoin(expected.shape, ","), "]");
  }
  if (got.size() != expected.data.size()) {
    return absl::StrCat(name, ": ", got.size(), " values, expected ", expected.data.size());
  }
  std::ostringstream report;
  int64_t bad = 0;
  double worst = 0;
  for (size_t n = 0; n < got.size(); ++n) {
    const double exp = expected.data[n];
    const double err = std::abs(static_cast<double>(got[n]) - exp);
    const double allowed = atol + rtol * std::abs(exp) + UlpOf(exp, output_dtype);
    if (!std::isfinite(got[n]) || err > allowed) {
      if (bad < 5) {
        report << "\n  " << name << "[" << n << "]: got " << got[n] << ", expected " << exp
               << " (error " << err << " > " << allowed << ")";
      }
      ++bad;
    }
    if (allowed > 0) worst = std::max(worst, err / allowed);
  }
  if (bad == 0) return "";
  return absl::StrCat(name, ": ", bad, " of ", got.size(), " values out of tolerance",
                      report.str());
}

}  // namespace attnserve::testing
