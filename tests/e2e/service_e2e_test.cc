// attnd as a process: port 0 and --port_file, ListMethods, health, a clear
// failure when the address is taken, and a clean exit on SIGTERM.
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

using client::Client;
using ::testing::HasSubstr;

std::string AttndPath() {
  const char* path = std::getenv("ATTND_PATH");
  return path != nullptr ? path : ATTND_DEFAULT_PATH;
}

TEST(ServiceTest, ListMethodsDescribesEveryMethodAndTheLimits) {
  auto server = ServerProcess::Start({"--max_elements=123456", "--max_message_bytes=7340032"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Create((*server)->address());
  ASSERT_TRUE(client.ok());
  auto methods = (*client)->ListMethods();
  ASSERT_TRUE(methods.ok()) << methods.status();
  std::set<std::string> names;
  for (const auto& method : methods->methods()) {
    names.insert(method.name());
    EXPECT_FALSE(method.description().empty()) << method.name();
    std::set<std::string> params;
    for (const auto& p : method.parameters()) {
      params.insert(p.name());
      EXPECT_FALSE(p.type().empty()) << method.name() << "." << p.name();
      EXPECT_FALSE(p.ops().empty()) << method.name() << "." << p.name();
    }
    EXPECT_TRUE(params.count("causal") && params.count("scale") && params.count("query_offset"))
        << method.name();
    if (method.name() == "rope") {
      for (const char* p : {"layout", "base", "scaling", "scaling_factor", "rotary_dim"}) {
        EXPECT_TRUE(params.count(p)) << p;
      }
      for (const auto& p : method.parameters()) {
        if (p.name() == "base") {
          EXPECT_EQ(p.default_value(), "10000");
        }
        if (p.name() == "rotary_dim") {
          EXPECT_EQ(p.default_value(), "D");
        }
      }
    }
    if (method.name() == "shaw") {
      for (const auto& p : method.parameters()) {
        if (p.name() == "max_relative_position") {
          EXPECT_EQ(p.default_value(), "");
        }
      }
    }
  }
  EXPECT_EQ(names, (std::set<std::string>{"none", "sinusoidal", "learned", "rope",
                                          "transformer_xl", "shaw", "alibi", "da_transformer"}));
  EXPECT_EQ(methods->limits().max_elements(), 123456);
  EXPECT_EQ(methods->limits().max_message_bytes(), 7340032);
  EXPECT_THAT(methods->server(), HasSubstr("attnd"));
}

TEST(ServiceTest, HealthIsServing) {
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Create((*server)->address());
  ASSERT_TRUE(client.ok());
  auto overall = (*client)->Health();
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_TRUE(*overall);
}

TEST(ServiceTest, TakenAddressFailsWithAClearMessage) {
  auto server = ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string log = ::testing::TempDir() + "/attnd_taken.log";
  const std::string command = absl::StrCat(AttndPath(), " --address=", (*server)->address(),
                                           " --metrics_address=127.0.0.1:0 > ", log, " 2>&1");
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_THAT(text.str(), HasSubstr((*server)->address())) << text.str();
}

TEST(ServiceTest, BadFlagValuesAreRejectedAtStartUp) {
  const std::string command = absl::StrCat(AttndPath(), " --address=127.0.0.1:0 --threads=0",
                                           " --metrics_address=127.0.0.1:0",
                                           " > /dev/null 2>&1");
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace attnserve::testing
