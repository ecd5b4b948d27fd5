"""What a `ref` saves: the same learned-attention call with its table and
projection weights sent inline (raw_data) or named by ref from --tensor_dir.

Starts the real attnd on 127.0.0.1 (port 0) with a safetensors file written
by the standard-library writer of tests/e2e/tensor_dir_e2e_test.py, then
alternates the two forms of the call and prints the median latency of each,
their ratio and the request sizes. Usage (from the repository root, after
`make build`):

  PYTHONPATH=build/python ATTND_PATH=build/bin/attnd /usr/bin/python3 \\
      bench/ref_vs_inline.py [--calls 30] [--max_len 4096] [--d_model 1024]
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from attnserve import Client
from attnserve import client as attn_client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "client"))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position


def load_writer():
    path = os.path.join(HERE, "..", "tests", "e2e", "tensor_dir_e2e_test.py")
    spec = importlib.util.spec_from_file_location("tensor_dir_e2e_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_safetensors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30, help="calls of each form")
    parser.add_argument("--max_len", type=int, default=4096, help="learned table rows")
    parser.add_argument("--d_model", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=8, help="Sq = Sk")
    args = parser.parse_args()

    rng = np.random.default_rng(7)
    d = args.d_model
    tensors = {
        "table": rng.standard_normal((args.max_len, d)).astype(np.float32),
        "w_q": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32),
        "w_k": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32),
        "w_v": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32),
    }
    x = rng.standard_normal((1, args.seq, d)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="ref_bench_") as tmp:
        load_writer()(os.path.join(tmp, "model.safetensors"),
                      {name: ("F32", list(t.shape), t.ravel().tolist())
                       for name, t in tensors.items()})
        with AttndProcess([f"--tensor_dir={tmp}"]) as server, \
                Client(server.address, timeout=60) as client:
            forms = {"inline": dict(tensors),
                     "ref": {name: f"model/{name}" for name in tensors}}
            common = dict(method="learned", x_q=x, x_kv=x, num_heads=args.heads)
            sizes = {form: attn_client.attend_request(**common, **kw).ByteSize()
                     for form, kw in forms.items()}
            outs = {form: client.attend(**common, **kw).out for form, kw in forms.items()}
            if not np.array_equal(outs["ref"], outs["inline"]):
                raise SystemExit("ref and inline results differ")
            times = {form: [] for form in forms}
            for _ in range(args.calls):
                for form, kw in forms.items():
                    start = time.perf_counter()
                    client.attend(**common, **kw)
                    times[form].append(time.perf_counter() - start)
    medians = {form: statistics.median(t) * 1e3 for form, t in times.items()}
    print(f"learned attend, table [{args.max_len},{d}], w_q/w_k/w_v [{d},{d}], "
          f"x [1,{args.seq},{d}], H={args.heads}, {args.calls} calls each (alternating)")
    for form in forms:
        print(f"  {form:6s}: request {sizes[form] / 2**20:8.2f} MiB, "
              f"median {medians[form]:8.2f} ms")
    print(f"  inline / ref median latency: {medians['inline'] / medians['ref']:.2f}x")


if __name__ == "__main__":
    main()
