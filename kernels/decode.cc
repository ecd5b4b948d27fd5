#include "kernels/decode.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/str_join.h"
#include "kernels/decode_attention.h"
#include "kernels/positional/common.h"
#include "kernels/positional/tables.h"
#include "kernels/status_macros.h"

namespace attnserve::kernels {
namespace {

// New rows per step up to which the decode kernel runs a step in place;
// longer prefill chunks go to the tiled engine.
constexpr int64_t kMaxInPlaceRows = 16;

bool IsAbsolute(MethodKind method) {
  return method == MethodKind::kSinusoidal || method == MethodKind::kLearned;
}

// Methods whose logit is scale * q.k plus at most ALiBi's bias once RoPE's
// rows are turned and the absolute methods' rows projected: the decode
// kernel reads their cache in place.
bool MethodRunsInPlace(MethodKind method) {
  switch (method) {
    case MethodKind::kNone:
    case MethodKind::kSinusoidal:
    case MethodKind::kLearned:
    case MethodKind::kRope:
    case MethodKind::kAlibi:
    case MethodKind::kDaTransformer:
    case MethodKind::kShaw:
    case MethodKind::kTransformerXL:
      return true;
  }
  return false;
}

absl::Status AtLeast(int64_t value, int64_t minimum, absl::string_view field) {
  if (value < minimum) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be >= ", minimum, ", got ", value));
  }
  return absl::OkStatus();
}

// w [d_model, heads * width]: the message names the tensor and the shape.
absl::Status CheckWeight(const TensorMap& tensors, absl::string_view name, int64_t d_model,
                         int64_t heads, int64_t width, absl::string_view text) {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": required by sinusoidal and learned decode, not set"));
  }
  const Tensor& w = it->second;
  const std::string expected = absl::StrCat("[d_model=", d_model, ",", text, "=", heads * width,
                                            "] (num_heads, num_kv_heads, head_dim, value_dim)");
  ATTN_RETURN_IF_ERROR(ExpectRank(w, name, 2, expected));
  ATTN_RETURN_IF_ERROR(ExpectDim(w, name, 0, d_model, expected));
  return ExpectDim(w, name, 1, heads * width, expected);
}

Tensor Zeros(std::vector<int64_t> shape) { return Tensor(std::move(shape)); }

// y [B, n, d_model] @ w [d_model, heads * width] into dst, head h of row i of
// batch element b at dst + ((b * heads + h) * ld + row0 + i) * width: the
// [B, heads, *, width] layout of a query tensor (ld = n, row0 = 0) or of the
// cache (ld = max_len, row0 = t).
void Project(const Tensor& y, const Tensor& w, int64_t heads, int64_t width, float* dst, int64_t ld,
             int64_t row0) {
  const int64_t batch = y.dim(0), n = y.dim(1), d_model = y.dim(2), cols = heads * width;
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      std::fill(row.begin(), row.end(), 0.0f);
      const float* x = y.data() + (b * n + i) * d_model;
      for (int64_t c = 0; c < d_model; ++c) {
        const float xc = x[c];
        const float* wc = w.data() + c * cols;
        for (int64_t e = 0; e < cols; ++e) row[e] += xc * wc[e];
      }
      for (int64_t h = 0; h < heads; ++h) {
        std::copy_n(row.data() + h * width, width, dst + ((b * heads + h) * ld + row0 + i) * width);
      }
    }
  }
}

