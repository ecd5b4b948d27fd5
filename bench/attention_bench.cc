// Benchmarks of the plain attention engine, every method, B=1 H=8 D=64.
// The baseline the fast kernels (a later issue) are measured against.
//   make bench    (or build/bin/attention_bench --benchmark_filter=...)
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/attention.h"

namespace attnserve::kernels {
namespace {

constexpr int64_t kHeads = 8, kDim = 64;

Tensor Random(std::vector<int64_t> shape, std::mt19937& rng) {
  Tensor t(std::move(shape));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : t.values()) x = normal(rng);
  return t;
}

AttendArgs MakeArgs(MethodKind kind, int64_t s, bool causal) {
  std::mt19937 rng(42);
  AttendArgs args;
  args.method = kind;
  args.causal = causal;
  const int64_t d_model = kHeads * kDim;
  if (kind == MethodKind::kSinusoidal || kind == MethodKind::kLearned) {
    args.num_heads = kHeads;
    args.inputs["x_q"] = Random({1, s, d_model}, rng);
    args.inputs["x_kv"] = Random({1, s, d_model}, rng);
    for (const char* w : {"w_q", "w_k", "w_v"}) {
      Tensor t = Random({d_model, d_model}, rng);
      for (float& x : t.values()) x /= std::sqrt(static_cast<float>(d_model));
      args.inputs[w] = std::move(t);
    }
    if (kind == MethodKind::kLearned) args.inputs["table"] = Random({s, d_model}, rng);
    return args;
  }
  args.inputs["q"] = Random({1, kHeads, s, kDim}, rng);
  args.inputs["k"] = Random({1, kHeads, s, kDim}, rng);
  args.inputs["v"] = Random({1, kHeads, s, kDim}, rng);
  switch (kind) {
    case MethodKind::kTransformerXL:
      args.params.d_rel = kDim;
      args.inputs["pos_bias_u"] = Random({kHeads, kDim}, rng);
      args.inputs["pos_bias_v"] = Random({kHeads, kDim}, rng);
      args.inputs["w_r"] = Random({kHeads, kDim, kDim}, rng);
      break;
    case MethodKind::kShaw:
      args.params.max_relative_position = 64;
      args.inputs["rel_k"] = Random({129, kDim}, rng);
      args.inputs["rel_v"] = Random({129, kDim}, rng);
      break;
    case MethodKind::kDaTransformer:
      args.inputs["dist_w"] = Random({kHeads}, rng);
      args.inputs["dist_v"] = Random({kHeads}, rng);
      break;
    case MethodKind::kNone:
    case MethodKind::kSinusoidal:
    case MethodKind::kLearned:
    case MethodKind::kRope:
    case MethodKind::kAlibi:
      break;
  }
  return args;
}

// range(0): method index, range(1): S, range(2): causal, range(3): threads.
void BM_PlainAttend(benchmark::State& state) {
  const MethodKind kind = kAllMethods[state.range(0)];
  const int64_t s = state.range(1);
  const AttendArgs args = MakeArgs(kind, s, state.range(2) != 0);
  ComputeOptions options;
  options.threads = static_cast<int>(state.range(3));
  for (auto _ : state) {
    auto result = Attend(args, options);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(result->out.data());
  }
  state.SetLabel(std::string(MethodName(kind)));
  const double flops = 4.0 * kHeads * static_cast<double>(s) * s * kDim;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}

BENCHMARK(BM_PlainAttend)
    ->ArgNames({"method", "S", "causal", "threads"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7}, {128, 512}, {0, 1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace attnserve::kernels

BENCHMARK_MAIN();
