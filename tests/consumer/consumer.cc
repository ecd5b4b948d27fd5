// The consumer of an installed attnserve SDK: one ALiBi Attend and one
// ListMethods against the server named by argv[1], printed as plain text that
// tests/packaging/install_test.py checks against the spec's values.
#include <cstdio>
#include <string>

#include <attnserve/client/client.h>
#include <attnserve/v1/attention.pb.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer HOST:PORT\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<attnserve::client::Client>> client =
      attnserve::client::Client::Create(argv[1]);
  if (!client.ok()) {
    std::fprintf(stderr, "create: %s\n", client.status().ToString().c_str());
    return 1;
  }
  attnserve::v1::AttendRequest request;
  request.mutable_method()->mutable_alibi();
  request.set_causal(true);
  *request.mutable_q() = attnserve::client::MakeTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_k() = attnserve::client::MakeTensor({1, 1, 2, 2}, {1, 0, 0, 1});
  *request.mutable_v() = attnserve::client::MakeTensor({1, 1, 2, 2}, {1, 2, 3, 4});
  absl::StatusOr<attnserve::v1::AttendResponse> response = (*client)->Attend(request);
  if (!response.ok()) {
    std::fprintf(stderr, "attend: %s\n", response.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::vector<float>> out = attnserve::client::TensorValues(response->out());
  if (!out.ok()) {
    std::fprintf(stderr, "out: %s\n", out.status().ToString().c_str());
    return 1;
  }
  std::printf("out");
  for (float value : *out) std::printf(" %.9g", value);
  std::printf("\n");
  absl::StatusOr<attnserve::v1::ListMethodsResponse> methods = (*client)->ListMethods();
  if (!methods.ok()) {
    std::fprintf(stderr, "methods: %s\n", methods.status().ToString().c_str());
    return 1;
  }
  std::printf("methods %d\n", methods->methods_size());
  absl::StatusOr<bool> serving = (*client)->Health();
  std::printf("health %s\n", serving.ok() && *serving ? "SERVING" : "NOT_SERVING");
  return 0;
}
