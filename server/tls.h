// TLS and mutual TLS for attnd's gRPC listener, with certificates rotated
// without a restart.
//
// gRPC's FileWatcherCertificateProvider re-reads PEM files on an interval but
// (in gRPC 1.51) does not check that the key matches the certificate: a key
// and certificate caught mid-update would be served as a broken pair and fail
// every new handshake. So a CertificateReloader reads the operator's files
// (--tls_cert_file, --tls_key_file, --tls_client_ca_file) itself every
// --tls_reload_interval_s, checks them with OpenSSL, and only a good set is
// staged, as one generation directory behind a symlink swapped atomically, in
// a private directory that gRPC's provider watches every second. A bad set is
// logged once and the previous one kept. Files may change in place or by
// rename (Kubernetes Secret volumes swap a symlink): each check opens them by
// path.
//
// Thread-safety: Create and the destructor on one thread; credentials() from
// any thread; the reload thread is internal.
#ifndef ATTNSERVE_SERVER_TLS_H_
#define ATTNSERVE_SERVER_TLS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace attnserve::server {

struct TlsOptions {
  // PEM certificate chain (leaf first) and its private key; both or neither.
  std::string cert_file;
  std::string key_file;
  // PEM CA bundle: when set, clients must present a certificate signed by it.
  std::string client_ca_file;
  // Seconds between checks of the three files for changes; >= 1.
  int reload_interval_s = 60;

  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

// INVALID_ARGUMENT naming the flag when `options` cannot be used: one of
// --tls_cert_file/--tls_key_file without the other, --tls_client_ca_file
// without them, an interval below 1.
absl::Status ValidateTlsOptions(const TlsOptions& options);

// True when `host` (as in --address, "[::1]" keeps its brackets) names only
// this machine's loopback interface: 127.0.0.0/8, ::1 or "localhost". A
// wildcard (0.0.0.0, [::]) or any other name is not loopback.
bool IsLoopbackHost(absl::string_view host);

// One PEM file set, checked: the key matches the leaf certificate, and the
// CA bundle (if any) holds at least one certificate.
struct CertificateSet {
  std::string cert_chain;
  std::string private_key;
  std::string client_ca;  // empty without --tls_client_ca_file
};

// The flags ReadCertificateSet's errors name (the metrics listener's TLS
// files have flags of their own).
struct TlsFlagNames {
  absl::string_view cert = "--tls_cert_file";
  absl::string_view key = "--tls_key_file";
  absl::string_view client_ca = "--tls_client_ca_file";
};

// Reads the files named by `options` and checks them as one set. Errors:
// INVALID_ARGUMENT naming the flag of the file that cannot be read or
// parsed, or saying that the key does not match the certificate. The error
// text never quotes file contents.
absl::StatusOr<CertificateSet> ReadCertificateSet(const TlsOptions& options,
                                                  const TlsFlagNames& flags = {});

class CertificateReloader {
 public:
  // Reads and checks the files (errors as ReadCertificateSet), stages them,
  // and starts the reload thread. UNAVAILABLE when no private staging
  // directory can be made (in /dev/shm, $TMPDIR or /tmp).
  static absl::StatusOr<std::unique_ptr<CertificateReloader>> Create(const TlsOptions& options);

  // Stops the reload thread and removes the staging directory.
  ~CertificateReloader();

  CertificateReloader(const CertificateReloader&) = delete;
  CertificateReloader& operator=(const CertificateReloader&) = delete;

  // TLS server credentials serving the staged set: a client certificate
  // signed by the CA is required when --tls_client_ca_file is set.
  std::shared_ptr<grpc::ServerCredentials> credentials() const { return credentials_; }

 private:
  CertificateReloader(const TlsOptions& options, std::string staging_dir);

  // Writes `set` as a new generation and points staging_dir_/current at it.
  absl::Status Stage(const CertificateSet& set);
  // The reload thread: every interval, reads the files and stages a new,
  // good set; logs a bad one once.
  void Run();

  const TlsOptions options_;
  const std::string staging_dir_;
  int generation_ = 0;         // of the staged set; reload thread only after Create
  CertificateSet current_;     // the staged set; reload thread only after Create
  std::string last_rejected_;  // the error last logged, to log each bad state once
  std::shared_ptr<grpc::ServerCredentials> credentials_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_TLS_H_
