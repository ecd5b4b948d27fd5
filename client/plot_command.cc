#include "client/plot_command.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace attnserve::client {
namespace {

using attnserve::v1::EncodeRequest;
using attnserve::v1::EncodeResponse;
using attnserve::v1::Tensor;

constexpr int64_t kMaxPanels = 16;

// A response tensor's shape and values (data or raw_data), as doubles.
struct Values {
  std::vector<int64_t> shape;
  std::vector<double> values;
};

absl::StatusOr<Values> ValuesOf(const Tensor& tensor) {
  absl::StatusOr<std::vector<float>> values = TensorValues(tensor);
  if (!values.ok()) return values.status();
  return Values{{tensor.shape().begin(), tensor.shape().end()},
                std::vector<double>(values->begin(), values->end())};
}

absl::StatusOr<Values> Output(const EncodeResponse& response, const std::string& name) {
  auto it = response.outputs().find(name);
  if (it == response.outputs().end()) {
    return absl::InternalError(absl::StrCat("plot: the Encode response has no '", name, "'"));
  }
  return ValuesOf(it->second);
}

// The name of the request's method ("alibi", ...), "" when unset.
std::string MethodName(const attnserve::v1::PositionalMethod& method) {
  const google::protobuf::FieldDescriptor* field =
      method.GetReflection()->GetOneofFieldDescriptor(method,
                                                      method.GetDescriptor()->oneof_decl(0));
  return field == nullptr ? "" : field->name();
}

// "name=value" for every set scalar field of `message` (tensors are left out).
void ScalarFields(const google::protobuf::Message& message, std::vector<std::string>& out) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const google::protobuf::FieldDescriptor* field : fields) {
    if (field->is_repeated()) continue;
    using Cpp = google::protobuf::FieldDescriptor;
    switch (field->cpp_type()) {
      case Cpp::CPPTYPE_INT32:
        out.push_back(absl::StrCat(field->name(), "=", reflection->GetInt32(message, field)));
        break;
      case Cpp::CPPTYPE_INT64:
        out.push_back(absl::StrCat(field->name(), "=", reflection->GetInt64(message, field)));
        break;
      case Cpp::CPPTYPE_DOUBLE:
        out.push_back(absl::StrFormat("%s=%g", field->name(), reflection->GetDouble(message, field)));
        break;
      case Cpp::CPPTYPE_BOOL:
        if (reflection->GetBool(message, field) && field->name() != "raw_output" &&
            field->name() != "return_probs") {
          out.push_back(field->name());
        }
        break;
      case Cpp::CPPTYPE_ENUM: {
        std::string name = reflection->GetEnum(message, field)->name();
        const size_t cut = name.rfind('_');
        out.push_back(absl::StrCat(field->name(), "=",
                                   cut == std::string::npos ? name : absl::AsciiStrToLower(name.substr(cut + 1))));
        break;
      }
      default:
        break;  // messages (tensors), strings, floats: not parameters
    }
  }
}

// "alibi (num_heads=8, sq=16, sk=16)": the method and every scalar the
// request sets, in the method's sub-message and at the top level.
template <typename Request>
std::string Title(const std::string& what, const Request& request) {
  std::vector<std::string> parameters;
  const std::string method = MethodName(request.method());
  if (!method.empty()) {
    const google::protobuf::Message& sub = request.method().GetReflection()->GetMessage(
        request.method(), request.method().GetDescriptor()->FindFieldByName(method));
    ScalarFields(sub, parameters);
  }
  ScalarFields(request, parameters);
  return absl::StrCat(what, ": ", method.empty() ? "(no method)" : method,
                      parameters.empty() ? "" : absl::StrCat(" (", absl::StrJoin(parameters, ", "), ")"));
}

// Panels over the leading `heads` axis of a [heads, rows, cols] block of
// `values` starting at `offset`.
void AddHeadPanels(const std::vector<double>& values, size_t offset, int64_t heads, int64_t rows,
                   int64_t cols, double row_origin, double col_origin,
                   const std::vector<std::string>& titles, plot::Figure& figure) {
  const int64_t shown = std::min(heads, kMaxPanels);
  for (int64_t h = 0; h < shown; ++h) {
    plot::Heatmap map;
    map.title = titles.empty() ? absl::StrCat("head ", h) : titles[static_cast<size_t>(h)];
    map.rows = rows;
    map.cols = cols;
    map.row_origin = row_origin;
    map.col_origin = col_origin;
    const auto begin = values.begin() + static_cast<std::ptrdiff_t>(offset + h * rows * cols);
    map.values.assign(begin, begin + rows * cols);
    figure.panels.push_back(std::move(map));
  }
}

int64_t QueryOffset(const EncodeRequest& request) {
  return request.has_query_offset() ? request.query_offset() : request.sk() - request.sq();
}

