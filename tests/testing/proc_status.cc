#include "tests/testing/proc_status.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace attnserve::testing {

absl::StatusOr<int64_t> ProcStatusBytes(pid_t pid, absl::string_view name) {
  std::ifstream file(absl::StrCat("/proc/", pid, "/status"));
  if (!file) return absl::NotFoundError(absl::StrCat("/proc/", pid, "/status: cannot open"));
  std::string line;
  const std::string prefix = absl::StrCat(name, ":");
  while (std::getline(file, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, prefix)) continue;
    // "   123456 kB"
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, " kB");
    int64_t kib = 0;
    if (!absl::SimpleAtoi(rest, &kib)) break;
    return kib * 1024;
  }
  return absl::NotFoundError(absl::StrCat("/proc/", pid, "/status: no field ", name));
}

absl::Status ResetPeakRss(pid_t pid) {
  std::ofstream file(absl::StrCat("/proc/", pid, "/clear_refs"));
  file << "5";
  file.close();
  if (!file) return absl::InternalError(absl::StrCat("/proc/", pid, "/clear_refs: write failed"));
  return absl::OkStatus();
}

}  // namespace attnserve::testing
