// The format-2 attend cases (attention-variants.md 9: tests/golden-variants/,
// the public cases, and tests/golden-generated/, the project's own) on the
// paths besides a unary call (golden_e2e_test's VariantUnaryTest sends every
// case unary, with both transports), through a real attnd over loopback via
// the C++ SDK, compared with rule 9.3 (golden_proto.h):
//   - every successful attend case on one AttendStream, and each attend
//     error case after two good ones on a stream;
//   - through the batcher's merge: each case with B = 2 is split into its
//     two batch items (one request each, with its own kv_lengths entry, none
//     when it is Sk; the second one's 16-bit tensors and output as float32),
//     sent at once to an attnd that waits for a batch of 2, which must run
//     them as one merged kernel call (read from /metrics) and give each its
//     own rows.
// Decode cases ("op": "decode") are tests/e2e/decode_golden_e2e_test's.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/testing/golden.h"
#include "tests/testing/golden_proto.h"
#include "tests/testing/metrics_scrape.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

using client::Client;

const char* EncodingName(WireEncoding encoding) {
  return encoding == WireEncoding::kData ? "data" : "raw_data";
}

// Every attend and encode case (errors included), decode left out.
std::vector<std::string> CaseFiles() {
  std::vector<std::string> files;
  for (const std::string& path : VariantCaseFiles()) {
    absl::StatusOr<GoldenCase> c = LoadGoldenCase(path);
    // A file that does not load stays in, to fail by name in the test.
    if (c.ok() && c->op == "decode") continue;
    files.push_back(path);
  }
  return files;
}

// Two attnds for the whole binary: one as deployed (no batching wait), and
// one that holds requests until a batch of 2 items is full.
class Servers : public ::testing::Environment {
 public:
  void SetUp() override {
    auto plain = ServerProcess::Start();
    ASSERT_TRUE(plain.ok()) << plain.status();
    plain_ = *std::move(plain);
    auto merging = ServerProcess::Start(
        {"--max_batch_size=2", "--max_queue_delay_us=20000000", "--batch_threads=1"});
    ASSERT_TRUE(merging.ok()) << merging.status();
    merging_ = *std::move(merging);
    auto client = Client::Create(plain_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    auto merging_client = Client::Create(merging_->address());
    ASSERT_TRUE(merging_client.ok()) << merging_client.status();
    merging_client_ = *std::move(merging_client);
  }
  void TearDown() override {
    client_.reset();
    merging_client_.reset();
    plain_.reset();
    merging_.reset();
  }
  static Client& client() { return *client_; }
  static Client& merging_client() { return *merging_client_; }
  static const ServerProcess& merging() { return *merging_; }

 private:
  static std::unique_ptr<ServerProcess> plain_, merging_;
  static std::unique_ptr<Client> client_, merging_client_;
};

std::unique_ptr<ServerProcess> Servers::plain_;
std::unique_ptr<ServerProcess> Servers::merging_;
std::unique_ptr<Client> Servers::client_;
std::unique_ptr<Client> Servers::merging_client_;

// Empty when `status` is what the error case expects (code, and a message
// naming one of expect_field).
std::string CheckError(const GoldenCase& c, const absl::Status& status) {
  return CheckExpectedError(c, status.code(), status.message());
}

std::vector<GoldenCase> AttendCases(bool errors) {
  std::vector<GoldenCase> cases;
  for (const std::string& path : CaseFiles()) {
    absl::StatusOr<GoldenCase> c = LoadGoldenCase(path);
    if (c.ok() && c->op == "attend" && c->expect_error.empty() != errors) {
      cases.push_back(*std::move(c));
    }
  }
  return cases;
}

class GoldenVariantsStreamTest : public ::testing::TestWithParam<WireEncoding> {};

// Every successful attend case on one stream: responses arrive in order.
TEST_P(GoldenVariantsStreamTest, AllAttendCasesOnOneStreamInOrder) {
  const WireEncoding encoding = GetParam();
  const std::vector<GoldenCase> cases = AttendCases(/*errors=*/false);
  ASSERT_GT(cases.size(), 40u);
  std::vector<v1::AttendRequest> requests;
  for (const GoldenCase& c : cases) {
    absl::StatusOr<v1::AttendRequest> request = ToAttendRequest(c, encoding);
    ASSERT_TRUE(request.ok()) << request.status();
    requests.push_back(*std::move(request));
  }
  const Client::StreamResult result = Servers::client().AttendStream(requests);
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.responses.size(), cases.size());
  for (size_t n = 0; n < cases.size(); ++n) {
    EXPECT_EQ(CheckAttendResponse(cases[n], result.responses[n], encoding), "") << cases[n].name;
  }
}

// Each attend error case after two good ones: both responses, then the
// case's status and field.
TEST_P(GoldenVariantsStreamTest, ErrorCaseEndsTheStreamAfterEarlierResponses) {
  const WireEncoding encoding = GetParam();
  const std::vector<GoldenCase> good = AttendCases(/*errors=*/false);
  const std::vector<GoldenCase> bad = AttendCases(/*errors=*/true);
  ASSERT_GE(good.size(), 2u);
  ASSERT_GE(bad.size(), 10u);
  for (const GoldenCase& error_case : bad) {
    std::vector<v1::AttendRequest> requests;
    for (const GoldenCase* c : {&good[0], &good[1], &error_case, &good[2]}) {
      absl::StatusOr<v1::AttendRequest> request = ToAttendRequest(*c, encoding);
      ASSERT_TRUE(request.ok()) << request.status();
      requests.push_back(*std::move(request));
    }
    const Client::StreamResult result = Servers::client().AttendStream(requests);
    EXPECT_EQ(CheckError(error_case, result.status), "") << error_case.name;
    ASSERT_EQ(result.responses.size(), 2u) << error_case.name;
    EXPECT_EQ(CheckAttendResponse(good[0], result.responses[0], encoding), "");
    EXPECT_EQ(CheckAttendResponse(good[1], result.responses[1], encoding), "");
  }
}

