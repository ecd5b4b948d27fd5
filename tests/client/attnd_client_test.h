// A GoogleTest fixture for the SDK's tests against a real attnd: one attnd
// (tests/testing/server_process.h) for the whole suite, and a fresh Client
// for every test.
#ifndef ATTNSERVE_TESTS_CLIENT_ATTND_CLIENT_TEST_H_
#define ATTNSERVE_TESTS_CLIENT_ATTND_CLIENT_TEST_H_

#include <memory>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"

namespace attnserve::client {

class AttndClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server =
        testing::ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr) << "attnd did not start";
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(server_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  inline static testing::ServerProcess* server_ = nullptr;
  std::unique_ptr<Client> client_;
};

}  // namespace attnserve::client

#endif  // ATTNSERVE_TESTS_CLIENT_ATTND_CLIENT_TEST_H_
