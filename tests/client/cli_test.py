"""The attn CLI (<build>/bin/attn) against the real attnd: output JSON values,
exit codes (0 ok, 1 RPC error, 2 usage error) and stderr.

Run by CTest with ATTN_PYTHON and the environment ATTN_PATH, ATTND_PATH."""

import json
import math
import os
import socket
import struct
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnd_process import ATTN, AttnCliTestCase  # pylint: disable=wrong-import-position


# api.md's example: ALiBi, causal, q = k = [[1,0],[0,1]], v = [[1,2],[3,4]].
EXAMPLE = {
    "method": {"alibi": {}},
    "causal": True,
    "q": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]},
    "k": {"shape": [1, 1, 2, 2], "data": [1, 0, 0, 1]},
    "v": {"shape": [1, 1, 2, 2], "data": [1, 2, 3, 4]},
}
# By hand (slope 2^-8 for H = 1, scale 1/sqrt(2)): row 1 puts
# p1 = sigmoid(1/sqrt(2) + 1/256) on key 1; row 0 sees key 0 only.
P1 = 1.0 / (1.0 + math.exp(-(1.0 / math.sqrt(2.0) + 2.0 ** -8)))
EXAMPLE_OUT = [1.0, 2.0, 1.0 + 2.0 * P1, 2.0 + 2.0 * P1]


def example(scale_v=1.0, **changes):
    request = json.loads(json.dumps(EXAMPLE))
    request["v"]["data"] = [x * scale_v for x in request["v"]["data"]]
    request.update(changes)
    return request


