#include "client/plot.h"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace attnserve::client::plot {
namespace {

// Layout, in device units (pixels for PNG, points for SVG).
constexpr double kPanelSize = 240;     // a heat map's square plotting area
constexpr double kPanelLeft = 64;      // room for y ticks and label
constexpr double kPanelBottom = 52;    // room for x ticks and label
constexpr double kPanelTop = 28;       // a panel's title
constexpr double kPanelRight = 16;
constexpr double kFigureTitle = 44;
constexpr double kColorBarWidth = 18;
constexpr double kColorBarRoom = 110;  // bar, ticks and label
constexpr int kMaxColumns = 4;
constexpr double kLineWidth = 900;
constexpr double kLineHeight = 560;
constexpr double kTitleSize = 16;
constexpr char kFont[] = "DejaVu Sans";

struct Rgb {
  double r, g, b;
};

// Viridis (matplotlib's default colour map, perceptually uniform) at nine
// evenly spaced stops, interpolated linearly between them.
Rgb Viridis(double t) {
  static constexpr std::array<Rgb, 9> kStops = {{{0.267, 0.005, 0.329},
                                                 {0.279, 0.175, 0.483},
                                                 {0.230, 0.322, 0.546},
                                                 {0.173, 0.449, 0.558},
                                                 {0.128, 0.567, 0.551},
                                                 {0.153, 0.680, 0.504},
                                                 {0.361, 0.785, 0.388},
                                                 {0.668, 0.862, 0.196},
                                                 {0.993, 0.906, 0.144}}};
  t = std::clamp(t, 0.0, 1.0) * (kStops.size() - 1);
  const size_t i = std::min(static_cast<size_t>(t), kStops.size() - 2);
  const double f = t - static_cast<double>(i);
  return {kStops[i].r + f * (kStops[i + 1].r - kStops[i].r),
          kStops[i].g + f * (kStops[i + 1].g - kStops[i].g),
          kStops[i].b + f * (kStops[i + 1].b - kStops[i].b)};
}

// Matplotlib's "tab10" colours for line series.
Rgb SeriesColor(size_t i) {
  static constexpr std::array<Rgb, 10> kTab10 = {{{0.122, 0.467, 0.706},
                                                  {1.000, 0.498, 0.055},
                                                  {0.173, 0.627, 0.173},
                                                  {0.839, 0.153, 0.157},
                                                  {0.580, 0.404, 0.741},
                                                  {0.549, 0.337, 0.294},
                                                  {0.890, 0.467, 0.761},
                                                  {0.498, 0.498, 0.498},
                                                  {0.737, 0.741, 0.133},
                                                  {0.090, 0.745, 0.812}}};
  return kTab10[i % kTab10.size()];
}

struct Range {
  double lo = 0;
  double hi = 1;
};

// The finite values' range, widened when it is a single value so that it
// still maps to a visible span.
Range RangeOf(const std::vector<const std::vector<double>*>& groups) {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -lo;
  for (const std::vector<double>* values : groups) {
    for (double v : *values) {
      if (!std::isfinite(v)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  if (!(lo <= hi)) return {0, 1};
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(hi))) {
    const double pad = std::max(0.5, std::abs(hi) * 0.05);
    return {lo - pad, hi + pad};
  }
  return {lo, hi};
}

// About `target` "nice" tick values (1, 2 or 5 times a power of ten apart)
// inside [lo, hi].
std::vector<double> Ticks(double lo, double hi, int target = 5) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (raw <= step) break;
  }
  std::vector<double> ticks;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return ticks;
}

std::string TickText(double v) { return absl::StrFormat("%.6g", v); }

