#include "tests/testing/golden.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnserve::testing {
namespace {

GoldenTensor ParseTensor(const nlohmann::json& j) {
  GoldenTensor t;
  for (const auto& d : j.at("shape")) t.shape.push_back(d.get<int64_t>());
  for (const auto& x : j.at("data")) t.data.push_back(x.get<double>());
  return t;
}

std::map<std::string, GoldenTensor> ParseTensors(const nlohmann::json& j) {
  std::map<std::string, GoldenTensor> out;
  if (!j.is_object()) return out;
  for (const auto& [name, value] : j.items()) out[name] = ParseTensor(value);
  return out;
}

}  // namespace

std::optional<double> GoldenCase::Double(const std::string& key) const {
  if (!params.contains(key) || params[key].is_null()) return std::nullopt;
  return params[key].get<double>();
}
std::optional<int64_t> GoldenCase::Int(const std::string& key) const {
  if (!params.contains(key) || params[key].is_null()) return std::nullopt;
  return params[key].get<int64_t>();
}
std::optional<bool> GoldenCase::Bool(const std::string& key) const {
  if (!params.contains(key) || params[key].is_null()) return std::nullopt;
  return params[key].get<bool>();
}
std::optional<std::string> GoldenCase::String(const std::string& key) const {
  if (!params.contains(key) || params[key].is_null()) return std::nullopt;
  return params[key].get<std::string>();
}

std::string GoldenDir() {
  if (const char* dir = std::getenv("ATTN_GOLDEN_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  return ATTN_SOURCE_DIR "/tests/golden";
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
    const nlohmann::json j = nlohmann::json::parse(in);
    GoldenCase c;
    c.name = j.at("name").get<std::string>();
    c.op = j.at("op").get<std::string>();
    c.method = j.at("method").get<std::string>();
    c.description = j.value("description", "");
    c.params = j.value("params", nlohmann::json::object());
    c.inputs = ParseTensors(j.value("inputs", nlohmann::json::object()));
    c.expected = ParseTensors(j.value("expected", nlohmann::json::object()));
    if (j.contains("expect_error") && !j["expect_error"].is_null()) {
      c.expect_error = j["expect_error"].get<std::string>();
    }
    const nlohmann::json tolerance = j.value("tolerance", nlohmann::json::object());
    c.rtol = tolerance.value("rtol", 0.0);
    c.atol = tolerance.value("atol", 0.0);
    return c;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

std::string CompareTensor(const std::string& name, const GoldenTensor& expected,
                          absl::Span<const int64_t> got_shape, absl::Span<const float> got,
                          double rtol, double atol) {
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
    const double allowed = atol + rtol * std::abs(exp);
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
