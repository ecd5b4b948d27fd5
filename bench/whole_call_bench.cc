// whole_call_bench: where the server's time goes in one Attend call (issue
// 13 item 4), the phases of server/attention_service.cc run in process on
// one request: parse (the body's bytes into an AttendRequest: protobuf
// copies each raw_data out of gRPC's slices), convert (ToAttendArgs),
// compute (kernels::Attend), fill (the response from the result) and
// serialise (the response into gRPC's buffer). Receiving the bytes off the
// socket is gRPC's and not in here.
//
// Two forms alternate call by call, so the machine's load hits both alike:
// "copy", the server before issue 13 item 4 (inputs copied into the
// kernels' tensors, out computed into a tensor of its own and then copied
// into the response's raw_data), and "in place", the server now
// (ConvertLimits::in_place: the kernels read the request's raw_data where it
// lies; AttendOutStorage: the engine writes out into the response's
// raw_data). Prints the median wall and thread-CPU milliseconds of every
// phase (compute's CPU is the process's, over its threads).
//
// Usage: whole_call_bench [--seq=2048] [--heads=8] [--dim=64] [--threads=2]
//                         [--calls=20]
#include <grpcpp/support/byte_buffer.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "attnserve/v1/attention.pb.h"
#include "bench/bench_args.h"
#include "kernels/attention.h"
#include "server/convert.h"
#include "server/wire.h"

