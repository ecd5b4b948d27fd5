// Decode sessions (decode-sessions.md) end to end against a real attnd: for
// every method, a session stepped token by token and in mixed
// prefill/decode chunks gives the outputs (and probs) of the equivalent
// causal Attend calls; truncate-then-step equals a fresh session; every
// error and limit of the spec, with the cache metrics checked after each
// way a stream can end (closed, error, cancelled by a vanished client, idle,
// drain). Cross-session batching (--decode_batching): steps of sessions of
// every method and cached length, queued together, run as batches and give
// bit for bit the outputs of the same steps run alone by an attnd without
// the flag; a bad step, an overflowing one and a vanished client among them
// fail alone.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "server/convert.h"
#include "tests/testing/metrics_scrape.h"
#include "tests/testing/reference.h"
#include "tests/testing/sanitizers.h"
#include "tests/testing/server_process.h"

namespace attnserve::testing {
namespace {

using client::MakeTensor;
using client::TensorValues;
using ::testing::HasSubstr;
using Stream = grpc::ClientReaderWriter<v1::DecodeRequest, v1::DecodeResponse>;

constexpr double kRtol = 1e-4, kAtol = 1e-5;

// A stream's whole life, far above what any session here needs (a few
// seconds at most): a wedged attnd fails the test instead of hanging it.
const absl::Duration kStreamDeadline = absl::Seconds(30) * kSanitizerTimeFactor;

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> values(static_cast<size_t>(n));
  for (float& x : values) x = dist(rng);
  return values;
}

// One session's shape and method.
struct Shape {
  kernels::MethodKind method = kernels::MethodKind::kNone;
  int64_t batch = 2, heads = 4, kv_heads = 4, d = 8, dv = 6, d_model = 12, max_len = 16;
  std::optional<int64_t> window;
  std::optional<double> softcap;
  bool absolute() const {
    return method == kernels::MethodKind::kSinusoidal || method == kernels::MethodKind::kLearned;
  }
};

// The method message, with parameter tensors from a fixed seed.
v1::PositionalMethod MethodMessage(const Shape& s) {
  v1::PositionalMethod m;
  switch (s.method) {
    case kernels::MethodKind::kNone:
      m.mutable_none();
      break;
    case kernels::MethodKind::kSinusoidal:
      m.mutable_sinusoidal();
      break;
    case kernels::MethodKind::kLearned:
      *m.mutable_learned()->mutable_table() =
          MakeTensor({s.max_len, s.d_model}, Random(s.max_len * s.d_model, 11, 0.5f));
      break;
    case kernels::MethodKind::kRope:
      m.mutable_rope()->set_layout(v1::ROPE_LAYOUT_HALF);
      break;
    case kernels::MethodKind::kTransformerXL: {
      v1::TransformerXL* t = m.mutable_transformer_xl();
      t->set_d_rel(4);
      *t->mutable_pos_bias_u() = MakeTensor({s.heads, s.d}, Random(s.heads * s.d, 12, 0.3f));
      *t->mutable_pos_bias_v() = MakeTensor({s.heads, s.d}, Random(s.heads * s.d, 13, 0.3f));
      *t->mutable_w_r() = MakeTensor({s.heads, 4, s.d}, Random(s.heads * 4 * s.d, 14, 0.3f));
      break;
    }
    case kernels::MethodKind::kShaw: {
      v1::Shaw* t = m.mutable_shaw();
      t->set_max_relative_position(3);
      *t->mutable_rel_k() = MakeTensor({7, s.d}, Random(7 * s.d, 15, 0.3f));
      *t->mutable_rel_v() = MakeTensor({7, s.dv}, Random(7 * s.dv, 16, 0.3f));
      break;
    }
    case kernels::MethodKind::kAlibi:
      m.mutable_alibi();
      break;
    case kernels::MethodKind::kDaTransformer: {
      v1::DaTransformer* t = m.mutable_da_transformer();
      *t->mutable_dist_w() = MakeTensor({s.heads}, Random(s.heads, 17, 0.5f));
      *t->mutable_dist_v() = MakeTensor({s.heads}, Random(s.heads, 18, 0.5f));
      break;
    }
  }
  return m;
}

v1::Tensor Weight(const Shape& s, int64_t heads, int64_t width, uint32_t seed) {
  return MakeTensor({s.d_model, heads * width},
                    Random(s.d_model * heads * width, seed, 1.0f / std::sqrt(12.0f)));
}

v1::DecodeRequest OpenRequest(const Shape& s) {
  v1::DecodeRequest request;
  v1::DecodeOpen* open = request.mutable_open();
  *open->mutable_method() = MethodMessage(s);
  open->set_batch(static_cast<int32_t>(s.batch));
  open->set_num_heads(static_cast<int32_t>(s.heads));
  if (s.kv_heads != s.heads) open->set_num_kv_heads(static_cast<int32_t>(s.kv_heads));
  open->set_head_dim(static_cast<int32_t>(s.d));
  open->set_value_dim(static_cast<int32_t>(s.dv));
  open->set_max_len(s.max_len);
  if (s.window) open->set_window(*s.window);
  if (s.softcap) open->set_softcap(*s.softcap);
  if (s.absolute()) {
    *open->mutable_w_q() = Weight(s, s.heads, s.d, 21);
    *open->mutable_w_k() = Weight(s, s.kv_heads, s.d, 22);
    *open->mutable_w_v() = Weight(s, s.kv_heads, s.dv, 23);
  }
  open->set_raw_output(true);
  return request;
}

// A whole sequence of `len` tokens: q/k/v [B,H(_kv),len,D] or x [B,len,d_model].
struct Sequence {
  int64_t len = 0;
  std::vector<float> q, k, v, x;
};

Sequence MakeSequence(const Shape& s, int64_t len, uint32_t seed) {
  Sequence seq;
  seq.len = len;
  if (s.absolute()) {
    seq.x = Random(s.batch * len * s.d_model, seed);
  } else {
    seq.q = Random(s.batch * s.heads * len * s.d, seed);
    seq.k = Random(s.batch * s.kv_heads * len * s.d, seed + 1);
    seq.v = Random(s.batch * s.kv_heads * len * s.dv, seed + 2);
  }
  return seq;
}

// Rows [from, to) along the sequence axis `axis` of a row-major tensor.
std::vector<float> Slice(const std::vector<float>& values, const std::vector<int64_t>& shape,
                         int axis, int64_t from, int64_t to) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; ++i) outer *= shape[i];
  for (size_t i = axis + 1; i < shape.size(); ++i) inner *= shape[i];
  const int64_t len = shape[axis];
  std::vector<float> out;
  for (int64_t o = 0; o < outer; ++o) {
    out.insert(out.end(), values.begin() + (o * len + from) * inner,
               values.begin() + (o * len + to) * inner);
  }
  return out;
}

