// Benchmarks of the attention engines, every method, B=1 H=8 D=64, and the
// ceiling they are measured against: a plain dnnl::matmul of the QK^T shape
// on the same threads, in the same run.
//   make bench    (or build/bin/attention_bench --benchmark_filter=...)
// bench/perf_table.py turns the JSON output into docs/PERFORMANCE.md's table.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/attention.h"
#include "kernels/isa.h"
#include "kernels/onednn_isa.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "server/malloc_settings.h"
#include "tests/testing/heap_peak.h"

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

// Useful FLOPs of one call: QK^T and PV over the unmasked (query, key)
// pairs, 4 * H * D per pair, the same count for every method (their extra
// terms, e.g. Shaw's relative dot products or the absolute methods' input
// projections, are not counted), so GFLOP/s compares methods at equal work.
double AttentionFlops(int64_t s, bool causal) {
  const double pairs = causal ? 0.5 * static_cast<double>(s) * static_cast<double>(s + 1)
                              : static_cast<double>(s) * static_cast<double>(s);
  return 4.0 * kHeads * kDim * pairs;
}

bool IsAbsolute(MethodKind kind) {
  return kind == MethodKind::kSinusoidal || kind == MethodKind::kLearned;
}

// The absolute methods' input projections: x_q @ w_q, x_kv @ w_k, x_kv @ w_v,
// each [S, d_model] x [d_model, d_model] (d_model = H * D = 512).
double ProjectionFlops(int64_t s) {
  const double d_model = kHeads * kDim;
  return 3 * 2.0 * static_cast<double>(s) * d_model * d_model;
}

// One plain dnnl::matmul [batch,m,k]x[batch,k,n] (batch 1: [m,k]x[k,n]),
// fp32, row-major, on `threads` OpenMP threads: [8,S,64]x[8,64,S] is the
// QK^T shape of a call with all heads batched, [8,S,S]x[8,S,64] the PV one,
// [S,512]x[512,512] one input projection of the absolute methods. The
// primitive is created (and JIT-compiled) up front; Run() executes it once
// and returns the seconds it took.
class MatmulCeiling {
 public:
  MatmulCeiling(int64_t batch, int64_t m, int64_t k, int64_t n, int threads)
      : threads_(threads), batch_(batch), m_(m), k_(k), n_(n) {
    ThreadScope scope(threads_);
    using tag = dnnl::memory::format_tag;
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc a_md({batch_, m_, k_}, dt::f32, tag::abc);
    const dnnl::memory::desc b_md({batch_, k_, n_}, dt::f32, tag::abc);
    const dnnl::memory::desc c_md({batch_, m_, n_}, dt::f32, tag::abc);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), engine_);
    impl_ = pd.impl_info_str();
    // Values in [-1, 1) from a cheap generator: the PV operand at S=4096 is
    // 128 M floats, too many to draw from a normal distribution per size.
    a_ = Filled({batch_, m_, k_});
    b_ = Filled({batch_, k_, n_});
    c_ = Tensor({batch_, m_, n_});
    args_ = {{DNNL_ARG_SRC, dnnl::memory(a_md, engine_, a_.data())},
             {DNNL_ARG_WEIGHTS, dnnl::memory(b_md, engine_, b_.data())},
             {DNNL_ARG_DST, dnnl::memory(c_md, engine_, c_.data())}};
    matmul_ = dnnl::matmul(pd);
  }

  // oneDNN's implementation name; one starting "ref" is not a ceiling.
  const std::string& impl() const { return impl_; }
  bool IsReference() const { return impl_.rfind("ref", 0) == 0; }
  double Flops() const {
    return 2.0 * static_cast<double>(batch_ * m_ * k_) * static_cast<double>(n_);
  }

  double Run() {
    ThreadScope scope(threads_);
    const auto start = std::chrono::steady_clock::now();
    matmul_.execute(stream_, args_);
    stream_.wait();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

 private:
  // oneDNN (OpenMP build) takes its team size from omp_get_max_threads().
  class ThreadScope {
   public:
    explicit ThreadScope(int threads) : saved_(omp_get_max_threads()) {
      omp_set_num_threads(threads);
    }
    ~ThreadScope() { omp_set_num_threads(saved_); }

   private:
    int saved_;
  };

  static Tensor Filled(std::vector<int64_t> shape) {
    Tensor t(std::move(shape));
    uint32_t state = 12345;
    for (float& x : t.values()) {
      state = state * 1664525u + 1013904223u;
      x = static_cast<float>(state >> 8) * (2.0f / 16777216.0f) - 1.0f;
    }
    return t;
  }

  int threads_;
  int64_t batch_, m_, k_, n_;
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream_{engine_};
  dnnl::matmul matmul_;
  std::unordered_map<int, dnnl::memory> args_;
  Tensor a_, b_, c_;
  std::string impl_;
};