INSTANTIATE_TEST_SUITE_P(BothEncodings, GoldenVariantsStreamTest,
                         ::testing::Values(WireEncoding::kData, WireEncoding::kRawData),
                         [](const ::testing::TestParamInfo<WireEncoding>& param) {
                           return std::string(EncodingName(param.param));
                         });

// Rows [b, b + 1) along dimension 0 of `t`.
GoldenTensor Row(const GoldenTensor& t, int64_t b) {
  GoldenTensor row = t;
  const size_t size = t.data.size() / static_cast<size_t>(t.shape[0]);
  row.shape[0] = 1;
  row.data.assign(t.data.begin() + static_cast<std::ptrdiff_t>(size * b),
                  t.data.begin() + static_cast<std::ptrdiff_t>(size * (b + 1)));
  return row;
}

// Batch item `b` of an attend case as a case of its own: the batched inputs
// (q, k, v, x_q, x_kv) and the expected out and probs cut to that item, its
// kv_lengths entry (none when it is Sk); everything else (the parameters the
// batch shares) kept.
GoldenCase ItemOf(const GoldenCase& c, int64_t b) {
  GoldenCase item = c;
  for (const char* name : {"q", "k", "v", "x_q", "x_kv"}) {
    auto it = item.inputs.find(name);
    if (it != item.inputs.end()) it->second = Row(it->second, b);
  }
  for (auto& [name, tensor] : item.expected) tensor = Row(tensor, b);
  if (auto lengths = c.IntList("kv_lengths")) {
    const int64_t length = (*lengths)[static_cast<size_t>(b)];
    // A length of Sk is the same as none: left out, so that a merged call
    // also mixes requests with and without kv_lengths.
    const auto k = c.inputs.find("k");
    const int64_t sk = k != c.inputs.end() ? k->second.shape[2] : c.inputs.at("x_kv").shape[1];
    item.params["kv_lengths"] =
        length == sk ? nlohmann::json() : nlohmann::json(std::vector<int64_t>{length});
  }
  item.name = absl::StrCat(c.name, "[", b, "]");
  return item;
}

int64_t BatchOf(const GoldenCase& c) {
  auto it = c.inputs.find("q");
  if (it == c.inputs.end()) it = c.inputs.find("x_q");
  return it == c.inputs.end() ? 0 : it->second.shape[0];
}

// The two items of every successful B = 2 attend case, sent at once, run as
// one merged call: the merge key leaves out kv_lengths and the batched
// tensors' values and dtypes, and the output dtype; it keeps GQA, the
// window, softcap and every method parameter and tensor.
TEST(GoldenVariantsBatchingTest, ItemsOfEveryTwoItemCaseMergeAndGetTheirOwnRows) {
  int merged_cases = 0;
  for (const GoldenCase& c : AttendCases(/*errors=*/false)) {
    if (BatchOf(c) != 2) continue;
    const std::string batches = absl::StrCat("attnserve_batches_total{method=\"", c.method, "\"}");
    const std::string requests =
        absl::StrCat("attnserve_batched_requests_total{method=\"", c.method, "\"}");
    absl::StatusOr<std::string> before = HttpGet(Servers::merging().metrics_port());
    ASSERT_TRUE(before.ok()) << before.status();

    GoldenCase items[2] = {ItemOf(c, 0), ItemOf(c, 1)};
    // The second item of a 16-bit case as float32 in and out (its values are
    // exact in float32): dtypes do not split a batch either.
    for (const char* name : {"q", "k", "v", "x_q", "x_kv"}) {
      auto it = items[1].inputs.find(name);
      if (it != items[1].inputs.end()) it->second.dtype = GoldenDtype::kFloat32;
    }
    items[1].params["output_dtype"] = "float32";
    // The shared tensors are part of the key byte for byte, encoding
    // included: both items send them alike, data or raw_data in turn.
    const WireEncoding encoding =
        merged_cases % 2 == 0 ? WireEncoding::kData : WireEncoding::kRawData;
    const WireEncoding encodings[2] = {encoding, encoding};
    std::string failures[2];
    std::vector<std::thread> callers;
    for (int i = 0; i < 2; ++i) {
      callers.emplace_back([&, i] {
        absl::StatusOr<v1::AttendRequest> request = ToAttendRequest(items[i], encodings[i]);
        if (!request.ok()) {
          failures[i] = request.status().ToString();
          return;
        }
        absl::StatusOr<v1::AttendResponse> response = Servers::merging_client().Attend(*request);
        failures[i] = response.ok() ? CheckAttendResponse(items[i], *response, encodings[i])
                                    : response.status().ToString();
      });
    }
    for (std::thread& caller : callers) caller.join();
    EXPECT_EQ(failures[0], "") << items[0].name;
    EXPECT_EQ(failures[1], "") << items[1].name;

    absl::StatusOr<std::string> after = HttpGet(Servers::merging().metrics_port());
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(MetricValue(*after, batches).value_or(0) - MetricValue(*before, batches).value_or(0),
              1)
        << c.name << ": its two items did not run as one batch";
    EXPECT_EQ(
        MetricValue(*after, requests).value_or(0) - MetricValue(*before, requests).value_or(0), 2)
        << c.name;
    ++merged_cases;
  }
  std::printf("%d two-item cases ran as merged batches\n", merged_cases);
  EXPECT_GE(merged_cases, 20);
}

}  // namespace
}  // namespace attnserve::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new attnserve::testing::Servers());
  return RUN_ALL_TESTS();
}