// The step's tensors must be exactly `names`.
absl::Status CheckStepNames(const TensorMap& inputs, std::initializer_list<absl::string_view> names,
                            MethodKind method) {
  for (const auto& [name, tensor] : inputs) {
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": not an input of a ",
                                                     MethodName(method), " decode step (it takes ",
                                                     absl::StrJoin(names, ", "), ")"));
    }
  }
  for (absl::string_view name : names) {
    if (inputs.find(name) == inputs.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": required by a ", MethodName(method), " decode step, not set"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckStepShape(const Tensor& t, absl::string_view name,
                            std::initializer_list<std::pair<absl::string_view, int64_t>> dims) {
  // Every dimension but the token count n (-1 in dims) is the session's.
  std::vector<std::string> parts;
  for (const auto& [label, value] : dims) {
    parts.push_back(value < 0 ? std::string(label) : absl::StrCat(label, "=", value));
  }
  const std::string text = absl::StrCat("[", absl::StrJoin(parts, ","), "] (the session's)");
  ATTN_RETURN_IF_ERROR(ExpectRank(t, name, static_cast<int>(dims.size()), text));
  int axis = 0;
  for (const auto& [label, value] : dims) {
    if (value >= 0) ATTN_RETURN_IF_ERROR(ExpectDim(t, name, axis, value, text));
    ++axis;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int64_t> ValidateDecodeOpen(DecodeOptions& o) {
  ATTN_RETURN_IF_ERROR(AtLeast(o.batch, 1, "batch"));
  ATTN_RETURN_IF_ERROR(AtLeast(o.num_heads, 1, "num_heads"));
  ATTN_RETURN_IF_ERROR(AtLeast(o.head_dim, 1, "head_dim"));
  ATTN_RETURN_IF_ERROR(AtLeast(o.value_dim, 0, "value_dim"));
  ATTN_RETURN_IF_ERROR(AtLeast(o.max_len, 1, "max_len"));
  if (o.num_kv_heads < 0 || (o.num_kv_heads > 0 && o.num_heads % o.num_kv_heads != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_heads: must be 0 (= num_heads) or divide num_heads=", o.num_heads,
                     ", got ", o.num_kv_heads));
  }
  if (o.num_kv_heads == 0) o.num_kv_heads = o.num_heads;
  if (o.value_dim == 0) o.value_dim = o.head_dim;
  if (o.window.has_value() && *o.window < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("window: must be >= 1 (unset: no window), got ", *o.window));
  }
  if (o.softcap.has_value() && !(std::isfinite(*o.softcap) && *o.softcap > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("softcap: must be finite and > 0 (unset: none), got ", *o.softcap));
  }
  if (o.method == MethodKind::kRope && o.params.rope_scaling == RopeScaling::kDynamicNtk) {
    return absl::InvalidArgumentError(
        "scaling: ROPE_SCALING_DYNAMIC_NTK cannot be used in a decode session (its base depends "
        "on the length of the whole call, which a growing cache does not have)");
  }
  // The size first: a caller's huge max_len is an answer, not an overflow.
  int64_t bytes = 4;
  for (int64_t factor : {o.max_len, o.batch, o.num_kv_heads, o.head_dim + o.value_dim}) {
    if (__builtin_mul_overflow(bytes, factor, &bytes)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "max_len: a cache of max_len=", o.max_len, " x B=", o.batch, " x H_kv=", o.num_kv_heads,
          " x (D+Dv)=", o.head_dim + o.value_dim, " floats overflows int64"));
    }
  }

  // The method's own rules, by a one-token Attend with the session's
  // parameters and tensors (so they get Attend's answers), of batch 1: no
  // rule depends on B. Its tensors are bounded first, so that a hostile
  // open cannot make this check allocate what no step could ever send.
  const auto step_tensor = [&o](absl::string_view field, std::initializer_list<int64_t> dims,
                                absl::string_view what) -> absl::Status {
    int64_t count = 1;
    for (int64_t dim : dims) {
      if (__builtin_mul_overflow(count, dim, &count) || count > o.max_step_elements) {
        return absl::ResourceExhaustedError(absl::StrCat(
            field, ": a one-token step's ", what, " would hold more than --max_elements=",
            o.max_step_elements, " floats"));
      }
    }
    return absl::OkStatus();
  };
  ATTN_RETURN_IF_ERROR(step_tensor("batch", {o.batch, o.num_heads, o.head_dim}, "q (B x H x D)"));
  ATTN_RETURN_IF_ERROR(
      step_tensor("batch", {o.batch, o.num_heads, o.value_dim}, "out (B x H x Dv)"));
  AttendArgs args;
  args.method = o.method;
  args.params = o.params;
  args.inputs = o.tensors;
  args.causal = true;
  args.query_offset = 0;
  args.scale = o.scale;
  args.window = o.window;
  args.softcap = o.softcap;
  const int64_t b = 1, h = o.num_heads, hkv = o.num_kv_heads, d = o.head_dim,
                dv = o.value_dim;
  if (IsAbsolute(o.method)) {
    const auto w_q = o.tensors.find("w_q");
    if (w_q == o.tensors.end() || w_q->second.rank() != 2) {
      ATTN_RETURN_IF_ERROR(CheckWeight(o.tensors, "w_q", 0, h, d, "H*D"));
    }
    const int64_t d_model = w_q->second.dim(0);
    ATTN_RETURN_IF_ERROR(CheckWeight(o.tensors, "w_q", d_model, h, d, "H*D"));
    ATTN_RETURN_IF_ERROR(step_tensor("batch", {o.batch, d_model}, "x (B x d_model)"));
    ATTN_RETURN_IF_ERROR(
        step_tensor("num_heads", {d_model, h, std::max(d, dv)}, "projections (d_model x H x D)"));
    ATTN_RETURN_IF_ERROR(CheckWeight(o.tensors, "w_k", d_model, hkv, d, "H_kv*D"));
    ATTN_RETURN_IF_ERROR(CheckWeight(o.tensors, "w_v", d_model, hkv, dv, "H_kv*Dv"));
    if (o.method == MethodKind::kLearned) {
      auto table = o.tensors.find("table");
      if (table != o.tensors.end() && table->second.rank() == 2 &&
          table->second.dim(0) < o.max_len) {
        return absl::OutOfRangeError(
            absl::StrCat("max_len: the learned table has ", table->second.dim(0),
                         " rows, fewer than max_len=", o.max_len, " (a step could run past it)"));
      }
    }
    // The weights are checked above; the one-token Attend checks the
    // method's own tensors (the learned table) with H key/value heads
    // (every per-head parameter is per query head).
    args.num_heads = h;
    args.inputs["w_k"] = Zeros({d_model, h * d});
    args.inputs["w_v"] = Zeros({d_model, h * dv});
    args.inputs["x_q"] = Zeros({b, 1, d_model});
    args.inputs["x_kv"] = Zeros({b, 1, d_model});
  } else {
    args.inputs["q"] = Zeros({b, h, 1, d});
    args.inputs["k"] = Zeros({b, h, 1, d});
    args.inputs["v"] = Zeros({b, h, 1, dv});
  }
  ATTN_RETURN_IF_ERROR(Attend(std::move(args), ComputeOptions()).status());
  if (o.method == MethodKind::kTransformerXL) {
    // Its key features, [max_len, d_rel] floats, are reserved with the cache.
    int64_t features = 4;
    if (__builtin_mul_overflow(features, o.max_len, &features) ||
        __builtin_mul_overflow(features, o.params.d_rel, &features) ||
        __builtin_add_overflow(bytes, features, &bytes)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "max_len: max_len=", o.max_len, " x d_rel=", o.params.d_rel, " overflows int64"));
    }
  }
  return bytes;
}