Sequence Concat(const Shape& s, const Sequence& a, const Sequence& b) {
  Sequence out;
  out.len = a.len + b.len;
  const auto join = [](const std::vector<float>& x, const std::vector<float>& y, int64_t outer,
                       int64_t xrows, int64_t yrows, int64_t width) {
    std::vector<float> r;
    for (int64_t o = 0; o < outer; ++o) {
      r.insert(r.end(), x.begin() + o * xrows * width, x.begin() + (o + 1) * xrows * width);
      r.insert(r.end(), y.begin() + o * yrows * width, y.begin() + (o + 1) * yrows * width);
    }
    return r;
  };
  if (s.absolute()) {
    out.x = join(a.x, b.x, s.batch, a.len, b.len, s.d_model);
  } else {
    out.q = join(a.q, b.q, s.batch * s.heads, a.len, b.len, s.d);
    out.k = join(a.k, b.k, s.batch * s.kv_heads, a.len, b.len, s.d);
    out.v = join(a.v, b.v, s.batch * s.kv_heads, a.len, b.len, s.dv);
  }
  return out;
}

v1::DecodeRequest StepRequest(const Shape& s, const Sequence& seq, int64_t from, int64_t to,
                              bool probs) {
  v1::DecodeRequest request;
  v1::DecodeStep* step = request.mutable_step();
  const int64_t n = to - from;
  if (s.absolute()) {
    *step->mutable_x() = MakeTensor({s.batch, n, s.d_model},
                                    Slice(seq.x, {s.batch, seq.len, s.d_model}, 1, from, to));
  } else {
    *step->mutable_q() = MakeTensor({s.batch, s.heads, n, s.d},
                                    Slice(seq.q, {s.batch, s.heads, seq.len, s.d}, 2, from, to));
    *step->mutable_k() = MakeTensor({s.batch, s.kv_heads, n, s.d},
                                    Slice(seq.k, {s.batch, s.kv_heads, seq.len, s.d}, 2, from, to));
    *step->mutable_v() =
        MakeTensor({s.batch, s.kv_heads, n, s.dv},
                   Slice(seq.v, {s.batch, s.kv_heads, seq.len, s.dv}, 2, from, to));
  }
  step->set_return_probs(probs);
  return request;
}

// The causal Attend over the whole sequence (decode-sessions.md 2).
v1::AttendRequest AttendOf(const Shape& s, const Sequence& seq) {
  v1::AttendRequest request;
  const v1::DecodeOpen open = OpenRequest(s).open();
  *request.mutable_method() = open.method();
  request.set_causal(true);
  request.set_return_probs(true);
  request.set_raw_output(true);
  if (s.window) request.set_window(*s.window);
  if (s.softcap) request.set_softcap(*s.softcap);
  if (s.absolute()) {
    *request.mutable_x_q() = MakeTensor({s.batch, seq.len, s.d_model}, seq.x);
    *request.mutable_x_kv() = MakeTensor({s.batch, seq.len, s.d_model}, seq.x);
    *request.mutable_w_q() = open.w_q();
    *request.mutable_w_k() = open.w_k();
    *request.mutable_w_v() = open.w_v();
    request.set_num_heads(static_cast<int32_t>(s.heads));
    if (s.kv_heads != s.heads) request.set_num_kv_heads(static_cast<int32_t>(s.kv_heads));
  } else {
    *request.mutable_q() = MakeTensor({s.batch, s.heads, seq.len, s.d}, seq.q);
    *request.mutable_k() = MakeTensor({s.batch, s.kv_heads, seq.len, s.d}, seq.k);
    *request.mutable_v() = MakeTensor({s.batch, s.kv_heads, seq.len, s.dv}, seq.v);
  }
  return request;
}

// Empty when got matches want within the golden tolerance.
std::string Compare(const std::vector<float>& got, const std::vector<float>& want,
                    const std::string& what) {
  if (got.size() != want.size()) {
    return absl::StrCat(what, ": ", got.size(), " values, expected ", want.size());
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= kAtol + kRtol * std::fabs(want[i]))) {
      return absl::StrCat(what, "[", i, "] = ", got[i], ", expected ", want[i]);
    }
  }
  return "";
}

// A Decode stream: one request, one response.
class Session {
 public:
  explicit Session(v1::AttentionService::Stub* stub, const std::string& token = "") {
    if (!token.empty()) context_.AddMetadata("authorization", "Bearer " + token);
    context_.set_deadline(absl::ToChronoTime(absl::Now() + kStreamDeadline));
    stream_ = stub->Decode(&context_);
  }
  // The response, or nullopt when the stream ended instead (see Finish).
  std::optional<v1::DecodeResponse> Send(const v1::DecodeRequest& request) {
    if (!stream_->Write(request)) return std::nullopt;
    v1::DecodeResponse response;
    if (!stream_->Read(&response)) return std::nullopt;
    return response;
  }
  grpc::Status Close() {
    stream_->WritesDone();
    v1::DecodeResponse extra;
    EXPECT_FALSE(stream_->Read(&extra)) << "a response nobody asked for";
    return stream_->Finish();
  }
  // The two halves of Send, for steps of several streams in flight at once.
  bool Write(const v1::DecodeRequest& request) { return stream_->Write(request); }
  std::optional<v1::DecodeResponse> Receive() {
    v1::DecodeResponse response;
    if (!stream_->Read(&response)) return std::nullopt;
    return response;
  }
  // Reads without writing: false once the stream has ended.
  bool Read() {
    v1::DecodeResponse response;
    return stream_->Read(&response);
  }
  // After a Send or Read that failed.
  grpc::Status Finish() { return stream_->Finish(); }
  grpc::ClientContext& context() { return context_; }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<Stream> stream_;
};