// The ceiling for a call of B=1, H=8, D=64 at S: oneDNN at the
// engine's ISA (main() caps it) on the call's own shapes with all heads
// batched, [8,S,64]x[8,64,S] and [8,S,S]x[8,S,64]; the better of the two
// rates. The PV operand is 8*S*S floats (512 MiB at S=4096), so one pair is
// kept, for the S and threads of the rows being run (the grid runs them in
// order), and measured at S <= 4096 only.
class BatchedCeiling {
 public:
  static constexpr int64_t kMaxS = 4096;

  static BatchedCeiling& For(int64_t s, int threads) {
    static std::unique_ptr<BatchedCeiling> kept;
    if (kept == nullptr || kept->s_ != s || kept->threads_ != threads) {
      kept.reset();  // The old pair's memory first.
      kept.reset(new BatchedCeiling(s, threads));
    }
    return *kept;
  }

  // Runs both once; adds their times.
  void Run() {
    qk_seconds_ += qk_.Run();
    pv_seconds_ += pv_.Run();
    ++runs_;
  }
  void Reset() { qk_seconds_ = pv_seconds_ = 0, runs_ = 0; }

  double QkFlopsPerSecond() const { return Rate(qk_, qk_seconds_); }
  double PvFlopsPerSecond() const { return Rate(pv_, pv_seconds_); }
  double Best() const { return std::max(QkFlopsPerSecond(), PvFlopsPerSecond()); }
  const MatmulCeiling& qk() const { return qk_; }

 private:
  BatchedCeiling(int64_t s, int threads)
      : s_(s),
        threads_(threads),
        qk_(kHeads, s, kDim, s, threads),
        pv_(kHeads, s, s, kDim, threads) {}

  double Rate(const MatmulCeiling& m, double seconds) const {
    return seconds > 0 ? m.Flops() * static_cast<double>(runs_) / seconds : 0;
  }

  int64_t s_;
  int threads_;
  MatmulCeiling qk_, pv_;
  double qk_seconds_ = 0, pv_seconds_ = 0;
  int64_t runs_ = 0;
};