DecodeSession::DecodeSession(DecodeOptions options, int64_t cache_bytes)
    : options_(std::move(options)),
      cache_bytes_(cache_bytes),
      kv_heads_(options_.num_kv_heads),
      d_(options_.head_dim),
      dv_(options_.value_dim) {}

absl::StatusOr<std::unique_ptr<DecodeSession>> DecodeSession::Open(DecodeOptions options) {
  const int64_t rows = options.batch * options.num_kv_heads * options.max_len;
  int64_t bytes = rows * (options.head_dim + options.value_dim) * 4;
  if (options.method == MethodKind::kTransformerXL) {
    bytes += options.max_len * options.params.d_rel * 4;
  }
  std::unique_ptr<DecodeSession> session(new DecodeSession(std::move(options), bytes));
  // Not zero-filled: a row is read only after a step wrote it.
  session->k_.reset(new (std::nothrow) float[static_cast<size_t>(rows * session->d_)]);
  session->v_.reset(new (std::nothrow) float[static_cast<size_t>(rows * session->dv_)]);
  if (session->k_ == nullptr || session->v_ == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_len: the cache of ", bytes, " bytes could not be allocated"));
  }
  const DecodeOptions& o = session->options_;
  if (o.method == MethodKind::kTransformerXL) {
    // c_j = [cos(j f_m) | sin(j f_m)] for every position the cache can hold.
    const int64_t d_rel = o.params.d_rel, half = d_rel / 2;
    const double base = o.params.base.value_or(10000.0);
    session->txl_frequencies_.resize(static_cast<size_t>(half));
    for (int64_t m = 0; m < half; ++m) {
      session->txl_frequencies_[m] =
          std::pow(base, -2.0 * static_cast<double>(m) / static_cast<double>(d_rel));
    }
    session->txl_keys_.resize(static_cast<size_t>(o.max_len * d_rel));
    for (int64_t j = 0; j < o.max_len; ++j) {
      float* c = session->txl_keys_.data() + j * d_rel;
      for (int64_t m = 0; m < half; ++m) {
        const double angle = static_cast<double>(j) * session->txl_frequencies_[m];
        c[m] = static_cast<float>(std::cos(angle));
        c[half + m] = static_cast<float>(std::sin(angle));
      }
    }
  }
  if (o.method == MethodKind::kAlibi) {
    auto slopes = o.tensors.find("slopes");
    if (slopes != o.tensors.end()) {
      session->slopes_.assign(slopes->second.values().begin(), slopes->second.values().end());
    } else {
      session->slopes_ = AlibiSlopes(o.num_heads);
    }
  }
  return session;
}

