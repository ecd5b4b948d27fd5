#include "client/client.h"

#include <cstring>
#include <limits>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace attnserve::client {
namespace {

// raw_data is little-endian on the wire whatever the host's byte order, so
// the bytes are assembled explicitly instead of memcpy'd.
void AppendFloatLe(float value, std::string& out) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  for (int shift = 0; shift < 32; shift += 8) {
    out.push_back(static_cast<char>((bits >> shift) & 0xff));
  }
}

void AppendBits16Le(uint16_t bits, std::string& out) {
  out.push_back(static_cast<char>(bits & 0xff));
  out.push_back(static_cast<char>(bits >> 8));
}

uint16_t ReadBits16Le(const unsigned char* bytes) {
  return static_cast<uint16_t>(bytes[0] | (bytes[1] << 8));
}

float ReadFloatLe(const unsigned char* bytes) {
  uint32_t bits = 0;
  for (int i = 0; i < 4; ++i) bits |= static_cast<uint32_t>(bytes[i]) << (8 * i);
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

std::string ShapeString(const attnserve::v1::Tensor& tensor) {
  return absl::StrCat("[", absl::StrJoin(tensor.shape(), ","), "]");
}

bool Is16Bit(attnserve::v1::DataType dtype) {
  return dtype == attnserve::v1::DTYPE_FLOAT16 || dtype == attnserve::v1::DTYPE_BFLOAT16;
}

// The bytes of one raw_data element, or an error naming tensor.dtype.
absl::StatusOr<size_t> ElementBytes(const attnserve::v1::Tensor& tensor) {
  switch (tensor.dtype()) {
    case attnserve::v1::DTYPE_UNSPECIFIED:
    case attnserve::v1::DTYPE_FLOAT32:
      return 4;
    case attnserve::v1::DTYPE_FLOAT16:
    case attnserve::v1::DTYPE_BFLOAT16:
      return 2;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor.dtype: unknown DataType ", static_cast<int>(tensor.dtype())));
  }
}

// Checks what TensorValues and TensorBits16 share; returns product(shape).
absl::StatusOr<int64_t> CheckedCount(const attnserve::v1::Tensor& tensor) {
  if (!tensor.ref().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor.ref: a ref (\"", tensor.ref(), "\") holds no values on the client"));
  }
  if (tensor.data_size() > 0 && !tensor.raw_data().empty()) {
    return absl::InvalidArgumentError("tensor: exactly one of data and raw_data may be set");
  }
  absl::StatusOr<size_t> element_bytes = ElementBytes(tensor);
  if (!element_bytes.ok()) return element_bytes.status();
  if (tensor.raw_data().empty() && Is16Bit(tensor.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor.dtype: ", attnserve::v1::DataType_Name(tensor.dtype()),
                     " describes raw_data only; data is always float32"));
  }
  // Every dimension >= 1 and the product fits in int64 (then also in size_t
  // here, since the values are in memory already or the counts mismatch).
  int64_t count = 1;
  for (int64_t dim : tensor.shape()) {
    if (dim < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor.shape: every dimension must be >= 1, got ", ShapeString(tensor)));
    }
    if (count > std::numeric_limits<int64_t>::max() / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor.shape: element count overflows int64: ", ShapeString(tensor)));
    }
    count *= dim;
  }
  const std::string& raw = tensor.raw_data();
  if (!raw.empty()) {
    const auto size = static_cast<int64_t>(*element_bytes);
    if (raw.size() % *element_bytes != 0 ||
        static_cast<int64_t>(raw.size() / *element_bytes) != count) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor.raw_data: expected ", size, " * product(shape ", ShapeString(tensor), ") = ",
          count <= std::numeric_limits<int64_t>::max() / size ? absl::StrCat(size * count)
                                                              : "overflow",
          " bytes (", attnserve::v1::DataType_Name(tensor.dtype()), "), got ", raw.size()));
    }
  } else if (tensor.data_size() != count) {
    return absl::InvalidArgumentError(absl::StrCat("tensor.data: expected product(shape ",
                                                   ShapeString(tensor), ") = ", count,
                                                   " values, got ", tensor.data_size()));
  }
  return count;
}

}  // namespace

attnserve::v1::Tensor MakeTensor(absl::Span<const int64_t> shape, absl::Span<const float> values,
                                 TensorEncoding encoding) {
  attnserve::v1::Tensor tensor;
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  switch (encoding) {
    case TensorEncoding::kData:
      tensor.mutable_data()->Add(values.begin(), values.end());
      break;
    case TensorEncoding::kRawData: {
      std::string* raw = tensor.mutable_raw_data();
      raw->reserve(values.size() * 4);
      for (float value : values) AppendFloatLe(value, *raw);
      break;
    }
    case TensorEncoding::kRawFloat16:
    case TensorEncoding::kRawBfloat16: {
      const bool half = encoding == TensorEncoding::kRawFloat16;
      tensor.set_dtype(half ? attnserve::v1::DTYPE_FLOAT16 : attnserve::v1::DTYPE_BFLOAT16);
      std::string* raw = tensor.mutable_raw_data();
      raw->reserve(values.size() * 2);
      for (float value : values) {
        AppendBits16Le(half ? Float32ToFloat16Bits(value) : Float32ToBfloat16Bits(value), *raw);
      }
      break;
    }
  }
  return tensor;
}

