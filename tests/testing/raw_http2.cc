#include "tests/testing/raw_http2.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace attnserve::testing {
namespace {

constexpr uint8_t kData = 0, kHeaders = 1, kSettings = 4, kPing = 6, kGoAway = 7;
constexpr uint8_t kEndStream = 0x1, kAck = 0x1, kEndHeaders = 0x4;
constexpr size_t kMaxFrame = 16384;  // SETTINGS_MAX_FRAME_SIZE's initial value

bool WriteAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool ReadAll(int fd, char* out, size_t size) {
  while (size > 0) {
    const ssize_t n = recv(fd, out, size, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    out += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// An HPACK "literal header field without indexing, new name" (RFC 7541
// 6.2.2) of short strings, without Huffman coding.
void AppendHeader(std::string* block, absl::string_view name, absl::string_view value) {
  block->push_back('\0');
  block->push_back(static_cast<char>(name.size()));
  block->append(name.data(), name.size());
  block->push_back(static_cast<char>(value.size()));
  block->append(value.data(), value.size());
}

uint32_t BigEndian(const unsigned char* p, int bytes) {
  uint32_t value = 0;
  for (int i = 0; i < bytes; ++i) value = (value << 8) | p[i];
  return value;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RawHttp2Client>> RawHttp2Client::Connect(int port,
                                                                         bool answer_pings) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(error)));
  }
  if (!WriteAll(fd, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) {
    close(fd);
    return absl::UnavailableError("writing the HTTP/2 preface failed");
  }
  std::unique_ptr<RawHttp2Client> client(new RawHttp2Client(fd, answer_pings));
  if (absl::Status sent = client->SendFrame(kSettings, 0, 0, ""); !sent.ok()) return sent;
  return client;
}

RawHttp2Client::RawHttp2Client(int fd, bool answer_pings)
    : fd_(fd), answer_pings_(answer_pings), reader_([this] { ReadLoop(); }) {}

RawHttp2Client::~RawHttp2Client() {
  shutdown(fd_, SHUT_RDWR);
  reader_.join();
  close(fd_);
}

absl::Status RawHttp2Client::SendFrame(uint8_t type, uint8_t flags, uint32_t stream_id,
                                       absl::string_view payload) {
  std::string frame;
  frame.reserve(9 + payload.size());
  const uint32_t length = static_cast<uint32_t>(payload.size());
  for (int shift : {16, 8, 0}) frame.push_back(static_cast<char>(length >> shift));
  frame.push_back(static_cast<char>(type));
  frame.push_back(static_cast<char>(flags));
  for (int shift : {24, 16, 8, 0}) frame.push_back(static_cast<char>(stream_id >> shift));
  frame.append(payload.data(), payload.size());
  absl::MutexLock lock(&write_mu_);
  if (!WriteAll(fd_, frame)) return absl::UnavailableError("writing a frame failed");
  return absl::OkStatus();
}

absl::Status RawHttp2Client::SendCall(uint32_t stream_id, absl::string_view path,
                                      const std::vector<std::string>& messages,
                                      bool end_stream) {
  std::string block;
  AppendHeader(&block, ":method", "POST");
  AppendHeader(&block, ":scheme", "http");
  AppendHeader(&block, ":path", path);
  AppendHeader(&block, ":authority", "127.0.0.1");
  AppendHeader(&block, "content-type", "application/grpc");
  AppendHeader(&block, "te", "trailers");
  const bool headers_end = end_stream && messages.empty();
  if (absl::Status s = SendFrame(kHeaders, kEndHeaders | (headers_end ? kEndStream : 0),
                                 stream_id, block);
      !s.ok()) {
    return s;
  }
  std::string body;
  for (const std::string& message : messages) {
    body.push_back('\0');  // not compressed
    const uint32_t length = static_cast<uint32_t>(message.size());
    for (int shift : {24, 16, 8, 0}) body.push_back(static_cast<char>(length >> shift));
    body += message;
  }
  for (size_t at = 0; at < body.size(); at += kMaxFrame) {
    const size_t n = std::min(kMaxFrame, body.size() - at);
    const bool last = at + n == body.size();
    if (absl::Status s = SendFrame(kData, last && end_stream ? kEndStream : 0, stream_id,
                                   absl::string_view(body).substr(at, n));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

RawHttp2Client::Seen RawHttp2Client::seen() const {
  absl::MutexLock lock(&mu_);
  return seen_;
}

bool RawHttp2Client::WaitFor(const std::function<bool(const Seen&)>& done,
                             absl::Duration timeout) const {
  const absl::Time give_up = absl::Now() + timeout;
  for (;;) {
    if (done(seen())) return true;
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

void RawHttp2Client::ReadLoop() {
  std::string payload;
  for (;;) {
    unsigned char header[9];
    if (!ReadAll(fd_, reinterpret_cast<char*>(header), sizeof(header))) break;
    const uint32_t length = BigEndian(header, 3);
    const uint8_t type = header[3], flags = header[4];
    const uint32_t stream_id = BigEndian(header + 5, 4) & 0x7fffffffu;
    payload.resize(length);
    if (length > 0 && !ReadAll(fd_, payload.data(), length)) break;
    const auto* p = reinterpret_cast<const unsigned char*>(payload.data());
    if (type == kSettings && (flags & kAck) == 0) {
      {
        absl::MutexLock lock(&mu_);
        for (uint32_t i = 0; i + 6 <= length; i += 6) {
          seen_.settings[static_cast<uint16_t>(BigEndian(p + i, 2))] = BigEndian(p + i + 2, 4);
        }
      }
      if (!SendFrame(kSettings, kAck, 0, "").ok()) break;
    } else if (type == kPing && (flags & kAck) == 0) {
      {
        absl::MutexLock lock(&mu_);
        ++seen_.pings;
      }
      if (answer_pings_ && !SendFrame(kPing, kAck, 0, payload).ok()) break;
    } else if (type == kGoAway) {
      absl::MutexLock lock(&mu_);
      seen_.goaway = true;
    } else if (type == kData || type == kHeaders) {
      absl::MutexLock lock(&mu_);
      if (type == kData) seen_.data_bytes += length;
      if ((flags & kEndStream) != 0) seen_.ended_streams.insert(stream_id);
    }
  }
  absl::MutexLock lock(&mu_);
  seen_.closed = true;
}

}  // namespace attnserve::testing