std::unique_ptr<v1::AttentionService::Stub> StubFor(const ServerProcess& server) {
  return v1::AttentionService::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
}

double Metric(const ServerProcess& server, const std::string& series) {
  absl::StatusOr<std::string> text = HttpGet(server.metrics_port());
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? MetricValue(*text, series).value_or(-1) : -1;
}

// Polls (at most 20 s) until `series` reads `value`: a stream's end reaches
// the server a moment after the client sees it. False at once if attnd has
// died.
bool MetricBecomes(const ServerProcess& server, const std::string& series, double value) {
  for (int i = 0; i < 400; ++i) {
    if (Metric(server, series) == value) return true;
    const absl::Status alive = server.CheckAlive();
    if (!alive.ok()) {
      ADD_FAILURE() << alive;
      return false;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

class DecodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server =
        ServerProcess::Start({"--session_memory_bytes=1000000", "--max_sessions=6", "--threads=2"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    // The suite shares one attnd: once it has died, every later test fails
    // here at once.
    ASSERT_NE(server_, nullptr);
    const absl::Status alive = server_->CheckAlive();
    ASSERT_TRUE(alive.ok()) << alive;
    stub_ = StubFor(*server_);
  }
  void TearDown() override {
    if (server_ == nullptr) return;
    // Every stream of the test has ended: nothing stays reserved.
    EXPECT_TRUE(MetricBecomes(*server_, "attnserve_session_cache_bytes", 0));
    EXPECT_TRUE(MetricBecomes(*server_, "attnserve_sessions", 0));
  }

  // Steps `seq` through a fresh session in `chunks` and checks every step's
  // out and probs against Attend over the whole sequence.
  void ExpectChunksMatchAttend(const Shape& s, const std::vector<int64_t>& chunks) {
    const int64_t len = [&] {
      int64_t t = 0;
      for (int64_t c : chunks) t += c;
      return t;
    }();
    const Sequence seq = MakeSequence(s, len, 100 + static_cast<uint32_t>(s.method));
    const v1::AttendRequest request = AttendOf(s, seq);
    // The float64 reference of the equivalent Attend (decode-sessions.md 2).
    absl::StatusOr<kernels::AttendArgs> args = server::ToAttendArgs(request, {});
    ASSERT_TRUE(args.ok()) << args.status();
    args->num_kv_heads = s.absolute() && s.kv_heads != s.heads ? s.kv_heads : 0;
    args->window = s.window;
    args->softcap = s.softcap;
    absl::StatusOr<RefOutputs> ref = ReferenceAttend(*args);
    ASSERT_TRUE(ref.ok()) << ref.status();
    std::vector<float> out(ref->at("out").data.begin(), ref->at("out").data.end());
    std::vector<float> probs(ref->at("probs").data.begin(), ref->at("probs").data.end());
    {
      // And attnd's own Attend, which the session's steps must equal.
      grpc::ClientContext context;
      v1::AttendResponse full;
      const grpc::Status attended = stub_->Attend(&context, request, &full);
      ASSERT_TRUE(attended.ok()) << attended.error_message();
      EXPECT_EQ(Compare(*TensorValues(full.out()), out, "Attend's out"), "");
      out = *TensorValues(full.out());
      probs = *TensorValues(full.probs());
    }

    Session session(stub_.get());
    std::optional<v1::DecodeResponse> opened = session.Send(OpenRequest(s));
    ASSERT_TRUE(opened.has_value()) << session.Finish().error_message();
    EXPECT_EQ(opened->length(), 0);
    EXPECT_FALSE(opened->has_out());
    int64_t t = 0;
    for (size_t c = 0; c < chunks.size(); ++c) {
      const int64_t n = chunks[c];
      const bool with_probs = c % 2 == 0;
      std::optional<v1::DecodeResponse> step =
          session.Send(StepRequest(s, seq, t, t + n, with_probs));
      ASSERT_TRUE(step.has_value()) << session.Finish().error_message();
      EXPECT_EQ(step->length(), t + n);
      ASSERT_THAT(step->out().shape(), ::testing::ElementsAre(s.batch, s.heads, n, s.dv));
      EXPECT_EQ(Compare(*TensorValues(step->out()),
                        Slice(out, {s.batch, s.heads, len, s.dv}, 2, t, t + n),
                        absl::StrCat("out of step ", c)),
                "");
      if (with_probs) {
        ASSERT_THAT(step->probs().shape(), ::testing::ElementsAre(s.batch, s.heads, n, t + n));
        // Attend's rows t .. t+n-1, its columns 0 .. t+n-1 (later ones are masked).
        const std::vector<float> rows = Slice(probs, {s.batch, s.heads, len, len}, 2, t, t + n);
        EXPECT_EQ(Compare(*TensorValues(step->probs()),
                          Slice(rows, {s.batch, s.heads, n, len}, 3, 0, t + n),
                          absl::StrCat("probs of step ", c)),
                  "");
      } else {
        EXPECT_FALSE(step->has_probs());
      }
      t += n;
    }
    const grpc::Status closed = session.Close();
    EXPECT_TRUE(closed.ok()) << closed.error_message();
  }

  static ServerProcess* server_;
  std::unique_ptr<v1::AttentionService::Stub> stub_;
};
ServerProcess* DecodeTest::server_ = nullptr;

// The attention variants a session composes with its method
// (attention-variants.md 1-5).
enum class Variant { kPlain, kGqa, kMqa, kWindow, kSoftcap, kAll };
using MethodVariant = std::tuple<kernels::MethodKind, Variant>;

Shape ShapeOf(const MethodVariant& param) {
  Shape s;
  s.method = std::get<0>(param);
  switch (std::get<1>(param)) {
    case Variant::kPlain:
      break;
    case Variant::kGqa:
      s.kv_heads = 2;
      break;
    case Variant::kMqa:
      s.kv_heads = 1;
      break;
    case Variant::kWindow:
      s.window = 3;
      break;
    case Variant::kSoftcap:
      s.softcap = 1.5;
      break;
    case Variant::kAll:
      s.kv_heads = 2;
      s.window = 4;
      s.softcap = 2.0;
      break;
  }
  return s;
}

class DecodeMethodTest : public DecodeTest, public ::testing::WithParamInterface<MethodVariant> {};

TEST_P(DecodeMethodTest, TokenByTokenEqualsAttend) {
  ExpectChunksMatchAttend(ShapeOf(GetParam()), {1, 1, 1, 1, 1, 1, 1, 1, 1});
}

TEST_P(DecodeMethodTest, MixedPrefillAndDecodeChunksEqualAttend) {
  ExpectChunksMatchAttend(ShapeOf(GetParam()), {5, 1, 3, 1, 1, 4});
}

// A prefill chunk above 16 tokens runs on the tiled engine, the steps after
// it on the decode kernel: the two must agree.
TEST_P(DecodeMethodTest, LongPrefillThenStepsEqualAttend) {
  Shape s = ShapeOf(GetParam());
  s.max_len = 24;
  ExpectChunksMatchAttend(s, {18, 1, 3, 1});
}

TEST_P(DecodeMethodTest, TruncateThenStepEqualsAFreshSession) {
  const Shape s = ShapeOf(GetParam());
  const Sequence first = MakeSequence(s, 7, 300);
  const Sequence second = MakeSequence(s, 3, 400);
  // The kept 4 tokens of `first`, then `second`: what the rolled-back
  // session must compute for its new tokens.
  Sequence kept;
  kept.len = 4;
  if (s.absolute()) {
    kept.x = Slice(first.x, {s.batch, 7, s.d_model}, 1, 0, 4);
  } else {
    kept.q = Slice(first.q, {s.batch, s.heads, 7, s.d}, 2, 0, 4);
    kept.k = Slice(first.k, {s.batch, s.kv_heads, 7, s.d}, 2, 0, 4);
    kept.v = Slice(first.v, {s.batch, s.kv_heads, 7, s.dv}, 2, 0, 4);
  }
  const Sequence whole = Concat(s, kept, second);

  Session rolled(stub_.get());
  ASSERT_TRUE(rolled.Send(OpenRequest(s)).has_value()) << rolled.Finish().error_message();
  ASSERT_TRUE(rolled.Send(StepRequest(s, first, 0, 7, false)).has_value());
  v1::DecodeRequest truncate;
  truncate.mutable_truncate()->set_length(4);
  std::optional<v1::DecodeResponse> truncated = rolled.Send(truncate);
  ASSERT_TRUE(truncated.has_value()) << rolled.Finish().error_message();
  EXPECT_EQ(truncated->length(), 4);
  EXPECT_FALSE(truncated->has_out());
  std::optional<v1::DecodeResponse> after = rolled.Send(StepRequest(s, second, 0, 1, true));
  ASSERT_TRUE(after.has_value());
  std::optional<v1::DecodeResponse> after2 = rolled.Send(StepRequest(s, second, 1, 3, false));
  ASSERT_TRUE(after2.has_value());
  EXPECT_EQ(after2->length(), 7);
  EXPECT_TRUE(rolled.Close().ok());

  Session fresh(stub_.get());
  ASSERT_TRUE(fresh.Send(OpenRequest(s)).has_value());
  ASSERT_TRUE(fresh.Send(StepRequest(s, whole, 0, 4, false)).has_value());
  std::optional<v1::DecodeResponse> same = fresh.Send(StepRequest(s, whole, 4, 5, true));
  ASSERT_TRUE(same.has_value());
  std::optional<v1::DecodeResponse> same2 = fresh.Send(StepRequest(s, whole, 5, 7, false));
  ASSERT_TRUE(same2.has_value());
  EXPECT_TRUE(fresh.Close().ok());
  EXPECT_EQ(Compare(*TensorValues(after->out()), *TensorValues(same->out()), "out"), "");
  EXPECT_EQ(Compare(*TensorValues(after->probs()), *TensorValues(same->probs()), "probs"), "");
  EXPECT_EQ(Compare(*TensorValues(after2->out()), *TensorValues(same2->out()), "out"), "");
}

std::string MethodTestName(const ::testing::TestParamInfo<MethodVariant>& info) {
  static const char* const kVariants[] = {"plain", "gqa", "mqa", "window", "softcap", "all"};
  return absl::StrCat(kernels::MethodName(std::get<0>(info.param)), "_",
                      kVariants[static_cast<int>(std::get<1>(info.param))]);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, DecodeMethodTest,
                         ::testing::Combine(::testing::ValuesIn(kernels::kAllMethods),
                                            ::testing::Values(Variant::kPlain, Variant::kGqa,
                                                              Variant::kMqa, Variant::kWindow,
                                                              Variant::kSoftcap, Variant::kAll)),
                         MethodTestName);

// Opens and expects the open itself to fail.
void ExpectOpenFails(v1::AttentionService::Stub* stub, const v1::DecodeRequest& open,
                     grpc::StatusCode code, const std::string& field) {
  Session session(stub);
  EXPECT_FALSE(session.Send(open).has_value());
  const grpc::Status status = session.Finish();
  EXPECT_EQ(status.error_code(), code) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr(field));
}

TEST_F(DecodeTest, MessagesOutOfOrderAreFailedPrecondition) {
  Shape s;
  const Sequence seq = MakeSequence(s, 2, 5);
  {
    Session session(stub_.get());
    EXPECT_FALSE(session.Send(StepRequest(s, seq, 0, 1, false)).has_value());
    const grpc::Status status = session.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(status.error_message(), HasSubstr("open"));
  }
  {
    Session session(stub_.get());
    v1::DecodeRequest truncate;
    truncate.mutable_truncate()->set_length(0);
    EXPECT_FALSE(session.Send(truncate).has_value());
    EXPECT_EQ(session.Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    ASSERT_TRUE(session.Send(StepRequest(s, seq, 0, 1, false)).has_value());
    EXPECT_FALSE(session.Send(OpenRequest(s)).has_value());
    const grpc::Status status = session.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(status.error_message(), HasSubstr("open"));
  }
}

TEST_F(DecodeTest, TruncateOutOfRangeIsInvalidArgument) {
  Shape s;
  const Sequence seq = MakeSequence(s, 3, 6);
  for (int64_t length : {int64_t{-1}, int64_t{4}}) {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    ASSERT_TRUE(session.Send(StepRequest(s, seq, 0, 3, false)).has_value());
    v1::DecodeRequest truncate;
    truncate.mutable_truncate()->set_length(length);
    EXPECT_FALSE(session.Send(truncate).has_value());
    const grpc::Status status = session.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("truncate.length"));
  }
}

TEST_F(DecodeTest, StepPastMaxLenIsOutOfRange) {
  Shape s;
  s.max_len = 5;
  const Sequence seq = MakeSequence(s, 6, 7);
  Session session(stub_.get());
  ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
  ASSERT_TRUE(session.Send(StepRequest(s, seq, 0, 4, false)).has_value());
  EXPECT_FALSE(session.Send(StepRequest(s, seq, 4, 6, false)).has_value());
  const grpc::Status status = session.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_THAT(status.error_message(), HasSubstr("max_len"));
}

TEST_F(DecodeTest, BadOpensNameTheirField) {
  Shape s;
  v1::DecodeRequest open = OpenRequest(s);
  open.mutable_open()->set_batch(0);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "batch");
  open = OpenRequest(s);
  open.mutable_open()->set_max_len(0);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "max_len");
  open = OpenRequest(s);
  open.mutable_open()->set_num_kv_heads(3);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "num_kv_heads");
  open = OpenRequest(s);
  open.mutable_open()->set_window(0);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "window");
  open = OpenRequest(s);
  open.mutable_open()->set_softcap(-1);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "softcap");
  open = OpenRequest(s);
  open.mutable_open()->mutable_method()->mutable_rope()->set_scaling(v1::ROPE_SCALING_DYNAMIC_NTK);
  open.mutable_open()->mutable_method()->mutable_rope()->set_original_max_position(8);
  open.mutable_open()->mutable_method()->mutable_rope()->set_scaling_factor(2);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "scaling");
  // A learned table shorter than max_len.
  Shape learned;
  learned.method = kernels::MethodKind::kLearned;
  open = OpenRequest(learned);
  open.mutable_open()->set_max_len(learned.max_len + 1);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::OUT_OF_RANGE, "max_len");
  // Projection weights of the wrong shape.
  open = OpenRequest(learned);
  *open.mutable_open()->mutable_w_k() = Weight(learned, learned.heads, learned.d + 1, 9);
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "w_k");
  // A method tensor of the wrong shape: Attend's message.
  Shape shaw;
  shaw.method = kernels::MethodKind::kShaw;
  open = OpenRequest(shaw);
  *open.mutable_open()->mutable_method()->mutable_shaw()->mutable_rel_k() =
      MakeTensor({5, shaw.d}, Random(5 * shaw.d, 3));
  ExpectOpenFails(stub_.get(), open, grpc::StatusCode::INVALID_ARGUMENT, "rel_k");
}