absl::Status DecodeSession::Truncate(int64_t length) {
  if (length < 0 || length > length_) {
    return absl::InvalidArgumentError(absl::StrCat("truncate.length: must be in 0 .. ", length_,
                                                   " (the cached length), got ", length));
  }
  length_ = length;
  return absl::OkStatus();
}

void DecodeSession::Append(const float* rows, int64_t n, int64_t width, float* cache) const {
  const int64_t heads = options_.batch * kv_heads_;
  for (int64_t bh = 0; bh < heads; ++bh) {
    std::copy_n(rows + bh * n * width, n * width,
                cache + (bh * options_.max_len + length_) * width);
  }
}

absl::StatusOr<AttendResult> DecodeSession::Step(TensorMap inputs, bool return_probs,
                                                 const ComputeOptions& options) {
  SessionStep step;
  step.session = this;
  step.inputs = std::move(inputs);
  step.return_probs = return_probs;
  StepBatch(absl::MakeSpan(&step, 1), options);
  return std::move(step.result);
}

void DecodeSession::StepBatch(absl::Span<SessionStep> steps, const ComputeOptions& options) {
  std::vector<std::unique_ptr<InPlace>> in_place(steps.size());
  std::vector<const DecodeAttention*> problems;
  std::vector<size_t> of_problem;
  for (size_t i = 0; i < steps.size(); ++i) {
    SessionStep& step = steps[i];
    DecodeSession& session = *step.session;
    // The encode and projection loops of a step stop when its own caller does.
    ComputeOptions own = options;
    if (step.cancelled != nullptr) own.cancelled = step.cancelled;
    Tensor q;
    int64_t n = 0;
    const absl::Status begun = session.Begin(step.inputs, step.return_probs, own, &q, &n);
    step.inputs.clear();
    if (!begun.ok()) {
      step.result = begun;
      continue;
    }
    // A long prefill chunk is compute-bound (n rows against every key): the
    // tiled engine does it far faster than the decode kernel, and the copy of
    // the cached rows it needs costs little next to its n * (t + n) products.
    if (!session.RunsInPlace(n)) {
      step.result = session.StepByAttend(std::move(q), n, step.return_probs, own);
      continue;
    }
    absl::StatusOr<std::unique_ptr<InPlace>> prepared =
        session.PrepareInPlace(std::move(q), n, step.return_probs);
    if (!prepared.ok()) {
      step.result = prepared.status();
      continue;
    }
    in_place[i] = *std::move(prepared);
    in_place[i]->problem.cancelled = step.cancelled;
    problems.push_back(&in_place[i]->problem);
    of_problem.push_back(i);
  }
  if (problems.empty()) return;
  const std::vector<absl::Status> statuses = RunDecodeAttentionBatch(problems, options);
  for (size_t k = 0; k < problems.size(); ++k) {
    SessionStep& step = steps[of_problem[k]];
    step.result = step.session->EndInPlace(*in_place[of_problem[k]], statuses[k]);
  }
}

