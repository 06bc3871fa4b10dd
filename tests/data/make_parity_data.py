"""Regenerate tests/data/parity_tiny.npz: what Hugging Face transformers computes on the tiny random
checkpoint of tests/tiny_model.py (seed 0). Run once with torch + transformers installed:

    python tests/data/make_parity_data.py

Stores the prompt, three full rows of logits (first, middle, last position) and 64 greedy tokens, so the
default suite checks parity without torch.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PROMPT = "Alan Turing theorized that computers would one day become very powerful, but even he could not imagine"
ROWS = (0, 9, -1)
N_GREEDY = 64


def hf_reference(model_dir, ids, n_greedy=N_GREEDY):
    import torch
    from transformers import GPT2LMHeadModel
    m = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = m(torch.tensor([ids])).logits[0].numpy()
        out = m.generate(torch.tensor([ids]), max_new_tokens=n_greedy, do_sample=False, pad_token_id=50256,
                         eos_token_id=None)
    return logits, out[0, len(ids):].tolist()


def main():
    from tiny_model import write_hf_dir
    from tinygpt.tokenizer import Tokenizer
    with tempfile.TemporaryDirectory() as t:
        d = write_hf_dir(Path(t) / "tiny", seed=0)
        ids = Tokenizer.from_dir(d).encode(PROMPT)
        logits, greedy = hf_reference(str(d), ids)
    np.savez_compressed(HERE / "parity_tiny.npz", ids=np.array(ids, np.int32), rows=np.array(ROWS),
                        logits=logits[list(ROWS)].astype(np.float32), greedy=np.array(greedy, np.int32))
    print(f"wrote {HERE / 'parity_tiny.npz'}: {len(ids)} prompt tokens, {len(greedy)} greedy tokens")


if __name__ == "__main__":
    main()