absl::StatusOr<attnserve::v1::Tensor> MakeTensor16(absl::Span<const int64_t> shape,
                                                   absl::Span<const uint16_t> bits,
                                                   attnserve::v1::DataType dtype) {
  if (!Is16Bit(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: MakeTensor16 takes DTYPE_FLOAT16 or DTYPE_BFLOAT16, got ",
                     attnserve::v1::DataType_IsValid(dtype) ? attnserve::v1::DataType_Name(dtype)
                                                            : absl::StrCat(dtype)));
  }
  attnserve::v1::Tensor tensor;
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  tensor.set_dtype(dtype);
  std::string* raw = tensor.mutable_raw_data();
  raw->reserve(bits.size() * 2);
  for (uint16_t value : bits) AppendBits16Le(value, *raw);
  return tensor;
}

absl::StatusOr<attnserve::v1::Tensor> RecodeTensor(const attnserve::v1::Tensor& tensor,
                                                   TensorEncoding encoding) {
  if (!tensor.ref().empty()) return tensor;
  absl::StatusOr<std::vector<float>> values = TensorValues(tensor);
  if (!values.ok()) return values.status();
  return MakeTensor(std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end()), *values,
                    encoding);
}

attnserve::v1::Tensor MakeRefTensor(absl::string_view ref, absl::Span<const int64_t> shape) {
  attnserve::v1::Tensor tensor;
  tensor.set_ref(std::string(ref));
  tensor.mutable_shape()->Add(shape.begin(), shape.end());
  return tensor;
}

absl::StatusOr<std::vector<float>> TensorValues(const attnserve::v1::Tensor& tensor) {
  absl::StatusOr<int64_t> count = CheckedCount(tensor);
  if (!count.ok()) return count.status();
  if (tensor.raw_data().empty()) {
    return std::vector<float>(tensor.data().begin(), tensor.data().end());
  }
  std::vector<float> values(static_cast<size_t>(*count));
  const auto* bytes = reinterpret_cast<const unsigned char*>(tensor.raw_data().data());
  switch (tensor.dtype()) {
    case attnserve::v1::DTYPE_FLOAT16:
      for (size_t i = 0; i < values.size(); ++i) {
        values[i] = Float16BitsToFloat32(ReadBits16Le(bytes + 2 * i));
      }
      break;
    case attnserve::v1::DTYPE_BFLOAT16:
      for (size_t i = 0; i < values.size(); ++i) {
        values[i] = Bfloat16BitsToFloat32(ReadBits16Le(bytes + 2 * i));
      }
      break;
    default:  // float32 (CheckedCount refused unknown types)
      for (size_t i = 0; i < values.size(); ++i) values[i] = ReadFloatLe(bytes + 4 * i);
      break;
  }
  return values;
}