// Owns a Cairo surface and its context.
class Canvas {
 public:
  Canvas(cairo_surface_t* surface) : surface_(surface), cr_(cairo_create(surface)) {
    cairo_select_font_face(cr_, kFont, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  }
  ~Canvas() {
    cairo_destroy(cr_);
    cairo_surface_destroy(surface_);
  }
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  cairo_t* cr() { return cr_; }
  cairo_surface_t* surface() { return surface_; }

  void Color(Rgb c) { cairo_set_source_rgb(cr_, c.r, c.g, c.b); }

  // Text anchored at (x, y): h_align 0 left, 0.5 centre, 1 right; the
  // baseline sits at y + v_shift * text height (0.5: centred vertically).
  void Text(const std::string& text, double x, double y, double size, double h_align,
            double v_shift, bool bold = false, double angle = 0) {
    cairo_save(cr_);
    cairo_select_font_face(cr_, kFont, CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr_, size);
    cairo_text_extents_t extents;
    cairo_text_extents(cr_, text.c_str(), &extents);
    cairo_translate(cr_, x, y);
    cairo_rotate(cr_, angle);
    cairo_move_to(cr_, -extents.x_advance * h_align, size * 0.35 * v_shift * 2);
    cairo_show_text(cr_, text.c_str());
    cairo_restore(cr_);
  }

  void Line(double x0, double y0, double x1, double y1, double width) {
    cairo_set_line_width(cr_, width);
    cairo_move_to(cr_, x0, y0);
    cairo_line_to(cr_, x1, y1);
    cairo_stroke(cr_);
  }

 private:
  cairo_surface_t* surface_;
  cairo_t* cr_;
};

// Draws a value axis along a rectangle side: ticks at `values` mapped by
// `to_device`, labels outside.
template <typename ToDevice>
void XTicks(Canvas& canvas, const std::vector<double>& values, ToDevice to_device, double y) {
  canvas.Color({0.15, 0.15, 0.15});
  for (double v : values) {
    const double x = to_device(v);
    canvas.Line(x, y, x, y + 5, 1);
    canvas.Text(TickText(v), x, y + 16, 11, 0.5, 0.5);
  }
}

template <typename ToDevice>
void YTicks(Canvas& canvas, const std::vector<double>& values, ToDevice to_device, double x) {
  canvas.Color({0.15, 0.15, 0.15});
  for (double v : values) {
    const double y = to_device(v);
    canvas.Line(x - 5, y, x, y, 1);
    canvas.Text(TickText(v), x - 8, y, 11, 1.0, 0.5);
  }
}

// Integer ticks over indices [origin, origin + n - 1].
std::vector<double> IndexTicks(double origin, int64_t n) {
  std::vector<double> ticks = Ticks(origin, origin + static_cast<double>(n - 1), 4);
  std::vector<double> whole;
  for (double t : ticks) {
    if (std::abs(t - std::round(t)) < 1e-9) whole.push_back(std::round(t));
  }
  return whole.empty() ? std::vector<double>{origin} : whole;
}

void DrawHeatmap(Canvas& canvas, const Heatmap& map, const Range& range, double left,
                 double top, const Figure& figure) {
  // One pixel per value, scaled up with the nearest filter: exact cells at
  // any size, and one embedded image in an SVG rather than rows x cols rects.
  cairo_surface_t* image = cairo_image_surface_create(
      CAIRO_FORMAT_RGB24, static_cast<int>(map.cols), static_cast<int>(map.rows));
  cairo_surface_flush(image);
  unsigned char* data = cairo_image_surface_get_data(image);
  const int stride = cairo_image_surface_get_stride(image);
  for (int64_t r = 0; r < map.rows; ++r) {
    auto* row = reinterpret_cast<uint32_t*>(data + r * stride);
    for (int64_t c = 0; c < map.cols; ++c) {
      const double v = map.values[static_cast<size_t>(r * map.cols + c)];
      const Rgb color = std::isfinite(v) ? Viridis((v - range.lo) / (range.hi - range.lo))
                                         : Rgb{0.85, 0.85, 0.85};
      row[c] = (static_cast<uint32_t>(color.r * 255 + 0.5) << 16) |
               (static_cast<uint32_t>(color.g * 255 + 0.5) << 8) |
               static_cast<uint32_t>(color.b * 255 + 0.5);
    }
  }
  cairo_surface_mark_dirty(image);
  cairo_t* cr = canvas.cr();
  cairo_save(cr);
  cairo_translate(cr, left, top);
  cairo_scale(cr, kPanelSize / static_cast<double>(map.cols),
              kPanelSize / static_cast<double>(map.rows));
  cairo_set_source_surface(cr, image, 0, 0);
  cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
  cairo_rectangle(cr, 0, 0, static_cast<double>(map.cols), static_cast<double>(map.rows));
  cairo_fill(cr);
  cairo_restore(cr);
  cairo_surface_destroy(image);

  canvas.Color({0.15, 0.15, 0.15});
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, left, top, kPanelSize, kPanelSize);
  cairo_stroke(cr);
  const double cell_w = kPanelSize / static_cast<double>(map.cols);
  const double cell_h = kPanelSize / static_cast<double>(map.rows);
  XTicks(
      canvas, IndexTicks(map.col_origin, map.cols),
      [&](double v) { return left + (v - map.col_origin + 0.5) * cell_w; }, top + kPanelSize);
  YTicks(
      canvas, IndexTicks(map.row_origin, map.rows),
      [&](double v) { return top + (v - map.row_origin + 0.5) * cell_h; }, left);
  canvas.Text(map.title, left + kPanelSize / 2, top - 10, 13, 0.5, 0, /*bold=*/true);
  canvas.Text(figure.x_label, left + kPanelSize / 2, top + kPanelSize + 40, 12, 0.5, 0);
  canvas.Text(figure.y_label, left - 46, top + kPanelSize / 2, 12, 0.5, 0, false, -M_PI / 2);
}

