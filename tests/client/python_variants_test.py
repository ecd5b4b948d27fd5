"""The Python package against the real attnd on the attention variants
(attention-variants.md): every attend and encode case of tests/golden-variants/
and tests/golden-generated/ (format_version 2: GQA, kv_lengths, windows, softcap, 16-bit inputs and
outputs, the RoPE scalings, ALiBi slopes, and their errors) through
Client.attend / Client.encode keyword arguments, over both transports and
through attnserve.aio; plus what only a client can check: the request bytes
that float16 saves, the types of 16-bit results, and GQA against repeated
heads.

Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python and ATTND_PATH."""

import glob
import json
import os
import sys
import unittest

import numpy as np

import attnserve
import attnserve.aio
from attnserve import client as attn_client
from attnserve.v1 import attention_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position
from python_client_test import _AwaitEach  # pylint: disable=wrong-import-position

# The public cases and the project's own (scripts of ref14, gen_* names).
VARIANTS_DIRS = [
    os.environ.get("ATTN_GOLDEN_VARIANTS_DIR",
                   os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "golden-variants")),
    os.environ.get("ATTN_GOLDEN_GENERATED_DIR",
                   os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "golden-generated")),
]

# attention-variants.md 9.3: the mantissa bits and the smallest normal
# exponent of each 16-bit type, for the one-ulp allowance of 16-bit outputs.
ULP_PARAMS = {"float16": (10, -14), "bfloat16": (7, -126)}
# The case's scalar names that go into the call as they are; the others of
# `params` are method parameters (passed as keyword arguments all the same).
NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def load_cases():
    """{name: case} of every attend and encode case (decode cases are
    decode15's: the Python package has no Decode call)."""
    cases = {}
    paths = [p for d in VARIANTS_DIRS for p in sorted(glob.glob(os.path.join(d, "*.json")))]
    for path in paths:
        if path.endswith("manifest.json"):
            continue
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        if case["op"] in ("attend", "encode"):
            cases[case["name"]] = case
    return cases


def case_tensor(spec):
    """A keyword argument for one input of a case (9.1): a 16-bit tensor as
    a float16 array or bfloat16 bit patterns with their dtype; the error
    cases' "wire": "data" and "raw_hex" tensors as attention_pb2.Tensor."""
    dtype = spec.get("dtype", "float32")
    wire_type = {"float16": attention_pb2.DTYPE_FLOAT16,
                 "bfloat16": attention_pb2.DTYPE_BFLOAT16}.get(dtype)
    if "raw_hex" in spec:
        return attention_pb2.Tensor(shape=spec["shape"], raw_data=bytes.fromhex(spec["raw_hex"]),
                                    dtype=wire_type or attention_pb2.DTYPE_UNSPECIFIED)
    values = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
    if spec.get("wire") == "data":
        return attention_pb2.Tensor(shape=spec["shape"], data=values.ravel().tolist(),
                                    dtype=wire_type or attention_pb2.DTYPE_UNSPECIFIED)
    if dtype == "float16":
        return values.astype(np.float16)  # exact: the values are float16 values
    if dtype == "bfloat16":
        bits = attnserve.float32_to_bfloat16_bits(values)
        if attnserve.BFLOAT16 is not None:
            return bits.view(attnserve.BFLOAT16)
        return attnserve.to_tensor(bits, dtype="bfloat16")
    return values


def call_args(case, raw):
    """The keyword arguments of Client.attend/encode for `case`."""
    params = {}
    for key, value in case["params"].items():
        if value is None or key == "raw_output":
            continue
        params[key] = NON_FINITE.get(value, value) if isinstance(value, str) else value
    if params.get("output_dtype") == "float32":
        del params["output_dtype"]  # the default: leave the field unset (9.1)
    sixteen_bit_out = params.get("output_dtype") in ULP_PARAMS
    # 9.3: the runner sets raw_output for a 16-bit output_dtype unless the
    # case forbids it.
    if case["params"].get("raw_output") is False:
        raw = False
    elif sixteen_bit_out:
        raw = True
    inputs = {name: case_tensor(spec) for name, spec in case["inputs"].items()}
    return {"method": case["method"], "raw": raw, **params, **inputs}


def run_case(client, case, raw=True):
    """{output name: ndarray} as the client returns them."""
    args = call_args(case, raw)
    if case["op"] == "attend":
        result = client.attend(return_probs="probs" in case["expected"], **args)
        outputs = {"out": result.out}
        if result.probs is not None:
            outputs["probs"] = result.probs
        return outputs
    return client.encode(**args)


def widened(array, dtype_name):
    """float64 values of a result array of `dtype_name`."""
    if dtype_name == "bfloat16" and array.dtype == np.uint16:
        return attnserve.bfloat16_bits_to_float32(array).astype(np.float64)
    return array.astype(np.float64)


def ulp(expected, dtype_name):
    mantissa, e_min = ULP_PARAMS[dtype_name]
    magnitude = np.abs(expected)
    exponent = np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    return np.where(magnitude >= 2.0**e_min, 2.0**(exponent - mantissa), 2.0**(e_min - mantissa))


