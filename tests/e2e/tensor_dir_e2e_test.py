"""attnd --tensor_dir end to end: safetensors files written here with the
Python standard library alone (struct + json: an independent writer, not
attnd's reader run backwards) are loaded by the real attnd, and requests that
name them by `ref` (learned table and projection weights in F16, Shaw rel_k /
rel_v in BF16, Transformer-XL parameters in F32) give bit-identical results
to the same calls with the values inline. Also: unknown refs, refs with a
wrong shape, ListMethods' list, and start-up failures on a bad directory or a
corrupt file.

Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python and ATTND_PATH."""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.request

import grpc
import numpy as np

from attnserve import AttnError, Client
from attnserve.v1 import attention_pb2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess, attnd_path  # pylint: disable=wrong-import-position
from prometheus_text import sample_value  # pylint: disable=wrong-import-position

SEED = 20240611
START_TIMEOUT_S = 20


def as_f16(value):
    """`value` rounded to the nearest IEEE half, as a Python float."""
    return struct.unpack("<e", struct.pack("<e", value))[0]


def bf16_bits(value):
    """The bfloat16 bit pattern of a float32 value (its top 16 bits)."""
    return struct.unpack("<I", struct.pack("<f", value))[0] >> 16


def as_bf16(value):
    """`value` truncated to bfloat16 (float32 with the low 16 bits cleared)."""
    return struct.unpack("<f", struct.pack("<I", bf16_bits(value) << 16))[0]