void DrawColorBar(Canvas& canvas, const Range& range, const std::string& label, double left,
                  double top, double height) {
  cairo_t* cr = canvas.cr();
  cairo_pattern_t* gradient = cairo_pattern_create_linear(0, top + height, 0, top);
  for (int i = 0; i <= 32; ++i) {
    const Rgb c = Viridis(i / 32.0);
    cairo_pattern_add_color_stop_rgb(gradient, i / 32.0, c.r, c.g, c.b);
  }
  cairo_rectangle(cr, left, top, kColorBarWidth, height);
  cairo_set_source(cr, gradient);
  cairo_fill(cr);
  cairo_pattern_destroy(gradient);
  canvas.Color({0.15, 0.15, 0.15});
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, left, top, kColorBarWidth, height);
  cairo_stroke(cr);
  const auto to_y = [&](double v) {
    return top + height - (v - range.lo) / (range.hi - range.lo) * height;
  };
  for (double v : Ticks(range.lo, range.hi)) {
    const double y = to_y(v);
    canvas.Line(left + kColorBarWidth, y, left + kColorBarWidth + 5, y, 1);
    canvas.Text(TickText(v), left + kColorBarWidth + 8, y, 11, 0, 0.5);
  }
  canvas.Text(label, left + kColorBarWidth + 86, top + height / 2, 12, 0.5, 0, false, M_PI / 2);
}

void DrawHeatmaps(Canvas& canvas, const Figure& figure, int columns) {
  std::vector<const std::vector<double>*> groups;
  for (const Heatmap& map : figure.panels) groups.push_back(&map.values);
  const Range range = RangeOf(groups);
  const double cell_w = kPanelLeft + kPanelSize + kPanelRight;
  const double cell_h = kPanelTop + kPanelSize + kPanelBottom;
  for (size_t i = 0; i < figure.panels.size(); ++i) {
    const double left = kPanelLeft + static_cast<double>(i % columns) * cell_w;
    const double top = kFigureTitle + kPanelTop + static_cast<double>(i / columns) * cell_h;
    DrawHeatmap(canvas, figure.panels[i], range, left, top, figure);
  }
  const int rows = static_cast<int>((figure.panels.size() + columns - 1) / columns);
  DrawColorBar(canvas, range, figure.value_label, columns * cell_w + 10,
               kFigureTitle + kPanelTop, rows * cell_h - kPanelTop - kPanelBottom);
}

