#include "server/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "kernels/status_macros.h"
#include "server/file_text.h"

namespace attnserve::server {
namespace {

// gRPC's provider re-reads the staged files this often; they only change
// when the reload thread stages a new set, so the cost is a few small reads.
constexpr unsigned kStagingRefreshS = 1;

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Deleter {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct PkeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

BioPtr MemoryBio(const std::string& text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// The PEM certificates in `pem`, in order (no password callbacks: a
// passphrase prompt would block the server).
std::vector<X509Ptr> ParseCertificates(const std::string& pem) {
  std::vector<X509Ptr> certs;
  BioPtr bio = MemoryBio(pem);
  if (bio == nullptr) return certs;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    certs.emplace_back(cert);
  }
  return certs;
}

std::string SerialOf(X509* cert) {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  BIGNUM* number = ASN1_INTEGER_to_BN(serial, nullptr);
  if (number == nullptr) return "?";
  char* hex = BN_bn2hex(number);
  std::string text = hex == nullptr ? "?" : hex;
  OPENSSL_free(hex);
  BN_free(number);
  return text;
}

absl::Status WriteFile(const std::string& path, const std::string& text, time_t mtime) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot create '", path, "': ", std::strerror(errno)));
  }
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      close(fd);
      return absl::UnavailableError(
          absl::StrCat("cannot write '", path, "': ", std::strerror(error)));
    }
    written += static_cast<size_t>(n);
  }
  // Distinct modification times per generation: gRPC's provider compares
  // them before and after reading key and certificate, so a read that
  // straddles a symlink swap is retried instead of pairing two generations.
  const timespec times[2] = {{mtime, 0}, {mtime, 0}};
  futimens(fd, times);
  if (close(fd) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot write '", path, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// A private (0700) directory for the staged files; tmpfs first, so the
// private key's copy stays in memory.
absl::StatusOr<std::string> MakeStagingDir() {
  std::vector<std::string> parents = {"/dev/shm"};
  if (const char* tmpdir = std::getenv("TMPDIR"); tmpdir != nullptr && *tmpdir != '\0') {
    parents.emplace_back(tmpdir);
  }
  parents.emplace_back("/tmp");
  for (const std::string& parent : parents) {
    std::string pattern = parent + "/attnd-tls-XXXXXX";
    if (mkdtemp(pattern.data()) != nullptr) return pattern;
  }
  return absl::UnavailableError(
      "TLS: cannot create a private staging directory in /dev/shm, $TMPDIR or /tmp");
}

}  // namespace

absl::Status ValidateTlsOptions(const TlsOptions& options) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert_file and --tls_key_file: give both (TLS) or neither (plaintext), not one");
  }
  if (!options.client_ca_file.empty() && options.cert_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file: needs --tls_cert_file and --tls_key_file (mutual TLS is TLS)");
  }
  if (options.reload_interval_s < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_reload_interval_s: must be >= 1, got ", options.reload_interval_s));
  }
  return absl::OkStatus();
}

bool IsLoopbackHost(absl::string_view host) {
  if (absl::AsciiStrToLower(host) == "localhost") return true;
  std::string bare(host);
  if (bare.size() >= 2 && bare.front() == '[' && bare.back() == ']') {
    bare = bare.substr(1, bare.size() - 2);
  }
  in_addr v4{};
  if (inet_pton(AF_INET, bare.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, bare.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    // ::ffff:127.x.y.z
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

absl::StatusOr<CertificateSet> ReadCertificateSet(const TlsOptions& options,
                                                  const TlsFlagNames& flags) {
  CertificateSet set;
  ATTN_ASSIGN_OR_RETURN(set.cert_chain, ReadFileText(options.cert_file, flags.cert));
  ATTN_ASSIGN_OR_RETURN(set.private_key, ReadFileText(options.key_file, flags.key));
  std::vector<X509Ptr> chain = ParseCertificates(set.cert_chain);
  if (chain.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flags.cert, ": '", options.cert_file, "' holds no PEM certificate"));
  }
  BioPtr key_bio = MemoryBio(set.private_key);
  PkeyPtr key(key_bio == nullptr
                  ? nullptr
                  : PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(flags.key, ": '", options.key_file,
                     "' holds no PEM private key (an encrypted key is not supported)"));
  }
  if (X509_check_private_key(chain.front().get(), key.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        flags.key, ": '", options.key_file, "' is not the private key of the first certificate in ",
        flags.cert, " '", options.cert_file, "'"));
  }
  if (!options.client_ca_file.empty()) {
    ATTN_ASSIGN_OR_RETURN(set.client_ca, ReadFileText(options.client_ca_file, flags.client_ca));
    if (ParseCertificates(set.client_ca).empty()) {
      return absl::InvalidArgumentError(absl::StrCat(flags.client_ca, ": '", options.client_ca_file,
                                                     "' holds no PEM certificate"));
    }
  }
  return set;
}

