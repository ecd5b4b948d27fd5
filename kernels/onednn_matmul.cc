#include "kernels/onednn_matmul.h"

#include <omp.h>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attnserve::kernels {
namespace {

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int>;

struct Cached {
  dnnl::matmul primitive;
  size_t scratchpad_bytes = 0;
};

class MatMulCache {
 public:
  MatMulCache() : engine_(dnnl::engine::kind::cpu, 0) {}

  const dnnl::engine& engine() const { return engine_; }

  // The primitive for `key`, created on first use (dnnl::error propagates).
  std::shared_ptr<const Cached> Get(const Key& key) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = primitives_.find(key);
      if (it != primitives_.end()) return it->second;
    }
    const auto [m, k, n, ldx, ldw, ldy, threads] = key;
    const auto f32 = dnnl::memory::data_type::f32;
    const dnnl::memory::desc x_md({m, k}, f32, {ldx, 1});
    const dnnl::memory::desc w_md({k, n}, f32, {ldw, 1});
    const dnnl::memory::desc y_md({m, n}, f32, {ldy, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(x_md, w_md, y_md), attr, engine_);
    auto cached = std::make_shared<Cached>();
    cached->primitive = dnnl::matmul(pd);
    cached->scratchpad_bytes = pd.scratchpad_desc().get_size();
    std::lock_guard<std::mutex> lock(mu_);
    return primitives_.emplace(key, std::move(cached)).first->second;
  }

 private:
  const dnnl::engine engine_;
  std::mutex mu_;
  std::map<Key, std::shared_ptr<const Cached>> primitives_;  // Guarded by mu_.
};

MatMulCache& Cache() {
  static MatMulCache* const cache = new MatMulCache();
  return *cache;
}

}  // namespace

absl::Status MatMul(int64_t m, int64_t k, int64_t n, const float* x, int64_t ldx, const float* w,
                    int64_t ldw, float* y, int64_t ldy, int threads) {
  // oneDNN sizes its OpenMP team from the calling thread's max-threads
  // setting, at creation and at execution; restored on every path.
  threads = threads < 1 ? 1 : threads;
  struct RestoreThreads {
    int saved = omp_get_max_threads();
    ~RestoreThreads() { omp_set_num_threads(saved); }
  } restore;
  omp_set_num_threads(threads);
  try {
    MatMulCache& cache = Cache();
    const std::shared_ptr<const Cached> cached = cache.Get(Key{m, k, n, ldx, ldw, ldy, threads});
    const auto f32 = dnnl::memory::data_type::f32;
    const dnnl::engine& engine = cache.engine();
    dnnl::memory x_mem({{m, k}, f32, {ldx, 1}}, engine, const_cast<float*>(x));
    dnnl::memory w_mem({{k, n}, f32, {ldw, 1}}, engine, const_cast<float*>(w));
    dnnl::memory y_mem({{m, n}, f32, {ldy, 1}}, engine, y);
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, y_mem}};
    std::vector<uint8_t> scratch(cached->scratchpad_bytes);
    if (!scratch.empty()) {
      args.emplace(DNNL_ARG_SCRATCHPAD,
                   dnnl::memory({{static_cast<int64_t>(scratch.size())},
                                 dnnl::memory::data_type::u8, dnnl::memory::format_tag::a},
                                engine, scratch.data()));
    }
    dnnl::stream stream(engine);
    cached->primitive.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN matmul [", m, "x", k, "] @ [", k, "x", n,
                                            "] failed: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace attnserve::kernels
