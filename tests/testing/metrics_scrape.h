// Reading attnd's Prometheus metrics in tests: an HTTP GET of /metrics over
// loopback, and the value of one series in the text format.
//
// Thread-safety: pure functions (ScrapeMetrics opens its own socket).
#ifndef ATTNSERVE_TESTS_TESTING_METRICS_SCRAPE_H_
#define ATTNSERVE_TESTS_TESTING_METRICS_SCRAPE_H_

#include <initializer_list>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnserve::testing {

// The body of GET http://127.0.0.1:`port``path` (HTTP/1.0, 5 s timeout).
// UNAVAILABLE when nothing listens; INTERNAL on a status other than 200.
absl::StatusOr<std::string> HttpGet(int port, absl::string_view path = "/metrics");

// The value of the sample whose name and label set are exactly `series`, as
// written in the text format: `attnserve_queue_depth` or
// `attnserve_requests_total{rpc="Attend",method="none",code="OK"}` (labels in
// any order). nullopt when no such line exists.
std::optional<double> MetricValue(absl::string_view text, absl::string_view series);

// The sum of every sample of metric `name` whose labels contain each of
// `label_matchers` (e.g. {"code=\"OK\""}); 0 when none.
double MetricSum(absl::string_view text, absl::string_view name,
                 std::initializer_list<absl::string_view> label_matchers = {});

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_METRICS_SCRAPE_H_