namespace {

namespace v1 = attnserve::v1;
using attnserve::server::AttendOutStorage;
using attnserve::server::ConvertLimits;
using attnserve::server::OutputEncoding;
using attnserve::bench::CpuSeconds;
using attnserve::bench::Flag;
using Clock = std::chrono::steady_clock;

long MinorFaults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

v1::Tensor RawTensor(int64_t heads, int64_t seq, int64_t dim, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> values(static_cast<size_t>(heads * seq * dim));
  for (float& x : values) x = normal(rng);
  v1::Tensor tensor;
  for (int64_t d : {int64_t{1}, heads, seq, dim}) tensor.add_shape(d);
  // Little-endian hosts only (x86-64, where this runs): the bytes as they lie.
  tensor.set_raw_data(
      std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  return tensor;
}

constexpr int kPhases = 5;
constexpr const char* kPhaseNames[kPhases] = {"parse", "convert", "compute", "fill", "serialise"};

struct Sample {
  double wall[kPhases] = {};
  double cpu[kPhases] = {};
  long faults[kPhases] = {};
};

// One call's phases, as the server runs them for a request computing alone.
Sample OneCall(const grpc::ByteBuffer& body, bool in_place, int threads) {
  Sample sample;
  int phase = 0;
  Clock::time_point wall = Clock::now();
  double cpu = CpuSeconds(CLOCK_THREAD_CPUTIME_ID);
  long faults = MinorFaults();
  const auto mark = [&](bool process_cpu) {
    const Clock::time_point now = Clock::now();
    const double now_cpu =
        CpuSeconds(process_cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_THREAD_CPUTIME_ID);
    const long now_faults = MinorFaults();
    sample.wall[phase] = std::chrono::duration<double>(now - wall).count();
    sample.cpu[phase] = now_cpu - cpu;
    sample.faults[phase] = now_faults - faults;
    ++phase;
    wall = Clock::now();
    cpu = CpuSeconds(phase == 2 ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_THREAD_CPUTIME_ID);
    faults = MinorFaults();
  };
  v1::AttendRequest request;
  if (!attnserve::server::ParseBody(body, &request).ok()) std::abort();
  mark(false);
  absl::StatusOr<attnserve::kernels::AttendArgs> args =
      attnserve::server::ToAttendArgs(request, ConvertLimits{int64_t{1} << 28, in_place});
  if (!args.ok()) std::abort();
  const OutputEncoding encoding{true, v1::DTYPE_UNSPECIFIED};
  v1::AttendResponse response;
  mark(false);
  attnserve::kernels::ComputeOptions options;
  options.threads = threads;
  options.inputs_checked = true;
  if (in_place) options.out_storage = AttendOutStorage(encoding, &response);
  absl::StatusOr<attnserve::kernels::AttendResult> result =
      attnserve::kernels::Attend(std::move(*args), options);
  if (!result.ok()) std::abort();
  mark(true);
  attnserve::server::FillAttendResponse(std::move(*result), encoding, &response);
  mark(false);
  grpc::ByteBuffer reply;
  if (!attnserve::server::SerializeBody(response, &reply).ok()) std::abort();
  v1::AttendResponse().Swap(&response);  // as SerializeResponse does
  mark(false);
  return sample;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t seq = Flag(argc, argv, "seq", 2048);
  const int64_t heads = Flag(argc, argv, "heads", 8);
  const int64_t dim = Flag(argc, argv, "dim", 64);
  const int threads = static_cast<int>(Flag(argc, argv, "threads", 2));
  const int calls = static_cast<int>(Flag(argc, argv, "calls", 20));

  std::mt19937 rng(13);
  v1::AttendRequest request;
  request.mutable_method()->mutable_none();
  request.set_raw_output(true);
  *request.mutable_q() = RawTensor(heads, seq, dim, rng);
  *request.mutable_k() = RawTensor(heads, seq, dim, rng);
  *request.mutable_v() = RawTensor(heads, seq, dim, rng);
  grpc::ByteBuffer body;
  if (!attnserve::server::SerializeBody(request, &body).ok()) return 1;

  const char* const forms[2] = {"copy", "in place"};
  std::vector<Sample> samples[2];
  for (int form = 0; form < 2; ++form) OneCall(body, form == 1, threads);  // warm-up
  for (int call = 0; call < calls; ++call) {
    for (int form = 0; form < 2; ++form) samples[form].push_back(OneCall(body, form == 1, threads));
  }
  double load[3] = {};
  if (getloadavg(load, 3) < 0) load[0] = -1;
  std::printf(
      "Attend none B=1 H=%lld S=%lld D=%lld, raw_data in and out (%zu bytes in), "
      "%d threads, %d calls of each form alternating; load average %.1f\n",
      static_cast<long long>(heads), static_cast<long long>(seq), static_cast<long long>(dim),
      body.Length(), threads, calls, load[0]);
  std::printf(
      "| phase | copy: wall ms | copy: CPU ms | copy: page faults | in place: wall ms "
      "| in place: CPU ms | in place: page faults |\n|---|---|---|---|---|---|---|\n");
  double total_wall[2] = {}, total_cpu[2] = {};
  for (int phase = 0; phase < kPhases; ++phase) {
    std::printf("| %s%s |", kPhaseNames[phase], phase == 2 ? " (CPU: all threads)" : "");
    for (int form = 0; form < 2; ++form) {
      std::vector<double> wall, cpu, faults;
      for (const Sample& s : samples[form]) {
        wall.push_back(s.wall[phase] * 1e3);
        cpu.push_back(s.cpu[phase] * 1e3);
        faults.push_back(static_cast<double>(s.faults[phase]));
      }
      total_wall[form] += Median(wall);
      if (phase != 2) total_cpu[form] += Median(cpu);
      std::printf(" %.2f | %.2f | %.0f |", Median(wall), Median(cpu), Median(faults));
    }
    std::printf("\n");
  }
  for (int form = 0; form < 2; ++form) {
    std::printf("%s: sum of median walls %.2f ms; outside compute %.2f ms wall, %.2f ms CPU\n",
                forms[form], total_wall[form], total_wall[form] - Median([&] {
                                                 std::vector<double> w;
                                                 for (const Sample& s : samples[form])
                                                   w.push_back(s.wall[2] * 1e3);
                                                 return w;
                                               }()),
                total_cpu[form]);
  }
  return 0;
}
