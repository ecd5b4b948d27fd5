"""The Python package attnserve against the real attnd: golden vectors
(positional-methods.md section 3) through Client.attend / Client.encode,
errors as AttnError, streams, and the request building on its own.

Run by CTest with ATTN_PYTHON, PYTHONPATH=<build>/python and ATTND_PATH."""

import asyncio
import glob
import inspect
import json
import os
import sys
import unittest

import grpc
import numpy as np

import attnserve
import attnserve.aio
from attnserve import client as attn_client
from attnserve.v1 import attention_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess  # pylint: disable=wrong-import-position

GOLDEN_DIR = os.environ.get(
    "ATTN_GOLDEN_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))


def load_case(name):
    with open(os.path.join(GOLDEN_DIR, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def run_case(client, case, raw=True):
    """Sends a golden case through the wrapper: scalar params and input
    tensors as keyword arguments (null params left out, i.e. defaults);
    returns {output name: ndarray}."""
    params = {k: v for k, v in case["params"].items() if v is not None}
    inputs = {k: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
              for k, t in case["inputs"].items()}
    if case["op"] == "attend":
        result = client.attend(method=case["method"], return_probs="probs" in case["expected"],
                               raw=raw, **params, **inputs)
        outputs = {"out": result.out}
        if result.probs is not None:
            outputs["probs"] = result.probs
        return outputs
    return client.encode(method=case["method"], raw=raw, **params, **inputs)


def compare(case, outputs):
    """'' when every expected tensor matches (section 3.3), else why not."""
    rtol, atol = case["tolerance"]["rtol"], case["tolerance"]["atol"]
    problems = []
    for name, tensor in case["expected"].items():
        if name not in outputs:
            problems.append(f"{name}: missing (got {sorted(outputs)})")
            continue
        got = outputs[name]
        expected = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        if got.dtype != np.float32:
            problems.append(f"{name}: dtype {got.dtype}, expected float32")
        if list(got.shape) != list(tensor["shape"]):
            problems.append(f"{name}: shape {list(got.shape)}, expected {tensor['shape']}")
            continue
        got64 = got.astype(np.float64)
        bad = ~np.isfinite(got64) | (np.abs(got64 - expected) > atol + rtol * np.abs(expected))
        if bad.any():
            first = np.argwhere(bad)[0]
            problems.append(f"{name}: {int(bad.sum())} of {bad.size} elements out of tolerance; "
                            f"first at {first.tolist()}: got {got64[tuple(first)]!r}, "
                            f"expected {expected[tuple(first)]!r}")
    return "; ".join(problems)


class RequestBuildingTest(unittest.TestCase):
    """The wrapper's request building, without a server."""

    def test_method_params_go_into_the_method_message(self):
        q = np.zeros((1, 1, 2, 4), np.float32)
        request = attn_client.attend_request(method="rope", q=q, k=q, v=q, layout="half",
                                             scaling="ntk", scaling_factor=2.0, rotary_dim=2)
        self.assertEqual(request.method.WhichOneof("kind"), "rope")
        self.assertEqual(request.method.rope.layout, attention_pb2.ROPE_LAYOUT_HALF)
        self.assertEqual(request.method.rope.scaling, attention_pb2.ROPE_SCALING_NTK)
        self.assertEqual(request.method.rope.scaling_factor, 2.0)
        self.assertEqual(request.method.rope.rotary_dim, 2)
        self.assertFalse(request.method.rope.HasField("base"))
        self.assertFalse(request.HasField("scale"))
        self.assertFalse(request.HasField("query_offset"))

        rel = np.arange(10, dtype=np.float32).reshape(5, 2)
        request = attn_client.attend_request(method="shaw", q=q, max_relative_position=2,
                                             rel_k=rel, rel_v=rel, raw=False, scale=0.5)
        self.assertEqual(request.method.shaw.max_relative_position, 2)
        self.assertEqual(list(request.method.shaw.rel_k.shape), [5, 2])
        self.assertEqual(list(request.method.shaw.rel_v.data), list(range(10)))
        self.assertEqual(request.scale, 0.5)
        self.assertFalse(request.raw_output)

        request = attn_client.encode_request("alibi", sq=3, sk=4, num_heads=2, query_offset=1)
        self.assertTrue(request.method.HasField("alibi"))
        self.assertEqual((request.sq, request.sk, request.num_heads, request.query_offset),
                         (3, 4, 2, 1))

    def test_client_side_mistakes_raise_before_sending(self):
        with self.assertRaises(ValueError):
            attn_client.attend_request(method="nope")
        with self.assertRaises(TypeError):
            attn_client.attend_request(method="alibi", layout="half")
        with self.assertRaises(ValueError):
            attn_client.attend_request(method="rope", layout="diagonal")

    def test_tensor_round_trip_data_and_raw(self):
        array = np.array([[1.5, -2.25, 3e-8], [0.0, -1e30, 7.0]], dtype=np.float32)
        for raw in (True, False):
            tensor = attnserve.to_tensor(array, raw=raw)
            self.assertEqual(list(tensor.shape), [2, 3])
            self.assertEqual(bool(tensor.raw_data), raw)
            back = attnserve.from_tensor(tensor)
            self.assertEqual(back.dtype, np.float32)
            np.testing.assert_array_equal(back, array)
        # raw_data is little-endian float32: 1.0 = 0x3f800000.
        self.assertEqual(attnserve.to_tensor([1.0]).raw_data, b"\x00\x00\x80\x3f")

    def test_new_attend_fields_and_rope_scaling_params(self):
        q = np.zeros((2, 4, 3, 8), np.float32)
        kv = np.zeros((2, 2, 5, 8), np.float32)
        request = attn_client.attend_request(
            method="rope", q=q, k=kv, v=kv, num_kv_heads=2, kv_lengths=np.array([5, 3]),
            window=4, softcap=30.0, scaling="yarn", scaling_factor=4.0, original_max_position=64,
            beta_fast=16, beta_slow=2, attention_factor=1.1)
        self.assertEqual(request.num_kv_heads, 2)
        self.assertEqual(list(request.kv_lengths), [5, 3])
        self.assertEqual((request.window, request.softcap), (4, 30.0))
        rope = request.method.rope
        self.assertEqual(rope.scaling, attention_pb2.ROPE_SCALING_YARN)
        self.assertEqual((rope.original_max_position, rope.beta_fast, rope.beta_slow,
                          rope.attention_factor), (64, 16.0, 2.0, 1.1))
        self.assertFalse(rope.HasField("low_freq_factor"))
        self.assertEqual(request.output_dtype, attention_pb2.DTYPE_UNSPECIFIED)
        # Unset: the fields stay absent (their meaning before issue 14).
        request = attn_client.attend_request(method="none", q=q, k=kv, v=kv)
        self.assertFalse(request.HasField("window") or request.HasField("softcap"))
        self.assertEqual((request.num_kv_heads, len(request.kv_lengths)), (0, 0))
        request = attn_client.attend_request(method="rope", scaling="llama3",
                                             low_freq_factor=1, high_freq_factor=4)
        self.assertEqual(request.method.rope.scaling, attention_pb2.ROPE_SCALING_LLAMA3)
        self.assertEqual(attn_client.attend_request(method="rope", scaling="dynamic_ntk")
                         .method.rope.scaling, attention_pb2.ROPE_SCALING_DYNAMIC_NTK)
        slopes = np.array([0.5, -0.25, 0.0], np.float32)
        request = attn_client.attend_request(method="alibi", slopes=slopes)
        np.testing.assert_array_equal(attnserve.from_tensor(request.method.alibi.slopes), slopes)
        with self.assertRaises(TypeError):
            attn_client.attend_request(method="none", window=2.5)
        with self.assertRaises(ValueError):
            attn_client.attend_request(method="none", output_dtype="float8")

    def test_float16_tensors_go_as_16_bit_raw_data(self):
        values = np.array([[1.0, 0.1], [-65520.0, 3.5 * 2.0**-24]], np.float32)
        for source in (values, values.astype(np.float64)):
            tensor = attnserve.to_tensor(source, dtype="float16")
            self.assertEqual(tensor.dtype, attention_pb2.DTYPE_FLOAT16)
            self.assertEqual(list(tensor.shape), [2, 2])
            # 0x3c00, 0x2e66 (0.1 rounded), 0xfc00 (a tie rounded to even: -inf),
            # 0x0004 (3.5 subnormal units, a tie rounded to even: 4).
            self.assertEqual(tensor.raw_data, bytes.fromhex("003c662e00fc0400"))
        with np.errstate(over="ignore"):
            half = values.astype(np.float16)
        for raw in (True, False):  # 16-bit tensors are raw_data whatever `raw` says
            tensor = attnserve.to_tensor(half, raw=raw)
            self.assertEqual(tensor.dtype, attention_pb2.DTYPE_FLOAT16)
            self.assertEqual(len(tensor.raw_data), 8)
            self.assertEqual(len(tensor.data), 0)
        back = attnserve.from_tensor(tensor)
        self.assertEqual(back.dtype, np.float16)
        np.testing.assert_array_equal(back.view(np.uint16), half.view(np.uint16))
        # The array's own dtype wins unless one is given: float32 on request.
        tensor = attnserve.to_tensor(half, dtype="float32")
        self.assertEqual((tensor.dtype, len(tensor.raw_data)), (attention_pb2.DTYPE_UNSPECIFIED, 16))
        # uint16 arrays with a 16-bit dtype are bit patterns, sent as given.
        tensor = attnserve.to_tensor(np.array([0x7BFF, 0x0001], np.uint16), dtype=np.float16)
        self.assertEqual(tensor.raw_data, bytes.fromhex("ff7b0100"))
        np.testing.assert_array_equal(attnserve.from_tensor(tensor),
                                      np.array([65504.0, 2.0**-24], np.float16))

    def test_bfloat16_rounds_to_nearest_even_and_keeps_nan(self):
        cases = {1.0: 0x3F80, 0.1: 0x3DCD, -3.0: 0xC040,
                 1 + 2.0**-8: 0x3F80,                  # tie, down to even
                 1 + 3 * 2.0**-8: 0x3F82,              # tie, up to even
                 float(np.finfo(np.float32).max): 0x7F80,  # overflow: inf
                 float("-inf"): 0xFF80, -0.0: 0x8000}
        values = np.array(list(cases), np.float32)
        bits = attnserve.float32_to_bfloat16_bits(values)
        self.assertEqual(bits.dtype, np.uint16)
        self.assertEqual([int(b) for b in bits], list(cases.values()))
        nan_bits = attnserve.float32_to_bfloat16_bits(
            np.array([0x7F800001, 0xFFC00000], np.uint32).view(np.float32))
        self.assertTrue(np.isnan(attnserve.bfloat16_bits_to_float32(nan_bits)).all())
        self.assertEqual(int(nan_bits[1]) & 0x8000, 0x8000)
        # Widening is exact: the float32 whose top half the bits are.
        np.testing.assert_array_equal(
            attnserve.bfloat16_bits_to_float32(np.array([0x3DCD], np.uint16)).view(np.uint32),
            np.array([0x3DCD0000], np.uint32))
        # Without ml_dtypes, bfloat16 goes as uint16 bit patterns with a dtype.
        tensor = attnserve.to_tensor(bits.reshape(2, 4), dtype="bfloat16")
        self.assertEqual(tensor.dtype, attention_pb2.DTYPE_BFLOAT16)
        self.assertEqual(list(tensor.shape), [2, 4])
        self.assertEqual(tensor.raw_data, bits.astype("<u2").tobytes())
        self.assertEqual(attnserve.to_tensor(values, dtype="bfloat16").raw_data, tensor.raw_data)
        back = attnserve.from_tensor(tensor)
        if attnserve.BFLOAT16 is None:
            self.assertEqual(back.dtype, np.uint16)
            np.testing.assert_array_equal(back.ravel(), bits)
        else:
            self.assertEqual(back.dtype, attnserve.BFLOAT16)
            np.testing.assert_array_equal(back.view(np.uint16).ravel(), bits)

    @unittest.skipIf(attnserve.BFLOAT16 is None, "ml_dtypes is not installed")
    def test_ml_dtypes_bfloat16_arrays(self):
        values = np.array([1.0, 0.1, 1 + 3 * 2.0**-8, -3.0], np.float32)
        array = values.astype(attnserve.BFLOAT16)
        tensor = attnserve.to_tensor(array)
        self.assertEqual(tensor.dtype, attention_pb2.DTYPE_BFLOAT16)
        # ml_dtypes' rounding and ours agree.
        self.assertEqual(tensor.raw_data,
                         attnserve.float32_to_bfloat16_bits(values).astype("<u2").tobytes())

    def test_input_and_output_dtype_apply_to_every_tensor(self):
        q = np.ones((1, 2, 3, 4), np.float32)
        request = attn_client.attend_request(method="shaw", q=q, k=q, v=q, rel_k=np.ones((3, 4)),
                                             rel_v=np.ones((3, 4)), max_relative_position=1,
                                             input_dtype="bfloat16", output_dtype="float16")
        for tensor in (request.q, request.k, request.v, request.method.shaw.rel_k):
            self.assertEqual(tensor.dtype, attention_pb2.DTYPE_BFLOAT16)
            self.assertEqual(len(tensor.raw_data), 2 * int(np.prod(tensor.shape)))
        self.assertEqual(request.output_dtype, attention_pb2.DTYPE_FLOAT16)
        self.assertTrue(request.raw_output)
        request = attn_client.encode_request("sinusoidal", x=np.ones((1, 2, 4), np.float16),
                                             output_dtype="DTYPE_BFLOAT16")
        self.assertEqual(request.x.dtype, attention_pb2.DTYPE_FLOAT16)
        self.assertEqual(request.output_dtype, attention_pb2.DTYPE_BFLOAT16)

    def test_from_tensor_rejects_a_16_bit_dtype_on_data_and_bad_lengths(self):
        with self.assertRaisesRegex(ValueError, "tensor.dtype"):
            attnserve.from_tensor(attention_pb2.Tensor(shape=[1], data=[1.0],
                                                       dtype=attention_pb2.DTYPE_FLOAT16))
        with self.assertRaisesRegex(ValueError, r"tensor.raw_data: expected 2 \* product"):
            attnserve.from_tensor(attention_pb2.Tensor(shape=[3], raw_data=b"\0" * 4,
                                                       dtype=attention_pb2.DTYPE_BFLOAT16))

    def test_from_tensor_rejects_a_count_mismatch(self):
        with self.assertRaises(ValueError):
            attnserve.from_tensor(attention_pb2.Tensor(shape=[2, 2], raw_data=b"\0" * 12))
        with self.assertRaises(ValueError):
            attnserve.from_tensor(attention_pb2.Tensor(shape=[3], data=[1.0, 2.0]))

    def test_down_server_raises_unavailable(self):
        with attnserve.Client("127.0.0.1:1", timeout=10.0) as client:
            with self.assertRaises(attnserve.AttnError) as caught:
                client.health()
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)


class ServerTest(unittest.TestCase):
    """The wrapper against attnd."""

    @classmethod
    def setUpClass(cls):
        cls.server = AttndProcess()
        cls.client = attnserve.Client(cls.server.address, timeout=60.0)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def check_golden(self, name, raw=True):
        case = load_case(name)
        outputs = run_case(self.client, case, raw=raw)
        self.assertEqual(set(outputs), set(case["expected"]), name)
        self.assertEqual(compare(case, outputs), "", name)

    def test_golden_alibi_attend(self):
        self.check_golden("att_alibi_h3_causal_s6")
        self.check_golden("att_alibi_h3_causal_s6", raw=False)

    def test_golden_rope_half_encode(self):
        self.check_golden("enc_rope_half_h2_s6_d10")

    def test_golden_shaw_attend(self):
        self.check_golden("att_shaw_k2_noncausal_s8")

    def test_golden_learned_out_of_range(self):
        case = load_case("att_learned_out_of_range")
        with self.assertRaises(attnserve.AttnError) as caught:
            run_case(self.client, case)
        self.assertEqual(caught.exception.code, grpc.StatusCode.OUT_OF_RANGE)
        self.assertTrue(caught.exception.message)

    def test_every_golden_case(self):
        files = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.json")))
        names = [os.path.basename(f)[:-5] for f in files if not f.endswith("manifest.json")]
        self.assertGreaterEqual(len(names), 75)
        for name in names:
            with self.subTest(case=name):
                case = load_case(name)
                if case.get("expect_error"):
                    with self.assertRaises(attnserve.AttnError) as caught:
                        run_case(self.client, case)
                    self.assertEqual(caught.exception.code.name, case["expect_error"].upper(),
                                     caught.exception.message)
                else:
                    self.assertEqual(compare(case, run_case(self.client, case)), "")

    def test_invalid_argument_raises_attn_error_naming_the_field(self):
        q = np.ones((1, 2, 3, 4), np.float32)
        k = np.ones((1, 2, 3, 5), np.float32)
        with self.assertRaises(attnserve.AttnError) as caught:
            self.client.attend(method="none", q=q, k=k, v=q)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("k.shape", caught.exception.message)
        self.assertIn("INVALID_ARGUMENT", str(caught.exception))

    def test_api_example(self):
        eye = np.array([[[[1, 0], [0, 1]]]], np.float32)
        v = np.array([[[[1, 2], [3, 4]]]], np.float32)
        result = self.client.attend(method="alibi", q=eye, k=eye, v=v, causal=True,
                                    return_probs=True)
        p1 = 1.0 / (1.0 + np.exp(-(1.0 / np.sqrt(2.0) + 2.0 ** -8)))
        np.testing.assert_allclose(result.out, [[[[1, 2], [1 + 2 * p1, 2 + 2 * p1]]]],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.probs, [[[[1, 0], [1 - p1, p1]]]], atol=1e-6)
        # Without return_probs there are none.
        self.assertIsNone(self.client.attend(method="alibi", q=eye, k=eye, v=v).probs)

    def test_health_and_list_methods(self):
        self.assertIs(self.client.health(), True)
        names = {m.name for m in self.client.list_methods().methods}
        self.assertEqual(names, {"none", "sinusoidal", "learned", "rope", "transformer_xl",
                                 "shaw", "alibi", "da_transformer"})

    def test_attend_stream(self):
        eye = np.array([[[[1, 0], [0, 1]]]], np.float32)
        requests = [dict(method="alibi", q=eye, k=eye, v=eye * (i + 1), causal=True)
                    for i in range(4)]
        results = self.client.attend_stream(requests)
        self.assertEqual(len(results), 4)
        for i, result in enumerate(results):
            np.testing.assert_allclose(result.out[0, 0, 0], [i + 1, 0], atol=1e-6)

        requests[2]["k"] = np.ones((1, 1, 2, 3), np.float32)
        with self.assertRaises(attnserve.AttnError) as caught:
            self.client.attend_stream(requests)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("k.shape", caught.exception.message)
        self.assertEqual(len(caught.exception.responses), 2)
        np.testing.assert_allclose(caught.exception.responses[1].out[0, 0, 0], [2, 0],
                                   atol=1e-6)


class _AwaitEach:
    """attnserve.aio.Client behind the sync client's face: each method call
    runs its coroutine to completion on the facade's own event loop, so the
    whole ServerTest suite runs again through the asyncio client."""

    def __init__(self, address, **options):
        self._loop = asyncio.new_event_loop()

        async def make():
            return attnserve.aio.Client(address, **options)
        self._client = self._loop.run_until_complete(make())

    def __getattr__(self, name):
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))

    def close(self):
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


class AioServerTest(ServerTest):
    """ServerTest's every case through attnserve.aio.Client."""

    @classmethod
    def setUpClass(cls):
        cls.server = AttndProcess()
        cls.client = _AwaitEach(cls.server.address, timeout=60.0)


class AioApiTest(unittest.TestCase):
    """attnserve.aio.Client has Client's public methods, as coroutines with the
    same parameters, and the same constructor."""

    def test_same_methods_and_arguments_as_coroutines(self):
        public = [name for name in dir(attnserve.Client) if not name.startswith("_")]
        self.assertLessEqual({"attend", "encode", "list_methods", "health", "attend_stream",
                              "close"}, set(public))
        for name in public:
            with self.subTest(method=name):
                sync, aio = getattr(attnserve.Client, name), getattr(attnserve.aio.Client, name)
                self.assertTrue(inspect.iscoroutinefunction(aio))
                self.assertEqual(inspect.signature(aio), inspect.signature(sync))
        self.assertEqual(inspect.signature(attnserve.aio.Client),
                         inspect.signature(attnserve.Client))


if __name__ == "__main__":
    unittest.main()
