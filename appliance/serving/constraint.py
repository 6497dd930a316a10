"""A request's output constraint for the engine (a JSON schema, regex, choice or grammar), and the request
field it came from: the `param` of every error about it, so an invalid schema is a 400 naming
`response_format` (or `structured_outputs`, `guided_json`, `tools`…)."""

from dataclasses import dataclass, replace


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