TEST_F(DecodeTest, BadStepsNameTheirField) {
  Shape s;
  const Sequence seq = MakeSequence(s, 2, 8);
  {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    v1::DecodeRequest step = StepRequest(s, seq, 0, 1, false);
    *step.mutable_step()->mutable_q() =
        MakeTensor({s.batch, s.heads, 1, s.d + 1}, Random(s.batch * s.heads * (s.d + 1), 1));
    EXPECT_FALSE(session.Send(step).has_value());
    const grpc::Status status = session.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("q.shape"));
  }
  {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    v1::DecodeRequest step = StepRequest(s, seq, 0, 1, false);
    std::vector<float> values(static_cast<size_t>(s.batch * s.kv_heads * s.dv), 0.5f);
    values[3] = NAN;
    *step.mutable_step()->mutable_v() = MakeTensor({s.batch, s.kv_heads, 1, s.dv}, values);
    EXPECT_FALSE(session.Send(step).has_value());
    const grpc::Status status = session.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("v"));
  }
  {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    v1::DecodeRequest step = StepRequest(s, seq, 0, 1, false);
    *step.mutable_step()->mutable_x() = MakeTensor({1, 1, 1}, {1.0f});
    EXPECT_FALSE(session.Send(step).has_value());
    const grpc::Status status = session.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("x"));
  }
}