// range(0): method index, range(1): S, range(2): causal, range(3): threads.
// Each iteration times one Attend on a fresh copy of the inputs (the copy is
// untimed: Attend consumes them, RoPE rotates in place). extra_bytes is the
// peak heap the call adds beyond its inputs and output (heap_peak.h), the
// largest over the iterations. With `ceiling`, each iteration also runs the
// batched ceiling (BatchedCeiling: both shapes once; above its S, the
// single-head [S,64]x[64,S] matmul, and ceiling_batched says 0), untimed by
// the framework, so the ceiling_FLOP/s counter (the better shape's rate) is
// measured interleaved with the calls, under the same load (the machine is
// shared; a ceiling measured minutes earlier can be off by several times). The phases of AttendResult::timings give the
// attention part on its own (attn_FLOP/s, attn_ms: the engine), the input
// side (prepare_ms) and the input and output checks (check_ms); for the
// absolute methods each iteration also runs one [S,512]x[512,512] matmul,
// the shape of each of their three projections (proj_ceiling_FLOP/s,
// against proj_FLOP/s = the projections' FLOPs over prepare time).
void RunAttend(benchmark::State& state, Engine engine, bool ceiling) {
  const MethodKind kind = kAllMethods[state.range(0)];
  const int64_t s = state.range(1);
  const bool causal = state.range(2) != 0;
  const int threads = static_cast<int>(state.range(3));
  const AttendArgs args = MakeArgs(kind, s, causal);
  ComputeOptions options;
  options.engine = engine;
  options.threads = threads;
  std::optional<MatmulCeiling> matmul, projection;
  BatchedCeiling* batched = nullptr;
  double ceiling_seconds = 0, projection_seconds = 0;
  int64_t ceiling_runs = 0;
  try {
    if (ceiling && s <= BatchedCeiling::kMaxS) {
      batched = &BatchedCeiling::For(s, threads);
      batched->Reset();
    } else if (ceiling) {
      matmul.emplace(1, s, kDim, s, threads);
    }
    if (ceiling && IsAbsolute(kind)) {
      projection.emplace(1, s, kHeads * kDim, kHeads * kDim, threads);
    }
  } catch (const dnnl::error& e) {
    state.SkipWithError(e.what());
    return;
  }
  int64_t extra_bytes = 0;
  double check_seconds = 0, prepare_seconds = 0, engine_seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    if (batched != nullptr) {
      batched->Run();
      ++ceiling_runs;
    } else if (matmul) {
      ceiling_seconds += matmul->Run();
      ++ceiling_runs;
    }
    if (projection) projection_seconds += projection->Run();
    AttendArgs call = args;
    state.ResumeTiming();
    testing::HeapPeakScope heap;
    auto result = Attend(std::move(call), options);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(result->out.data());
    check_seconds += result->timings.check_seconds;
    prepare_seconds += result->timings.prepare_seconds;
    engine_seconds += result->timings.engine_seconds;
    const int64_t out_bytes = result->out.size() * static_cast<int64_t>(sizeof(float));
    extra_bytes = std::max(extra_bytes, heap.PeakGrowth() - out_bytes);
  }
  state.SetLabel(std::string(MethodName(kind)));
  state.counters["FLOP/s"] =
      benchmark::Counter(AttentionFlops(s, causal), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
  state.counters["extra_bytes"] = benchmark::Counter(
      static_cast<double>(extra_bytes), benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
  if (batched != nullptr && ceiling_runs > 0) {
    state.counters["ceiling_FLOP/s"] = benchmark::Counter(
        batched->Best(), benchmark::Counter::kDefaults, benchmark::Counter::kIs1000);
    state.counters["ceiling_qk_FLOP/s"] = benchmark::Counter(
        batched->QkFlopsPerSecond(), benchmark::Counter::kDefaults, benchmark::Counter::kIs1000);
    state.counters["ceiling_pv_FLOP/s"] = benchmark::Counter(
        batched->PvFlopsPerSecond(), benchmark::Counter::kDefaults, benchmark::Counter::kIs1000);
    state.counters["ceiling_batched"] = 1;
  }
  if (matmul && ceiling_seconds > 0) {
    state.counters["ceiling_FLOP/s"] =
        benchmark::Counter(matmul->Flops() * static_cast<double>(ceiling_runs) / ceiling_seconds,
                           benchmark::Counter::kDefaults, benchmark::Counter::kIs1000);
    state.counters["ceiling_batched"] = 0;
  }
  const double calls = static_cast<double>(state.iterations());
  if (calls == 0 || engine_seconds <= 0) return;
  state.counters["attn_FLOP/s"] =
      benchmark::Counter(AttentionFlops(s, causal) * calls / engine_seconds,
                         benchmark::Counter::kDefaults, benchmark::Counter::kIs1000);
  state.counters["attn_ms"] = benchmark::Counter(1e3 * engine_seconds / calls);
  state.counters["prepare_ms"] = benchmark::Counter(1e3 * prepare_seconds / calls);
  state.counters["check_ms"] = benchmark::Counter(1e3 * check_seconds / calls);
  if (IsAbsolute(kind) && prepare_seconds > 0) {
    state.counters["proj_FLOP/s"] =
        benchmark::Counter(ProjectionFlops(s) * calls / prepare_seconds,
                           benchmark::Counter::kDefaults, benchmark::Counter::kIs1000);
  }
  if (projection && projection_seconds > 0) {
    state.counters["proj_ceiling_FLOP/s"] =
        benchmark::Counter(projection->Flops() * static_cast<double>(ceiling_runs) /
                               projection_seconds,
                           benchmark::Counter::kDefaults, benchmark::Counter::kIs1000);
  }
}

void BM_FastAttend(benchmark::State& state) { RunAttend(state, Engine::kFast, true); }
void BM_PlainAttend(benchmark::State& state) { RunAttend(state, Engine::kPlain, false); }

// The ceiling on its own, both shapes. range(0): S, range(1): threads,
// range(2): 0 for QK^T ([S,64]x[64,S]), 1 for PV ([S,S]x[S,64]); `batch`
// heads at once. The label is oneDNN's implementation name; a reference
// (non-JIT) one is an error.
void RunCeiling(benchmark::State& state, int64_t batch) {
  try {
    const int64_t s = state.range(0);
    const bool pv = state.range(2) != 0;
    MatmulCeiling matmul(batch, s, pv ? s : kDim, pv ? kDim : s,
                         static_cast<int>(state.range(1)));
    if (matmul.IsReference()) {
      state.SkipWithError(("oneDNN picked a reference matmul: " + matmul.impl()).c_str());
      return;
    }
    for (auto _ : state) matmul.Run();
    state.SetLabel(matmul.impl());
    state.counters["FLOP/s"] = benchmark::Counter(
        matmul.Flops(), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  } catch (const dnnl::error& e) {
    state.SkipWithError(e.what());
  }
}

// One head: the ceiling of issue 3's tables.
void BM_MatmulCeiling(benchmark::State& state) { RunCeiling(state, 1); }

// All 8 heads batched: issue 13's ceiling (the better of the two shapes).
void BM_BatchedCeiling(benchmark::State& state) { RunCeiling(state, kHeads); }

// The grid: S in {128, 512, 2048, 8192}, causal and not, 1 and 2
// threads; plus S = 1024 and 4096 on 2 threads, where the targets are
// stated. S-major, so consecutive rows share one BatchedCeiling.
void FastGrid(benchmark::internal::Benchmark* b) {
  for (int64_t s : {128, 512, 1024, 2048, 4096, 8192}) {
    const bool both_thread_counts = s != 1024 && s != 4096;
    for (int64_t threads : {1, 2}) {
      if (threads == 1 && !both_thread_counts) continue;
      for (int64_t causal : {0, 1}) {
        for (int64_t method = 0; method < 8; ++method) b->Args({method, s, causal, threads});
      }
    }
  }
}

void CeilingGrid(benchmark::internal::Benchmark* b) {
  for (int64_t s : {128, 512, 1024, 2048, 4096, 8192}) {
    for (int64_t threads : {1, 2}) {
      for (int64_t pv : {0, 1}) b->Args({s, threads, pv});
    }
  }
}

// Up to BatchedCeiling::kMaxS (the PV operand's size).
void BatchedCeilingGrid(benchmark::internal::Benchmark* b) {
  for (int64_t s : {512, 1024, 2048, 4096}) {
    for (int64_t threads : {1, 2}) {
      for (int64_t pv : {0, 1}) b->Args({s, threads, pv});
    }
  }
}

BENCHMARK(BM_MatmulCeiling)
    ->ArgNames({"S", "threads", "pv"})
    ->Apply(CeilingGrid)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_BatchedCeiling)
    ->ArgNames({"S", "threads", "pv"})
    ->Apply(BatchedCeilingGrid)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_FastAttend)
    ->ArgNames({"method", "S", "causal", "threads"})
    ->Apply(FastGrid)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The plain engine takes ~2.5 s per call at S = 2048 (~40 s at 8192): the