absl::StatusOr<std::vector<uint16_t>> TensorBits16(const attnserve::v1::Tensor& tensor) {
  absl::StatusOr<int64_t> count = CheckedCount(tensor);
  if (!count.ok()) return count.status();
  if (!Is16Bit(tensor.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor.dtype: 16-bit values need DTYPE_FLOAT16 or DTYPE_BFLOAT16 raw_data, got ",
        attnserve::v1::DataType_Name(tensor.dtype())));
  }
  std::vector<uint16_t> bits(static_cast<size_t>(*count));
  const auto* bytes = reinterpret_cast<const unsigned char*>(tensor.raw_data().data());
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = ReadBits16Le(bytes + 2 * i);
  return bits;
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  absl::StatusCode code = absl::StatusCode::kUnknown;
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return absl::OkStatus();
    case grpc::StatusCode::CANCELLED:
      code = absl::StatusCode::kCancelled;
      break;
    case grpc::StatusCode::UNKNOWN:
      code = absl::StatusCode::kUnknown;
      break;
    case grpc::StatusCode::INVALID_ARGUMENT:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      code = absl::StatusCode::kDeadlineExceeded;
      break;
    case grpc::StatusCode::NOT_FOUND:
      code = absl::StatusCode::kNotFound;
      break;
    case grpc::StatusCode::ALREADY_EXISTS:
      code = absl::StatusCode::kAlreadyExists;
      break;
    case grpc::StatusCode::PERMISSION_DENIED:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case grpc::StatusCode::FAILED_PRECONDITION:
      code = absl::StatusCode::kFailedPrecondition;
      break;
    case grpc::StatusCode::ABORTED:
      code = absl::StatusCode::kAborted;
      break;
    case grpc::StatusCode::OUT_OF_RANGE:
      code = absl::StatusCode::kOutOfRange;
      break;
    case grpc::StatusCode::UNIMPLEMENTED:
      code = absl::StatusCode::kUnimplemented;
      break;
    case grpc::StatusCode::INTERNAL:
      code = absl::StatusCode::kInternal;
      break;
    case grpc::StatusCode::UNAVAILABLE:
      code = absl::StatusCode::kUnavailable;
      break;
    case grpc::StatusCode::DATA_LOSS:
      code = absl::StatusCode::kDataLoss;
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      code = absl::StatusCode::kUnauthenticated;
      break;
    case grpc::StatusCode::DO_NOT_USE:
      // Not a real code; keep it visible rather than mapping it to OK.
      code = absl::StatusCode::kUnknown;
      break;
  }
  return absl::Status(code, status.error_message());
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const std::string& target,
                                                       ClientOptions options) {
  if (options.default_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("options.default_deadline: must be > 0");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("options.max_message_bytes: must be > 0");
  }
  absl::StatusOr<ChannelSecurity> security = LoadChannelSecurity(options.security);
  if (!security.ok()) {
    std::map<std::string, std::string> names;
    for (const char* field : {"ca_file", "cert_file", "key_file", "server_name", "skip_verify",
                              "token", "token_file"}) {
      names[field] = absl::StrCat("options.security.", field);
    }
    return RenameOptionFields(security.status(), names);
  }
  const std::string service_config = options.service_config.value_or(DefaultServiceConfig());
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateChannel(
      target, *security, DefaultChannelArguments(options.max_message_bytes, service_config));
  if (!channel.ok() && options.service_config.has_value() &&
      CreateChannel(target, *security, DefaultChannelArguments(options.max_message_bytes, ""))
          .ok()) {
    // gRPC reports a service config it cannot use as a broken channel too.
    return absl::InvalidArgumentError(absl::StrCat(
        "options.service_config: not a service config gRPC accepts: ",
        options.service_config->substr(0, 200)));
  }
  if (!channel.ok()) return channel.status();
  // Both channels connect lazily: the second only if Health is called.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> health_channel = CreateChannel(
      target, *security,
      DefaultChannelArguments(options.max_message_bytes,
                              options.service_config.value_or(
                                  DefaultServiceConfig(/*health_checking=*/false))));
  if (!health_channel.ok()) return health_channel.status();
  return std::unique_ptr<Client>(new Client(std::move(options), *std::move(security),
                                            *std::move(channel), *std::move(health_channel)));
}

Client::Client(ClientOptions options, ChannelSecurity security,
               std::shared_ptr<grpc::Channel> channel,
               std::shared_ptr<grpc::Channel> health_channel)
    : options_(std::move(options)),
      security_(std::move(security)),
      channel_(std::move(channel)),
      health_channel_(std::move(health_channel)),
      stub_(attnserve::v1::AttentionService::NewStub(channel_)),
      health_stub_(grpc::health::v1::Health::NewStub(health_channel_)) {}

std::unique_ptr<grpc::ClientContext> Client::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.default_deadline));
  security_.Apply(*context);
  return context;
}

absl::StatusOr<attnserve::v1::AttendResponse> Client::Attend(
    const attnserve::v1::AttendRequest& request) {
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  attnserve::v1::AttendResponse response;
  absl::Status status = FromGrpcStatus(stub_->Attend(context.get(), request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<attnserve::v1::EncodeResponse> Client::Encode(
    const attnserve::v1::EncodeRequest& request) {
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  attnserve::v1::EncodeResponse response;
  absl::Status status = FromGrpcStatus(stub_->Encode(context.get(), request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<attnserve::v1::ListMethodsResponse> Client::ListMethods() {
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  attnserve::v1::ListMethodsResponse response;
  absl::Status status = FromGrpcStatus(
      stub_->ListMethods(context.get(), attnserve::v1::ListMethodsRequest(), &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<bool> Client::Health(const std::string& service) {
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  absl::Status status = FromGrpcStatus(health_stub_->Check(context.get(), request, &response));
  if (!status.ok()) return status;
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

Client::StreamResult Client::AttendStream(
    const std::vector<attnserve::v1::AttendRequest>& requests) {
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  std::unique_ptr<
      grpc::ClientReaderWriter<attnserve::v1::AttendRequest, attnserve::v1::AttendResponse>>
      stream = stub_->AttendStream(context.get());
  // The writer runs beside the reader: writing everything first could block
  // on flow control while the server waits for us to read its responses.
  // Write() returns false once the stream has failed (the server ended it
  // with an error), which stops the writer early.
  std::thread writer([&stream, &requests] {
    for (const attnserve::v1::AttendRequest& request : requests) {
      if (!stream->Write(request)) return;
    }
    stream->WritesDone();
  });
  StreamResult result;
  attnserve::v1::AttendResponse response;
  while (stream->Read(&response)) result.responses.push_back(std::move(response));
  writer.join();
  result.status = FromGrpcStatus(stream->Finish());
  return result;
}

}  // namespace attnserve::client
