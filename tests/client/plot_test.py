"""`attn plot` against the real attnd: every kind writes a valid, non-blank
PNG and SVG of the expected size, the plotted numbers (--data) are the
service's own (compared with the Python client's Encode and Attend), and bad
use gets exit 2 (usage) or 1 (RPC) with a message.

Run by CTest with ATTN_PYTHON and the environment ATTN_PATH, ATTND_PATH,
PYTHONPATH=<build>/python."""

import json
import os
import struct
import subprocess
import sys
import unittest
import xml.etree.ElementTree as ElementTree
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import ATTN, AttnCliTestCase  # pylint: disable=wrong-import-position

import attnserve  # pylint: disable=wrong-import-position

RNG = np.random.default_rng(20261205)
print("seed 20261205")

ALIBI = {"method": {"alibi": {}}, "num_heads": 4, "sq": 6, "sk": 9}
DA_W = [0.5, -0.25, 1.0]
DA_V = [1.5, 0.75, -0.5]
DA = {"method": {"da_transformer": {"dist_w": {"shape": [3], "data": DA_W},
                                    "dist_v": {"shape": [3], "data": DA_V}}},
      "sq": 5, "sk": 7}
SHAW = {"method": {"shaw": {"max_relative_position": 2,
                            "rel_k": {"shape": [5, 4], "data": [0.0] * 20}}},
        "sq": 6, "sk": 6}
ROPE = {"method": {"rope": {"layout": "ROPE_LAYOUT_HALF"}},
        "x": {"shape": [1, 1, 32, 8], "data": [1.0] * (32 * 8)}}
Q = RNG.standard_normal((1, 2, 5, 4)).astype(np.float32)
K = RNG.standard_normal((1, 2, 7, 4)).astype(np.float32)
V = RNG.standard_normal((1, 2, 7, 4)).astype(np.float32)
ATTEND = {"method": {"alibi": {}}, "causal": True,
          "q": {"shape": list(Q.shape), "data": Q.ravel().tolist()},
          "k": {"shape": list(K.shape), "data": K.ravel().tolist()},
          "v": {"shape": list(V.shape), "data": V.ravel().tolist()}}


