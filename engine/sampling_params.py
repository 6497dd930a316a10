"""Per-request sampling settings, validated when built. Plain Python: no torch."""

import json
from dataclasses import dataclass, field

from engine.errors import InvalidParameter

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for a bias: -100 (the token is banned) to 100 (it is all but forced)
STRUCTURED_OUTPUT_KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass
class StructuredOutput:
    """What the output must match: exactly one of the five kinds (see engine/structured_output.py).

    json: a JSON schema (dict, or its JSON text); json_object: True for any JSON object; regex: a
    regular expression the whole output matches; choice: the output is one of these strings;
    grammar: an EBNF grammar in xgrammar's syntax (llama.cpp's GBNF) with a `root` rule.
    strict and any_whitespace apply to json only: strict refuses properties and items the schema
    does not name (OpenAI's strict mode); any_whitespace allows any JSON whitespace between tokens
    (vLLM's default), else the JSON is on one line with json.dumps' separators ", " and ": ".
    after_token_id is not part of the grammar (nor of `key`): the request's matcher starts once it was sampled.
    Errors name the param "structured_output"; the API renames it to the field the client used.
    """

    json: dict | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    strict: bool = True
    any_whitespace: bool = True
    # The grammar holds the output only after this token (a reasoning model's `</think>`); before it, any text.
    after_token_id: int | None = None
    key: str = field(init=False, repr=False, compare=False)  # canonical text: equal specs, equal keys

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise InvalidParameter("structured_output", message)

        need(self.after_token_id is None or (isinstance(self.after_token_id, int) and self.after_token_id >= 0),
             "after_token_id must be a token id")
        given = [k for k in STRUCTURED_OUTPUT_KINDS if getattr(self, k) not in (None, False)]
        need(len(given) == 1, f"exactly one of {', '.join(STRUCTURED_OUTPUT_KINDS)} must be given, got {len(given)}")
        options = f"strict={self.strict},any_whitespace={self.any_whitespace}"
        if self.json is not None:
            schema = self.json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as e:
                    raise InvalidParameter("structured_output", f"the JSON schema is not valid JSON: {e}") from None
            need(isinstance(schema, dict), "a JSON schema must be a JSON object")
            self.key = f"json:{options}:{json.dumps(schema, sort_keys=True, separators=(',', ':'))}"
        elif self.json_object:
            need(self.json_object is True, "json_object must be true or false")
            self.key = f"json_object:any_whitespace={self.any_whitespace}"
        elif self.regex is not None:
            need(isinstance(self.regex, str) and self.regex != "", "regex must be a non-empty string")
            self.key = f"regex:{self.regex}"
        elif self.choice is not None:
            self.choice = list(self.choice)
            need(self.choice != [] and all(isinstance(c, str) for c in self.choice), "choice must list strings, at least one")
            self.key = f"choice:{json.dumps(self.choice)}"
        else:
            need(isinstance(self.grammar, str) and self.grammar.strip() != "", "grammar must be a non-empty string")
            self.key = f"grammar:{self.grammar}"

    @property
    def kind(self) -> str:
        return self.key.split(":", 1)[0]


@dataclass
class SamplingParams:
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # None: off; k >= 0: chosen token plus k alternatives
    # None: off; k >= 0: each prompt token's logprob (after the first) plus k alternatives, computed in the
    # prefill; such a request bypasses the prefix cache, whose hits skip the rows these come from.
    prompt_logprobs: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    # Special tokens decoded even with skip_special_tokens (tool-call markers such as [TOOL_CALLS]).
    kept_special_token_ids: frozenset[int] = frozenset()
    structured_output: StructuredOutput | None = None  # constrained decoding (grammar, JSON schema...)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id → added to its logit before sampling
    # Scheduling (engine/scheduler.py): a lower priority runs first (vLLM's meaning) and is preempted last; among
    # equal priorities, waiting requests take turns by share group (the API's keys), each as its weight says.
    priority: int = 0
    share_group: str | None = None
    share_weight: float = 1.0

    def __post_init__(self):
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        self.kept_special_token_ids = frozenset(self.kept_special_token_ids)
        self.logit_bias = dict(self.logit_bias)
        if self.top_k == -1:
            self.top_k = 0
        self._check()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def _check(self):
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise InvalidParameter("priority", "priority must be an integer (lower runs first)")
        if not self.share_weight > 0:
            raise InvalidParameter("share_weight", "share_weight must be positive")
        def need(ok: bool, param: str, message: str):
            if not ok:
                raise InvalidParameter(param, message)

        need(self.max_tokens >= 1, "max_tokens", f"max_tokens must be at least 1, got {self.max_tokens}")
        need(
            0 <= self.min_tokens <= self.max_tokens,
            "min_tokens",
            f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}",
        )
        need(
            0.0 <= self.temperature <= 100.0,
            "temperature",
            f"temperature must be between 0 and 100, got {self.temperature}",
        )
        need(0.0 < self.top_p <= 1.0, "top_p", f"top_p must be in (0, 1], got {self.top_p}")
        need(self.top_k >= 0, "top_k", f"top_k must be -1, 0 (off) or positive, got {self.top_k}")
        need(0.0 <= self.min_p <= 1.0, "min_p", f"min_p must be in [0, 1], got {self.min_p}")
        need(
            -2.0 <= self.presence_penalty <= 2.0,
            "presence_penalty",
            f"presence_penalty must be between -2 and 2, got {self.presence_penalty}",
        )
        need(
            -2.0 <= self.frequency_penalty <= 2.0,
            "frequency_penalty",
            f"frequency_penalty must be between -2 and 2, got {self.frequency_penalty}",
        )
        need(
            0.0 < self.repetition_penalty <= 2.0,
            "repetition_penalty",
            f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}",
        )
        need(
            self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
            "logprobs",
            f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}",
        )
        need(
            self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
            "prompt_logprobs",
            f"prompt_logprobs must be between 0 and {MAX_LOGPROBS}, got {self.prompt_logprobs}",
        )
        need(
            self.seed is None or -(2**63) <= self.seed < 2**64,
            "seed",
            "seed must fit in 64 bits",
        )
        need(
            len(self.stop) <= MAX_STOP_STRINGS,
            "stop",
            f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(self.stop)}",
        )
        for s in self.stop:
            need(isinstance(s, str) and s != "", "stop", "stop strings must be non-empty strings")
            need(
                len(s) <= MAX_STOP_STRING_CHARS,
                "stop",
                f"a stop string may be at most {MAX_STOP_STRING_CHARS} characters",
            )
        for t in self.stop_token_ids:
            need(isinstance(t, int) and t >= 0, "stop_token_ids", "stop_token_ids must be non-negative integers")
        bad = sorted(str(t) for t, b in self.logit_bias.items()
                     if not (isinstance(t, int) and t >= 0 and isinstance(b, (int, float))
                             and -MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS))
        need(not bad, "logit_bias", f"logit_bias maps token ids (non-negative integers) to biases between "
                                    f"-{MAX_LOGIT_BIAS:g} and {MAX_LOGIT_BIAS:g}; these entries are not: {', '.join(bad)}")
        need(
            self.structured_output is None or isinstance(self.structured_output, StructuredOutput),
            "structured_output",
            "structured_output must be a StructuredOutput",
        )
