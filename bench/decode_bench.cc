// decode_bench: one decode step against a long cache (kernels::DecodeSession,
// the server's step without the RPC) next to the time it takes to read the
// same cached keys and values once, in one run (issue 15's first
// performance row: the step should be within 2x of that read).
//
// For each thread count: the session is prefilled to cached-1 tokens, then
// each iteration steps one token (cached length `cached` during the step)
// and truncates it away again, so every step sees the same cache. The
// reference is a pass over the same K and V bytes (a sum, what a step must
// at least do) and a memcpy of them; "warm" runs back to back (the cache may
// sit in L3), "cold" evicts it first by writing a 256 MiB buffer.
//
// Usage: decode_bench [--cached=4096] [--heads=8] [--kv_heads=8] [--head_dim=64]
//                     [--iterations=200] [--threads=1,2]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_args.h"
#include "kernels/attention.h"
#include "kernels/decode.h"
#include "kernels/tensor.h"

namespace {

using attnserve::kernels::ComputeOptions;
using attnserve::kernels::DecodeOptions;
using attnserve::kernels::DecodeSession;
using attnserve::kernels::Tensor;
using attnserve::kernels::TensorMap;
using attnserve::bench::CpuSeconds;
using attnserve::bench::Flag;
using Clock = std::chrono::steady_clock;

std::vector<int> ThreadCounts(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      std::vector<int> counts;
      for (const char* p = argv[i] + 10; *p != '\0';) {
        counts.push_back(std::atoi(p));
        while (*p != '\0' && *p != ',') ++p;
        if (*p == ',') ++p;
      }
      return counts;
    }
  }
  return {1, 2};
}

Tensor Random(std::vector<int64_t> shape, std::mt19937& rng) {
  Tensor t(std::move(shape));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& x : t.values()) x = dist(rng);
  return t;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Writes a buffer larger than any cache, so the next read comes from memory.
