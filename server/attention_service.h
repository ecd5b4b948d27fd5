// AttentionServiceImpl: the attnserve.v1.AttentionService RPC handlers, on
// gRPC's callback API.
//
// Handlers never compute on gRPC's threads: each request (and each message of
// an AttendStream) becomes one task on a ComputePool, which converts the
// request (server/convert.h), runs the kernels and finishes the call. A
// call's cancellation (client cancel, deadline, server shutdown) sets a flag
// the kernels poll, and a task whose call is already cancelled when it
// starts skips the compute. AttendStream keeps one message in flight, so its
// responses come in request order and every response before a failing
// message is written before the stream ends with that message's status.
//
// Thread-safety: the handlers are called concurrently by gRPC; the service
// holds only immutable state after construction.
#ifndef ATTNSERVE_SERVER_ATTENTION_SERVICE_H_
#define ATTNSERVE_SERVER_ATTENTION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>

#include "attnserve/v1/attention.grpc.pb.h"
#include "attnserve/v1/attention.pb.h"
#include "server/compute_pool.h"
#include "server/tensor_store.h"
#include "server/metrics.h"

namespace attnserve::server {

struct ServiceOptions {
  // Per request: the largest input tensor, the sum of all input tensors, and
  // the largest output or intermediate tensor, in float32 elements.
  int64_t max_elements = int64_t{1} << 28;
  // Reported by ListMethods; the limit itself is applied by the server builder.
  int64_t max_message_bytes = int64_t{256} << 20;
  // The tensors requests may name in `ref` (--tensor_dir); null: none. Not
  // owned; must outlive the service.
  const TensorStore* tensors = nullptr;
};

class AttentionServiceImpl final : public v1::AttentionService::CallbackService {
 public:
  // `pool` and `metrics` are not owned; the pool must keep running until
  // every call has finished (shut the grpc::Server down first, then stop the
  // pool), and both must outlive the service.
  AttentionServiceImpl(ComputePool* pool, Metrics* metrics, const ServiceOptions& options);

  // The generated bases also declare the synchronous overloads; keep them
  // visible (-Woverloaded-virtual). gRPC calls only the callback ones below.
  using v1::AttentionService::CallbackService::Attend;
  using v1::AttentionService::CallbackService::AttendStream;
  using v1::AttentionService::CallbackService::Encode;
  using v1::AttentionService::CallbackService::ListMethods;

  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* context,
                                   const v1::EncodeRequest* request,
                                   v1::EncodeResponse* response) override;
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const v1::AttendRequest* request,
                                   v1::AttendResponse* response) override;
  grpc::ServerBidiReactor<v1::AttendRequest, v1::AttendResponse>* AttendStream(
      grpc::CallbackServerContext* context) override;
  // Answered inline (no compute): the methods, their parameters, the limits
  // and the server's name and version.
  grpc::ServerUnaryReactor* ListMethods(grpc::CallbackServerContext* context,
                                        const v1::ListMethodsRequest* request,
                                        v1::ListMethodsResponse* response) override;

 private:
  ComputePool* const pool_;
  Metrics* const metrics_;
  const ServiceOptions options_;
  // Built once: DescribeMethods does not change while the process runs.
  const v1::ListMethodsResponse methods_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_ATTENTION_SERVICE_H_
