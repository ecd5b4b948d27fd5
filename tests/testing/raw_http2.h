// RawHttp2Client: a hand-written HTTP/2 client for the tests of limits that
// hold under abuse. It speaks just enough HTTP/2 to send gRPC calls, and
// behaves as a hostile or broken client can and a gRPC library will not:
// it never grants flow-control window beyond HTTP/2's initial 65535 bytes
// (so it never takes more than that of any response: a client that does not
// read), and it may leave the server's keepalive pings unanswered (a peer
// that vanished). A reader thread records what the server sends: its
// SETTINGS, PINGs, GOAWAY, the end of each stream, the connection's close.
//
// Loopback only (127.0.0.1). Frames are not validated beyond their headers;
// the server's header blocks (HPACK) are not decoded.
//
// Thread-safety: every member may be called from any thread.
#ifndef ATTNSERVE_TESTS_TESTING_RAW_HTTP2_H_
#define ATTNSERVE_TESTS_TESTING_RAW_HTTP2_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace attnserve::testing {

class RawHttp2Client {
 public:
  // What the server has sent so far.
  struct Seen {
    std::map<uint16_t, uint32_t> settings;  // SETTINGS parameters by id
    int pings = 0;                          // PING frames (not ACKs)
    bool goaway = false;
    bool closed = false;                    // EOF or a socket error
    int64_t data_bytes = 0;                 // DATA payload, all streams
    std::set<uint32_t> ended_streams;       // streams the server ended
  };

  // Connects to 127.0.0.1:`port` and sends the connection preface with
  // empty SETTINGS (initial windows of 65535 bytes). The reader thread ACKs
  // SETTINGS, answers PINGs when `answer_pings`, and never sends a
  // WINDOW_UPDATE. UNAVAILABLE when the connection fails.
  static absl::StatusOr<std::unique_ptr<RawHttp2Client>> Connect(int port,
                                                                 bool answer_pings = true);
  // Closes the socket and joins the reader.
  ~RawHttp2Client();

  RawHttp2Client(const RawHttp2Client&) = delete;
  RawHttp2Client& operator=(const RawHttp2Client&) = delete;

  // Opens stream `stream_id` (odd, larger than any before) for the gRPC
  // method `path` ("/attnserve.v1.AttentionService/Encode"), sends each of
  // `messages` (serialized protobuf bodies; gRPC's 5-byte prefix is added)
  // and, with `end_stream`, half-closes the stream.
  absl::Status SendCall(uint32_t stream_id, absl::string_view path,
                        const std::vector<std::string>& messages, bool end_stream = true);

  Seen seen() const;
  // Waits until `done(seen())` or `timeout`; returns whether it became true.
  bool WaitFor(const std::function<bool(const Seen&)>& done, absl::Duration timeout) const;

 private:
  RawHttp2Client(int fd, bool answer_pings);
  absl::Status SendFrame(uint8_t type, uint8_t flags, uint32_t stream_id,
                         absl::string_view payload);
  void ReadLoop();

  const int fd_;
  const bool answer_pings_;
  absl::Mutex write_mu_;
  mutable absl::Mutex mu_;
  Seen seen_ ABSL_GUARDED_BY(mu_);
  std::thread reader_;
};

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TESTING_RAW_HTTP2_H_
