"""attnserve.Client.decode against a real attnd: a session stepped token by
token and in a prefill chunk equals the causal Attend over the whole
sequence; truncate rolls back; errors end the session as AttnError; the
context manager frees the server's cache (attnserve_session_cache_bytes)."""

import os
import sys
import unittest
import urllib.request

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import AttndProcess  # noqa: E402

import attnserve  # noqa: E402


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class DecodeSessionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.attnd = AttndProcess(["--session_memory_bytes=10000000"])
        cls.client = attnserve.Client(cls.attnd.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.attnd.stop()

    def test_rope_gqa_steps_equal_attend(self):
        rng = np.random.default_rng(7)
        b, h, h_kv, d, n = 1, 8, 2, 16, 9
        q = rng.standard_normal((b, h, n, d)).astype(np.float32)
        k = rng.standard_normal((b, h_kv, n, d)).astype(np.float32)
        v = rng.standard_normal((b, h_kv, n, d)).astype(np.float32)
        full = self.client.attend("rope", q, k, v, causal=True, layout="half").out
        outs = []
        with self.client.decode("rope", batch=b, num_heads=h, num_kv_heads=h_kv, head_dim=d,
                                max_len=64, layout="half") as s:
            self.assertEqual(s.length, 0)
            outs.append(s.step(q[:, :, :5], k[:, :, :5], v[:, :, :5]).out)
            for t in range(5, n):
                outs.append(s.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1]).out)
            self.assertEqual(s.length, n)
            self.assertEqual(s.truncate(3), 3)
            again = s.step(q[:, :, 3:5], k[:, :, 3:5], v[:, :, 3:5], return_probs=True)
            self.assertEqual(again.probs.shape, (b, h, 2, 5))
            np.testing.assert_allclose(again.out, full[:, :, 3:5], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.concatenate(outs, axis=2), full, rtol=1e-4, atol=1e-5)
        self.assertEqual(metric(self.attnd.metrics_port, "attnserve_session_cache_bytes"), 0)

    def test_learned_session_takes_x(self):
        rng = np.random.default_rng(8)
        b, h, d, dm, n = 2, 2, 4, 6, 4
        table = rng.standard_normal((8, dm)).astype(np.float32)
        w = [rng.standard_normal((dm, h * d)).astype(np.float32) / 3 for _ in range(3)]
        x = rng.standard_normal((b, n, dm)).astype(np.float32)
        full = self.client.attend("learned", x_q=x, x_kv=x, w_q=w[0], w_k=w[1], w_v=w[2],
                                  num_heads=h, causal=True, table=table).out
        with self.client.decode("learned", batch=b, num_heads=h, head_dim=d, max_len=8,
                                w_q=w[0], w_k=w[1], w_v=w[2], table=table) as s:
            outs = [s.step(x=x[:, t:t + 1]).out for t in range(n)]
        np.testing.assert_allclose(np.concatenate(outs, axis=2), full, rtol=1e-4, atol=1e-5)

    def test_errors_end_the_session(self):
        s = self.client.decode("none", batch=1, num_heads=1, head_dim=2, max_len=2)
        one = np.ones((1, 1, 1, 2), np.float32)
        s.step(one, one, one)
        with self.assertRaises(attnserve.AttnError) as caught:
            s.truncate(5)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("truncate.length", str(caught.exception))
        with self.assertRaises(attnserve.AttnError):
            s.step(one, one, one)
        with self.assertRaises(attnserve.AttnError) as caught:
            self.client.decode("none", batch=1, num_heads=1, head_dim=2, max_len=10 ** 9)
        self.assertEqual(caught.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED)


    def test_aio_session(self):
        import asyncio  # pylint: disable=import-outside-toplevel
        import attnserve.aio  # pylint: disable=import-outside-toplevel

        rng = np.random.default_rng(9)
        q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
        full = self.client.attend("alibi", q, k, v, causal=True).out

        async def run():
            async with attnserve.aio.Client(self.attnd.address) as client:
                async with await client.decode("alibi", batch=1, num_heads=2, head_dim=4,
                                               max_len=4) as s:
                    outs = [(await s.step(q[:, :, t:t + 1], k[:, :, t:t + 1],
                                          v[:, :, t:t + 1])).out for t in range(3)]
                    self.assertEqual(await s.truncate(1), 1)
                return outs

        outs = asyncio.run(run())
        np.testing.assert_allclose(np.concatenate(outs, axis=2), full, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    unittest.main()
