#include "client/decode_session.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"

namespace attnserve::client {

absl::StatusOr<std::unique_ptr<DecodeSession>> Client::Decode(
    const attnserve::v1::DecodeOpen& open, std::optional<absl::Duration> deadline) {
  // Not NewContext(): a session lives as long as its caller keeps stepping,
  // so default_deadline (meant for one call) does not bound it; the server's
  // --session_idle_timeout_s ends a forgotten one.
  auto context = std::make_unique<grpc::ClientContext>();
  if (deadline.has_value()) {
    if (*deadline <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("deadline: must be > 0");
    }
    context->set_deadline(absl::ToChronoTime(absl::Now() + *deadline));
  }
  security_.Apply(*context);
  std::unique_ptr<DecodeSession::Stream> stream = stub_->Decode(context.get());
  std::unique_ptr<DecodeSession> session(
      new DecodeSession(std::move(context), std::move(stream)));
  attnserve::v1::DecodeRequest request;
  *request.mutable_open() = open;
  absl::StatusOr<attnserve::v1::DecodeResponse> response = session->Exchange(request);
  if (!response.ok()) return response.status();
  return session;
}

DecodeSession::~DecodeSession() {
  if (!closed_) (void)Close();
}

absl::StatusOr<attnserve::v1::DecodeResponse> DecodeSession::Exchange(
    const attnserve::v1::DecodeRequest& request) {
  if (closed_) return absl::FailedPreconditionError("the session is closed");
  attnserve::v1::DecodeResponse response;
  // Write() fails once the server has ended the stream; Finish() then says why.
  if (!stream_->Write(request) || !stream_->Read(&response)) {
    absl::Status status = Finish();
    if (status.ok()) {
      status = absl::UnknownError("the Decode stream ended without a response");
      final_status_ = status;
    }
    return status;
  }
  length_ = response.length();
  return response;
}

absl::StatusOr<attnserve::v1::DecodeResponse> DecodeSession::Step(
    const attnserve::v1::DecodeStep& step) {
  attnserve::v1::DecodeRequest request;
  *request.mutable_step() = step;
  return Exchange(request);
}

absl::StatusOr<attnserve::v1::DecodeResponse> DecodeSession::Step(attnserve::v1::Tensor q,
                                                                  attnserve::v1::Tensor k,
                                                                  attnserve::v1::Tensor v,
                                                                  bool return_probs) {
  attnserve::v1::DecodeRequest request;
  attnserve::v1::DecodeStep* step = request.mutable_step();
  *step->mutable_q() = std::move(q);
  *step->mutable_k() = std::move(k);
  *step->mutable_v() = std::move(v);
  step->set_return_probs(return_probs);
  return Exchange(request);
}

absl::StatusOr<attnserve::v1::DecodeResponse> DecodeSession::StepX(attnserve::v1::Tensor x,
                                                                   bool return_probs) {
  attnserve::v1::DecodeRequest request;
  *request.mutable_step()->mutable_x() = std::move(x);
  request.mutable_step()->set_return_probs(return_probs);
  return Exchange(request);
}

absl::StatusOr<int64_t> DecodeSession::Truncate(int64_t length) {
  attnserve::v1::DecodeRequest request;
  request.mutable_truncate()->set_length(length);
  absl::StatusOr<attnserve::v1::DecodeResponse> response = Exchange(request);
  if (!response.ok()) return response.status();
  return response->length();
}

absl::Status DecodeSession::Finish() {
  if (closed_) return final_status_;
  closed_ = true;
  final_status_ = FromGrpcStatus(stream_->Finish());
  return final_status_;
}

absl::Status DecodeSession::Close() {
  if (closed_) return final_status_;
  stream_->WritesDone();
  // Every message has had its response; anything more is a broken server,
  // read so that Finish() does not wait on it.
  attnserve::v1::DecodeResponse extra;
  bool unexpected = false;
  while (stream_->Read(&extra)) unexpected = true;
  absl::Status status = Finish();
  if (status.ok() && unexpected) {
    final_status_ = absl::UnknownError("the Decode stream sent a response to no message");
  }
  return final_status_;
}

void DecodeSession::Cancel() {
  if (closed_) return;
  context_->TryCancel();
  (void)Finish();
}

}  // namespace attnserve::client