void DrawLines(Canvas& canvas, const Figure& figure) {
  constexpr double left = 90, right = kLineWidth - 30, top = kFigureTitle + 20,
                   bottom = kLineHeight - 70;
  std::vector<const std::vector<double>*> xs, ys;
  for (const Series& s : figure.series) {
    xs.push_back(&s.x);
    ys.push_back(&s.y);
  }
  const Range x_range = RangeOf(xs);
  const Range y_range = RangeOf(ys);
  const auto to_x = [&](double v) {
    return left + (v - x_range.lo) / (x_range.hi - x_range.lo) * (right - left);
  };
  const auto to_y = [&](double v) {
    return bottom - (v - y_range.lo) / (y_range.hi - y_range.lo) * (bottom - top);
  };
  cairo_t* cr = canvas.cr();
  // Grid first, then the series, then the frame and ticks over them.
  canvas.Color({0.9, 0.9, 0.9});
  const std::vector<double> x_ticks = Ticks(x_range.lo, x_range.hi, 8);
  const std::vector<double> y_ticks = Ticks(y_range.lo, y_range.hi, 6);
  for (double v : x_ticks) canvas.Line(to_x(v), top, to_x(v), bottom, 1);
  for (double v : y_ticks) canvas.Line(left, to_y(v), right, to_y(v), 1);
  cairo_save(cr);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_clip(cr);
  for (size_t i = 0; i < figure.series.size(); ++i) {
    const Series& s = figure.series[i];
    canvas.Color(SeriesColor(i));
    cairo_set_line_width(cr, 1.8);
    bool drawing = false;
    for (size_t p = 0; p < s.x.size(); ++p) {
      if (!std::isfinite(s.x[p]) || !std::isfinite(s.y[p])) {
        drawing = false;
        continue;
      }
      if (drawing) {
        cairo_line_to(cr, to_x(s.x[p]), to_y(s.y[p]));
      } else {
        cairo_move_to(cr, to_x(s.x[p]), to_y(s.y[p]));
        drawing = true;
      }
    }
    cairo_stroke(cr);
  }
  cairo_restore(cr);
  canvas.Color({0.15, 0.15, 0.15});
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_stroke(cr);
  XTicks(canvas, x_ticks, to_x, bottom);
  YTicks(canvas, y_ticks, to_y, left);
  canvas.Text(figure.x_label, (left + right) / 2, bottom + 46, 13, 0.5, 0);
  canvas.Text(figure.y_label, left - 66, (top + bottom) / 2, 13, 0.5, 0, false, -M_PI / 2);
  // Legend, top right, at most 12 entries.
  const size_t shown = std::min<size_t>(figure.series.size(), 12);
  double widest = 0;
  cairo_set_font_size(cr, 12);
  for (size_t i = 0; i < shown; ++i) {
    cairo_text_extents_t extents;
    cairo_text_extents(cr, figure.series[i].label.c_str(), &extents);
    widest = std::max(widest, extents.x_advance);
  }
  const double box_w = widest + 44, box_h = 18.0 * shown + 8;
  const double box_left = right - box_w - 8, box_top = top + 8;
  cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
  cairo_rectangle(cr, box_left, box_top, box_w, box_h);
  cairo_fill(cr);
  canvas.Color({0.6, 0.6, 0.6});
  cairo_rectangle(cr, box_left, box_top, box_w, box_h);
  cairo_stroke(cr);
  for (size_t i = 0; i < shown; ++i) {
    const double y = box_top + 13 + 18.0 * static_cast<double>(i);
    canvas.Color(SeriesColor(i));
    canvas.Line(box_left + 6, y, box_left + 30, y, 2.5);
    canvas.Color({0.1, 0.1, 0.1});
    canvas.Text(figure.series[i].label, box_left + 36, y, 12, 0, 0.5);
  }
}