def compare(case, outputs):
    """'' when every expected tensor matches (9.3), else why not."""
    rtol, atol = case["tolerance"]["rtol"], case["tolerance"]["atol"]
    dtype_name = case["params"].get("output_dtype") or "float32"
    want_dtype = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                  "bfloat16": attnserve.BFLOAT16 or np.dtype(np.uint16)}[dtype_name]
    problems = []
    for name, tensor in case["expected"].items():
        if name not in outputs:
            problems.append(f"{name}: missing (got {sorted(outputs)})")
            continue
        got = outputs[name]
        if got.dtype != want_dtype:
            problems.append(f"{name}: dtype {got.dtype}, expected {want_dtype}")
            continue
        if list(got.shape) != list(tensor["shape"]):
            problems.append(f"{name}: shape {list(got.shape)}, expected {tensor['shape']}")
            continue
        expected = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        got64 = widened(got, dtype_name)
        allowed = atol + rtol * np.abs(expected)
        if dtype_name in ULP_PARAMS:
            allowed = allowed + ulp(expected, dtype_name)
        bad = ~np.isfinite(got64) | (np.abs(got64 - expected) > allowed)
        if bad.any():
            first = np.argwhere(bad)[0]
            problems.append(f"{name}: {int(bad.sum())} of {bad.size} elements out of tolerance; "
                            f"first at {first.tolist()}: got {got64[tuple(first)]!r}, "
                            f"expected {expected[tuple(first)]!r}")
    return "; ".join(problems)