def png_pixels(path):
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA PNG, decoded
    with the standard library (filters undone), to check it is not blank."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"{path}: not a PNG signature")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if zlib.crc32(kind + body) & 0xffffffff != crc:
            raise AssertionError(f"{path}: bad CRC in {kind}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = header[:4]
    if depth != 8 or color not in (2, 6):
        raise AssertionError(f"{path}: depth {depth} colour type {color}")
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = previous[x]
            c = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


class PlotTest(AttnCliTestCase):

    TMP_PREFIX = "attn_plot_test_"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.client = attnserve.Client(cls.server.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        super().tearDownClass()

    def plot(self, kind, request, suffix=".png", expect=0):
        name = f"{kind}_{self.id().split('.')[-1]}"
        request_path = os.path.join(self.tmp.name, name + ".json")
        with open(request_path, "w", encoding="utf-8") as f:
            json.dump(request, f)
        output = os.path.join(self.tmp.name, name + suffix)
        data = os.path.join(self.tmp.name, name + "_data.json")
        result = subprocess.run([ATTN, f"--address={self.server.address}", "plot", kind,
                                 request_path, f"--output={output}", f"--data={data}"],
                                capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(result.returncode, expect, result.stderr)
        if expect != 0:
            return result
        with open(data, encoding="utf-8") as f:
            return output, json.load(f)

    def assert_png_drawn(self, path, min_width, min_height):
        width, height, channels, rows = png_pixels(path)
        self.assertGreaterEqual(width, min_width)
        self.assertGreaterEqual(height, min_height)
        colours = set()
        dark = 0
        for row in rows[::3]:
            for x in range(0, width * channels, channels * 3):
                pixel = row[x:x + 3]
                colours.add(pixel)
                dark += sum(pixel) < 200
        # Not blank: the colour map's many colours, and dark text and axes.
        self.assertGreater(len(colours), 30)
        self.assertGreater(dark, 100)

    def test_encode_alibi_png_plots_the_service_bias(self):
        output, data = self.plot("encode", ALIBI)
        self.assert_png_drawn(output, 800, 300)
        bias = self.client.encode("alibi", num_heads=4, sq=6, sk=9)["bias"]
        self.assertEqual(len(data["panels"]), 4)
        for h, panel in enumerate(data["panels"]):
            self.assertEqual((panel["rows"], panel["cols"]), (6, 9))
            self.assertEqual(panel["row_origin"], 3)  # query_offset = sk - sq
            np.testing.assert_array_equal(np.array(panel["values"], np.float32),
                                          bias[h].ravel())
        self.assertIn("alibi", data["title"])
        self.assertIn("num_heads=4", data["title"])
        self.assertIn("m = 0.25", data["panels"][0]["title"])  # slope of head 0 at H=4

    def test_encode_da_transformer_svg_is_valid_and_holds_the_coefficients(self):
        output, data = self.plot("encode", DA, suffix=".svg")
        root = ElementTree.parse(output).getroot()
        self.assertEqual(root.tag, "{http://www.w3.org/2000/svg}svg")
        self.assertGreater(float(root.get("width").rstrip("pt")), 500)
        self.assertGreater(len(list(root.iter())), 50)  # glyphs, axes, the image
        coeff = self.client.encode("da_transformer", sq=5, sk=7,
                                   dist_w=np.array(DA_W, np.float32),
                                   dist_v=np.array(DA_V, np.float32))["coeff"]
        got = np.array([p["values"] for p in data["panels"]], np.float32).reshape(coeff.shape)
        np.testing.assert_array_equal(got, coeff)

    def test_encode_shaw_plots_clipped_buckets(self):
        output, data = self.plot("encode", SHAW)
        self.assert_png_drawn(output, 300, 300)
        values = np.array(data["panels"][0]["values"]).reshape(6, 6)
        want = np.clip(np.arange(6)[None, :] - np.arange(6)[:, None], -2, 2) + 2
        np.testing.assert_array_equal(values, want)

    def test_attend_plots_the_probabilities_of_each_head(self):
        output, data = self.plot("attend", ATTEND)
        self.assert_png_drawn(output, 600, 300)
        probs = self.client.attend("alibi", q=Q, k=K, v=V, causal=True, return_probs=True).probs
        self.assertEqual(len(data["panels"]), 2)
        for h, panel in enumerate(data["panels"]):
            np.testing.assert_array_equal(np.array(panel["values"], np.float32),
                                          probs[0, h].ravel())
            self.assertEqual(panel["row_origin"], 2)  # query_offset = Sk - Sq

    def test_curve_rope_shows_long_range_decay_of_qk(self):
        output, data = self.plot("curve", ROPE)
        self.assert_png_drawn(output, 800, 500)
        y = self.client.encode("rope", x=np.ones((1, 1, 32, 8), np.float32), layout="half")["y"]
        series = data["series"][0]
        want = y[0, 0] @ y[0, 0, 0]
        np.testing.assert_allclose(series["y"], want, rtol=1e-6)
        self.assertEqual(series["x"], list(range(32)))
        self.assertAlmostEqual(series["y"][0], 8.0, places=5)  # |x|^2 at distance 0
        self.assertLess(max(series["y"][8:]), series["y"][0])

    def test_curve_alibi_is_a_line_per_head_through_zero(self):
        output, data = self.plot("curve", ALIBI, suffix=".svg")
        ElementTree.parse(output)
        self.assertEqual(len(data["series"]), 4)
        for h, series in enumerate(data["series"]):
            slope = 2.0 ** (-8 * (h + 1) / 4)
            np.testing.assert_allclose(series["y"], [-slope * d for d in series["x"]],
                                       rtol=1e-6, atol=1e-7)
            self.assertEqual(series["x"][-1], 0)  # the key at the query's own position

    def test_bad_use_is_a_usage_or_rpc_error(self):
        result = self.plot("histogram", ALIBI, expect=2)
        self.assertIn("unknown kind", result.stderr)
        result = self.plot("encode", ALIBI, suffix=".jpg", expect=2)
        self.assertIn(".png or .svg", result.stderr)
        result = self.plot("encode", {"method": {"none": {}}}, expect=1)
        self.assertIn("nothing to draw", result.stderr)
        result = self.plot("encode", {"method": {"alibi": {}}, "num_heads": 0, "sq": 2, "sk": 2},
                           expect=1)
        self.assertIn("INVALID_ARGUMENT", result.stderr)
        missing = subprocess.run([ATTN, f"--address={self.server.address}", "plot", "encode"],
                                 input="{}", capture_output=True, text=True, timeout=60,
                                 check=False)
        self.assertEqual(missing.returncode, 2)
        self.assertIn("--output", missing.stderr)


if __name__ == "__main__":
    unittest.main()
