// make_corpus: writes the fuzz targets' seed corpora from the golden cases
// (tests/golden/*.json), checked in under tests/fuzz/corpus/<target>/:
//   attend_request/  each attend case as a serialized AttendRequest, with its
//                    tensors in `data` and in `raw_data`
//   encode_request/  each encode case likewise, as an EncodeRequest
//   safetensors/     each case's input tensors as one safetensors file, in
//                    F32, F16 and BF16 (with a __metadata__ object), up
//                    to 16 KiB each (the loader's paths do not need more)
//   decode_request/  each decode case of the format-2 directories as its
//                    stream: the messages in order, each length-prefixed
//                    (protobuf's delimited format), as decode_request_fuzzer
//                    reads them
// The attend and encode seeds come from the version-1 cases and from the
// format-2 ones (tests/golden-variants, tests/golden-generated: GQA, windows,
// softcap, 16-bit tensors, the newer RoPE scalings).
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

#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/delimited_message_util.h"
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
  const std::vector<std::string> version1 = testing::GoldenCaseFiles(testing::GoldenDir());
  std::vector<std::string> paths = version1;
  for (const std::string& path : testing::VariantCaseFiles()) paths.push_back(path);
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string& path = paths[i];
    absl::StatusOr<GoldenCase> c = testing::LoadGoldenCase(path);
    if (!c.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), std::string(c.status().message()).c_str());
      return 1;
    }
    for (WireEncoding encoding : {WireEncoding::kData, WireEncoding::kRawData}) {
      const std::string suffix = encoding == WireEncoding::kData ? ".data.pb" : ".raw.pb";
      if (c->op == "decode") {
        absl::StatusOr<std::vector<v1::DecodeRequest>> stream =
            testing::ToDecodeRequests(*c, encoding);
        if (!stream.ok()) continue;
        std::string bytes;
        {
          google::protobuf::io::StringOutputStream output(&bytes);
          for (const v1::DecodeRequest& message : *stream) {
            google::protobuf::util::SerializeDelimitedToZeroCopyStream(message, &output);
          }
        }
        Write(out / "decode_request" / (c->name + suffix), bytes);
      } else if (c->op == "attend") {
        absl::StatusOr<v1::AttendRequest> request = testing::ToAttendRequest(*c, encoding);
        if (request.ok()) Write(out / "attend_request" / (c->name + suffix), request->SerializeAsString());
      } else {
        absl::StatusOr<v1::EncodeRequest> request = testing::ToEncodeRequest(*c, encoding);
        if (request.ok()) Write(out / "encode_request" / (c->name + suffix), request->SerializeAsString());
      }
    }
    // The loader's paths are covered by the version-1 cases' tensors.
    if (c->inputs.empty() || i >= version1.size()) continue;
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
