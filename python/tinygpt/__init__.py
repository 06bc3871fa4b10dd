"""tinygpt: small, fast, exact GPT-2 inference. `tinygpt.load(model)` returns a Model; see README.md."""
from .config import GPT2Config
from .errors import (BackendUnavailableError, ContextOverflowError, DownloadError, EngineClosedError,
                     FormatVersionError, InvalidArgumentError, ModelNotFoundError, OfflineError, QueueFullError,
                     TinyGPTError, WeightsError)
from .generate import GenerationResult, Piece, Timings, TokenLogprob
from .model import Model, load
from .tokenizer import Tokenizer

__version__ = "0.1.0"


def available_backends() -> list:
    from .backends import available
    return available()


__all__ = [
    "load", "Model", "Tokenizer", "GPT2Config", "GenerationResult", "Timings", "Piece", "TokenLogprob",
    "available_backends", "TinyGPTError", "WeightsError", "FormatVersionError", "ModelNotFoundError", "OfflineError",
    "DownloadError", "ContextOverflowError", "InvalidArgumentError", "BackendUnavailableError", "QueueFullError",
    "EngineClosedError", "__version__",
]
