"""Structured output and tool fields, shared by chat, completions and responses."""

from itertools import combinations
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, StrictStr, WithJsonSchema

from appliance.api.schemas.common import StrictRequest


class JSONSchemaFormat(StrictRequest):
    name: StrictStr = Field(max_length=64)
    description: StrictStr | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormatText(StrictRequest):
    type: Literal["text"]


class ResponseFormatJSONObject(StrictRequest):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(StrictRequest):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    Union[ResponseFormatText, ResponseFormatJSONObject, ResponseFormatJSONSchema], Field(discriminator="type")
]


class StructuredOutputs(StrictRequest):
    """vLLM's `structured_outputs`: exactly one of these, not null."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    json_: dict[str, Any] | StrictStr = Field(None, alias="json")
    regex: StrictStr = None
    choice: list[StrictStr] = Field(None, min_length=1)
    grammar: StrictStr = None
    json_object: Literal[True] = None


# The fields that constrain the output; at most one per request (a null one is left out).
CONSTRAINT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar")


NOT_NULL = {"not": {"type": "null"}}


def request_rules(schema: dict) -> None:
    """/openapi.json says what the handlers check across fields of chat and completions: stream_options only
    with stream: true; one output constraint at most, none beside active tools (tools given and tool_choice
    not "none"), and tool_choice only with tools."""
    schema["dependentSchemas"] = {"stream_options": {"required": ["stream"], "properties": {"stream": {"const": True}}}}
    clauses = [{"required": [a, b], "properties": {a: NOT_NULL, b: NOT_NULL}}
               for a, b in combinations(CONSTRAINT_FIELDS, 2)]
    if "tools" in schema.get("properties", {}):
        clauses += [{"required": ["tools", name], "properties": {"tools": {"type": "array", "minItems": 1},
                                                                 "tool_choice": {"not": {"const": "none"}},
                                                                 name: NOT_NULL}}
                    for name in CONSTRAINT_FIELDS] + tool_choice_without_tools()
    schema["not"] = {"anyOf": clauses}


def tool_choice_without_tools() -> list[dict]:
    """What check_tools refuses: a tool_choice (not null) where tools are null or left out (`not` clauses;
    schemathesis cannot draw from the `if`/`then` or `dependentSchemas` that would say it more directly)."""
    choice = {"tool_choice": NOT_NULL}
    return [{"required": ["tool_choice"], "properties": {**choice, "tools": {"type": "null"}}},
            {"required": ["tool_choice"], "properties": choice, "not": {"required": ["tools"]}}]


class StructuredOutputFields(StrictRequest):
    model_config = ConfigDict(json_schema_extra=request_rules)

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # vLLM's older names for structured_outputs' members
    guided_json: dict[str, Any] | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_choice: list[StrictStr] | None = Field(None, min_length=1)
    guided_grammar: StrictStr | None = None


FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# What check_tools takes for a function's parameters: a JSON schema of an object.
Parameters = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "description": "a JSON schema of the arguments object",
    "properties": {"type": {"const": "object"}, "properties": {"type": "object"}, "required": {"type": "array"}}})]


class FunctionDefinition(StrictRequest):
    name: StrictStr = Field(pattern=FUNCTION_NAME_PATTERN)
    description: StrictStr | None = None
    parameters: Parameters | None = None
    strict: bool | None = None


class ToolDefinition(StrictRequest):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictRequest):
    name: StrictStr


class NamedToolChoice(StrictRequest):
    type: Literal["function"]
    function: NamedFunction
