#include "server/wire.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include "absl/strings/str_cat.h"

namespace attnserve::server {

absl::Status ParseBody(const grpc::ByteBuffer& body, google::protobuf::MessageLite* message) {
  message->Clear();
  // A ByteBuffer copy shares the slices (reference counts, no bytes copied);
  // the reader consumes the copy.
  grpc::ByteBuffer copy(body);
  const grpc::Status parsed =
      grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::MessageLite>(&copy,
                                                                                      message);
  if (parsed.ok()) return absl::OkStatus();
  message->Clear();
  return absl::InvalidArgumentError(absl::StrCat(
      "request: the message body is not a valid ", message->GetTypeName(), " (", body.Length(),
      " bytes that do not parse as its protobuf wire format; is the client's .proto "
      "attnserve/v1/attention.proto?)"));
}

absl::Status SerializeBody(const google::protobuf::MessageLite& message, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  const grpc::Status serialized =
      grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::MessageLite>(
          message, out, &own_buffer);
  if (serialized.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("response: could not be serialized (",
                                          serialized.error_message(), ")"));
}

}  // namespace attnserve::server
