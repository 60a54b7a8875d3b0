"""Per-tensor type and sha256 of a GGUF file's tensors, as JSON: the fixture that proves
`pyggml quantize` writes the same tensors as llama.cpp's llama-quantize.

    # the expected side, made once with llama.cpp's own tool:
    ../shared/llama.cpp/run llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf ref.gguf Q4_K_M
    python tools/quantize_fixture.py ref.gguf > tests/unit/fixtures/smollm2_q4_1_to_q4_k_m.json

tests/unit/test_quantize_cli.py quantizes the installed model with pyggml and compares.
"""
from __future__ import annotations

import hashlib
import json
import sys


def tensor_digests(path: str) -> dict:
    import gguf
    import numpy as np
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        out[t.name] = {"type": gguf.GGMLQuantizationType(int(t.tensor_type)).name.lower(),
                       "ne": [int(x) for x in t.shape],
                       "sha256": hashlib.sha256(raw.tobytes()).hexdigest()}
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    d = tensor_digests(argv[0])
    json.dump({"tensors": d}, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
