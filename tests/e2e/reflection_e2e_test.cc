// Server reflection and health as the tools that rely on them use them:
// ghz and grpcurl resolve the service over reflection (no .proto at hand),
// build the request from JSON against the returned descriptors, and call the
// method generically. This test does exactly that with api.md's ghz example.
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/reflection.grpc.pb.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

namespace refl = ::grpc::reflection::v1alpha;
using ::testing::Contains;

class ReflectionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = ServerProcess::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  std::shared_ptr<grpc::Channel> Channel() {
    return grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  }

  // One request/response exchange on a reflection stream.
  refl::ServerReflectionResponse Ask(const refl::ServerReflectionRequest& request) {
    auto stub = refl::ServerReflection::NewStub(Channel());
    grpc::ClientContext context;
    auto stream = stub->ServerReflectionInfo(&context);
    EXPECT_TRUE(stream->Write(request));
    refl::ServerReflectionResponse response;
    EXPECT_TRUE(stream->Read(&response));
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
    return response;
  }

  static ServerProcess* server_;
};

ServerProcess* ReflectionTest::server_ = nullptr;

TEST_F(ReflectionTest, ListsTheServiceHealthAndReflection) {
  refl::ServerReflectionRequest request;
  request.set_list_services("");
  const refl::ServerReflectionResponse response = Ask(request);
  std::vector<std::string> names;
  for (const auto& service : response.list_services_response().service()) {
    names.push_back(service.name());
  }
  EXPECT_THAT(names, Contains("attnserve.v1.AttentionService"));
  EXPECT_THAT(names, Contains("grpc.health.v1.Health"));
}

// What ghz does for `--call SERVICE/METHOD` without --proto, for every
// service the server lists: FileContainingSymbol returns the file (and its
// dependencies), from which the service and its methods' message types can be
// built. grpc.health.v1.Health used to be listed but not resolvable ("Symbol
// not found: grpc.health.v1.Health.Check" in ghz).
TEST_F(ReflectionTest, EveryListedServiceResolvesToItsDescriptor) {
  refl::ServerReflectionRequest list;
  list.set_list_services("");
  const refl::ServerReflectionResponse services = Ask(list);
  ASSERT_GE(services.list_services_response().service_size(), 3) << services.DebugString();
  for (const auto& listed : services.list_services_response().service()) {
    SCOPED_TRACE(listed.name());
    refl::ServerReflectionRequest request;
    request.set_file_containing_symbol(listed.name());
    const refl::ServerReflectionResponse response = Ask(request);
    ASSERT_TRUE(response.has_file_descriptor_response()) << response.DebugString();
    // The response holds the file and the files it imports, in no promised
    // order: build each once its imports are built.
    std::vector<google::protobuf::FileDescriptorProto> files;
    for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
      files.emplace_back();
      ASSERT_TRUE(files.back().ParseFromString(bytes));
    }
    google::protobuf::DescriptorPool pool;
    for (size_t round = 0; round < files.size(); ++round) {
      for (const auto& file : files) {
        if (pool.FindFileByName(file.name()) != nullptr) continue;
        bool ready = true;
        for (const std::string& dependency : file.dependency()) {
          ready = ready && pool.FindFileByName(dependency) != nullptr;
        }
        if (ready) {
          ASSERT_NE(pool.BuildFile(file), nullptr) << file.name();
        }
      }
    }
    const auto* service = pool.FindServiceByName(listed.name());
    ASSERT_NE(service, nullptr) << "not in the returned files";
    ASSERT_GT(service->method_count(), 0);
    for (int m = 0; m < service->method_count(); ++m) {
      const auto* method = service->method(m);
      EXPECT_NE(method->input_type(), nullptr) << method->full_name();
      EXPECT_NE(method->output_type(), nullptr) << method->full_name();
      // ghz asks for the method's full name ("grpc.health.v1.Health.Check").
      refl::ServerReflectionRequest by_method;
      by_method.set_file_containing_symbol(method->full_name());
      EXPECT_TRUE(Ask(by_method).has_file_descriptor_response()) << method->full_name();
    }
  }
}