class VariantsTest(unittest.TestCase):
    """Every variant case through attnserve.Client."""

    @classmethod
    def setUpClass(cls):
        cls.cases = load_cases()
        cls.server = AttndProcess()
        cls.client = cls.make_client(cls.server.address)

    @classmethod
    def make_client(cls, address):
        return attnserve.Client(address, timeout=60.0)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def test_the_public_cases_are_there(self):
        self.assertGreaterEqual(len(self.cases), 50 + 100)
        self.assertTrue(any(name.startswith("gen_") for name in self.cases))
        for feature in ("gqa", "mqa", "window", "kv_lengths", "softcap", "fp16", "bf16", "yarn",
                        "llama3", "dynamic_ntk", "slopes", "empty_rows"):
            self.assertTrue(any(feature in name for name in self.cases), feature)

    def check_every_case(self, raw):
        for name, case in self.cases.items():
            with self.subTest(case=name, raw=raw):
                if case.get("expect_error"):
                    with self.assertRaises(attnserve.AttnError) as caught:
                        run_case(self.client, case, raw=raw)
                    self.assertEqual(caught.exception.code.name, case["expect_error"].upper(),
                                     caught.exception.message)
                    fields = case["expect_field"]
                    self.assertTrue(any(f in caught.exception.message for f in fields),
                                    f"{caught.exception.message!r} names none of {fields}")
                else:
                    self.assertEqual(compare(case, run_case(self.client, case, raw=raw)), "")

    def test_every_case_raw_data(self):
        self.check_every_case(raw=True)

    def test_every_case_data(self):
        # 9.3: float32 tensors in data, 16-bit ones still raw_data.
        self.check_every_case(raw=False)

    def test_gqa_equals_repeated_key_value_heads(self):
        rng = np.random.default_rng(14)  # fixed seed
        q = rng.standard_normal((2, 8, 5, 16), dtype=np.float32)
        k = rng.standard_normal((2, 2, 9, 16), dtype=np.float32)
        v = rng.standard_normal((2, 2, 9, 8), dtype=np.float32)
        for method, params in (("none", {}), ("rope", {"layout": "half"}),
                               ("alibi", {}), ("rope", {"scaling": "yarn", "scaling_factor": 4.0,
                                                        "original_max_position": 4})):
            with self.subTest(method=method, **params):
                gqa = self.client.attend(method=method, q=q, k=k, v=v, causal=True, window=4,
                                         kv_lengths=[9, 7], return_probs=True, **params)
                mha = self.client.attend(method=method, q=q, k=np.repeat(k, 4, axis=1),
                                         v=np.repeat(v, 4, axis=1), causal=True, window=4,
                                         kv_lengths=[9, 7], return_probs=True, **params)
                np.testing.assert_allclose(gqa.out, mha.out, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(gqa.probs, mha.probs, rtol=1e-5, atol=1e-6)
                # Batch 1 sees only its first 7 keys.
                self.assertEqual(float(np.abs(gqa.probs[1, :, :, 7:]).max()), 0.0)

    def test_float16_halves_the_request_and_returns_float16(self):
        rng = np.random.default_rng(16)  # fixed seed
        q, k, v = (rng.standard_normal((1, 4, 64, 32)).astype(np.float16) for _ in range(3))
        request16 = attn_client.attend_request("none", q, k, v)
        request32 = attn_client.attend_request("none", q.astype(np.float32), k.astype(np.float32),
                                               v.astype(np.float32))
        for name in ("q", "k", "v"):
            self.assertEqual(getattr(request16, name).dtype, attention_pb2.DTYPE_FLOAT16)
        size16, size32 = request16.ByteSize(), request32.ByteSize()
        self.assertLess(size16, 0.51 * size32, (size16, size32))
        out16 = self.client.attend("none", q, k, v, output_dtype="float16").out
        out32 = self.client.attend("none", q.astype(np.float32), k.astype(np.float32),
                                   v.astype(np.float32)).out
        self.assertEqual(out16.dtype, np.float16)
        # The same computation (the inputs widen exactly), rounded once to float16.
        np.testing.assert_array_equal(out16, out32.astype(np.float16))
        # input_dtype rounds float32 arrays on the client: the same as sending float16.
        rounded = self.client.attend("none", q.astype(np.float32), k.astype(np.float32),
                                     v.astype(np.float32), input_dtype="float16").out
        np.testing.assert_array_equal(rounded, out32)

    def test_stream_of_variant_requests_equals_the_unary_calls(self):
        rng = np.random.default_rng(17)  # fixed seed
        q = rng.standard_normal((2, 4, 3, 8)).astype(np.float16)
        k = rng.standard_normal((2, 1, 6, 8)).astype(np.float16)
        requests = [dict(method="alibi", q=q, k=k, v=k, causal=True, window=2, kv_lengths=[6, 4],
                         output_dtype="float16", return_probs=True),
                    dict(method="rope", q=q, k=k, v=k, softcap=2.0, input_dtype="bfloat16",
                         scaling="llama3", scaling_factor=8, original_max_position=4)]
        streamed = self.client.attend_stream(requests)
        self.assertEqual(len(streamed), 2)
        for request, result in zip(requests, streamed):
            unary = self.client.attend(**request)
            self.assertEqual(result.out.dtype, unary.out.dtype)
            np.testing.assert_array_equal(result.out, unary.out)
        self.assertEqual(streamed[0].out.dtype, np.float16)
        self.assertEqual(streamed[0].probs.dtype, np.float16)

    def test_bfloat16_output_is_bits_or_ml_dtypes(self):
        x = np.linspace(-2, 2, 2 * 5 * 8, dtype=np.float32).reshape(2, 5, 8)
        y32 = self.client.encode("sinusoidal", x=x)["y"]
        y16 = self.client.encode("sinusoidal", x=x, output_dtype="bfloat16")["y"]
        expected_bits = attnserve.float32_to_bfloat16_bits(y32)
        if attnserve.BFLOAT16 is None:
            self.assertEqual(y16.dtype, np.uint16)
            np.testing.assert_array_equal(y16, expected_bits)
        else:
            self.assertEqual(y16.dtype, attnserve.BFLOAT16)
            np.testing.assert_array_equal(y16.view(np.uint16), expected_bits)

    def test_readme_example(self):
        # README.md "A first call": GQA with a window and padding, float16.
        rng = np.random.default_rng(0)
        q = rng.standard_normal((2, 32, 128, 64), dtype=np.float32)
        k = rng.standard_normal((2, 8, 128, 64), dtype=np.float32)
        v = rng.standard_normal((2, 8, 128, 64), dtype=np.float32)
        out = self.client.attend("rope", q=q, k=k, v=v, causal=True, layout="half", window=64,
                                 kv_lengths=[128, 100]).out
        self.assertEqual((out.shape, out.dtype), ((2, 32, 128, 64), np.float32))
        self.assertTrue(np.isfinite(out).all())
        # Batch 1's keys from 100 on are padding: other values there change nothing.
        k[1, :, 100:], v[1, :, 100:] = 7.0, -7.0
        padded = self.client.attend("rope", q=q, k=k, v=v, causal=True, layout="half",
                                    window=64, kv_lengths=[128, 100]).out
        np.testing.assert_allclose(padded, out, rtol=1e-6, atol=1e-7)
        half = self.client.attend("none", q=q.astype(np.float16), k=k.astype(np.float16),
                                  v=v.astype(np.float16), output_dtype="float16").out
        self.assertEqual((half.shape, half.dtype), ((2, 32, 128, 64), np.float16))

    def test_16_bit_output_without_raw_is_the_servers_invalid_argument(self):
        q = np.ones((1, 1, 2, 4), np.float32)
        with self.assertRaises(attnserve.AttnError) as caught:
            self.client.attend("none", q, q, q, output_dtype="float16", raw=False)
        self.assertEqual(caught.exception.code.name, "INVALID_ARGUMENT")
        self.assertIn("output_dtype", caught.exception.message)


class AioVariantsTest(VariantsTest):
    """VariantsTest's every check through attnserve.aio.Client."""

    @classmethod
    def make_client(cls, address):
        return _AwaitEach(address, timeout=60.0)


if __name__ == "__main__":
    unittest.main()
