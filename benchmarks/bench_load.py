"""How long a model takes to load, per model and dtype, by each way of loading it; and
whether every way gives the same model bit for bit (every parameter and buffer).

Ways:
- ``direct``: ``from_pretrained(dtype=D)`` (transformers converts tensor by tensor as it loads);
- ``load_model``: ``from_pretrained`` in the checkpoint's stored dtype, then one bulk ``model.to(D)``
  (what ``lightreasoner.models.load_model`` does when D is wider than the stored dtype).

python benchmarks/bench_load.py                                  # the two offline models, float32
python benchmarks/bench_load.py --models embedded:Qwen2.5-Coder-1.5B-Instruct --dtypes float32,bfloat16
Each way is timed ``--repeats`` times after one warm-up load (a warm page cache), and the
figures are printed with the CPU, threads and dtype.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import time

import torch
from transformers import AutoModelForCausalLM

from lightreasoner.models import load_model, resolve_source
from lightreasoner.provenance import cpu_name


def direct(path: str, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, device_map="cpu").eval()


def ours(path: str, dtype: torch.dtype):
    return load_model(path, dtype)


WAYS = {"direct": direct, "load_model": ours}


def digests(model) -> dict[str, tuple]:
    """Per parameter and buffer: dtype, shape and a hash of its bytes (one model held at a time)."""
    named = {**dict(model.named_parameters()), **{f"buffer:{k}": v for k, v in model.named_buffers()}}
    return {
        k: (str(v.dtype), tuple(v.shape), hashlib.sha1(v.detach().contiguous().view(torch.uint8).numpy()).hexdigest())
        for k, v in named.items()
    }


def same(a: dict, b: dict) -> str:
    if a.keys() != b.keys():
        return f"differ: names {sorted(a.keys() ^ b.keys())[:4]}"
    bad = [k for k in a if a[k] != b[k]]
    return "bit-identical" if not bad else f"differ at {len(bad)} tensors, e.g. {bad[:3]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="embedded:Qwen2.5-Coder-1.5B-Instruct,embedded:Qwen2.5-Coder-0.5B-Instruct")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"CPU {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| model | dtype | way | load (s, best of repeats) | same model as direct |")
    print("|---|---|---|---|---|")
    for spec in args.models.split(","):
        path = resolve_source(spec, False).path
        for dname in args.dtypes.split(","):
            dtype = getattr(torch, dname)
            reference = None
            for way, fn in WAYS.items():
                model = fn(path, dtype)  # warm-up: the page cache holds the checkpoint
                times = []
                for _ in range(args.repeats):
                    del model
                    gc.collect()
                    t0 = time.perf_counter()
                    model = fn(path, dtype)
                    times.append(time.perf_counter() - t0)
                mine = digests(model)
                del model
                gc.collect()
                check = "—" if reference is None else same(reference, mine)
                reference = reference or mine
                print(f"| {spec.split(':')[-1]} | {dname} | {way} | {min(times):.2f} | {check} |", flush=True)
            del reference
            gc.collect()


if __name__ == "__main__":
    main()