absl::Status DecodeSession::Begin(TensorMap& inputs, bool return_probs,
                                  const ComputeOptions& options, Tensor* q_out, int64_t* n_out) {
  const DecodeOptions& o = options_;
  const int64_t b = o.batch, h = o.num_heads;
  if (!options.inputs_checked) {
    for (const auto& [name, tensor] : inputs) ATTN_RETURN_IF_ERROR(CheckFiniteValues(tensor, name));
  }
  int64_t& n = *n_out;
  Tensor& q = *q_out;
  if (IsAbsolute(o.method)) {
    ATTN_RETURN_IF_ERROR(CheckStepNames(inputs, {"x"}, o.method));
    const int64_t d_model = o.tensors.at("w_q").dim(0);
    Tensor& x = inputs.at("x");
    ATTN_RETURN_IF_ERROR(CheckStepShape(x, "x", {{"B", b}, {"n", -1}, {"d_model", d_model}}));
    n = x.dim(1);
  } else {
    ATTN_RETURN_IF_ERROR(CheckStepNames(inputs, {"q", "k", "v"}, o.method));
    ATTN_RETURN_IF_ERROR(
        CheckStepShape(inputs.at("q"), "q", {{"B", b}, {"H", h}, {"n", -1}, {"D", d_}}));
    n = inputs.at("q").dim(2);
    ATTN_RETURN_IF_ERROR(
        CheckStepShape(inputs.at("k"), "k", {{"B", b}, {"H_kv", kv_heads_}, {"n", n}, {"D", d_}}));
    ATTN_RETURN_IF_ERROR(CheckStepShape(inputs.at("v"), "v",
                                        {{"B", b}, {"H_kv", kv_heads_}, {"n", n}, {"Dv", dv_}}));
  }
  if (n > o.max_len - length_) {
    return absl::OutOfRangeError(absl::StrCat("max_len: a step of ", n, " tokens after ", length_,
                                              " cached would exceed max_len=", o.max_len));
  }
  ATTN_RETURN_IF_ERROR(CheckAttendResult(b, h, n, length_ + n, dv_, return_probs, options));

  // The new rows into the cache (turned or projected as the method needs).
  if (IsAbsolute(o.method)) {
    EncodeArgs encode;
    encode.method = o.method;
    encode.params = o.params;
    encode.inputs["x"] = std::move(inputs.at("x"));
    if (o.method == MethodKind::kLearned) encode.inputs["table"] = o.tensors.at("table");
    encode.offset = length_;
    ATTN_ASSIGN_OR_RETURN(EncodeResult encoded, Encode(std::move(encode), options));
    const Tensor& y = encoded.outputs.at("y");
    q = Tensor({b, h, n, d_});
    Project(y, o.tensors.at("w_q"), h, d_, q.data(), n, 0);
    Project(y, o.tensors.at("w_k"), kv_heads_, d_, k_.get(), o.max_len, length_);
    Project(y, o.tensors.at("w_v"), kv_heads_, dv_, v_.get(), o.max_len, length_);
  } else {
    q = std::move(inputs.at("q"));
    Tensor k = std::move(inputs.at("k"));
    if (o.method == MethodKind::kRope) {
      // Queries and keys turned at their positions t .. t + n - 1, once.
      for (Tensor* rows : {&q, &k}) {
        EncodeArgs encode;
        encode.method = MethodKind::kRope;
        encode.params = o.params;
        encode.inputs["x"] = std::move(*rows);
        encode.offset = length_;
        ATTN_ASSIGN_OR_RETURN(EncodeResult encoded, Encode(std::move(encode), options));
        *rows = std::move(encoded.outputs.at("y"));
      }
    }
    Append(k.data(), n, d_, k_.get());
    Append(inputs.at("v").data(), n, dv_, v_.get());
  }
  return absl::OkStatus();
}