class CliTest(AttnCliTestCase):

    TMP_PREFIX = "attn_cli_test_"

    def run_attn(self, *args, stdin="", address=None):
        """Runs attn with the subcommand and --address after it (flags after
        the subcommand must work)."""
        args = list(args)
        address = address or self.server.address
        args.insert(1 if args else 0, f"--address={address}")
        return subprocess.run([ATTN, *args], input=stdin, capture_output=True, text=True,
                              timeout=60, check=False)

    def write(self, name, text):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def assert_example_response(self, stdout, scale_v=1.0):
        response = json.loads(stdout)
        self.assertEqual(response["out"]["shape"], ["1", "1", "2", "2"])  # int64 as strings
        for got, want in zip(response["out"]["data"], EXAMPLE_OUT, strict=True):
            self.assertAlmostEqual(got, want * scale_v, delta=1e-5 * scale_v)

    def test_health(self):
        result = self.run_attn("health")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "SERVING")

    def test_methods_prints_every_method_with_proto_field_names(self):
        result = self.run_attn("methods")
        self.assertEqual(result.returncode, 0, result.stderr)
        response = json.loads(result.stdout)
        self.assertEqual({m["name"] for m in response["methods"]},
                         {"none", "sinusoidal", "learned", "rope", "transformer_xl", "shaw",
                          "alibi", "da_transformer"})
        self.assertIn("max_message_bytes", response["limits"])
        self.assertNotIn("maxMessageBytes", response["limits"])
        # Pretty-printed: more than one line.
        self.assertGreater(result.stdout.count("\n"), 10)

    def test_attend_from_a_file(self):
        path = self.write("example.json", json.dumps(EXAMPLE))
        result = self.run_attn("attend", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assert_example_response(result.stdout)
        self.assertEqual(result.stderr, "")

    def test_attend_from_stdin(self):
        for args in (("attend", "-"), ("attend",)):
            with self.subTest(args=args):
                result = self.run_attn(*args, stdin=json.dumps(example(scale_v=2.0)))
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assert_example_response(result.stdout, scale_v=2.0)

    def test_attend_probs_and_raw_output(self):
        result = self.run_attn("attend", stdin=json.dumps(example(return_probs=True,
                                                                  raw_output=True)))
        self.assertEqual(result.returncode, 0, result.stderr)
        response = json.loads(result.stdout)
        self.assertIn("raw_data", response["out"])  # base64 in proto-JSON
        self.assertNotIn("data", response["out"])
        self.assertIn("probs", response)

    def test_encode(self):
        request = {"method": {"alibi": {}}, "num_heads": 3, "sq": 2, "sk": 2}
        result = self.run_attn("encode", self.write("encode.json", json.dumps(request)))
        self.assertEqual(result.returncode, 0, result.stderr)
        outputs = json.loads(result.stdout)["outputs"]
        self.assertEqual(outputs["slopes"]["data"], [0.0625, 0.00390625, 0.25])
        self.assertEqual(outputs["bias"]["shape"], ["3", "2", "2"])

    def test_invalid_request_is_exit_1_naming_the_field(self):
        request = example(k={"shape": [1, 1, 2, 3], "data": [1, 0, 0, 0, 1, 0]})
        result = self.run_attn("attend", stdin=json.dumps(request))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertTrue(result.stderr.startswith("attn: INVALID_ARGUMENT: "), result.stderr)
        self.assertIn("k.shape", result.stderr)

    def test_variant_flags_set_the_request_fields(self):
        # Two query heads over one key/value head; a causal window of 1 lets
        # query i see key i only, and kv_lengths=1 hides key 1: row 0 is v0,
        # row 1 sees no key and is all zeros (attention-variants.md 4).
        request = example(q={"shape": [1, 2, 2, 2], "data": [1, 0, 0, 1, 0, 1, 1, 0]},
                          return_probs=True)
        result = self.run_attn("attend", "--num_kv_heads=1", "--window", "1", "--kv_lengths=1",
                               "--softcap=5", stdin=json.dumps(request))
        self.assertEqual(result.returncode, 0, result.stderr)
        response = json.loads(result.stdout)
        self.assertEqual(response["out"]["shape"], ["1", "2", "2", "2"])
        self.assertEqual(response["out"]["data"], [1, 2, 0, 0, 1, 2, 0, 0])
        self.assertEqual(response["probs"]["data"], [1, 0, 0, 0, 1, 0, 0, 0])
        # Without the flags the same request is ordinary causal GQA, and the
        # flags win over the JSON's fields.
        result = self.run_attn("attend", "--window=2", stdin=json.dumps(
            dict(request, window=1, kv_lengths=[1])))
        self.assertEqual(result.returncode, 0, result.stderr)
        # Row 1 now sees keys 0 and 1 by the window, and key 1 is still hidden.
        self.assertEqual(json.loads(result.stdout)["out"]["data"], [1, 2, 1, 2, 1, 2, 1, 2])
        # An invalid value is the server's INVALID_ARGUMENT naming the field.
        result = self.run_attn("attend", "--window=0", stdin=json.dumps(request))
        self.assertEqual(result.returncode, 1)
        self.assertIn("window", result.stderr)

    def test_16_bit_input_and_output(self):
        result = self.run_attn("attend", "--input_dtype=float16", "--output_dtype=float16",
                               stdin=json.dumps(example(return_probs=True)))
        self.assertEqual(result.returncode, 0, result.stderr)
        response = json.loads(result.stdout)
        for name in ("out", "probs"):
            # Printed as their values, with the type the server sent them in.
            self.assertEqual(response[name]["dtype"], "DTYPE_FLOAT16")
            self.assertNotIn("raw_data", response[name])
        for got, want in zip(response["out"]["data"], EXAMPLE_OUT, strict=True):
            self.assertLessEqual(abs(got - want), 2.0 ** -10 * abs(want), (got, want))
            # A float16 value (printed as the float32 it widens to).
            as_float32 = struct.unpack("<f", struct.pack("<f", got))[0]
            self.assertEqual(struct.unpack("<e", struct.pack("<e", as_float32))[0], as_float32)
        # bfloat16 from an encode: the slopes are exact in bfloat16.
        request = {"method": {"alibi": {}}, "num_heads": 3, "sq": 2, "sk": 2}
        result = self.run_attn("encode", "--output_dtype", "bfloat16", "--input_dtype=bfloat16",
                               stdin=json.dumps(request))
        self.assertEqual(result.returncode, 0, result.stderr)
        slopes = json.loads(result.stdout)["outputs"]["slopes"]
        self.assertEqual(slopes["dtype"], "DTYPE_BFLOAT16")
        self.assertEqual(slopes["data"], [0.0625, 0.00390625, 0.25])
        # A 16-bit input dtype on a stream, float32 out: the example's values
        # are exact in bfloat16, so the result is the float32 one.
        result = self.run_attn("attend", "--stream", "--input_dtype=bfloat16",
                               stdin=json.dumps([example(), example(scale_v=2.0)]))
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 2)
        self.assert_example_response(lines[1], scale_v=2.0)

    def test_variant_flag_usage_errors_are_exit_2(self):
        cases = {
            "attend-only flag on encode": ["encode", "--window=2", "-"],
            "request flag on health": ["health", "--output_dtype=float16"],
            "unknown dtype": ["attend", "--output_dtype=float8", "-"],
            "bad lengths": ["attend", "--kv_lengths=1,x", "-"],
            "negative kv heads": ["attend", "--num_kv_heads=-1", "-"],
            "bad softcap": ["attend", "--softcap=big", "-"],
        }
        for label, args in cases.items():
            with self.subTest(label):
                result = self.run_attn(*args, stdin=json.dumps(EXAMPLE))
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn("--" + args[1].split("=")[0].lstrip("-"), result.stderr)

    def test_stream_from_a_json_array_and_json_lines(self):
        requests = [example(scale_v=float(i + 1)) for i in range(3)]
        array_file = self.write("stream.json", json.dumps(requests, indent=2))
        lines_file = self.write("stream.jsonl", "\n".join(json.dumps(r) for r in requests) + "\n")
        for path in (array_file, lines_file):
            with self.subTest(path=os.path.basename(path)):
                result = self.run_attn("attend", "--stream", path)
                self.assertEqual(result.returncode, 0, result.stderr)
                lines = result.stdout.splitlines()
                self.assertEqual(len(lines), 3, result.stdout)
                for i, line in enumerate(lines):
                    self.assert_example_response(line, scale_v=float(i + 1))

    def test_stream_stops_at_a_bad_request(self):
        requests = [example(scale_v=float(i + 1)) for i in range(4)]
        requests[2]["k"] = {"shape": [1, 1, 2, 3], "data": [1, 0, 0, 0, 1, 0]}
        result = self.run_attn("attend", "--stream", self.write("bad.json", json.dumps(requests)))
        self.assertEqual(result.returncode, 1)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 2, result.stdout)
        self.assert_example_response(lines[1], scale_v=2.0)
        self.assertTrue(result.stderr.startswith("attn: INVALID_ARGUMENT: "), result.stderr)
        self.assertIn("k.shape", result.stderr)

    def decode_lines(self):
        """A RoPE GQA session (H=2 over one key/value head via --num_kv_heads,
        D=4): a prefill of 2 with probs, one step, truncate to 1, one step;
        and the Attend equal to the last step (causal, query_offset=1, over
        the kept key and the new one)."""
        def tensor(heads, n, seed):
            return {"shape": [1, heads, n, 4],
                    "data": [round(math.sin(seed * 7.1 + i * 1.3), 4) for i in range(heads * n * 4)]}

        def step(n, seed, **more):
            return {"step": {"q": tensor(2, n, seed), "k": tensor(1, n, seed + 1),
                             "v": tensor(1, n, seed + 2), **more}}
        first, last = step(2, 1, return_probs=True), step(1, 9)
        lines = [{"open": {"method": {"rope": {}}, "batch": 1, "num_heads": 2, "head_dim": 4,
                           "max_len": 8}},
                 first, step(1, 5), {"truncate": {"length": 1}}, last]
        keep = lambda t: {"shape": [1, 1, 1, 4], "data": t["data"][:4]}  # noqa: E731
        cat = lambda a, b: {"shape": [1, 1, 2, 4], "data": a["data"] + b["data"]}  # noqa: E731
        attend = {"method": {"rope": {}}, "causal": True, "query_offset": 1, "num_kv_heads": 1,
                  "q": last["step"]["q"], "k": cat(keep(first["step"]["k"]), last["step"]["k"]),
                  "v": cat(keep(first["step"]["v"]), last["step"]["v"])}
        return "\n".join(json.dumps(line) for line in lines) + "\n", attend

    def test_decode_replays_a_session_from_json_lines(self):
        text, attend = self.decode_lines()
        path = self.write("session.jsonl", text)
        result = self.run_attn("decode", path, "--num_kv_heads=1")
        self.assertEqual(result.returncode, 0, result.stderr)
        responses = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual([(r["message"], r["kind"], r["length"]) for r in responses],
                         [(0, "open", 0), (1, "step", 2), (2, "step", 3), (3, "truncate", 1),
                          (4, "step", 2)])
        self.assertEqual(responses[1]["out"], {"shape": [1, 2, 2, 4]})  # no values by default
        self.assertEqual(responses[1]["probs"], {"shape": [1, 2, 2, 2]})
        self.assertNotIn("probs", responses[2])
        # --values, from stdin: the last step equals attnd's Attend.
        result = self.run_attn("decode", "--values", "--num_kv_heads=1", stdin=text)
        self.assertEqual(result.returncode, 0, result.stderr)
        last = json.loads(result.stdout.splitlines()[-1])
        self.assertEqual(len(last["out"]["data"]), 8)
        expected = self.run_attn("attend", stdin=json.dumps(attend))
        self.assertEqual(expected.returncode, 0, expected.stderr)
        for got, want in zip(last["out"]["data"], json.loads(expected.stdout)["out"]["data"],
                             strict=True):
            self.assertAlmostEqual(got, want, delta=1e-5 + 1e-4 * abs(want))
        probs = json.loads(result.stdout.splitlines()[1])["probs"]["data"]
        self.assertAlmostEqual(sum(probs[:2]), 1.0, delta=1e-5)  # a row of probabilities
        # 16-bit output: the dtype is named and the values are float16's.
        result = self.run_attn("decode", "--values", "--num_kv_heads=1", "--output_dtype=float16",
                               stdin=text)
        self.assertEqual(result.returncode, 0, result.stderr)
        last = json.loads(result.stdout.splitlines()[-1])
        self.assertEqual(last["out"]["dtype"], "DTYPE_FLOAT16")
        for value in last["out"]["data"]:  # printed as float32 (%.9g reads back exactly)
            value = struct.unpack("<f", struct.pack("<f", value))[0]
            self.assertEqual(value, struct.unpack("<e", struct.pack("<e", value))[0])

    def test_decode_errors(self):
        text, _ = self.decode_lines()
        lines = text.splitlines()
        # The server's error ends the stream after the responses before it.
        bad = lines[:3] + [json.dumps({"truncate": {"length": 9}})] + lines[4:]
        result = self.run_attn("decode", "--num_kv_heads=1", stdin="\n".join(bad))
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(len(result.stdout.splitlines()), 3, result.stdout)
        self.assertTrue(result.stderr.startswith("attn: INVALID_ARGUMENT: "), result.stderr)
        self.assertIn("truncate.length", result.stderr)
        # Without --num_kv_heads the k/v heads do not match: the server names k.
        result = self.run_attn("decode", stdin=text)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(len(result.stdout.splitlines()), 1, result.stdout)
        # Usage errors: no open first, a second open, --values elsewhere, kv_lengths.
        for args, stdin in ((["decode"], "\n".join(lines[1:])),
                            (["decode"], "\n".join(lines + lines[:1])),
                            (["attend", "--values"], json.dumps(example())),
                            (["decode", "--kv_lengths=1"], text)):
            with self.subTest(args=args):
                result = self.run_attn(*args, stdin=stdin)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertTrue(result.stderr.startswith("attn: INVALID_ARGUMENT: "),
                                result.stderr)

    def test_unreachable_server_is_exit_1_unavailable(self):
        result = self.run_attn("health", address="127.0.0.1:1")
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith("attn: UNAVAILABLE: "), result.stderr)

    def test_any_grpc_target_with_the_default_service_config(self):
        # ipv4:<nothing listens>,<attnd>: round_robin skips the dead address
        # (gRPC's own pick_first would try it first).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        for target in (f"ipv4:{dead},{self.server.address}", f"dns:///{self.server.address}"):
            result = self.run_attn("attend", "-", stdin=json.dumps(example()), address=target)
            self.assertEqual(result.returncode, 0, f"{target}: {result.stderr}")
            self.assert_example_response(result.stdout)
            result = self.run_attn("health", address=target)
            self.assertEqual(result.stdout.strip(), "SERVING", f"{target}: {result.stderr}")
        # --service_config replaces the default; "" means none.
        result = self.run_attn("methods", "--service_config=")
        self.assertEqual(result.returncode, 0, result.stderr)
        result = self.run_attn("methods", "--service_config={bad")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--service_config: not a service config gRPC accepts", result.stderr)

    def test_usage_errors_are_exit_2(self):
        cases = {
            "unknown command": ["frobnicate"],
            "unknown flag": ["health", "--colour=red"],
            "bad timeout": ["health", "--timeout=soon"],
            "missing file": ["attend", os.path.join(self.tmp.name, "absent.json")],
            "two files": ["attend", "a.json", "b.json"],
            "stream on encode": ["encode", "--stream", "-"],
        }
        for label, args in cases.items():
            with self.subTest(label):
                result = subprocess.run([ATTN, *args], capture_output=True, text=True,
                                        timeout=60, check=False, input="")
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertTrue(result.stderr.startswith("attn: "), result.stderr)
        # Malformed JSON, and a field the message does not have.
        for text in ("{not json", '{"method": {"alibi": {}}, "qq": 1}', "[{}, {}]"):
            with self.subTest(text=text):
                result = self.run_attn("attend", stdin=text)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertTrue(result.stderr.startswith("attn: INVALID_ARGUMENT: "),
                                result.stderr)

    def test_help_lists_the_subcommands(self):
        result = subprocess.run([ATTN, "--help"], capture_output=True, text=True, timeout=60,
                                check=False)
        self.assertEqual(result.returncode, 0)
        for command in ("health", "methods", "encode", "attend", "--stream", "--address",
                        "--timeout"):
            self.assertIn(command, result.stdout)
        result = subprocess.run([ATTN], capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 2)
        self.assertIn("attend", result.stderr)


if __name__ == "__main__":
    unittest.main()
