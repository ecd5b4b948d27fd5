// Fuzz target: a serialized attnserve.v1.AttendRequest through the service's
// path (service_path.h): parse, convert (alone, and deferred as a merged
// batch does), the kernels, the response.
#include <cstddef>
#include <cstdint>
#include <utility>

#include "attnserve/v1/attention.pb.h"
#include "tests/fuzz/service_path.h"

namespace attnserve::fuzz {
namespace {

void Run(const uint8_t* data, size_t size) {
  v1::AttendRequest request;
  // gRPC answers a body that does not parse without calling the service.
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  server::MethodKindOf(request.method());  // the metrics' label

  // Alone, the service reads the request's values in place.
  server::ConvertLimits in_place = Limits();
  in_place.in_place = true;
  absl::StatusOr<kernels::AttendArgs> args =
      server::ToAttendArgs(request, in_place, &FuzzTensors());

  // A merged batch checks without decoding, then decodes each tensor where
  // it goes: the two must agree on whether the request is valid.
  server::DeferredTensors deferred;
  absl::StatusOr<kernels::AttendArgs> checked =
      server::ToAttendArgs(request, Limits(), &FuzzTensors(), &deferred);
  absl::Status decoded = checked.status();
  if (checked.ok()) {
    ATTN_FUZZ_CHECK(checked->inputs.empty(), "deferred conversion decodes nothing");
    for (const auto& [name, tensor] : deferred) {
      absl::StatusOr<kernels::Tensor> one = tensor.Decode();
      if (!one.ok()) {
        decoded = one.status();
        break;
      }
      ATTN_FUZZ_CHECK(one->shape() == tensor.shape && one->size() == tensor.size,
                      "a deferred tensor decodes to its checked shape");
      if (args.ok()) {
        const auto it = args->inputs.find(name);
        ATTN_FUZZ_CHECK(it != args->inputs.end() && it->second.values() == one->values(),
                        "deferred and direct decoding give the same values");
      }
    }
  }
  ATTN_FUZZ_CHECK(args.ok() == decoded.ok(), "direct and deferred conversion agree");
  if (!args.ok()) {
    CheckError(args.status());
    return;
  }

  v1::AttendResponse response;
  // The conversion accepted the request, so its output encoding too.
  const absl::StatusOr<server::OutputEncoding> encoding =
      server::ToOutputEncoding(request.raw_output(), request.output_dtype());
  ATTN_FUZZ_CHECK(encoding.ok(), "a converted request's output encoding is valid");
  // As the service: a float32 raw_data out is written into the response.
  kernels::ComputeOptions options = KernelOptions();
  options.out_storage = server::AttendOutStorage(*encoding, &response);
  absl::StatusOr<kernels::AttendResult> result = kernels::Attend(*std::move(args), options);
  if (!result.ok()) {
    CheckError(result.status());
    return;
  }
  ATTN_FUZZ_CHECK(result->out.rank() == 4, "out is [B,H,Sq,Dv]");
  server::FillAttendResponse(*std::move(result), *encoding, &response);
  CheckResponse(response);
}

}  // namespace
}  // namespace attnserve::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attnserve::fuzz::Run(data, size);
  return 0;
}
