// The C++ SDK's decode session (docs/decode-sessions.md): one Decode stream
// whose key/value cache lives in attnd, so a generation step sends only its
// new tokens. Client::Decode opens it; Step appends tokens and returns their
// attention, Truncate rolls the cache back, and the destructor ends the
// stream (the server frees the cache at once).
//
// Example:
//   v1::DecodeOpen open;
//   open.mutable_method()->mutable_rope();
//   open.set_batch(1); open.set_num_heads(8); open.set_num_kv_heads(2);
//   open.set_head_dim(64); open.set_max_len(4096);
//   open.set_raw_output(true);                       // raw_data responses (fast path)
//   absl::StatusOr<std::unique_ptr<DecodeSession>> session = client->Decode(open);
//   // prefill n tokens, then one at a time: q [1,8,n,64], k/v [1,2,n,64]
//   absl::StatusOr<v1::DecodeResponse> r = (*session)->Step(q, k, v);
//   std::vector<float> out = *TensorValues(r->out());   // [1,8,n,64]
//   (*session)->Truncate(100);                          // keep the first 100 tokens
//   // sinusoidal/learned: (*session)->StepX(x) with x [B,n,d_model]
//
// Thread-safety: a DecodeSession is NOT thread-safe: one thread at a time
// calls it (each message waits for its one response, in order). Different
// sessions, on one Client or several, may be used from different threads at
// once; a model with L layers opens L sessions on one Client.
//
// Errors: any error the server returns ends the session (gRPC semantics; the
// server has freed the cache): the call returns that status with the
// server's message, and every later call FAILED_PRECONDITION ("the session
// is closed"). The Client must outlive its sessions.
#ifndef ATTNSERVE_CLIENT_DECODE_SESSION_H_
#define ATTNSERVE_CLIENT_DECODE_SESSION_H_

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "attnserve/v1/attention.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace attnserve::client {

class Client;

class DecodeSession {
 public:
  DecodeSession(const DecodeSession&) = delete;
  DecodeSession& operator=(const DecodeSession&) = delete;
  // Close()s the session if it is still open (its status is dropped; call
  // Close() to see it).
  ~DecodeSession();

  // Appends step's n >= 1 new tokens (q [B,H,n,D], k [B,H_kv,n,D],
  // v [B,H_kv,n,Dv]; or x [B,n,d_model] for sinusoidal and learned) and
  // returns their attention: out [B,H,n,Dv] (raw_data if the open set
  // raw_output), probs [B,H,n,length] with return_probs, and length, the
  // tokens cached now. Exactly the causal Attend at query_offset = the tokens
  // cached before, over the cache followed by the new tokens (spec 2).
  // OUT_OF_RANGE naming max_len past the open's capacity; shape and tensor
  // errors as Attend's.
  absl::StatusOr<attnserve::v1::DecodeResponse> Step(const attnserve::v1::DecodeStep& step);
  absl::StatusOr<attnserve::v1::DecodeResponse> Step(attnserve::v1::Tensor q,
                                                     attnserve::v1::Tensor k,
                                                     attnserve::v1::Tensor v,
                                                     bool return_probs = false);
  // Step of the absolute methods: x [B,n,d_model], projected by the open's
  // w_q, w_k, w_v on the server.
  absl::StatusOr<attnserve::v1::DecodeResponse> StepX(attnserve::v1::Tensor x,
                                                      bool return_probs = false);

  // Keeps the first `length` cached tokens (0 <= length <= this->length(),
  // else INVALID_ARGUMENT naming truncate.length); returns the new length.
  absl::StatusOr<int64_t> Truncate(int64_t length);

  // Tokens cached after the last response (0 after the open).
  int64_t length() const { return length_; }
  // True once the stream has ended (Close, Cancel or an error).
  bool closed() const { return closed_; }

  // Ends the stream: half-closes it and waits for the server's status (OK,
  // or the error that ended it). Idempotent: later calls return the first
  // one's status.
  absl::Status Close();

  // Ends the stream at once (the server frees the cache as it sees the
  // cancellation); the session is closed afterwards.
  void Cancel();

 private:
  friend class Client;
  using Stream =
      grpc::ClientReaderWriter<attnserve::v1::DecodeRequest, attnserve::v1::DecodeResponse>;

  DecodeSession(std::unique_ptr<grpc::ClientContext> context, std::unique_ptr<Stream> stream)
      : context_(std::move(context)), stream_(std::move(stream)) {}

  // Sends one message and reads its one response; on any failure finishes
  // the stream and returns its status.
  absl::StatusOr<attnserve::v1::DecodeResponse> Exchange(
      const attnserve::v1::DecodeRequest& request);
  // Finishes the stream (once) and keeps its status.
  absl::Status Finish();

  const std::unique_ptr<grpc::ClientContext> context_;
  const std::unique_ptr<Stream> stream_;
  int64_t length_ = 0;
  bool closed_ = false;
  absl::Status final_status_;
};

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_DECODE_SESSION_H_
