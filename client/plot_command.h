// `attn plot`: what each kind of plot shows, built from real responses of
// attnd (Encode, or Attend with return_probs) into a plot::Figure.
//
//   encode  the method's matrix per head: ALiBi's bias, DA-Transformer's
//           coefficients, Shaw's relative buckets, Transformer-XL's relative
//           table, the sinusoidal table, RoPE's and learned's y
//   attend  the attention probabilities of batch item 0, one panel per head
//   curve   score against distance: RoPE's q.k of one constant vector at
//           distance d (RoFormer's long-range decay), ALiBi's penalty and
//           DA-Transformer's coefficient per head, Shaw's clipped bucket,
//           Transformer-XL's and the sinusoidal table's first dimensions
//
// Thread-safety: as Client (each call makes its own RPC).
#ifndef ATTNSERVE_CLIENT_PLOT_COMMAND_H_
#define ATTNSERVE_CLIENT_PLOT_COMMAND_H_

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.pb.h"
#include "client/client.h"
#include "client/plot.h"

namespace attnserve::client {

// Heat maps of the Encode response to `request` (at most 16 heads are drawn).
// Errors: the RPC's status; INVALID_ARGUMENT naming the method when its
// encoding has nothing to draw (none).
absl::StatusOr<plot::Figure> PlotEncode(Client& client, const attnserve::v1::EncodeRequest& request);

// Heat maps of the attention probabilities of `request` (return_probs is set
// here), batch item 0, one panel per head (at most 16). Errors: the RPC's.
absl::StatusOr<plot::Figure> PlotAttend(Client& client, attnserve::v1::AttendRequest request);

// Line plots of score against distance from the Encode response to
// `request`. Errors: the RPC's; INVALID_ARGUMENT naming the method when it
// has no distance curve (none, learned).
absl::StatusOr<plot::Figure> PlotCurve(Client& client, const attnserve::v1::EncodeRequest& request);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_PLOT_COMMAND_H_