TEST_F(DecodeTest, BudgetIsReservedAtOpenAndBackWhenTheStreamEnds) {
  // B=2, H_kv=4, D+Dv=14: 448 bytes a token.
  Shape s;
  s.max_len = 1000;  // 448000 bytes: two fit in 1000000, a third does not.
  Session a(stub_.get()), b(stub_.get());
  ASSERT_TRUE(a.Send(OpenRequest(s)).has_value());
  ASSERT_TRUE(b.Send(OpenRequest(s)).has_value());
  EXPECT_EQ(Metric(*server_, "attnserve_session_cache_bytes"), 896000);
  EXPECT_EQ(Metric(*server_, "attnserve_sessions"), 2);
  {
    Session c(stub_.get());
    EXPECT_FALSE(c.Send(OpenRequest(s)).has_value());
    const grpc::Status status = c.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(), HasSubstr("--session_memory_bytes"));
  }
  EXPECT_TRUE(a.Close().ok());
  ASSERT_TRUE(MetricBecomes(*server_, "attnserve_session_cache_bytes", 448000));
  // The budget is back: the third open fits now.
  Session c(stub_.get());
  ASSERT_TRUE(c.Send(OpenRequest(s)).has_value()) << c.Finish().error_message();
  EXPECT_TRUE(c.Close().ok());
  EXPECT_TRUE(b.Close().ok());
}

