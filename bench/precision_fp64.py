"""How far fp32 logprobs are from the float64 truth on a GPT-2 124M-shaped random-weight checkpoint (issue 11's
"logprobs within 1e-4 of transformers' at the 124M shape"): tinygpt cpu and numpy fp32, and transformers fp32,
each against transformers run in float64 on the same weights and tokens.

    python bench/precision_fp64.py [-t TOKENS] [--threads N] [--init bench|gpt2]     (needs torch and transformers)

--init gpt2: transformers' own initialisation instead (N(0, 0.02), c_proj / sqrt(2 n_layer)), with N(0, 0.02)
biases and norm gains and ln_f's gain x8 (peaked distributions): the checkpoint of
tests/test_parity_hf.py::test_logprobs_at_124m_shape, where every float32 implementation is within ~1e-4.

Prints per implementation the largest |logprob - float64 logprob| and |logit - float64 logit| over all positions
and the whole vocabulary, and the largest logprob difference between tinygpt cpu and transformers fp32. On
random weights the logits reach ~70 and the network amplifies float32 rounding (transformers' own fp32 is ~1e-2
from float64 at 1024 tokens), so agreement to 1e-4 cannot hold there for any float32 implementation; the tiny
parity checkpoint (tests) holds it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-t", "--tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--init", choices=["bench", "gpt2"], default="bench")
    a = ap.parse_args()
    import torch
    import transformers

    import tinygpt
    from tiny_model import gpt2_init_124m, log_softmax64, save_hf_model, write_hf_dir
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if a.init == "bench":
            d = write_hf_dir(Path(tmp) / "gpt2-124M", dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024,
                                                            vocab_size=50257), seed=1)
        else:
            d = save_hf_model(gpt2_init_124m(torch, transformers), Path(tmp) / "gpt2-124M")
        ids = np.random.default_rng(0).integers(0, 50000, a.tokens)
        hf = transformers.GPT2LMHeadModel.from_pretrained(str(d)).eval()
        with torch.inference_mode():
            got = {"transformers fp32": hf(torch.from_numpy(ids)[None]).logits[0].numpy()}
            ref = hf.double()(torch.from_numpy(ids)[None]).logits[0].numpy()
        for backend in ("cpu", "numpy"):
            got[f"tinygpt {backend} fp32"] = tinygpt.load(d, backend=backend, threads=a.threads).logits(ids)
    ref_lp = log_softmax64(ref)
    print(f"{a.tokens} tokens, max |logit| (float64) {np.abs(ref).max():.1f}")
    for name, lg in got.items():
        print(f"{name:22s} max |dlogprob| vs float64 {np.abs(log_softmax64(lg) - ref_lp).max():.2e}   "
              f"max |dlogit| {np.abs(lg - ref).max():.2e}")
    d = np.abs(log_softmax64(got["tinygpt cpu fp32"]) - log_softmax64(got["transformers fp32"])).max()
    print(f"tinygpt cpu vs transformers fp32: max |dlogprob| {d:.2e}")


if __name__ == "__main__":
    main()
