// attnd's /metrics against a real process: the counters, histograms and
// gauges move by exactly what the test sent, and promtool accepts the page.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/isa.h"
#include "tests/testing/metrics_scrape.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

using client::Client;
using client::MakeTensor;
using ::testing::HasSubstr;
using ::testing::Optional;

std::vector<float> Ramp(int64_t n, float step) {
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[i] = step * static_cast<float>(i % 11 - 5);
  return values;
}

// `none`, B=b, H=2, Sq=Sk=3, D=Dv=4.
v1::AttendRequest NoneRequest(int64_t b) {
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() = MakeTensor({b, 2, 3, 4}, Ramp(b * 24, 0.1f));
  *request.mutable_k() = MakeTensor({b, 2, 3, 4}, Ramp(b * 24, 0.2f));
  *request.mutable_v() = MakeTensor({b, 2, 3, 4}, Ramp(b * 24, 0.3f));
  return request;
}

TEST(MetricsTest, CountersMoveByExactlyWhatWasSent) {
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->metrics_port(), 0);
  auto client = Client::Create((*server)->address());
  ASSERT_TRUE(client.ok());

  double attend_bytes = 0;
  for (int64_t b : {1, 2, 3}) {
    const v1::AttendRequest request = NoneRequest(b);
    attend_bytes += static_cast<double>(request.ByteSizeLong());
    ASSERT_TRUE((*client)->Attend(request).ok());
  }
  v1::AttendRequest no_method = NoneRequest(1);
  no_method.clear_method();
  attend_bytes += static_cast<double>(no_method.ByteSizeLong());
  EXPECT_EQ((*client)->Attend(no_method).status().code(), absl::StatusCode::kInvalidArgument);
  const Client::StreamResult stream = (*client)->AttendStream({NoneRequest(2), NoneRequest(2)});
  ASSERT_TRUE(stream.status.ok()) << stream.status;
  ASSERT_TRUE((*client)->ListMethods().ok());

  // A call leaves attnserve_inflight_requests once gRPC has sent its
  // response, which may be just after the client has read it.
  absl::StatusOr<std::string> text = HttpGet((*server)->metrics_port());
  for (int attempt = 0; attempt < 100 && text.ok() &&
                        MetricValue(*text, "attnserve_inflight_requests") != 0.0;
       ++attempt) {
    absl::SleepFor(absl::Milliseconds(20));
    text = HttpGet((*server)->metrics_port());
  }
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(
      MetricValue(*text, R"(attnserve_requests_total{rpc="Attend",method="none",code="OK"})"),
      Optional(3.0));
  EXPECT_THAT(
      MetricValue(*text,
                  R"(attnserve_requests_total{rpc="Attend",method="",code="INVALID_ARGUMENT"})"),
      Optional(1.0));
  EXPECT_THAT(
      MetricValue(*text, R"(attnserve_requests_total{rpc="AttendStream",method="none",code="OK"})"),
      Optional(2.0));
  EXPECT_EQ(MetricSum(*text, "attnserve_requests_total", {R"(rpc="ListMethods")"}), 1.0);
  EXPECT_EQ(MetricSum(*text, "attnserve_requests_total"), 7.0);
  EXPECT_THAT(
      MetricValue(*text, R"(attnserve_request_duration_seconds_count{rpc="Attend",method="none"})"),
      Optional(3.0));
  EXPECT_THAT(MetricValue(*text, R"(attnserve_request_bytes_total{rpc="Attend"})"),
              Optional(attend_bytes));
  EXPECT_GT(MetricValue(*text, R"(attnserve_response_bytes_total{rpc="Attend"})").value_or(0), 0);
  // Five requests reached a kernel (the one without a method did not): their
  // items along B add up to 1 + 2 + 3 + 2 + 2.
  EXPECT_THAT(MetricValue(*text, R"(attnserve_batched_requests_total{method="none"})"),
              Optional(5.0));
  EXPECT_THAT(MetricValue(*text, "attnserve_batch_size_sum"), Optional(10.0));
  EXPECT_EQ(MetricValue(*text, "attnserve_batch_size_count"),
            MetricValue(*text, R"(attnserve_batches_total{method="none"})"));
  EXPECT_THAT(MetricValue(*text, R"(attnserve_compute_duration_seconds_count{method="none"})"),
              MetricValue(*text, R"(attnserve_batches_total{method="none"})"));
  EXPECT_THAT(MetricValue(*text, "attnserve_queue_depth"), Optional(0.0));
  EXPECT_THAT(MetricValue(*text, "attnserve_inflight_requests"), Optional(0.0));
  EXPECT_EQ(MetricSum(*text, "attnserve_dropped_requests_total"), 0.0);
  // Labels in name order: the kernels' ISA, then the version.
  EXPECT_THAT(*text, HasSubstr("attnserve_build_info{isa=\"" +
                               std::string(kernels::IsaName(kernels::ActiveIsa())) +
                               "\",version=\""));
}

TEST(MetricsTest, PromtoolFindsNothingToReport) {
  if (std::system("test -x /usr/bin/promtool") != 0) GTEST_SKIP() << "no /usr/bin/promtool";
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Create((*server)->address());
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Attend(NoneRequest(2)).ok());
  absl::StatusOr<std::string> text = HttpGet((*server)->metrics_port());
  ASSERT_TRUE(text.ok()) << text.status();
  const std::string path = ::testing::TempDir() + "/attnd_metrics.txt";
  const std::string report = path + ".promtool";
  std::FILE* file = std::fopen(path.c_str(), "w");
  ASSERT_NE(file, nullptr);
  std::fwrite(text->data(), 1, text->size(), file);
  std::fclose(file);
  const int status = std::system(
      absl::StrCat("/usr/bin/promtool check metrics < ", path, " > ", report, " 2>&1").c_str());
  std::string output;
  if (std::FILE* in = std::fopen(report.c_str(), "r")) {
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), in)) > 0) output.append(buffer, n);
    std::fclose(in);
  }
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "");
}

TEST(MetricsTest, MetricsListenerCanBeTurnedOff) {
  auto server = ServerProcess::Start({"--metrics_address="});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->metrics_port(), 0);
  auto client = Client::Create((*server)->address());
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->Attend(NoneRequest(1)).ok());
}

}  // namespace
}  // namespace attnserve::testing