def as_f32(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


ROUND = {"F32": as_f32, "F16": as_f16, "BF16": as_bf16}


def encode_values(dtype, values):
    if dtype == "F32":
        return struct.pack(f"<{len(values)}f", *values)
    if dtype == "F16":
        return struct.pack(f"<{len(values)}e", *values)
    if dtype == "BF16":
        return struct.pack(f"<{len(values)}H", *(bf16_bits(v) for v in values))
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None, raw_dtype_bytes=None):
    """Writes `tensors` ({name: (dtype, shape, flat values)}) in the safetensors
    layout: u64 little-endian header length, JSON header, data. The header is
    padded with spaces to a multiple of 8 bytes, as the Hugging Face writer
    does. raw_dtype_bytes: {name: bytes} for dtypes written verbatim."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    chunks = []
    offset = 0
    for name, (dtype, shape, values) in tensors.items():
        data = (raw_dtype_bytes or {}).get(name)
        if data is None:
            data = encode_values(dtype, values)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(b"".join(chunks))


def random_tensor(rng, dtype, shape, scale=1.0):
    """(dtype, shape, values) with values exactly representable in `dtype`,
    and the same values as a float32 ndarray (what a caller sends inline)."""
    count = 1
    for d in shape:
        count *= d
    values = [ROUND[dtype](rng.uniform(-scale, scale)) for _ in range(count)]
    return (dtype, shape, values), np.array(values, dtype=np.float32).reshape(shape)


def run_attnd(flags):
    """Runs attnd with `flags` on 127.0.0.1:0 expecting it to fail at start-up;
    returns (exit status, stderr)."""
    with tempfile.TemporaryDirectory(prefix="attnd_tensor_dir_") as tmp:
        command = [attnd_path(), "--address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                   f"--port_file={os.path.join(tmp, 'port')}", *flags]
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=START_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as timeout:
            raise AssertionError(f"attnd kept running with {flags}: {timeout.stderr}") from None
        return done.returncode, done.stderr


class TensorDirTest(unittest.TestCase):
    """One attnd serving three files of refs; calls compared with inline data."""

    @classmethod
    def setUpClass(cls):
        print(f"seed {SEED}")
        rng = random.Random(SEED)
        cls.dir = tempfile.mkdtemp(prefix="tensor_dir_e2e_")
        cls.inline = {}
        cls.written = {}  # ref -> (shape, dtype)

        def add_file(stem, tensors, metadata=None):
            stored = {}
            for name, (dtype, shape, scale) in tensors.items():
                stored[name], cls.inline[f"{stem}/{name}"] = random_tensor(rng, dtype, shape,
                                                                           scale)
                cls.written[f"{stem}/{name}"] = (list(shape), dtype)
            write_safetensors(os.path.join(cls.dir, f"{stem}.safetensors"), stored, metadata)

        # learned: d_model 8, H 2, D 4, max_len 16 (F16).
        add_file("gpt", {"wpe.weight": ("F16", [16, 8], 1.0),
                         "h.0.attn.w_q": ("F16", [8, 8], 0.5),
                         "h.0.attn.w_k": ("F16", [8, 8], 0.5),
                         "h.0.attn.w_v": ("F16", [8, 8], 0.5)})
        # Shaw: K = 2, D = Dv = 4 (BF16).
        add_file("shaw", {"rel_k": ("BF16", [5, 4], 1.0), "rel_v": ("BF16", [5, 4], 1.0)})
        # Transformer-XL: H 2, D 4, d_rel 4 (F32), with metadata.
        add_file("txl", {"layers.0.pos_bias_u": ("F32", [2, 4], 0.5),
                         "layers.0.pos_bias_v": ("F32", [2, 4], 0.5),
                         "layers.0.w_r": ("F32", [2, 4, 4], 0.5)},
                 metadata={"format": "pt", "source": "tensor_dir_e2e_test"})
        with open(os.path.join(cls.dir, "README.txt"), "w", encoding="utf-8") as f:
            f.write("not a tensor file; attnd skips it\n")
        cls.rng = np.random.default_rng(SEED)
        cls.server = AttndProcess([f"--tensor_dir={cls.dir}"])
        cls.client = Client(cls.server.address, timeout=30)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def qkv(self, b=1, h=2, sq=3, sk=5, d=4):
        q = self.rng.standard_normal((b, h, sq, d)).astype(np.float32)
        k = self.rng.standard_normal((b, h, sk, d)).astype(np.float32)
        v = self.rng.standard_normal((b, h, sk, d)).astype(np.float32)
        return q, k, v

    def assert_same_attend(self, by_ref, inline, **common):
        got = self.client.attend(return_probs=True, **common, **by_ref)
        want = self.client.attend(return_probs=True, **common, **inline)
        self.assertEqual(got.out.shape, want.out.shape)
        self.assertTrue(np.array_equal(got.out, want.out),
                        f"out differs: {got.out.ravel()[:4]} vs {want.out.ravel()[:4]}")
        self.assertTrue(np.array_equal(got.probs, want.probs))
        self.assertTrue(np.isfinite(got.out).all())
        return got

    def test_list_methods_lists_every_loaded_tensor_with_shape_and_dtype(self):
        response = self.client.list_methods()
        listed = {t.ref: (list(t.shape), t.dtype) for t in response.tensors}
        self.assertEqual(listed, self.written)
        self.assertEqual([t.ref for t in response.tensors], sorted(self.written))

    def test_learned_table_and_projection_weights_by_ref(self):
        x_q = self.rng.standard_normal((2, 3, 8)).astype(np.float32)
        x_kv = self.rng.standard_normal((2, 6, 8)).astype(np.float32)
        names = {"table": "gpt/wpe.weight", "w_q": "gpt/h.0.attn.w_q",
                 "w_k": "gpt/h.0.attn.w_k", "w_v": "gpt/h.0.attn.w_v"}
        got = self.assert_same_attend(
            {k: ref for k, ref in names.items()},
            {k: self.inline[ref] for k, ref in names.items()},
            method="learned", x_q=x_q, x_kv=x_kv, num_heads=2, causal=True)
        self.assertEqual(got.out.shape, (2, 2, 3, 4))
        # The table matters: a different one gives a different result.
        other = self.client.attend(method="learned", x_q=x_q, x_kv=x_kv, num_heads=2,
                                   causal=True, table=np.zeros((16, 8), np.float32),
                                   **{k: names[k] for k in ("w_q", "w_k", "w_v")})
        self.assertFalse(np.array_equal(got.out, other.out))
        # The kernels may work on their inputs in place: the stored tensors
        # must come out of every call unchanged, so the same call repeats.
        again = self.client.attend(method="learned", x_q=x_q, x_kv=x_kv, num_heads=2,
                                   causal=True, return_probs=True, **names)
        self.assertTrue(np.array_equal(got.out, again.out))

    def test_learned_encode_by_ref(self):
        x = self.rng.standard_normal((1, 4, 8)).astype(np.float32)
        got = self.client.encode("learned", x=x, offset=3, table="gpt/wpe.weight")
        want = self.client.encode("learned", x=x, offset=3, table=self.inline["gpt/wpe.weight"])
        self.assertTrue(np.array_equal(got["y"], want["y"]))
        # y = x + table[offset + s]: the F16 values arrived exactly.
        np.testing.assert_array_equal(got["y"], x + self.inline["gpt/wpe.weight"][3:7])

    def test_shaw_rel_k_rel_v_by_ref(self):
        q, k, v = self.qkv()
        self.assert_same_attend(
            {"rel_k": "shaw/rel_k", "rel_v": "shaw/rel_v"},
            {"rel_k": self.inline["shaw/rel_k"], "rel_v": self.inline["shaw/rel_v"]},
            method="shaw", q=q, k=k, v=v, max_relative_position=2)

    def test_transformer_xl_parameters_by_ref_with_matching_shape(self):
        q, k, v = self.qkv()
        refs = {"pos_bias_u": "txl/layers.0.pos_bias_u", "pos_bias_v": "txl/layers.0.pos_bias_v",
                "w_r": "txl/layers.0.w_r"}
        # A ref may state the shape it expects; equal to the stored one is fine.
        by_ref = {name: attention_pb2.Tensor(ref=ref, shape=self.written[ref][0])
                  for name, ref in refs.items()}
        self.assert_same_attend(by_ref, {name: self.inline[ref] for name, ref in refs.items()},
                                method="transformer_xl", q=q, k=k, v=v, d_rel=4, causal=True)

    def test_q_k_v_themselves_may_be_refs_on_a_stream(self):
        # Any request tensor may be a ref: here k and v come from the file.
        q = self.rng.standard_normal((1, 1, 2, 4)).astype(np.float32)
        k_ref, v_ref = "shaw/rel_k", "shaw/rel_v"
        k = self.inline[k_ref].reshape(1, 1, 5, 4)
        v = self.inline[v_ref].reshape(1, 1, 5, 4)
        self.assertEqual(self.written[k_ref][0], [5, 4])
        # rel_k is [5,4], not [B,H,Sk,D]: the kernels reject it by shape...
        with self.assertRaises(AttnError) as caught:
            self.client.attend(method="none", q=q, k=k_ref, v=v_ref)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        # ...while a stream of Shaw calls with refs matches the inline results.
        calls = [dict(method="shaw", q=q, k=k, v=v, max_relative_position=2,
                      rel_k=rel_k, rel_v=rel_v)
                 for rel_k, rel_v in ((k_ref, v_ref), (self.inline[k_ref], self.inline[v_ref]))]
        first, second = self.client.attend_stream(calls)
        self.assertTrue(np.array_equal(first.out, second.out))

    def test_unknown_ref_is_not_found_naming_field_and_ref(self):
        q, k, v = self.qkv()
        for ref in ("shaw/rel_q", "rel_k", "shaw.rel_k", "other/rel_k"):
            with self.assertRaises(AttnError) as caught:
                self.client.attend(method="shaw", q=q, k=k, v=v, max_relative_position=2,
                                   rel_k=ref, rel_v="shaw/rel_v")
            self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND, ref)
            self.assertIn(f"rel_k.ref: no tensor named '{ref}' is loaded on this server",
                          caught.exception.message)

    def test_ref_with_another_shape_is_invalid(self):
        q, k, v = self.qkv()
        with self.assertRaises(AttnError) as caught:
            self.client.attend(method="shaw", q=q, k=k, v=v, max_relative_position=2,
                               rel_k=attention_pb2.Tensor(ref="shaw/rel_k", shape=[4, 5]),
                               rel_v="shaw/rel_v")
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(caught.exception.message,
                         "rel_k.shape: must be empty or equal the shape of ref 'shaw/rel_k' "
                         "[5,4], got [4,5]")


class BatchedRefsTest(unittest.TestCase):
    """Concurrent callers naming the same refs are merged into batches by
    the dynamic batcher, and each gets exactly its own result."""

    CALLERS = 16

    def test_concurrent_ref_calls_batch_and_each_gets_its_own_result(self):
        rng = random.Random(SEED + 1)
        tmp = tempfile.mkdtemp(prefix="tensor_dir_batch_")
        self.addCleanup(shutil.rmtree, tmp, True)
        stored = {}
        inline = {}
        for name in ("rel_k", "rel_v"):
            stored[name], inline[name] = random_tensor(rng, "BF16", [5, 4])
        write_safetensors(os.path.join(tmp, "shaw.safetensors"), stored)
        # A long queue delay so that callers released together share batches.
        server = AttndProcess([f"--tensor_dir={tmp}", "--max_batch_size=64",
                               "--max_queue_delay_us=100000"])
        self.addCleanup(server.stop)
        self.assertGreater(server.metrics_port, 0)
        client = Client(server.address, timeout=30)
        self.addCleanup(client.close)
        nprng = np.random.default_rng(SEED + 1)
        inputs = [tuple(nprng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
                  for _ in range(self.CALLERS)]
        results = [None] * self.CALLERS
        errors = []
        barrier = threading.Barrier(self.CALLERS)

        def call(i):
            q, k, v = inputs[i]
            try:
                barrier.wait(timeout=30)
                results[i] = client.attend("shaw", q=q, k=k, v=v, max_relative_position=2,
                                           rel_k="shaw/rel_k", rel_v="shaw/rel_v").out
            except Exception as error:  # pylint: disable=broad-except
                errors.append(f"caller {i}: {error!r}")

        threads = [threading.Thread(target=call, args=(i,)) for i in range(self.CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        self.assertEqual(errors, [])
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                    timeout=10) as response:
            metrics = response.read().decode("utf-8")
        # Only now the reference calls, one at a time, so they do not count above.
        for i, (q, k, v) in enumerate(inputs):
            alone = client.attend("shaw", q=q, k=k, v=v, max_relative_position=2,
                                  rel_k=inline["rel_k"], rel_v=inline["rel_v"]).out
            self.assertTrue(np.array_equal(results[i], alone), f"caller {i}")
        batches = sample_value(metrics, "attnserve_batches_total", {"method": "shaw"})
        batched = sample_value(metrics, "attnserve_batched_requests_total", {"method": "shaw"})
        print(f"{batched:.0f} ref calls ran in {batches:.0f} batches")
        self.assertEqual(batched, self.CALLERS)
        self.assertLess(batches, batched, "no two ref calls shared a batch")


class StartUpTest(unittest.TestCase):
    """What attnd does with an empty, missing or corrupt --tensor_dir."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tensor_dir_startup_")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_good(self, stem):
        path = os.path.join(self.dir, f"{stem}.safetensors")
        write_safetensors(path, {"a": ("F32", [2, 2], [1.0, 2.0, 3.0, 4.0]),
                                 "b": ("F16", [3], [0.5, -1.0, 2.0])})
        return path

    def assert_start_up_fails(self, message_parts):
        code, stderr = run_attnd([f"--tensor_dir={self.dir}"])
        self.assertNotEqual(code, 0, stderr)
        for part in message_parts:
            self.assertIn(part, stderr)
        self.assertNotIn("listening", stderr)

    def test_empty_directory_serves_no_tensors(self):
        with AttndProcess([f"--tensor_dir={self.dir}"]) as server, \
                Client(server.address) as client:
            self.assertEqual(len(client.list_methods().tensors), 0)

    def test_missing_directory_stops_start_up(self):
        missing = os.path.join(self.dir, "nope")
        code, stderr = run_attnd([f"--tensor_dir={missing}"])
        self.assertEqual(code, 1, stderr)
        self.assertIn(f"attnd: --tensor_dir: '{missing}' does not exist", stderr)

    def test_truncated_file_stops_start_up_naming_it(self):
        self.write_good("fine")
        path = self.write_good("cut")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 3)
        self.assert_start_up_fails([f"--tensor_dir: {path}: tensor 'b'", "file truncated?"])

    def test_header_length_beyond_the_file_stops_start_up(self):
        path = os.path.join(self.dir, "garbage.safetensors")
        with open(path, "wb") as f:
            f.write(b"this is not a safetensors file at all")
        self.assert_start_up_fails([f"--tensor_dir: {path}: header: length"])

    def test_bad_json_stops_start_up(self):
        path = os.path.join(self.dir, "json.safetensors")
        text = b'{"a": {"dtype": "F32", '
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
        self.assert_start_up_fails([f"--tensor_dir: {path}: header: not valid JSON"])

    def test_unsupported_dtype_stops_start_up_naming_file_tensor_and_dtype(self):
        path = os.path.join(self.dir, "ints.safetensors")
        write_safetensors(path, {"ids": ("I64", [2], None)},
                          raw_dtype_bytes={"ids": struct.pack("<2q", 7, 9)})
        self.assert_start_up_fails(
            [f"--tensor_dir: {path}: tensor 'ids': dtype I64 is not supported"])


if __name__ == "__main__":
    unittest.main()
