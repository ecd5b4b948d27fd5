// The pure parts of the load tool: ghz's statistics (nearest-rank
// percentiles, the 11-mark histogram, averages over all calls but extremes
// over OK calls only), its status names, and option parsing.
#include "client/load_tool.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnserve::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

CallRecord Call(int64_t start_ns, int64_t latency_ns, int code = 0, std::string error = "") {
  CallRecord record;
  record.start_ns = start_ns;
  record.latency_ns = latency_ns;
  record.code = code;
  record.error = std::move(error);
  return record;
}

TEST(BuildReportTest, PercentilesAreNearestRankOverOkCalls) {
  // Latencies 1..100 ms in a shuffled order.
  std::vector<CallRecord> records;
  for (int i = 0; i < 100; ++i) {
    const int64_t ms = (i * 37) % 100 + 1;
    records.push_back(Call(i, ms * 1'000'000));
  }
  LoadReport report = BuildReport(LoadOptions(), records, 2'000'000'000, "normal", absl::Now());
  EXPECT_EQ(report.count, 100);
  EXPECT_EQ(report.fastest_ns, 1'000'000);
  EXPECT_EQ(report.slowest_ns, 100'000'000);
  EXPECT_EQ(report.average_ns, 50'500'000);
  EXPECT_DOUBLE_EQ(report.rps, 50.0);
  std::vector<std::pair<int, int64_t>> points;
  for (const LatencyPoint& p : report.latency_distribution)
    points.push_back({p.percentage, p.latency_ns});
  EXPECT_THAT(
      points,
      ElementsAre(std::pair<int, int64_t>{10, 10'000'000}, std::pair<int, int64_t>{25, 25'000'000},
                  std::pair<int, int64_t>{50, 50'000'000}, std::pair<int, int64_t>{75, 75'000'000},
                  std::pair<int, int64_t>{90, 90'000'000}, std::pair<int, int64_t>{95, 95'000'000},
                  std::pair<int, int64_t>{99, 99'000'000}));
}

TEST(BuildReportTest, HistogramHasElevenMarksFromFastestToSlowest) {
  // 10 ms, 19 ms (inside the first 9.9 ms-wide bucket past the fastest), 109
  // ms.
  std::vector<CallRecord> records = {Call(0, 10'000'000), Call(1, 19'000'000),
                                     Call(2, 109'000'000)};
  LoadReport report = BuildReport(LoadOptions(), records, 1'000'000'000, "normal", absl::Now());
  ASSERT_EQ(report.histogram.size(), 11u);
  EXPECT_DOUBLE_EQ(report.histogram[0].mark_s, 0.010);
  EXPECT_NEAR(report.histogram[1].mark_s, 0.0199, 1e-12);
  EXPECT_DOUBLE_EQ(report.histogram[10].mark_s, 0.109);
  std::vector<int64_t> counts;
  for (const HistogramBucket& b : report.histogram) counts.push_back(b.count);
  EXPECT_THAT(counts, ElementsAre(1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1));
  EXPECT_NEAR(report.histogram[0].frequency, 1.0 / 3, 1e-12);
}

TEST(BuildReportTest, ErrorsCountInAverageAndDistributionsButNotInExtremes) {
  const std::string error = "rpc error: code = InvalidArgument desc = k: required";
  std::vector<CallRecord> records = {Call(0, 4'000'000), Call(1, 1'000'000, 3, error),
                                     Call(2, 2'000'000, 3, error), Call(3, 9'000'000, 14, "down")};
  LoadReport report = BuildReport(LoadOptions(), records, 1'000'000'000, "normal", absl::Now());
  EXPECT_EQ(report.average_ns, 4'000'000);
  EXPECT_EQ(report.fastest_ns, 4'000'000);
  EXPECT_EQ(report.slowest_ns, 4'000'000);
  EXPECT_EQ(
      report.status_code_distribution,
      (std::map<std::string, int64_t>{{"OK", 1}, {"InvalidArgument", 2}, {"Unavailable", 1}}));
  EXPECT_EQ(report.error_distribution, (std::map<std::string, int64_t>{{error, 2}, {"down", 1}}));
}

TEST(BuildReportTest, SkipFirstDropsTheEarliestCalls) {
  LoadOptions options;
  options.skip_first = 2;
  std::vector<CallRecord> records = {Call(0, 50), Call(1, 60), Call(2, 7'000), Call(3, 9'000)};
  LoadReport report = BuildReport(options, records, 1'000'000'000, "normal", absl::Now());
  EXPECT_EQ(report.count, 2);
  EXPECT_EQ(report.fastest_ns, 7'000);
}

TEST(BuildReportTest, NoOkCallLeavesLatencyStatisticsEmpty) {
  LoadReport report =
      BuildReport(LoadOptions(), {Call(0, 5'000, 4, "late")}, 1'000'000, "timeout", absl::Now());
  EXPECT_EQ(report.count, 1);
  EXPECT_TRUE(report.latency_distribution.empty());
  EXPECT_TRUE(report.histogram.empty());
  EXPECT_THAT(FormatJson(report, false), HasSubstr("\"latencyDistribution\":null"));
  EXPECT_THAT(FormatJson(report, false), HasSubstr("\"DeadlineExceeded\":1"));
}

TEST(GhzStatusNameTest, UsesGrpcGoSpelling) {
  EXPECT_EQ(GhzStatusName(0), "OK");
  EXPECT_EQ(GhzStatusName(1), "Canceled");
  EXPECT_EQ(GhzStatusName(8), "ResourceExhausted");
  EXPECT_EQ(GhzStatusName(16), "Unauthenticated");
  EXPECT_EQ(GhzStatusName(42), "Code(42)");
}

TEST(ParseLoadOptionsTest, ReadsGhzFlagsInEverySpelling) {
  absl::StatusOr<LoadOptions> options =
      ParseLoadOptions({"--call=a.B/C", "-c", "8", "--connections=2", "-n5", "-z", "1m30s", "-t=0",
                        "--rps", "10", "-O", "json", "-d", "[{}, {}]", "--insecure", "host:1"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->call, "a.B/C");
  EXPECT_EQ(options->host, "host:1");
  EXPECT_EQ(options->concurrency, 8);
  EXPECT_EQ(options->connections, 2);
  EXPECT_EQ(options->total, 5);
  EXPECT_EQ(options->duration, absl::Seconds(90));
  EXPECT_EQ(options->timeout, absl::ZeroDuration());
  EXPECT_EQ(options->rps, 10);
  EXPECT_EQ(options->format, "json");
  EXPECT_EQ(options->data_json, "[{},{}]");
}

TEST(ParseLoadOptionsTest, TlsIsTheDefaultAndTheTransportFlagsAreGhzs) {
  absl::StatusOr<LoadOptions> plain = ParseLoadOptions({"--call=a.B/C", "h:1"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->insecure);
  absl::StatusOr<LoadOptions> options = ParseLoadOptions(
      {"--call=a.B/C", "--cacert", "ca.pem", "--cert=c.pem", "--key", "k.pem", "--cname=localhost",
       "--skipTLS", "-m", R"({"X-Tag": "t", "authorization": "Bearer x"})", "h:1"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_FALSE(options->insecure);
  EXPECT_EQ(options->cacert, "ca.pem");
  EXPECT_EQ(options->cert, "c.pem");
  EXPECT_EQ(options->key, "k.pem");
  EXPECT_EQ(options->cname, "localhost");
  EXPECT_TRUE(options->skip_tls);
  EXPECT_THAT(options->metadata,
              ::testing::ElementsAre(::testing::Pair("authorization", "Bearer x"),
                                     ::testing::Pair("x-tag", "t")));
  absl::StatusOr<LoadOptions> undone =
      ParseLoadOptions({"--call=a.B/C", "--insecure", "--insecure=false", "--cacert=ca", "h:1"});
  ASSERT_TRUE(undone.ok()) << undone.status();
  EXPECT_FALSE(undone->insecure);
}

TEST(ParseLoadOptionsTest, InsecureWithATlsFlagIsAUsageError) {
  absl::StatusOr<LoadOptions> options =
      ParseLoadOptions({"--call=a.B/C", "--insecure", "--cname=x", "h:1"});
  ASSERT_FALSE(options.ok());
  EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(options.status().message(), HasSubstr("--insecure: plaintext, but --cname asks"));
}

TEST(ParseLoadOptionsTest, RejectsUnsupportedGhzFlagsByName) {
  absl::StatusOr<LoadOptions> options =
      ParseLoadOptions({"--call=a.B/C", "--load-schedule=step", "h:1"});
  ASSERT_FALSE(options.ok());
  EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(options.status().message(), HasSubstr("--load-schedule: a ghz flag"));
}

}  // namespace
}  // namespace attnserve::client
