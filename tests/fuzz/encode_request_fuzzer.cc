// Fuzz target: a serialized attnserve.v1.EncodeRequest through the service's
// path (service_path.h): parse, convert, the kernels, the response.
#include <cstddef>
#include <cstdint>
#include <utility>

#include "attnserve/v1/attention.pb.h"
#include "tests/fuzz/service_path.h"

namespace attnserve::fuzz {
namespace {

void Run(const uint8_t* data, size_t size) {
  v1::EncodeRequest request;
  // gRPC answers a body that does not parse without calling the service.
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  server::MethodKindOf(request.method());  // the metrics' label

  absl::StatusOr<kernels::EncodeArgs> args =
      server::ToEncodeArgs(request, Limits(), &FuzzTensors());
  if (!args.ok()) {
    CheckError(args.status());
    return;
  }
  absl::StatusOr<kernels::EncodeResult> result = kernels::Encode(*std::move(args), KernelOptions());
  if (!result.ok()) {
    CheckError(result.status());
    return;
  }
  ATTN_FUZZ_CHECK(!result->outputs.empty(), "an encode has outputs");
  v1::EncodeResponse response;
  // The conversion accepted the request, so its output encoding too.
  const absl::StatusOr<server::OutputEncoding> encoding =
      server::ToOutputEncoding(request.raw_output(), request.output_dtype());
  ATTN_FUZZ_CHECK(encoding.ok(), "a converted request's output encoding is valid");
  server::FillEncodeResponse(*std::move(result), *encoding, &response);
  CheckResponse(response);
}

}  // namespace
}  // namespace attnserve::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attnserve::fuzz::Run(data, size);
  return 0;
}
