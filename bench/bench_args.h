// Small helpers the stand-alone benchmarks share (decode_bench,
// whole_call_bench): an integer `--name=value` flag and a CPU clock.
//
// Thread-safety: both functions are pure or read the system's clocks.
#ifndef ATTNSERVE_BENCH_BENCH_ARGS_H_
#define ATTNSERVE_BENCH_BENCH_ARGS_H_

#include <time.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace attnserve::bench {

// The value of `--name=value` in argv as an integer, or `fallback`.
inline int64_t Flag(int argc, char** argv, const char* name, int64_t fallback) {
  const std::string prefix = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
      return std::atoll(argv[i] + prefix.size());
    }
  }
  return fallback;
}

// Seconds of `clock` (CLOCK_THREAD_CPUTIME_ID: the calling thread's CPU time,
// which leaves out the time it waited for a core on a shared host;
// CLOCK_PROCESS_CPUTIME_ID: every thread's).
inline double CpuSeconds(clockid_t clock) {
  timespec t{};
  clock_gettime(clock, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

}  // namespace attnserve::bench

#endif  // ATTNSERVE_BENCH_BENCH_ARGS_H_