bool DecodeSession::RunsInPlace(int64_t n) const {
  return MethodRunsInPlace(options_.method) && n <= kMaxInPlaceRows;
}

absl::StatusOr<std::unique_ptr<DecodeSession::InPlace>> DecodeSession::PrepareInPlace(
    Tensor q_in, int64_t n, bool return_probs) {
  const DecodeOptions& o = options_;
  const int64_t length = length_ + n;
  auto step = std::make_unique<InPlace>();
  step->q = std::move(q_in);
  Tensor& q = step->q;
  AttendResult& result = step->result;
  result.out = Tensor({o.batch, o.num_heads, n, dv_});
  if (return_probs) result.probs = Tensor({o.batch, o.num_heads, n, length});
  DecodeAttention& p = step->problem;
  p.q = q.data();
  p.k = k_.get();
  p.v = v_.get();
  p.batch = o.batch;
  p.heads = o.num_heads;
  p.kv_heads = kv_heads_;
  p.n = n;
  p.d = d_;
  p.dv = dv_;
  p.max_len = o.max_len;
  p.length = length;
  ATTN_ASSIGN_OR_RETURN(const double scale, ResolveScale(o.scale, d_));
  p.scale = static_cast<float>(scale);
  p.slopes = slopes_.empty() ? nullptr : slopes_.data();
  // DA-Transformer's Rhat_h at every distance a new row meets: 0 .. length-1.
  std::vector<float>& rhat = step->rhat;
  if (o.method == MethodKind::kDaTransformer) {
    const Tensor& w = o.tensors.at("dist_w");
    const Tensor& v = o.tensors.at("dist_v");
    std::vector<double> coefficients(static_cast<size_t>(length));
    rhat.resize(static_cast<size_t>(o.num_heads * length));
    for (int64_t h = 0; h < o.num_heads; ++h) {
      DaCoefficients(w.data()[h], v.data()[h], 0, length, coefficients.data());
      std::copy(coefficients.begin(), coefficients.end(), rhat.begin() + h * length);
    }
    p.rhat = rhat.data();
  }
  std::vector<float>& features = step->features;
  if (o.method == MethodKind::kTransformerXL) {
    // (q + u_h) . k_j + (q + v_h) . rel_h(p - j); with b = (q + v_h) @ w_r[h]^T
    // (d_rel) and f_m the frequencies, angle addition gives
    // b . R(p - j) = sum_m cos(j f_m) [b_s sin(p f_m) + b_c cos(p f_m)]
    //             + sin(j f_m) [b_c sin(p f_m) - b_s cos(p f_m)],
    // a query feature a_i times the cached key feature c_j = [cos | sin](j f).
    const Tensor& u = o.tensors.at("pos_bias_u");
    const Tensor& v = o.tensors.at("pos_bias_v");
    const Tensor& w_r = o.tensors.at("w_r");
    const int64_t d_rel = o.params.d_rel, half = d_rel / 2;
    features.resize(static_cast<size_t>(o.batch * o.num_heads * n * d_rel));
    std::vector<double> b(static_cast<size_t>(d_rel));
    for (int64_t bh = 0; bh < o.batch * o.num_heads; ++bh) {
      const int64_t h = bh % o.num_heads;
      for (int64_t i = 0; i < n; ++i) {
        float* qi = q.data() + (bh * n + i) * d_;
        for (int64_t r = 0; r < d_rel; ++r) {
          double sum = 0;
          for (int64_t e = 0; e < d_; ++e) {
            sum += (static_cast<double>(qi[e]) + v.data()[h * d_ + e]) *
                   w_r.data()[(h * d_rel + r) * d_ + e];
          }
          b[r] = sum;
        }
        const double pos = static_cast<double>(length_ + i);
        float* a = features.data() + (bh * n + i) * d_rel;
        for (int64_t m = 0; m < half; ++m) {
          const double angle = pos * txl_frequencies_[m];
          const double s = std::sin(angle), c = std::cos(angle);
          a[m] = static_cast<float>(b[m] * s + b[half + m] * c);
          a[half + m] = static_cast<float>(b[half + m] * s - b[m] * c);
        }
        for (int64_t e = 0; e < d_; ++e) qi[e] += u.data()[h * d_ + e];
      }
    }
    p.features = features.data();
    p.key_features = txl_keys_.data();
    p.width = d_rel;
  }
  if (o.method == MethodKind::kShaw) {
    p.rel_k = o.tensors.at("rel_k").data();
    p.rel_v = o.tensors.at("rel_v").data();
    p.max_relative = o.params.max_relative_position.value_or(0);
  }
  p.window = o.window;
  p.softcap = o.softcap;
  p.out = result.out.data();
  p.probs = return_probs ? result.probs->data() : nullptr;
  step->before = length_;
  length_ = length;
  return step;
}

