// The attention variants' performance targets (issue 14, attention-variants.md
// 1 and 3), on the fast engine at the CPU's best ISA (ATTN_MAX_ISA caps it):
//   BM_Gqa/kv_heads:{32,8}: B=1, H=32, S=4096, D=64, causal, 2 threads. GQA
//     does the same compute as multi-head attention and must not copy keys
//     and values per query head: its time <= 1.1x the H_kv = 32 row's, and
//     its extra_bytes (peak heap beyond inputs and output) no larger.
//   BM_Window/window:{0,512}: B=1, H=8, S=8192, D=64, causal, 2 threads: a
//     window of 512 leaves 1/8 of the full causal call's (query, key) pairs;
//     the call must take <= 0.15x the full call's time (block skipping).
// Each row reports ms per call (real time), engine_ms (the engine's part of
// it: AttendTimings::engine_seconds) and extra_bytes. Run with
//   build/bin/variants_bench --benchmark_repetitions=3
//     --benchmark_report_aggregates_only=true
// (make bench runs it after attention_bench; docs/PERFORMANCE.md "Attention
// variants" has the measured rows).

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/attention.h"
#include "kernels/isa.h"
#include "server/malloc_settings.h"
#include "tests/testing/heap_peak.h"

namespace attnserve::kernels {
namespace {

constexpr int64_t kDim = 64;

Tensor Random(std::vector<int64_t> shape, std::mt19937& rng) {
  Tensor t(std::move(shape));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (float& x : t.values()) x = uniform(rng);
  return t;
}

// Times Attend on a fresh copy of `args` per iteration (the copy untimed);
// extra_bytes is the largest peak heap a call adds beyond its inputs and
// output.
void TimeAttend(benchmark::State& state, const AttendArgs& args, int threads) {
  ComputeOptions options;
  options.engine = Engine::kFast;
  options.threads = threads;
  int64_t extra_bytes = 0;
  double engine_seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    AttendArgs call = args;
    state.ResumeTiming();
    testing::HeapPeakScope heap;
    auto result = Attend(std::move(call), options);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(result->out.data());
    engine_seconds += result->timings.engine_seconds;
    const int64_t out_bytes = result->out.size() * static_cast<int64_t>(sizeof(float));
    extra_bytes = std::max(extra_bytes, heap.PeakGrowth() - out_bytes);
  }
  state.counters["extra_bytes"] = benchmark::Counter(
      static_cast<double>(extra_bytes), benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
  state.counters["engine_ms"] = benchmark::Counter(
      1e3 * engine_seconds, benchmark::Counter::kAvgIterations);
  state.SetLabel(std::string(IsaName(ActiveIsa())));
}

// range(0): H_kv.
void BM_Gqa(benchmark::State& state) {
  constexpr int64_t kHeads = 32, kS = 4096;
  const int64_t kv_heads = state.range(0);
  std::mt19937 rng(14);
  AttendArgs args;
  args.causal = true;
  args.inputs["q"] = Random({1, kHeads, kS, kDim}, rng);
  args.inputs["k"] = Random({1, kv_heads, kS, kDim}, rng);
  args.inputs["v"] = Random({1, kv_heads, kS, kDim}, rng);
  TimeAttend(state, args, 2);
  state.counters["input_bytes"] = benchmark::Counter(
      static_cast<double>(4 * kS * kDim * (kHeads + 2 * kv_heads)), benchmark::Counter::kDefaults,
      benchmark::Counter::kIs1024);
}

// range(0): window (0: none).
void BM_Window(benchmark::State& state) {
  constexpr int64_t kHeads = 8, kS = 8192;
  std::mt19937 rng(15);
  AttendArgs args;
  args.causal = true;
  if (state.range(0) > 0) args.window = state.range(0);
  for (const char* name : {"q", "k", "v"}) args.inputs[name] = Random({1, kHeads, kS, kDim}, rng);
  TimeAttend(state, args, 2);
}

BENCHMARK(BM_Gqa)->ArgName("kv_heads")->Arg(32)->Arg(8)->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Window)->ArgName("window")->Arg(0)->Arg(512)->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace attnserve::kernels

// attnd's malloc settings (server/malloc_settings.h), as attention_bench:
// freed memory stays in the heap, so calls reuse pages as they do in the
// service.
int main(int argc, char** argv) {
  attnserve::server::UseAttndMallocSettings();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