CertificateReloader::CertificateReloader(const TlsOptions& options, std::string staging_dir)
    : options_(options), staging_dir_(std::move(staging_dir)) {}

absl::StatusOr<std::unique_ptr<CertificateReloader>> CertificateReloader::Create(
    const TlsOptions& options) {
  ATTN_RETURN_IF_ERROR(ValidateTlsOptions(options));
  ATTN_ASSIGN_OR_RETURN(CertificateSet set, ReadCertificateSet(options));
  ATTN_ASSIGN_OR_RETURN(std::string staging_dir, MakeStagingDir());
  std::unique_ptr<CertificateReloader> reloader(
      new CertificateReloader(options, std::move(staging_dir)));
  ATTN_RETURN_IF_ERROR(reloader->Stage(set));
  reloader->current_ = std::move(set);

  const std::string current = reloader->staging_dir_ + "/current/";
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      current + "key.pem", current + "cert.pem",
      options.client_ca_file.empty() ? std::string() : current + "ca.pem", kStagingRefreshS);
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (options.client_ca_file.empty()) {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    tls.watch_root_certs();
    tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  reloader->credentials_ = grpc::experimental::TlsServerCredentials(tls);
  reloader->thread_ = std::thread([r = reloader.get()] { r->Run(); });
  return reloader;
}

CertificateReloader::~CertificateReloader() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  std::error_code ignored;
  std::filesystem::remove_all(staging_dir_, ignored);
}

absl::Status CertificateReloader::Stage(const CertificateSet& set) {
  const int generation = generation_ + 1;
  const std::string dir = absl::StrCat(staging_dir_, "/g", generation);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::UnavailableError(
        absl::StrCat("cannot create '", dir, "': ", std::strerror(errno)));
  }
  const time_t mtime = 1000000000 + generation;
  ATTN_RETURN_IF_ERROR(WriteFile(dir + "/key.pem", set.private_key, mtime));
  ATTN_RETURN_IF_ERROR(WriteFile(dir + "/cert.pem", set.cert_chain, mtime));
  if (!set.client_ca.empty())
    ATTN_RETURN_IF_ERROR(WriteFile(dir + "/ca.pem", set.client_ca, mtime));
  const std::string link = staging_dir_ + "/current";
  const std::string tmp_link = link + ".tmp";
  unlink(tmp_link.c_str());
  if (symlink(absl::StrCat("g", generation).c_str(), tmp_link.c_str()) != 0 ||
      rename(tmp_link.c_str(), link.c_str()) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot point '", link, "' at '", dir, "': ", std::strerror(errno)));
  }
  // The generation before the previous one: gRPC may still be reading the
  // previous one, but it has had a whole interval to finish the one before.
  if (generation >= 3) {
    std::error_code ignored;
    std::filesystem::remove_all(absl::StrCat(staging_dir_, "/g", generation - 2), ignored);
  }
  generation_ = generation;
  return absl::OkStatus();
}

void CertificateReloader::Run() {
  const absl::Duration interval = absl::Seconds(options_.reload_interval_s);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopped), interval)) return;
    }
    absl::StatusOr<CertificateSet> set = ReadCertificateSet(options_);
    if (!set.ok()) {
      // One line per distinct bad state; the message names files, not contents.
      const std::string key = std::string(set.status().message());
      if (key != last_rejected_) {
        std::fprintf(stderr, "attnd: TLS: keeping the previous certificate: %s\n", key.c_str());
        last_rejected_ = key;
      }
      continue;
    }
    last_rejected_.clear();
    if (set->cert_chain == current_.cert_chain && set->private_key == current_.private_key &&
        set->client_ca == current_.client_ca) {
      continue;
    }
    absl::Status staged = Stage(*set);
    if (!staged.ok()) {
      std::fprintf(stderr, "attnd: TLS: keeping the previous certificate: %s\n",
                   std::string(staged.message()).c_str());
      continue;
    }
    std::vector<X509Ptr> chain = ParseCertificates(set->cert_chain);
    std::fprintf(stderr, "attnd: TLS: serving the new certificate (serial %s) from %s\n",
                 chain.empty() ? "?" : SerialOf(chain.front().get()).c_str(),
                 options_.cert_file.c_str());
    current_ = *std::move(set);
  }
}

}  // namespace attnserve::server
