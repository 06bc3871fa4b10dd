"""One coverage-guided (atheris/libFuzzer) run of one target: python fuzz/run.py TARGET [libFuzzer args...]."""
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "fuzz"))

with atheris.instrument_imports(include=["tinygpt"]):
    import tinygpt.config  # noqa: F401
    import tinygpt.safetensors_io  # noqa: F401
    import tinygpt.tokenizer  # noqa: F401
    import tinygpt.torch_bin  # noqa: F401
    import tinygpt.weights  # noqa: F401

import targets  # noqa: E402

if __name__ == "__main__":
    fn = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], fn)
    atheris.Fuzz()