TEST_F(DecodeTest, MaxSessionsIsResourceExhausted) {
  Shape s;
  s.max_len = 4;
  std::vector<std::unique_ptr<Session>> open;
  for (int i = 0; i < 6; ++i) {
    open.push_back(std::make_unique<Session>(stub_.get()));
    ASSERT_TRUE(open.back()->Send(OpenRequest(s)).has_value());
  }
  Session extra(stub_.get());
  EXPECT_FALSE(extra.Send(OpenRequest(s)).has_value());
  const grpc::Status status = extra.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_sessions"));
  for (auto& session : open) EXPECT_TRUE(session->Close().ok());
}

TEST_F(DecodeTest, AVanishedClientFreesTheCache) {
  Shape s;
  s.max_len = 500;
  const double cancelled_before =
      Metric(*server_, "attnserve_sessions_ended_total{reason=\"cancelled\"}");
  {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    ASSERT_TRUE(session.Send(StepRequest(s, MakeSequence(s, 3, 9), 0, 3, false)).has_value());
    EXPECT_EQ(Metric(*server_, "attnserve_session_cache_bytes"), 224000);
    // The client goes away without closing its stream.
    session.context().TryCancel();
    session.Finish();
  }
  EXPECT_TRUE(MetricBecomes(*server_, "attnserve_session_cache_bytes", 0));
  EXPECT_TRUE(MetricBecomes(*server_, "attnserve_sessions_ended_total{reason=\"cancelled\"}",
                            cancelled_before + 1));
}

