// Fuzz target: a Decode stream (decode-sessions.md) through the service's
// path: the input is the stream's messages, each a serialized
// attnserve.v1.DecodeRequest preceded by its length as a varint (protobuf's
// delimited format), taken in order as server/decode_call.cc takes them --
// the open converted by ToDecodeOptions, sized by ValidateDecodeOpen and
// allocated by DecodeSession::Open; each step converted by ToStepInputs and
// run by DecodeSession::Step; truncates applied -- until a message fails,
// which ends the stream as it does in the service.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "attnserve/v1/attention.pb.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/delimited_message_util.h"
#include "kernels/decode.h"
#include "server/decode_call.h"
#include "tests/fuzz/service_path.h"

namespace attnserve::fuzz {
namespace {

// The session budget (attnd's --session_memory_bytes is 1 GiB): an open
// whose cache would be larger is refused there before any allocation.
constexpr int64_t kSessionBytes = int64_t{64} << 20;
// Messages of one stream that are looked at (a step costs milliseconds).
constexpr int kMaxMessages = 16;

void Run(const uint8_t* data, size_t size) {
  google::protobuf::io::ArrayInputStream input(data, static_cast<int>(size));
  std::unique_ptr<kernels::DecodeSession> session;
  server::OutputEncoding encoding;
  for (int message = 0; message < kMaxMessages; ++message) {
    v1::DecodeRequest request;
    bool clean_eof = false;
    // gRPC ends a stream whose message does not parse.
    if (!google::protobuf::util::ParseDelimitedFromZeroCopyStream(&request, &input, &clean_eof)) {
      return;
    }
    switch (request.kind_case()) {
      case v1::DecodeRequest::kOpen: {
        if (session != nullptr) return;  // FAILED_PRECONDITION: one session per stream
        server::MethodKindOf(request.open().method());  // the metrics' label
        absl::StatusOr<kernels::DecodeOptions> options =
            server::ToDecodeOptions(request.open(), Limits(), &FuzzTensors(), &encoding);
        if (!options.ok()) return CheckError(options.status());
        absl::StatusOr<int64_t> bytes = kernels::ValidateDecodeOpen(*options);
        if (!bytes.ok()) return CheckError(bytes.status());
        ATTN_FUZZ_CHECK(*bytes > 0, "a session's cache has a size");
        if (*bytes > kSessionBytes) return;  // RESOURCE_EXHAUSTED from the registry
        absl::StatusOr<std::unique_ptr<kernels::DecodeSession>> opened =
            kernels::DecodeSession::Open(*std::move(options));
        if (!opened.ok()) return CheckError(opened.status());
        session = *std::move(opened);
        ATTN_FUZZ_CHECK(session->length() == 0 && session->cache_bytes() == *bytes,
                        "an open session is empty and holds what was validated");
        break;
      }
      case v1::DecodeRequest::kStep: {
        if (session == nullptr) return;  // FAILED_PRECONDITION: step before open
        absl::StatusOr<kernels::TensorMap> inputs =
            server::ToStepInputs(request.step(), Limits(), &FuzzTensors());
        if (!inputs.ok()) return CheckError(inputs.status());
        const int64_t before = session->length();
        kernels::ComputeOptions options = KernelOptions();
        absl::StatusOr<kernels::AttendResult> result =
            session->Step(*std::move(inputs), request.step().return_probs(), options);
        if (!result.ok()) {
          ATTN_FUZZ_CHECK(session->length() == before, "a failed step caches nothing");
          return CheckError(result.status());
        }
        ATTN_FUZZ_CHECK(session->length() > before && session->length() <= session->max_len(),
                        "a step caches its tokens within max_len");
        ATTN_FUZZ_CHECK(result->out.rank() == 4, "out is [B,H,n,Dv]");
        v1::DecodeResponse response;
        server::FillTensor(result->out, encoding, response.mutable_out());
        if (result->probs.has_value()) {
          server::FillTensor(*result->probs, encoding, response.mutable_probs());
        }
        response.set_length(session->length());
        CheckResponse(response);
        break;
      }
      case v1::DecodeRequest::kTruncate: {
        if (session == nullptr) return;  // FAILED_PRECONDITION: truncate before open
        const int64_t before = session->length();
        const absl::Status truncated = session->Truncate(request.truncate().length());
        if (!truncated.ok()) {
          ATTN_FUZZ_CHECK(session->length() == before, "a refused truncate keeps the cache");
          return CheckError(truncated);
        }
        ATTN_FUZZ_CHECK(session->length() == request.truncate().length(),
                        "truncate keeps exactly the tokens asked for");
        break;
      }
      case v1::DecodeRequest::KIND_NOT_SET:
        return;  // FAILED_PRECONDITION or INVALID_ARGUMENT: the stream ends
    }
  }
}

}  // namespace
}  // namespace attnserve::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attnserve::fuzz::Run(data, size);
  return 0;
}