absl::StatusOr<AttendResult> DecodeSession::EndInPlace(InPlace& step, const absl::Status& kernel) {
  absl::Status status = kernel;
  const Tensor& out = step.result.out;
  if (status.ok() && !AllFinite(out.data(), out.size())) {
    status = absl::InvalidArgumentError(
        "q, k, scale: the scores overflow float32 (an output is not finite); scale the inputs "
        "down");
  }
  // A failed step caches nothing: the length goes back (the fuzzer found a
  // step whose scores overflowed leave its tokens cached).
  if (!status.ok()) {
    length_ = step.before;
    return status;
  }
  return std::move(step.result);
}

absl::StatusOr<AttendResult> DecodeSession::StepByAttend(Tensor q, int64_t n, bool return_probs,
                                                         const ComputeOptions& options) {
  const DecodeOptions& o = options_;
  const int64_t length = length_ + n;
  AttendArgs args;
  if (o.method == MethodKind::kRope || IsAbsolute(o.method)) {
    // The cache holds turned keys or projected rows, and q is turned or
    // projected already: plain attention.
    args.method = MethodKind::kNone;
  } else {
    args.method = o.method;
    args.params = o.params;
    args.inputs = o.tensors;
  }
  args.inputs["q"] = std::move(q);
  // The cached rows, one contiguous [B, H_kv, t + n, D] copy (the engine's
  // layout); GQA stays GQA (the engine reads a shared head once per group).
  Tensor k({o.batch, kv_heads_, length, d_});
  Tensor v({o.batch, kv_heads_, length, dv_});
  for (int64_t bh = 0; bh < o.batch * kv_heads_; ++bh) {
    std::copy_n(k_.get() + bh * o.max_len * d_, length * d_, k.data() + bh * length * d_);
    std::copy_n(v_.get() + bh * o.max_len * dv_, length * dv_, v.data() + bh * length * dv_);
  }
  args.inputs["k"] = std::move(k);
  args.inputs["v"] = std::move(v);
  args.causal = true;
  args.query_offset = length_;
  args.scale = o.scale;
  args.window = o.window;
  args.softcap = o.softcap;
  args.return_probs = return_probs;
  const int64_t before = length_;
  length_ = length;
  ComputeOptions checked = options;
  checked.inputs_checked = true;
  absl::StatusOr<AttendResult> result = Attend(std::move(args), checked);
  if (!result.ok()) length_ = before;  // A failed step caches nothing.
  return result;
}

}  // namespace attnserve::kernels