absl::Status Validate(const Figure& figure) {
  if (figure.panels.empty() == figure.series.empty()) {
    return absl::InvalidArgumentError("a figure has heat-map panels or line series, not both");
  }
  for (const Heatmap& map : figure.panels) {
    if (map.rows < 1 || map.cols < 1 || map.rows > 32767 || map.cols > 32767 ||
        map.values.size() != static_cast<size_t>(map.rows * map.cols)) {
      return absl::InvalidArgumentError(absl::StrCat("panel '", map.title, "': ", map.rows, "x",
                                                     map.cols, " with ", map.values.size(),
                                                     " values (1..32767 rows and columns)"));
    }
  }
  for (const Series& s : figure.series) {
    if (s.x.size() != s.y.size() || s.x.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "series '", s.label, "': ", s.x.size(), " x and ", s.y.size(), " y values"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Render(const Figure& figure, const std::string& path) {
  const std::string lower = absl::AsciiStrToLower(path);
  const bool png = absl::EndsWith(lower, ".png");
  const bool svg = absl::EndsWith(lower, ".svg");
  if (!png && !svg) {
    return absl::InvalidArgumentError(
        absl::StrCat("--output: expected a file name ending .png or .svg, got '", path, "'"));
  }
  if (absl::Status valid = Validate(figure); !valid.ok()) return valid;

  const bool lines = !figure.series.empty();
  const int columns =
      std::min<int>(kMaxColumns, static_cast<int>(std::max<size_t>(1, figure.panels.size())));
  const int rows = static_cast<int>((figure.panels.size() + columns - 1) / columns);
  // Wide enough for the title (measured on a scratch surface).
  double title_width = 0;
  {
    Canvas scratch(cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1));
    cairo_select_font_face(scratch.cr(), kFont, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    cairo_set_font_size(scratch.cr(), kTitleSize);
    cairo_text_extents_t extents;
    cairo_text_extents(scratch.cr(), figure.title.c_str(), &extents);
    title_width = extents.x_advance + 40;
  }
  const double width = std::max(
      title_width,
      lines ? kLineWidth : columns * (kPanelLeft + kPanelSize + kPanelRight) + kColorBarRoom);
  const double height =
      lines ? kLineHeight : kFigureTitle + rows * (kPanelTop + kPanelSize + kPanelBottom) + 8;

  cairo_surface_t* surface =
      png ? cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(width),
                                       static_cast<int>(height))
          : cairo_svg_surface_create(path.c_str(), width, height);
  Canvas canvas(surface);
  if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("--output: cannot create '", path,
                                            "': ", cairo_status_to_string(cairo_surface_status(surface))));
  }
  cairo_set_source_rgb(canvas.cr(), 1, 1, 1);
  cairo_paint(canvas.cr());
  canvas.Color({0.05, 0.05, 0.05});
  canvas.Text(figure.title, width / 2, 28, kTitleSize, 0.5, 0, /*bold=*/true);
  if (lines) {
    DrawLines(canvas, figure);
  } else {
    DrawHeatmaps(canvas, figure, columns);
  }
  cairo_surface_flush(surface);
  cairo_status_t status = cairo_status(canvas.cr());
  if (status == CAIRO_STATUS_SUCCESS && png) {
    status = cairo_surface_write_to_png(surface, path.c_str());
  }
  if (status == CAIRO_STATUS_SUCCESS && svg) {
    cairo_surface_finish(surface);  // writes the SVG's closing part
    status = cairo_surface_status(surface);
  }
  if (status != CAIRO_STATUS_SUCCESS) {
    return absl::InternalError(
        absl::StrCat("--output: cannot write '", path, "': ", cairo_status_to_string(status)));
  }
  return absl::OkStatus();
}

std::string FigureJson(const Figure& figure) {
  nlohmann::json json = {{"title", figure.title},
                         {"x_label", figure.x_label},
                         {"y_label", figure.y_label},
                         {"value_label", figure.value_label},
                         {"panels", nlohmann::json::array()},
                         {"series", nlohmann::json::array()}};
  for (const Heatmap& map : figure.panels) {
    json["panels"].push_back({{"title", map.title},
                              {"rows", map.rows},
                              {"cols", map.cols},
                              {"row_origin", map.row_origin},
                              {"col_origin", map.col_origin},
                              {"values", map.values}});
  }
  for (const Series& s : figure.series) {
    json["series"].push_back({{"label", s.label}, {"x", s.x}, {"y", s.y}});
  }
  return json.dump(1) + "\n";
}

}  // namespace attnserve::client::plot