TEST_F(DecodeTest, ErrorsEndTheSessionAndAreCounted) {
  Shape s;
  const double errors_before = Metric(*server_, "attnserve_sessions_ended_total{reason=\"error\"}");
  const double closed_before =
      Metric(*server_, "attnserve_sessions_ended_total{reason=\"closed\"}");
  const double steps_before = Metric(*server_, "attnserve_session_steps_total{method=\"none\"}");
  const double tokens_before = Metric(*server_, "attnserve_session_tokens_total{method=\"none\"}");
  const Sequence seq = MakeSequence(s, 4, 10);
  {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    ASSERT_TRUE(session.Send(StepRequest(s, seq, 0, 3, false)).has_value());
    ASSERT_TRUE(session.Send(StepRequest(s, seq, 3, 4, false)).has_value());
    EXPECT_TRUE(session.Close().ok());
  }
  {
    Session session(stub_.get());
    ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
    v1::DecodeRequest truncate;
    truncate.mutable_truncate()->set_length(1);
    EXPECT_FALSE(session.Send(truncate).has_value());
    EXPECT_EQ(session.Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_TRUE(MetricBecomes(*server_, "attnserve_sessions_ended_total{reason=\"closed\"}",
                            std::max(closed_before, 0.0) + 1));
  EXPECT_TRUE(MetricBecomes(*server_, "attnserve_sessions_ended_total{reason=\"error\"}",
                            std::max(errors_before, 0.0) + 1));
  EXPECT_EQ(Metric(*server_, "attnserve_session_steps_total{method=\"none\"}"),
            std::max(steps_before, 0.0) + 2);
  EXPECT_EQ(Metric(*server_, "attnserve_session_tokens_total{method=\"none\"}"),
            std::max(tokens_before, 0.0) + 4);
  absl::StatusOr<std::string> text = HttpGet(server_->metrics_port());
  ASSERT_TRUE(text.ok());
  EXPECT_GE(MetricSum(*text, "attnserve_requests_total", {"rpc=\"Decode\"", "code=\"OK\""}), 4);
}

TEST(DecodeIdleTest, AnIdleSessionIsAbortedNamingTheTimeout) {
  auto server = ServerProcess::Start({"--session_idle_timeout_s=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = StubFor(**server);
  Shape s;
  Session idle(stub.get());
  ASSERT_TRUE(idle.Send(OpenRequest(s)).has_value());
  const absl::Time start = absl::Now();
  // Nothing more is sent: the server ends the stream, which ends the read.
  EXPECT_FALSE(idle.Read());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(900));
  const grpc::Status aborted = idle.Finish();
  EXPECT_EQ(aborted.error_code(), grpc::StatusCode::ABORTED) << aborted.error_message();
  EXPECT_THAT(aborted.error_message(), HasSubstr("--session_idle_timeout_s"));
  EXPECT_TRUE(MetricBecomes(**server, "attnserve_session_cache_bytes", 0));
  EXPECT_TRUE(MetricBecomes(**server, "attnserve_sessions_ended_total{reason=\"idle\"}", 1));
  // A session that keeps talking is not idle, however long it lives.
  Session busy(stub.get());
  ASSERT_TRUE(busy.Send(OpenRequest(s)).has_value());
  const Sequence seq = MakeSequence(s, 4, 2);
  for (int64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(busy.Send(StepRequest(s, seq, i, i + 1, false)).has_value());
    absl::SleepFor(absl::Milliseconds(400));
  }
  EXPECT_TRUE(busy.Close().ok());
}

TEST(DecodeDrainTest, OpenSessionsFinishWhileNewOpensAreUnavailable) {
  auto server = ServerProcess::Start({"--lame_duck_s=1", "--shutdown_grace_s=30"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = StubFor(**server);
  Shape s;
  const Sequence seq = MakeSequence(s, 3, 4);
  Session session(stub.get());
  ASSERT_TRUE(session.Send(OpenRequest(s)).has_value());
  ASSERT_TRUE(session.Send(StepRequest(s, seq, 0, 1, false)).has_value());
  ASSERT_EQ(kill((*server)->pid(), SIGTERM), 0);
  // New opens are refused once the signal is handled.
  grpc::Status refused;
  for (int i = 0; i < 200 && refused.error_code() != grpc::StatusCode::UNAVAILABLE; ++i) {
    Session late(stub.get());
    if (late.Send(OpenRequest(s)).has_value()) {
      EXPECT_TRUE(late.Close().ok());
      absl::SleepFor(absl::Milliseconds(25));
    } else {
      refused = late.Finish();
    }
  }
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  // The open session goes on through the lame duck and the drain.
  absl::SleepFor(absl::Milliseconds(1500));
  std::optional<v1::DecodeResponse> step = session.Send(StepRequest(s, seq, 1, 3, false));
  ASSERT_TRUE(step.has_value()) << session.Finish().error_message();
  EXPECT_EQ(step->length(), 3);
  EXPECT_TRUE(session.Close().ok());
  EXPECT_TRUE((*server)->Terminate().ok());
}

// Two attnd with one batch thread and one compute thread each, with and
// without --decode_batching: with one thread the batched kernel's arithmetic
// is the lone step's, so their outputs must be equal bit for bit. The steps
// reach the batching one together, queued behind a long Attend; the other
// runs the same steps one by one.
class DecodeBatchingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (bool batching : {true, false}) {
      auto server = ServerProcess::Start({absl::StrCat("--decode_batching=", batching),
                                          "--threads=1", "--batch_threads=1"});
      ASSERT_TRUE(server.ok()) << server.status();
      (batching ? batched_ : alone_) = server->release();
    }
  }
  static void TearDownTestSuite() {
    delete batched_;
    delete alone_;
    batched_ = alone_ = nullptr;
  }

  // Holds `server`'s only batch thread with an Attend of `keys` keys (on its
  // own thread, joined by the caller) and returns once that Attend computes:
  // what is queued meanwhile forms its batches when it ends.
  static std::thread HoldBatchThread(const ServerProcess& server, int64_t keys) {
    const double started = Metric(server, "attnserve_queue_duration_seconds_count");
    std::thread holder([&server, keys] {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(-1);  // its out is keys * 2 KiB
      auto stub = v1::AttentionService::NewStub(grpc::CreateCustomChannel(
          server.address(), grpc::InsecureChannelCredentials(), args));
      v1::AttendRequest request;
      request.mutable_method()->mutable_none();
      const std::vector<float> values(static_cast<size_t>(8 * keys * 64), 0.01f);
      *request.mutable_q() = MakeTensor({1, 8, keys, 64}, values);
      *request.mutable_k() = MakeTensor({1, 8, keys, 64}, values);
      *request.mutable_v() = MakeTensor({1, 8, keys, 64}, values);
      request.set_raw_output(true);
      grpc::ClientContext context;
      v1::AttendResponse response;
      const grpc::Status status = stub->Attend(&context, request, &response);
      EXPECT_TRUE(status.ok()) << status.error_message();
    });
    // Polled often: the Attend takes well under a second on a quiet machine.
    bool computing = false;
    for (int poll = 0; poll < 4000 && !computing; ++poll) {
      computing = Metric(server, "attnserve_queue_duration_seconds_count") == started + 1;
      if (!computing) absl::SleepFor(absl::Milliseconds(2));
    }
    EXPECT_TRUE(computing);
    return holder;
  }

  static ServerProcess* batched_;
  static ServerProcess* alone_;
};
ServerProcess* DecodeBatchingTest::batched_ = nullptr;
ServerProcess* DecodeBatchingTest::alone_ = nullptr;

TEST_F(DecodeBatchingTest, QueuedStepsOfManySessionsRunTogetherAndEqualStepsAlone) {
  // Two sessions of every method (the second with GQA, a window and
  // softcap), each with a different cached length.
  std::vector<Shape> shapes;
  for (kernels::MethodKind method : kernels::kAllMethods) {
    for (int variant = 0; variant < 2; ++variant) {
      Shape s;
      s.method = method;
      s.max_len = 64;
      if (variant == 1) {
        s.kv_heads = 2;
        s.window = 6;
        s.softcap = 2.0;
      }
      shapes.push_back(s);
    }
  }
  const int kRounds = 3;
  const size_t count = shapes.size();
  std::vector<Sequence> sequences;
  std::vector<int64_t> cached;
  for (size_t i = 0; i < count; ++i) {
    cached.push_back(1 + static_cast<int64_t>((i * 7) % 23));
    sequences.push_back(MakeSequence(shapes[i], cached[i] + 2 * kRounds + 1,
                                     300 + static_cast<uint32_t>(i)));
  }
  const ServerProcess* servers[] = {batched_, alone_};
  std::vector<std::unique_ptr<v1::AttentionService::Stub>> stubs;
  std::vector<std::unique_ptr<Session>> sessions[2];
  for (int k = 0; k < 2; ++k) {
    stubs.push_back(StubFor(*servers[k]));
    for (size_t i = 0; i < count; ++i) {
      sessions[k].push_back(std::make_unique<Session>(stubs[k].get()));
      ASSERT_TRUE(sessions[k][i]->Send(OpenRequest(shapes[i])).has_value());
      std::optional<v1::DecodeResponse> prefilled = sessions[k][i]->Send(
          StepRequest(shapes[i], sequences[i], 0, cached[i], /*probs=*/false));
      ASSERT_TRUE(prefilled.has_value()) << sessions[k][i]->Finish().error_message();
    }
  }

  // Rounds of one step (1 or 2 tokens) per session, all queued at once
  // behind a long Attend on the batching server.
  const auto batches = [](const ServerProcess& server) {
    return std::make_pair(Metric(server, "attnserve_decode_batch_size_count"),
                          Metric(server, "attnserve_decode_batch_size_sum"));
  };
  int64_t keys = 2048;
  int together = 0;
  std::vector<int64_t> t = cached;
  for (int round = 0; round < kRounds; ++round) {
    const std::pair<double, double> before[2] = {batches(*batched_), batches(*alone_)};
    std::thread holder = HoldBatchThread(*batched_, keys);
    std::vector<int64_t> n(count);
    std::vector<v1::DecodeRequest> steps;
    for (size_t i = 0; i < count; ++i) {
      n[i] = 1 + static_cast<int64_t>((i + round) % 2);
      steps.push_back(StepRequest(shapes[i], sequences[i], t[i], t[i] + n[i], /*probs=*/false));
      ASSERT_TRUE(sessions[0][i]->Write(steps.back()));
    }
    // Every step queued while the batch thread was busy: one batch per
    // method when it is free.
    bool queued = false;
    for (int poll = 0; poll < 2000 && !queued; ++poll) {
      queued = Metric(*batched_, "attnserve_queue_depth") == count;
      if (!queued) absl::SleepFor(absl::Milliseconds(2));
    }
    holder.join();
    for (size_t i = 0; i < count; ++i) {
      std::optional<v1::DecodeResponse> got = sessions[0][i]->Receive();
      std::optional<v1::DecodeResponse> want = sessions[1][i]->Send(steps[i]);
      ASSERT_TRUE(got.has_value()) << sessions[0][i]->Finish().error_message();
      ASSERT_TRUE(want.has_value()) << sessions[1][i]->Finish().error_message();
      EXPECT_EQ(got->length(), t[i] + n[i]);
      EXPECT_EQ(*TensorValues(got->out()), *TensorValues(want->out()))
          << "session " << i << " (" << kernels::MethodName(shapes[i].method) << ") round "
          << round;
      t[i] += n[i];
    }
    const std::pair<double, double> after[2] = {batches(*batched_), batches(*alone_)};
    EXPECT_EQ(after[1].first - before[1].first, count) << "without the flag: one pass a step";
    EXPECT_EQ(after[1].second - before[1].second, count);
    if (!queued) {
      // The Attend ended before every step arrived (a very busy machine):
      // the outputs still had to match; hold longer next time.
      keys *= 2;
      continue;
    }
    ++together;
    EXPECT_EQ(after[0].first - before[0].first, 8) << "one kernel pass per method";
    EXPECT_EQ(after[0].second - before[0].second, count);
  }
  EXPECT_GE(together, 1) << "no round had every step queued at once";

  // The last round: a bad step (q of the wrong head size), one whose scores
  // overflow float32 and a client that vanishes with its step queued; each
  // ends its own stream, the others go on exact.
  ASSERT_EQ(shapes[0].method, kernels::MethodKind::kNone);
  ASSERT_EQ(shapes[6].method, kernels::MethodKind::kRope);
  std::thread holder = HoldBatchThread(*batched_, keys);
  std::vector<v1::DecodeRequest> steps;
  for (size_t i = 0; i < count; ++i) {
    steps.push_back(StepRequest(shapes[i], sequences[i], t[i], t[i] + 1, false));
    v1::DecodeStep* step = steps.back().mutable_step();
    if (i == 0) *step->mutable_q() = MakeTensor({2, 4, 1, 9}, std::vector<float>(72, 0.5f));
    if (i == 6) {
      // q = k = 1e30: q.k of the new key is above float32's range (RoPE
      // turns both alike, keeping the dot product).
      const std::vector<float> huge(8 * 8, 1e30f);
      *step->mutable_q() = MakeTensor({2, 4, 1, 8}, huge);
      *step->mutable_k() = MakeTensor({2, 4, 1, 8}, huge);
    }
    ASSERT_TRUE(sessions[0][i]->Write(steps.back()));
  }
  sessions[0][9]->context().TryCancel();
  holder.join();
  for (size_t i = 0; i < count; ++i) {
    std::optional<v1::DecodeResponse> got = sessions[0][i]->Receive();
    if (i == 0 || i == 6 || i == 9) {
      EXPECT_FALSE(got.has_value()) << "session " << i;
      const grpc::Status status = sessions[0][i]->Finish();
      if (i == 9) {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
      } else {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
            << status.error_message();
        EXPECT_THAT(status.error_message(), HasSubstr(i == 0 ? "q.shape" : "overflow"));
      }
      sessions[1][i]->context().TryCancel();
      sessions[1][i]->Finish();
      continue;
    }
    std::optional<v1::DecodeResponse> want = sessions[1][i]->Send(steps[i]);
    ASSERT_TRUE(got.has_value()) << sessions[0][i]->Finish().error_message();
    ASSERT_TRUE(want.has_value()) << sessions[1][i]->Finish().error_message();
    EXPECT_EQ(*TensorValues(got->out()), *TensorValues(want->out())) << "session " << i;
    EXPECT_TRUE(sessions[0][i]->Close().ok());
    EXPECT_TRUE(sessions[1][i]->Close().ok());
  }
  // Every cache is freed, the vanished client's and the failed ones' too.
  for (const ServerProcess* server : servers) {
    EXPECT_TRUE(MetricBecomes(*server, "attnserve_session_cache_bytes", 0));
    EXPECT_TRUE(MetricBecomes(*server, "attnserve_sessions", 0));
  }
}

TEST(DecodeAuthTest, DecodeNeedsATokenWhenTokensAreOn) {
  const std::string dir = ::testing::TempDir();
  const std::string tokens = dir + "/decode_tokens";
  FILE* file = std::fopen(tokens.c_str(), "w");
  ASSERT_NE(file, nullptr);
  std::fputs("decode-secret\n", file);
  std::fclose(file);
  auto server = ServerProcess::Start({"--auth_tokens_file=" + tokens});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = StubFor(**server);
  Shape s;
  {
    Session anonymous(stub.get());
    EXPECT_FALSE(anonymous.Send(OpenRequest(s)).has_value());
    EXPECT_EQ(anonymous.Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  Session session(stub.get(), "decode-secret");
  ASSERT_TRUE(session.Send(OpenRequest(s)).has_value()) << session.Finish().error_message();
  EXPECT_TRUE(session.Send(StepRequest(s, MakeSequence(s, 1, 3), 0, 1, false)).has_value());
  EXPECT_TRUE(session.Close().ok());
}

}  // namespace
}  // namespace attnserve::testing
