#!/usr/bin/env python3
"""The pictures of docs/methods.md, drawn by `attn plot` from a running attnd
(so what the docs show is what the service computes). Requests are built
here with fixed seeds; each figure's request and numbers are written beside
its picture (docs/figures/NAME.json, NAME.data.json is not kept).

    scripts/figures.py ATTN_BINARY ADDRESS OUT_DIR      (make figures)
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

RNG = np.random.default_rng(20261205)


def tensor(array):
    array = np.asarray(array, dtype=np.float32)
    return {"shape": list(array.shape), "data": [float(x) for x in array.ravel()]}


def smooth_table(rows, cols, rng):
    """A learned-looking table: low-frequency curves plus noise, so the picture
    shows structure the way trained position tables do."""
    pos = np.arange(rows)[:, None] / rows
    freq = rng.uniform(0.5, 6.0, cols)[None, :]
    phase = rng.uniform(0, 2 * np.pi, cols)[None, :]
    return np.sin(2 * np.pi * freq * pos + phase) + 0.15 * rng.standard_normal((rows, cols))


def figures():
    heads = 8
    q = RNG.standard_normal((1, 4, 24, 16))
    k = RNG.standard_normal((1, 4, 24, 16))
    v = RNG.standard_normal((1, 4, 24, 16))
    table = smooth_table(64, 32, RNG)
    return [
        ("none_attention", "attend", {"method": {"none": {}}, "causal": True,
                                      "q": tensor(q), "k": tensor(k), "v": tensor(v)}),
        ("sinusoidal_table", "encode", {"method": {"sinusoidal": {}},
                                        "x": tensor(np.zeros((1, 64, 32)))}),
        ("sinusoidal_curve", "curve", {"method": {"sinusoidal": {}},
                                       "x": tensor(np.zeros((1, 128, 32)))}),
        ("learned_y", "encode", {"method": {"learned": {"table": tensor(table)}},
                                 "x": tensor(np.zeros((1, 64, 32)))}),
        ("rope_decay", "curve", {"method": {"rope": {"layout": "ROPE_LAYOUT_HALF"}},
                                 "x": tensor(np.ones((1, 1, 256, 64)))}),
        ("rope_attention", "attend", {"method": {"rope": {"layout": "ROPE_LAYOUT_HALF"}},
                                      "causal": True, "q": tensor(np.ones((1, 4, 24, 16))),
                                      "k": tensor(np.ones((1, 4, 24, 16))), "v": tensor(v)}),
        ("transformer_xl_table", "encode", {"method": {"transformer_xl": {"d_rel": 32}},
                                            "distances": tensor(np.arange(64))}),
        ("transformer_xl_curve", "curve", {"method": {"transformer_xl": {"d_rel": 32}},
                                           "distances": tensor(np.arange(-64, 65))}),
        ("shaw_buckets", "encode", {"method": {"shaw": {"max_relative_position": 4,
                                                        "rel_k": tensor(np.zeros((9, 8)))}},
                                    "sq": 16, "sk": 16}),
        ("alibi_bias", "encode", {"method": {"alibi": {}}, "num_heads": heads,
                                  "sq": 16, "sk": 16}),
        ("alibi_penalty", "curve", {"method": {"alibi": {}}, "num_heads": heads,
                                    "sq": 1, "sk": 64}),
        ("alibi_attention", "attend", {"method": {"alibi": {}}, "causal": True,
                                       "q": tensor(q), "k": tensor(k), "v": tensor(v)}),
        ("da_transformer_coeff", "encode", {
            "method": {"da_transformer": {"dist_w": tensor([0.5, 1.0, -0.5, 2.0]),
                                          "dist_v": tensor([1.0, 0.5, 2.0, 0.25])}},
            "sq": 16, "sk": 16}),
        ("da_transformer_curve", "curve", {
            "method": {"da_transformer": {"dist_w": tensor([0.5, 1.0, -0.5, 2.0]),
                                          "dist_v": tensor([1.0, 0.5, 2.0, 0.25])}},
            "sq": 1, "sk": 64}),
    ]


def main():
    attn, address, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for name, kind, request in figures():
            request_path = os.path.join(work, name + ".json")
            with open(request_path, "w", encoding="utf-8") as f:
                json.dump(request, f)
            output = os.path.join(out_dir, name + ".png")
            subprocess.run([attn, f"--address={address}", "plot", kind, request_path,
                            f"--output={output}"], check=True, stdout=subprocess.DEVNULL)
            print(f"figures: {output}")


if __name__ == "__main__":
    main()
