// Request tensors for the server tests, built the way a client would.
#ifndef ATTNSERVE_TESTS_SERVER_PROTO_TENSORS_H_
#define ATTNSERVE_TESTS_SERVER_PROTO_TENSORS_H_

#include <cstdint>
#include <vector>

#include "attnserve/v1/attention.pb.h"

namespace attnserve::server {

// A tensor sent as `data`: `values` in row-major order under `shape`.
inline v1::Tensor DataTensor(const std::vector<int64_t>& shape, const std::vector<float>& values) {
  v1::Tensor tensor;
  for (int64_t d : shape) tensor.add_shape(d);
  for (float value : values) tensor.add_data(value);
  return tensor;
}

}  // namespace attnserve::server

#endif  // ATTNSERVE_TESTS_SERVER_PROTO_TENSORS_H_
