"""Errors the engine raises; each message says what was wrong and what to do.

The service maps these to HTTP statuses, so each kind is its own class.
"""


class EngineError(Exception):
    """Base class for errors a caller of the engine can act on."""


class InvalidParameter(EngineError, ValueError):
    """A request parameter is out of range; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class PromptTooLong(EngineError):
    """The prompt plus the requested output does not fit the model's context."""

    def __init__(self, num_prompt_tokens: int, max_model_len: int):
        super().__init__(
            f"the prompt is {num_prompt_tokens} tokens but the model's context is "
            f"{max_model_len} tokens; shorten the prompt"
        )
        self.num_prompt_tokens = num_prompt_tokens
        self.max_model_len = max_model_len


class QueueFull(EngineError):
    """The waiting queue is at its bound; the caller should retry later (HTTP 429/503)."""


class NoModelLoaded(EngineError):
    """A request arrived while no model is loaded."""


class ModelLoadError(EngineError):
    """A model could not be loaded: missing/corrupt files or an unsupported architecture."""


class DuplicateRequest(EngineError, ValueError):
    """A request id that is already in the engine was added again."""
