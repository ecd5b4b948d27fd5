// The C++ SDK's channel defaults (client/channel.h) are really applied to a
// Client given only a target, against real attnd processes on 127.0.0.1:
// round_robin over the target's addresses, a dead address skipped,
// UNAVAILABLE retried on another replica, a NOT_SERVING replica left alone
// (client-side health checking) while Health() still reports it, and a
// caller's service config overriding the default.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/channel.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/metrics_scrape.h"
#include "tests/testing/server_process.h"

namespace attnserve::client {
namespace {

using ::attnserve::testing::HttpGet;
using ::attnserve::testing::MetricSum;
using ::attnserve::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr int kCalls = 30;

v1::AttendRequest Request() {
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  *request.mutable_q() = MakeTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_k() = MakeTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_v() = MakeTensor({1, 1, 2, 2}, {1, 2, 3, 4});
  return request;
}

// attnserve_requests_total of Attend with `code` at `server`.
double Served(const ServerProcess& server, const std::string& code = "OK") {
  absl::StatusOr<std::string> text = HttpGet(server.metrics_port());
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? MetricSum(*text, "attnserve_requests_total",
                               {"rpc=\"Attend\"", absl::StrCat("code=\"", code, "\"")})
                   : -1;
}

// A loopback port nothing listens on (bound, then released).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), length), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  close(fd);
  return ntohs(address.sin_port);
}

std::unique_ptr<ServerProcess> Start(std::vector<std::string> flags = {}) {
  auto server = ServerProcess::Start(std::move(flags));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

void AttendAll(Client& client) {
  for (int i = 0; i < kCalls; ++i) {
    absl::StatusOr<v1::AttendResponse> response = client.Attend(Request());
    ASSERT_TRUE(response.ok()) << "call " << i << ": " << response.status();
  }
}

// Replica `lame` in lame duck (NOT_SERVING, refusing new calls) after SIGTERM.
void MakeLameDuck(const ServerProcess& lame) {
  ASSERT_EQ(kill(lame.pid(), SIGTERM), 0);
  auto probe = Client::Create(lame.address());
  ASSERT_TRUE(probe.ok());
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (absl::Now() < give_up) {
    absl::StatusOr<bool> serving = (*probe)->Health();
    ASSERT_TRUE(serving.ok()) << serving.status();
    if (!*serving) return;
    absl::SleepFor(absl::Milliseconds(10));
  }
  FAIL() << "still SERVING 20 s after SIGTERM";
}

TEST(ChannelDefaultsTest, TheDefaultServiceConfig) {
  const nlohmann::json config = nlohmann::json::parse(DefaultServiceConfig());
  EXPECT_EQ(config["loadBalancingConfig"], nlohmann::json::parse(R"([{"round_robin":{}}])"));
  EXPECT_EQ(config["healthCheckConfig"]["serviceName"], "");
  const nlohmann::json& method_config = config["methodConfig"].at(0);
  std::vector<std::string> names;
  for (const auto& name : method_config["name"]) {
    names.push_back(absl::StrCat(name["service"].get<std::string>(), "/",
                                 name["method"].get<std::string>()));
  }
  EXPECT_THAT(names, ::testing::UnorderedElementsAre(
                         "attnserve.v1.AttentionService/Attend",
                         "attnserve.v1.AttentionService/Encode",
                         "attnserve.v1.AttentionService/ListMethods",
                         "grpc.health.v1.Health/Check"));
  EXPECT_EQ(method_config["retryPolicy"]["maxAttempts"], 5);
  EXPECT_EQ(method_config["retryPolicy"]["retryableStatusCodes"],
            nlohmann::json::parse(R"(["UNAVAILABLE"])"));
  EXPECT_FALSE(nlohmann::json::parse(DefaultServiceConfig(/*health_checking=*/false))
                   .contains("healthCheckConfig"));
}

TEST(ChannelDefaultsTest, RoundRobinGivenOnlyTheTarget) {
  auto a = Start(), b = Start();
  ASSERT_TRUE(a && b);
  auto client = Client::Create(absl::StrCat("ipv4:", a->address(), ",", b->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  AttendAll(**client);
  // round_robin alternates; gRPC's own pick_first would send all to one.
  EXPECT_EQ(Served(*a) + Served(*b), kCalls);
  EXPECT_GE(Served(*a), kCalls / 3);
  EXPECT_GE(Served(*b), kCalls / 3);
}

TEST(ChannelDefaultsTest, ADeadAddressIsSkipped) {
  auto live = Start();
  ASSERT_TRUE(live);
  auto client =
      Client::Create(absl::StrCat("ipv4:127.0.0.1:", FreePort(), ",", live->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  AttendAll(**client);
  EXPECT_EQ(Served(*live), kCalls);
}

TEST(ChannelDefaultsTest, UnavailableIsRetriedOnAnotherReplica) {
  auto lame = Start({"--lame_duck_s=60"}), live = Start();
  ASSERT_TRUE(lame && live);
  MakeLameDuck(*lame);
  // The default retry policy without client-side health checking, so that
  // calls do reach the lame duck and are refused there.
  ClientOptions options;
  options.service_config = DefaultServiceConfig(/*health_checking=*/false);
  auto client =
      Client::Create(absl::StrCat("ipv4:", lame->address(), ",", live->address()), options);
  ASSERT_TRUE(client.ok()) << client.status();
  AttendAll(**client);
  EXPECT_GT(Served(*lame, "UNAVAILABLE"), 0) << "no call reached the lame duck";
  EXPECT_EQ(Served(*live), kCalls);
  kill(lame->pid(), SIGKILL);  // not worth waiting out its lame duck
}

TEST(ChannelDefaultsTest, WithoutRetriesTheRefusalReachesTheCaller) {
  auto lame = Start({"--lame_duck_s=60"});
  ASSERT_TRUE(lame);
  MakeLameDuck(*lame);
  ClientOptions options;
  options.service_config = "";  // gRPC's own defaults: no retries
  auto client = Client::Create(lame->address(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Status refused = (*client)->Attend(Request()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("draining"));
  kill(lame->pid(), SIGKILL);
}

TEST(ChannelDefaultsTest, ANotServingReplicaGetsNoCallsButHealthReportsIt) {
  auto lame = Start({"--lame_duck_s=60"}), live = Start();
  ASSERT_TRUE(lame && live);
  MakeLameDuck(*lame);
  auto client = Client::Create(absl::StrCat("ipv4:", lame->address(), ",", live->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  AttendAll(**client);
  EXPECT_EQ(Served(*live), kCalls);
  EXPECT_EQ(Served(*lame, "UNAVAILABLE"), 0);
  // Health asks on a channel without health checking: NOT_SERVING, not UNAVAILABLE.
  auto alone = Client::Create(lame->address());
  ASSERT_TRUE(alone.ok());
  absl::StatusOr<bool> serving = (*alone)->Health();
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_FALSE(*serving);
  kill(lame->pid(), SIGKILL);
}

}  // namespace
}  // namespace attnserve::client
