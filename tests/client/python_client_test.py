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