// full grid up to 512, one timed call at 2048, nothing above.
BENCHMARK(BM_PlainAttend)
    ->ArgNames({"method", "S", "causal", "threads"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7}, {128, 512}, {0, 1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_PlainAttend)
    ->Name("BM_PlainAttendOnce")
    ->ArgNames({"method", "S", "causal", "threads"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7}, {2048}, {0, 1}, {1, 2}})
    ->Iterations(1)
    ->Repetitions(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace attnserve::kernels

// attnd's malloc settings (server/malloc_settings.h): freed memory stays in the heap,
// so a call's tensors reuse pages instead of paying mmap, munmap and page
// faults on every call, as they do in the service. --malloc=glibc keeps
// glibc's defaults instead, for comparison; the JSON context says which.
int main(int argc, char** argv) {
  bool attnd_malloc = true;
  int kept = 1;
  for (int n = 1; n < argc; ++n) {
    if (std::string(argv[n]) == "--malloc=glibc") {
      attnd_malloc = false;
    } else {
      argv[kept++] = argv[n];
    }
  }
  argc = kept;
  if (attnd_malloc) {
    attnserve::server::UseAttndMallocSettings();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("malloc", attnd_malloc ? "attnd (server/malloc_settings.h)"
                                                     : "glibc defaults");
  // Every row of a run is on this ISA (ATTN_MAX_ISA caps it), and so is
  // oneDNN's ceiling (capped to match unless ONEDNN_MAX_CPU_ISA is set).
  namespace k = attnserve::kernels;
  const auto wanted = k::MaxIsaFromEnvironment();
  if (!wanted.ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", wanted.status().ToString().c_str());
    return 2;
  }
  const k::Isa isa = k::ActiveIsa();
  if (wanted->has_value() && **wanted != isa) {
    // make bench asks for every ISA; a CPU without this one has no table.
    std::fprintf(stderr, "attention_bench: ATTN_MAX_ISA=%s but this CPU's best is %s: nothing run\n",
                 std::string(k::IsaName(**wanted)).c_str(), std::string(k::IsaName(isa)).c_str());
    return 0;
  }
  const absl::Status capped = k::CapOneDnnIsa(isa);
  if (!capped.ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", capped.ToString().c_str());
    return 2;
  }
  benchmark::AddCustomContext("isa", std::string(k::IsaName(isa)));
  benchmark::AddCustomContext("onednn_isa", k::OneDnnIsaName());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