std::vector<std::string> SlopeTitles(const EncodeResponse& response) {
  absl::StatusOr<Values> slopes = Output(response, "slopes");
  std::vector<std::string> titles;
  if (!slopes.ok()) return titles;
  for (size_t h = 0; h < slopes->values.size(); ++h) {
    titles.push_back(absl::StrFormat("head %d (m = %.4g)", h, slopes->values[h]));
  }
  return titles;
}

absl::Status Unplottable(const std::string& method, const std::string& kind) {
  return absl::InvalidArgumentError(absl::StrCat(
      "plot ", kind, ": method '", method.empty() ? "(unset)" : method,
      "' has nothing to draw; encode plots alibi, da_transformer, shaw, transformer_xl, "
      "sinusoidal, learned, rope; curve plots rope, alibi, da_transformer, shaw, "
      "transformer_xl, sinusoidal"));
}

}  // namespace

absl::StatusOr<plot::Figure> PlotEncode(Client& client, const EncodeRequest& request) {
  const std::string method = MethodName(request.method());
  if (method.empty() || method == "none") return Unplottable(method, "encode");
  absl::StatusOr<EncodeResponse> response = client.Encode(request);
  if (!response.ok()) return response.status();
  plot::Figure figure;
  figure.title = Title("encode", request);
  if (method == "alibi" || method == "da_transformer") {
    absl::StatusOr<Values> v = Output(*response, method == "alibi" ? "bias" : "coeff");
    if (!v.ok()) return v.status();
    AddHeadPanels(v->values, 0, v->shape[0], v->shape[1], v->shape[2],
                  static_cast<double>(QueryOffset(request)), 0,
                  method == "alibi" ? SlopeTitles(*response) : std::vector<std::string>{},
                  figure);
    figure.value_label = method == "alibi" ? "bias -m (i - j)" : "coefficient";
    figure.x_label = "key position j";
    figure.y_label = "query position i";
  } else if (method == "shaw") {
    absl::StatusOr<Values> v = Output(*response, "rel_index");
    if (!v.ok()) return v.status();
    AddHeadPanels(v->values, 0, 1, v->shape[0], v->shape[1],
                  static_cast<double>(QueryOffset(request)), 0, {"relative bucket"}, figure);
    figure.value_label = "bucket (clip(j - i, -K, K) + K)";
    figure.x_label = "key position j";
    figure.y_label = "query position i";
  } else if (method == "transformer_xl") {
    absl::StatusOr<Values> v = Output(*response, "rel_table");
    if (!v.ok()) return v.status();
    AddHeadPanels(v->values, 0, 1, v->shape[0], v->shape[1], 0, 0, {"R (rel_table)"}, figure);
    figure.value_label = "R";
    figure.x_label = "dimension";
    figure.y_label = "distance index";
  } else {
    // sinusoidal (its table), learned ([B,S,d] y: item 0), rope ([B,H,S,D] y:
    // item 0, one panel per head).
    const bool table = method == "sinusoidal";
    absl::StatusOr<Values> v = Output(*response, table ? "table" : "y");
    if (!v.ok()) return v.status();
    const int64_t rank = static_cast<int64_t>(v->shape.size());
    const int64_t heads = rank == 4 ? v->shape[1] : 1;
    AddHeadPanels(v->values, 0, heads, v->shape[rank - 2], v->shape[rank - 1],
                  static_cast<double>(request.offset()), 0,
                  heads == 1 ? std::vector<std::string>{table ? "table" : "y"}
                             : std::vector<std::string>{},
                  figure);
    figure.value_label = table ? "PE(pos, dim)" : "y";
    figure.x_label = "dimension";
    figure.y_label = "position";
  }
  return figure;
}

absl::StatusOr<plot::Figure> PlotAttend(Client& client, attnserve::v1::AttendRequest request) {
  request.set_return_probs(true);
  absl::StatusOr<attnserve::v1::AttendResponse> response = client.Attend(request);
  if (!response.ok()) return response.status();
  absl::StatusOr<Values> probs = ValuesOf(response->probs());
  if (!probs.ok()) return probs.status();
  const int64_t heads = probs->shape[1], sq = probs->shape[2], sk = probs->shape[3];
  plot::Figure figure;
  figure.title = Title("attend", request);
  AddHeadPanels(probs->values, 0, heads, sq, sk,
                static_cast<double>(request.has_query_offset() ? request.query_offset() : sk - sq),
                0, {}, figure);
  figure.value_label = "attention probability";
  figure.x_label = "key position j";
  figure.y_label = "query position i";
  return figure;
}

