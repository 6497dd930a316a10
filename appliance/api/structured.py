"""A request's output constraint for the engine: response_format, vLLM's structured_outputs, or tools.

At most one may constrain a request; the field the client used is the `param` of every error about
it, so an invalid schema is a 400 naming `response_format` (or `structured_outputs`, `guided_json`…).
"""

from dataclasses import dataclass, replace

from appliance.errors import invalid

GUIDED_NAMES = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


@dataclass(frozen=True)
class OutputConstraint:
    """An engine StructuredOutput's arguments, and the request field they came from."""

    param: str
    kind: str  # json, json_object, regex, choice, grammar
    value: object
    after_token_id: int | None = None  # the grammar holds only after this token (a reasoning model's </think>)

    def after(self, token_id: int | None) -> "OutputConstraint":
        return replace(self, after_token_id=token_id)

    @property
    def label(self) -> str:
        """For the request log line: which field constrained the output, and how."""
        return f"{self.param}:{self.kind}"

    def to_engine(self):
        """The engine's StructuredOutput; InvalidParameter (as the engine names it) when it is malformed.

        JSON is enforced strictly (no properties the schema does not name, as OpenAI's strict mode)
        and on one line (json.dumps' separators): a small model given room for extra properties or
        free whitespace fills it.
        """
        from engine.sampling_params import StructuredOutput

        return StructuredOutput(**{self.kind: self.value}, any_whitespace=False, after_token_id=self.after_token_id)


def requested_constraint(req) -> OutputConstraint | None:
    """The constraint the request's structured-output fields ask for, or None (free text)."""
    found = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(OutputConstraint("response_format", "json_object", True))
    elif fmt is not None and fmt.type == "json_schema":
        found.append(OutputConstraint("response_format", "json", fmt.json_schema.schema_))
    if req.structured_outputs is not None:
        # the schema let exactly one member through
        [(kind, value)] = req.structured_outputs.model_dump(by_alias=True, exclude_none=True).items()
        found.append(OutputConstraint("structured_outputs", kind, value))
    for name, kind in GUIDED_NAMES.items():
        value = getattr(req, name)
        if value is not None:
            found.append(OutputConstraint(name, kind, value))
    if len(found) > 1:
        names = ", ".join(c.param for c in found)
        raise invalid(found[1].param, f"only one output constraint may be given, got {names}; keep one")
    return found[0] if found else None
