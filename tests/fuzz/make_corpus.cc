// make_corpus: writes the fuzz targets' seed corpora from the golden cases
// (tests/golden/*.json, and the requests of tests/golden-variants/*.json),
// checked in under tests/fuzz/corpus/<target>/:
//   attend_request/  each attend case as a serialized AttendRequest, with its
//                    tensors in `data` and in `raw_data`
//   encode_request/  each encode case likewise, as an EncodeRequest
//   safetensors/     each case's input tensors as one safetensors file, in
//                    F32, F16 and BF16 (with a __metadata__ object), up
//                    to 16 KiB each (the loader's paths do not need more)
// Seeds larger than --max_len bytes are left out (libFuzzer would cut them).
//
//   make_corpus OUT_DIR [--max_len=N]     (default 65536)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/testing/golden.h"
#include "tests/testing/golden_proto.h"
#include "tests/testing/half_float.h"

namespace attnserve::fuzz {
namespace {

namespace fs = std::filesystem;
using testing::GoldenCase;
using testing::WireEncoding;

size_t max_len = 65536;
int written = 0, skipped = 0;

void Write(const fs::path& path, const std::string& bytes, size_t limit = max_len) {
  if (bytes.size() > limit) {
    ++skipped;
    return;
  }
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
  ++written;
}

uint16_t ToBFloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return static_cast<uint16_t>(bits >> 16);  // truncation: any bf16 is a valid seed
}

std::string Safetensors(const GoldenCase& c, const std::string& dtype) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}, {"source", c.name}};
  std::string data;
  for (const auto& [name, tensor] : c.inputs) {
    const size_t begin = data.size();
    for (double x : tensor.data) {
      const float f = static_cast<float>(x);
      if (dtype == "F32") {
        data.append(reinterpret_cast<const char*>(&f), 4);
      } else {
        const uint16_t h = dtype == "F16" ? testing::FloatToHalfBits(f) : ToBFloat16(f);
        data.push_back(static_cast<char>(h & 0xff));
        data.push_back(static_cast<char>(h >> 8));
      }
    }
    header[name] = {{"dtype", dtype}, {"shape", tensor.shape}, {"data_offsets", {begin, data.size()}}};
  }
  const std::string text = header.dump();
  std::string file(8, '\0');
  for (int b = 0; b < 8; ++b) file[static_cast<size_t>(b)] = static_cast<char>((text.size() >> (8 * b)) & 0xff);
  return file + text + data;
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: make_corpus OUT_DIR [--max_len=N]\n");
    return 2;
  }
  const fs::path out = argv[1];
  for (int i = 2; i < argc; ++i) {
    if (std::strncmp(argv[i], "--max_len=", 10) == 0) max_len = std::stoul(argv[i] + 10);
  }
  // The public variant cases (attention-variants.md 9) too, for their
  // requests only: GQA, kv_lengths, window, softcap, 16-bit tensors and
  // outputs, the RoPE scalings and ALiBi slopes reach the fuzzers' paths.
  std::vector<std::string> paths = testing::GoldenCaseFiles(testing::GoldenDir());
  const size_t first_variant = paths.size();
  for (const std::string& path : testing::GoldenCaseFiles(testing::GoldenVariantsDir())) {
    paths.push_back(path);
  }
  for (size_t n = 0; n < paths.size(); ++n) {
    const std::string& path = paths[n];
    absl::StatusOr<GoldenCase> c = testing::LoadGoldenCase(path);
    if (!c.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), std::string(c.status().message()).c_str());
      return 1;
    }
    if (c->op == "decode") continue;  // no Decode fuzz target here
    for (WireEncoding encoding : {WireEncoding::kData, WireEncoding::kRawData}) {
      const std::string suffix = encoding == WireEncoding::kData ? ".data.pb" : ".raw.pb";
      if (c->op == "attend") {
        absl::StatusOr<v1::AttendRequest> request = testing::ToAttendRequest(*c, encoding);
        if (request.ok()) Write(out / "attend_request" / (c->name + suffix), request->SerializeAsString());
      } else {
        absl::StatusOr<v1::EncodeRequest> request = testing::ToEncodeRequest(*c, encoding);
        if (request.ok()) Write(out / "encode_request" / (c->name + suffix), request->SerializeAsString());
      }
    }
    if (c->inputs.empty() || n >= first_variant) continue;
    for (const char* dtype : {"F32", "F16", "BF16"}) {
      Write(out / "safetensors" / (c->name + "." + dtype + ".safetensors"), Safetensors(*c, dtype),
            16384);
    }
  }
  std::printf("make_corpus: %d seeds written, %d left out for their size\n", written, skipped);
  return 0;
}

}  // namespace
}  // namespace attnserve::fuzz

int main(int argc, char** argv) { return attnserve::fuzz::Main(argc, argv); }