absl::StatusOr<plot::Figure> PlotCurve(Client& client, const EncodeRequest& request) {
  const std::string method = MethodName(request.method());
  if (method.empty() || method == "none" || method == "learned") {
    return Unplottable(method, "curve");
  }
  absl::StatusOr<EncodeResponse> response = client.Encode(request);
  if (!response.ok()) return response.status();
  plot::Figure figure;
  figure.title = Title("curve", request);
  if (method == "rope") {
    // RoFormer section 3.4.3: for one vector x at every position, q.k between
    // positions 0 and d is sum_i |x_i|^2 cos(d theta_i) (pairs): it decays,
    // with oscillation, as d grows.
    absl::StatusOr<Values> y = Output(*response, "y");
    if (!y.ok()) return y.status();
    const int64_t s = y->shape[2], d = y->shape[3];
    plot::Series series{"head 0: y(0) . y(d)", {}, {}};
    for (int64_t p = 0; p < s; ++p) {
      double dot = 0;
      for (int64_t i = 0; i < d; ++i) {
        dot += y->values[static_cast<size_t>(i)] * y->values[static_cast<size_t>(p * d + i)];
      }
      series.x.push_back(static_cast<double>(p));
      series.y.push_back(dot);
    }
    figure.series.push_back(std::move(series));
    figure.x_label = "relative distance d";
    figure.y_label = "q . k (the same vector at positions 0 and d)";
  } else if (method == "alibi" || method == "da_transformer" || method == "shaw") {
    // The last query row: key j at distance i - j.
    absl::StatusOr<Values> v =
        Output(*response, method == "alibi" ? "bias" : method == "shaw" ? "rel_index" : "coeff");
    if (!v.ok()) return v.status();
    const bool per_head = v->shape.size() == 3;
    const int64_t heads = per_head ? v->shape[0] : 1;
    const int64_t sq = v->shape[per_head ? 1 : 0], sk = v->shape[per_head ? 2 : 1];
    const int64_t i = QueryOffset(request) + sq - 1;
    const std::vector<std::string> titles =
        method == "alibi" ? SlopeTitles(*response) : std::vector<std::string>{};
    for (int64_t h = 0; h < std::min(heads, kMaxPanels); ++h) {
      plot::Series series{per_head ? (titles.empty() ? absl::StrCat("head ", h)
                                                     : titles[static_cast<size_t>(h)])
                                   : "bucket",
                          {},
                          {}};
      const size_t row = static_cast<size_t>((h * sq + sq - 1) * sk);
      for (int64_t j = 0; j < sk; ++j) {
        series.x.push_back(static_cast<double>(i - j));
        series.y.push_back(v->values[row + static_cast<size_t>(j)]);
      }
      figure.series.push_back(std::move(series));
    }
    figure.x_label = "distance i - j (query minus key position)";
    figure.y_label = method == "alibi"            ? "bias -m (i - j)"
                     : method == "shaw"           ? "relative bucket"
                                                  : "coefficient";
  } else {
    // transformer_xl: R over the request's distances; sinusoidal: PE over
    // positions offset + row. The first two frequency pairs.
    const bool txl = method == "transformer_xl";
    absl::StatusOr<Values> v = Output(*response, txl ? "rel_table" : "table");
    if (!v.ok()) return v.status();
    const int64_t n = v->shape[0], width = v->shape[1];
    std::vector<double> x(static_cast<size_t>(n));
    absl::StatusOr<std::vector<float>> distances = TensorValues(request.distances());
    for (int64_t r = 0; r < n; ++r) {
      x[static_cast<size_t>(r)] =
          txl && distances.ok() && static_cast<int64_t>(distances->size()) == n
              ? (*distances)[static_cast<size_t>(r)]
              : static_cast<double>(request.offset() + r);
    }
    // Two frequency pairs i (the lowest ones alias at one sample per
    // position): Transformer-XL's R puts sin(r f_i) at i and cos at d/2 + i;
    // the sinusoidal table puts them at 2i and 2i + 1.
    const int64_t half = width / 2;
    std::vector<std::pair<std::string, int64_t>> dims;
    for (int64_t i : {std::max<int64_t>(1, half / 8), std::max<int64_t>(2, half / 4)}) {
      if (i >= half) continue;
      dims.emplace_back(absl::StrCat("sin, i = ", i), txl ? i : 2 * i);
      dims.emplace_back(absl::StrCat("cos, i = ", i), txl ? half + i : 2 * i + 1);
    }
    for (const auto& [label, dim] : dims) {
      if (dim >= width) continue;
      plot::Series series{label, x, {}};
      for (int64_t r = 0; r < n; ++r) {
        series.y.push_back(v->values[static_cast<size_t>(r * width + dim)]);
      }
      figure.series.push_back(std::move(series));
    }
    figure.x_label = txl ? "relative distance" : "position";
    figure.y_label = txl ? "R[distance, dim]" : "PE(pos, dim)";
  }
  return figure;
}

}  // namespace attnserve::client
