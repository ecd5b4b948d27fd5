// Figures of `attn plot`: a small figure model (heat-map panels sharing one
// colour bar, or line series on one pair of axes) and its rendering to PNG or
// SVG with Cairo, plus the plotted numbers as JSON (`--data`).
//
// What is plotted is decided by client/plot_command.h; this file only draws.
//
// Thread-safety: pure functions; Render may run on any thread (each call has
// its own Cairo surface).
#ifndef ATTNSERVE_CLIENT_PLOT_H_
#define ATTNSERVE_CLIENT_PLOT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace attnserve::client::plot {

// One heat map: `values` row-major, rows x cols. Row 0 is drawn at the top.
// Axis ticks label row and column indices shifted by the origins (e.g. key
// positions that start at query_offset - Sq + 1).
struct Heatmap {
  std::string title;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> values;
  double row_origin = 0;
  double col_origin = 0;
};

// One line: y over x, as many points as x.
struct Series {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;
};

struct Figure {
  std::string title;     // method and parameters
  std::string x_label;   // of every panel, or of the line plot
  std::string y_label;
  std::string value_label;        // the colour bar's (heat maps only)
  std::vector<Heatmap> panels;    // a heat-map figure ...
  std::vector<Series> series;     // ... or a line figure (exactly one is non-empty)
};

// Writes `figure` to `path`: PNG for a name ending ".png", SVG for ".svg"
// (case-insensitive). INVALID_ARGUMENT for another extension or an empty or
// inconsistent figure (a panel whose values are not rows x cols, a series
// whose x and y differ in length, both or neither kind of content);
// INTERNAL when the file cannot be written.
absl::Status Render(const Figure& figure, const std::string& path);

// The plotted numbers: {"title", "x_label", "y_label", "value_label",
// "panels": [{"title", "rows", "cols", "row_origin", "col_origin", "values"}],
// "series": [{"label", "x", "y"}]} with every value as written to the picture.
std::string FigureJson(const Figure& figure);

}  // namespace attnserve::client::plot

#endif  // ATTNSERVE_CLIENT_PLOT_H_
