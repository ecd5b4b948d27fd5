#!/usr/bin/python3
"""Writes deploy/ghz/: one ghz config and one request data file per call of
every method (Attend and Encode under each positional method, ListMethods,
grpc.health.v1.Health/Check) and the attention variants (grouped-query
attention with a sliding window, YaRN, float16 in and out), the requests taken
from golden vectors in tests/golden/ and tests/golden-variants/ so that each is
valid and its answer is known.

Run from the repository root after a build (it needs the generated modules):
  PYTHONPATH=build/python /usr/bin/python3 scripts/gen_ghz_configs.py
"""

import json
import os

import numpy as np
from google.protobuf import json_format

from attnserve.client import attend_request, encode_request, to_tensor

GOLDEN_DIR = "tests/golden"
VARIANTS_DIR = "tests/golden-variants"
OUT_DIR = "deploy/ghz"
ATTENTION_PROTO = "proto/attnserve/v1/attention.proto"
HEALTH_PROTO = "proto/grpc/health/v1/health.proto"

# config name -> golden case (small cases: the configs measure the service,
# not the kernels).
CASES = {
    "attend_none": "att_none_causal_b2_h3_s5",
    "attend_sinusoidal": "att_sinusoidal_causal_h3",
    "attend_learned": "att_learned_causal",
    "attend_rope": "att_rope_interleaved_causal_h2_s6_d10",
    "attend_transformer_xl": "att_txl_causal_h2_s5",
    "attend_shaw": "att_shaw_k2_noncausal_s8",
    "attend_alibi": "att_alibi_h3_causal_s6",
    "attend_da_transformer": "att_da_h3_causal_s7",
    "encode_sinusoidal": "enc_sinusoidal_b2_s7_d12",
    "encode_learned": "enc_learned_offset3",
    "encode_rope": "enc_rope_half_h2_s6_d10",
    "encode_transformer_xl": "enc_txl_table_d8_with_proj",
    "encode_shaw": "enc_shaw_k2_s6",
    "encode_alibi": "enc_alibi_h8_s5",
    "encode_da_transformer": "enc_da_h4_s6",
}
# config name -> format_version 2 case (attention-variants.md 9): 16-bit
# tensors travel as base64 raw_data with their dtype, as ghz sends bytes.
VARIANT_CASES = {
    "attend_gqa_window": "att_rope_gqa_h6_kv3_window_cached",
    "attend_yarn": "att_rope_yarn_explicit_noncausal",
    "attend_fp16": "att_none_fp16_in_fp16_out",
    "encode_yarn": "enc_rope_yarn_explicit_interleaved",
}


def input_array(tensor):
    """A golden input as the array the client sends: float16 and bfloat16
    inputs (values exact in their type) as 16-bit, the rest float32."""
    values = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    dtype = tensor.get("dtype", "float32")
    if dtype == "float32":
        return values
    return to_tensor(values, dtype=dtype)


def request_from_case(case):
    params = {k: v for k, v in case["params"].items() if v is not None}
    if params.get("output_dtype") == "float32":
        del params["output_dtype"]  # the default: left unset
    # Float32 tensors as data (readable JSON); a 16-bit output needs raw_output.
    raw = params.get("output_dtype") is not None
    inputs = {k: input_array(t) for k, t in case["inputs"].items()}
    if case["op"] == "attend":
        request = attend_request(method=case["method"], raw=False, **params, **inputs)
    else:
        request = encode_request(case["method"], raw=False, **params, **inputs)
    request.raw_output = raw
    return request


def ints_for_shapes(value):
    """proto-JSON writes int64 as strings; shapes read better as numbers and
    parse the same."""
    if isinstance(value, dict):
        return {k: ([int(x) for x in v] if k == "shape" else ints_for_shapes(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [ints_for_shapes(v) for v in value]
    return value


def write_json(path, value, indent=None):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent)
        f.write("\n")


def write_config(name, call, proto, data):
    data_path = os.path.join(OUT_DIR, "data", name + ".json")
    write_json(data_path, data)
    # Keys are ghz's (runner/config.go); paths are relative to the repository
    # root, where ghz and `attn bench --config` resolve them.
    write_json(os.path.join(OUT_DIR, name + ".json"), {
        "proto": proto,
        "call": call,
        "host": "127.0.0.1:50051",
        "insecure": True,
        "data-file": data_path,
        "total": 2000,
        "concurrency": 16,
        "connections": 1,
    }, indent=2)


def main():
    os.makedirs(os.path.join(OUT_DIR, "data"), exist_ok=True)
    cases = [(name, os.path.join(GOLDEN_DIR, case + ".json")) for name, case in CASES.items()]
    cases += [(name, os.path.join(VARIANTS_DIR, case + ".json"))
              for name, case in VARIANT_CASES.items()]
    for name, path in cases:
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        request = request_from_case(case)
        data = ints_for_shapes(json_format.MessageToDict(request, preserving_proto_field_name=True))
        rpc = "Attend" if case["op"] == "attend" else "Encode"
        write_config(name, f"attnserve.v1.AttentionService.{rpc}", ATTENTION_PROTO, data)
    write_config("list_methods", "attnserve.v1.AttentionService.ListMethods", ATTENTION_PROTO, {})
    write_config("health_check", "grpc.health.v1.Health.Check", HEALTH_PROTO, {"service": ""})


if __name__ == "__main__":
    main()