// What ghz does with `--call attnserve.v1.AttentionService/Attend -d '{...}'`.
TEST_F(ReflectionTest, GhzStyleCallFromJsonThroughReflectedDescriptors) {
  refl::ServerReflectionRequest request;
  request.set_file_containing_symbol("attnserve.v1.AttentionService");
  const refl::ServerReflectionResponse response = Ask(request);
  ASSERT_TRUE(response.has_file_descriptor_response()) << response.DebugString();

  google::protobuf::DescriptorPool pool;
  for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(bytes));
    ASSERT_NE(pool.BuildFile(file), nullptr) << file.name();
  }
  const auto* service = pool.FindServiceByName("attnserve.v1.AttentionService");
  ASSERT_NE(service, nullptr);
  std::vector<std::string> methods;
  for (int m = 0; m < service->method_count(); ++m) methods.push_back(service->method(m)->name());
  EXPECT_THAT(methods, ::testing::UnorderedElementsAre("Encode", "Attend", "AttendStream",
                                                       "ListMethods", "Decode"));
  const auto* attend = service->FindMethodByName("Attend");
  ASSERT_NE(attend, nullptr);

  // api.md's ghz example, verbatim.
  const std::string json = R"({"method":{"alibi":{}},"causal":true,
       "q":{"shape":[1,1,2,2],"data":[1,0,0,1]},
       "k":{"shape":[1,1,2,2],"data":[1,0,0,1]},
       "v":{"shape":[1,1,2,2],"data":[1,2,3,4]}})";
  google::protobuf::DynamicMessageFactory factory(&pool);
  std::unique_ptr<google::protobuf::Message> input(
      factory.GetPrototype(attend->input_type())->New());
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, input.get()).ok());
  std::string payload;
  ASSERT_TRUE(input->SerializeToString(&payload));

  grpc::GenericStub stub(Channel());
  grpc::ClientContext context;
  grpc::ByteBuffer request_buffer, response_buffer;
  grpc::Slice slice(payload);
  request_buffer = grpc::ByteBuffer(&slice, 1);
  grpc::Status status;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  stub.UnaryCall(&context, "/attnserve.v1.AttentionService/Attend", grpc::StubOptions(),
                 &request_buffer, &response_buffer, [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_one();
                 });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response_buffer.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  std::unique_ptr<google::protobuf::Message> output(
      factory.GetPrototype(attend->output_type())->New());
  ASSERT_TRUE(output->ParseFromString(bytes));
  std::string out_json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(*output, &out_json, options).ok());

  // Head count 1: slope 2^-8. Query 0 sees only key 0: out = v_0 = [1, 2].
  // Query 1: scores (0, 1/sqrt2) plus biases (-1/256, 0):
  //   p1 = 1 / (1 + exp(-(1/sqrt2 + 1/256))) = 0.670664...; out = v_0 + p1 * (v_1 - v_0).
  const double p1 = 1.0 / (1.0 + std::exp(-(1.0 / std::sqrt(2.0) + 1.0 / 256)));
  const auto* out_field = attend->output_type()->FindFieldByName("out");
  const auto& out = output->GetReflection()->GetMessage(*output, out_field);
  const auto* data_field = out.GetDescriptor()->FindFieldByName("data");
  ASSERT_EQ(out.GetReflection()->FieldSize(out, data_field), 4) << out_json;
  const double expected[] = {1, 2, 1 + 2 * p1, 2 + 2 * p1};
  for (int n = 0; n < 4; ++n) {
    EXPECT_NEAR(out.GetReflection()->GetRepeatedFloat(out, data_field, n), expected[n], 1e-5)
        << out_json;
  }
}

}  // namespace
}  // namespace attnserve::testing
