#include "tests/testing/metrics_scrape.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attnserve::testing {

absl::StatusOr<std::string> HttpGet(int port, absl::string_view path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("connect 127.0.0.1:", port, ": ", std::strerror(error)));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("send: short write");
  }
  std::string response;
  char buffer[65536];
  for (;;) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      response.append(buffer, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || body == std::string::npos) {
    return absl::InternalError(
        absl::StrCat("not an HTTP response: '", response.substr(0, 80), "'"));
  }
  const absl::string_view status_line = absl::string_view(response).substr(0, response.find('\r'));
  if (!absl::StrContains(status_line, " 200")) {
    return absl::InternalError(absl::StrCat("GET ", path, ": ", status_line));
  }
  return response.substr(body + 4);
}

namespace {

// "name{a=\"1\",b=\"2\"}" as its name and its labels in sorted order (label
// values here hold no commas, so splitting at commas is enough).
std::pair<std::string, std::vector<std::string>> ParseSeries(absl::string_view series) {
  const size_t brace = series.find('{');
  if (brace == absl::string_view::npos || series.back() != '}') return {std::string(series), {}};
  std::vector<std::string> labels =
      absl::StrSplit(series.substr(brace + 1, series.size() - brace - 2), ',', absl::SkipEmpty());
  std::sort(labels.begin(), labels.end());
  return {std::string(series.substr(0, brace)), std::move(labels)};
}

}  // namespace

std::optional<double> MetricValue(absl::string_view text, absl::string_view series) {
  const auto wanted = ParseSeries(series);
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos || ParseSeries(line.substr(0, space)) != wanted) continue;
    double value = 0;
    if (absl::SimpleAtod(line.substr(space + 1), &value)) return value;
  }
  return std::nullopt;
}

double MetricSum(absl::string_view text, absl::string_view name,
                 std::initializer_list<absl::string_view> label_matchers) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, name) || line.size() <= name.size()) continue;
    const char next = line[name.size()];
    if (next != '{' && next != ' ') continue;
    const size_t space = line.rfind(' ');
    const absl::string_view labels = line.substr(name.size(), space - name.size());
    bool match = true;
    for (absl::string_view matcher : label_matchers)
      match = match && absl::StrContains(labels, matcher);
    double value = 0;
    if (match && absl::SimpleAtod(line.substr(space + 1), &value)) sum += value;
  }
  return sum;
}

}  // namespace attnserve::testing