void EvictCaches() {
  static std::vector<char>* buffer = new std::vector<char>(size_t{256} << 20);
  static char value = 0;
  std::memset(buffer->data(), ++value, buffer->size());
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t cached = Flag(argc, argv, "cached", 4096);
  const int64_t heads = Flag(argc, argv, "heads", 8);
  const int64_t kv_heads = Flag(argc, argv, "kv_heads", heads);
  const int64_t d = Flag(argc, argv, "head_dim", 64);
  const int64_t iterations = Flag(argc, argv, "iterations", 200);
  const int64_t kv_bytes = cached * kv_heads * 2 * d * 4;
  std::mt19937 rng(15);

  std::printf("decode step: B=1, H=%lld, H_kv=%lld, D=Dv=%lld, cached length %lld "
              "(K+V %.1f MiB), median of %lld\n",
              static_cast<long long>(heads), static_cast<long long>(kv_heads),
              static_cast<long long>(d), static_cast<long long>(cached),
              static_cast<double>(kv_bytes) / (1 << 20), static_cast<long long>(iterations));

  // The reference: the same bytes read once (a sum) and copied once.
  std::vector<float> kv(static_cast<size_t>(kv_bytes / 4));
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<float>(i % 7);
  std::vector<float> copy(kv.size());
  double sink = 0;
  // Median wall and thread CPU seconds of a pass over K and V.
  const auto time_read = [&](bool cold) {
    std::vector<double> times, cpu_times;
    for (int64_t i = 0; i < iterations; ++i) {
      if (cold) EvictCaches();
      const double cpu_start = CpuSeconds(CLOCK_THREAD_CPUTIME_ID);
      const Clock::time_point start = Clock::now();
      float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (size_t j = 0; j + 8 <= kv.size(); j += 8) {
        for (int l = 0; l < 8; ++l) sum[l] += kv[j + l];
      }
      times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      cpu_times.push_back(CpuSeconds(CLOCK_THREAD_CPUTIME_ID) - cpu_start);
      for (float s : sum) sink += s;
    }
    return std::make_pair(Median(times), Median(cpu_times));
  };
  const auto time_copy = [&](bool cold) {
    std::vector<double> times;
    for (int64_t i = 0; i < iterations; ++i) {
      if (cold) EvictCaches();
      const Clock::time_point start = Clock::now();
      std::memcpy(copy.data(), kv.data(), kv.size() * 4);
      times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      sink += copy[static_cast<size_t>(i) % copy.size()];
    }
    return Median(times);
  };

  DecodeOptions options;
  options.method = attnserve::kernels::MethodKind::kNone;
  options.batch = 1;
  options.num_heads = heads;
  options.num_kv_heads = kv_heads;
  options.head_dim = d;
  options.max_len = cached;
  absl::StatusOr<int64_t> bytes = attnserve::kernels::ValidateDecodeOpen(options);
  if (!bytes.ok()) {
    std::fprintf(stderr, "decode_bench: %s\n", std::string(bytes.status().message()).c_str());
    return 1;
  }
  const std::vector<int> thread_counts = ThreadCounts(argc, argv);
  for (bool cold : {false, true}) {
    const auto [read, read_cpu] = time_read(cold);
    const double copied = time_copy(cold);
    std::printf("\n%s caches: read K+V once %.3f ms (%.1f GB/s; thread CPU %.3f ms), memcpy "
                "%.3f ms (%.1f GB/s)\n",
                cold ? "cold" : "warm", read * 1e3, static_cast<double>(kv_bytes) / read / 1e9,
                read_cpu * 1e3, copied * 1e3, static_cast<double>(kv_bytes) / copied / 1e9);
    for (int threads : thread_counts) {
      absl::StatusOr<std::unique_ptr<DecodeSession>> session = DecodeSession::Open(options);
      if (!session.ok()) return 1;
      ComputeOptions compute;
      compute.threads = threads;
      compute.inputs_checked = true;
      TensorMap prefill;
      prefill["q"] = Random({1, heads, cached - 1, d}, rng);
      prefill["k"] = Random({1, kv_heads, cached - 1, d}, rng);
      prefill["v"] = Random({1, kv_heads, cached - 1, d}, rng);
      if (!(*session)->Step(std::move(prefill), false, compute).ok()) return 1;
      const Tensor q = Random({1, heads, 1, d}, rng), k = Random({1, kv_heads, 1, d}, rng),
                   v = Random({1, kv_heads, 1, d}, rng);
      std::vector<double> times, cpu_times;
      for (int64_t i = 0; i < iterations; ++i) {
        TensorMap step{{"q", q}, {"k", k}, {"v", v}};
        if (cold) EvictCaches();
        const double cpu_start = CpuSeconds(CLOCK_THREAD_CPUTIME_ID);
        const Clock::time_point start = Clock::now();
        absl::StatusOr<attnserve::kernels::AttendResult> out =
            (*session)->Step(std::move(step), false, compute);
        times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
        cpu_times.push_back(CpuSeconds(CLOCK_THREAD_CPUTIME_ID) - cpu_start);
        if (!out.ok() || !(*session)->Truncate(cached - 1).ok()) return 1;
        sink += out->out.data()[0];
      }
      const double step = Median(times);
      std::printf("  step, %d thread%s: %.3f ms = %.2fx the read, %.2fx the memcpy", threads,
                  threads == 1 ? "" : "s", step * 1e3, step / read, step / copied);
      if (threads == 1) {
        // With one thread the whole step runs on this one: CPU against CPU.
        const double step_cpu = Median(cpu_times);
        std::printf("; thread CPU %.3f ms = %.2fx the read's; best %.3f ms", step_cpu * 1e3,
                    step_cpu / read_cpu, *std::min_element(times.begin(), times.end()) * 1e3);
      }
      std::printf("\n");
    }
  }
  return sink == 12345.678 ? 2 : 0;
}
