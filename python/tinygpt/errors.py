"""Typed exceptions: every expected failure a user can cause maps to one of these.

The CLI turns any TinyGPTError into one line on stderr and exit status 1.
"""


class TinyGPTError(Exception):
    """Base class for every error tinygpt raises on purpose."""


class WeightsError(TinyGPTError):
    """A weight file is missing, truncated, corrupt, or does not match the config."""


class FormatVersionError(WeightsError):
    """A tinygpt safetensors file written by an unknown format version."""


class ModelNotFoundError(TinyGPTError):
    """A model name or path that is neither a local file/directory nor a known hub repo."""


class OfflineError(ModelNotFoundError):
    """The model is not in the local cache and network access is disabled."""


class DownloadError(TinyGPTError):
    """A hub download failed (HTTP error, size or hash mismatch)."""


class ContextOverflowError(TinyGPTError, ValueError):
    """Prompt plus requested tokens exceed the model's context length."""


class InvalidArgumentError(TinyGPTError, ValueError):
    """A sampling or generation option outside its valid range."""


class BackendUnavailableError(TinyGPTError):
    """The requested backend (cpu or cuda) is not built or has no device."""


class QueueFullError(TinyGPTError):
    """The engine's queue of waiting requests is full; retry later (the server answers 429)."""


class EngineClosedError(TinyGPTError):
    """The engine is shutting down and takes no new requests (the server answers 503)."""
