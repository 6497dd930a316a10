"""Structured output and tool fields, shared by chat, completions and responses."""

from typing import Annotated, Any, Literal, Union

from pydantic import Field, StrictStr

from appliance.api.schemas.common import StrictRequest


class JSONSchemaFormat(StrictRequest):
    name: StrictStr = Field(max_length=64)
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
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
    """vLLM's `structured_outputs`: exactly one of these."""

    json_: dict[str, Any] | StrictStr | None = Field(None, alias="json")
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = Field(None, min_length=1)
    grammar: StrictStr | None = None
    json_object: bool | None = None


class StructuredOutputFields(StrictRequest):
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # vLLM's older names for structured_outputs' members
    guided_json: dict[str, Any] | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_choice: list[StrictStr] | None = Field(None, min_length=1)
    guided_grammar: StrictStr | None = None


class FunctionDefinition(StrictRequest):
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(StrictRequest):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictRequest):
    name: StrictStr


class NamedToolChoice(StrictRequest):
    type: Literal["function"]
    function: NamedFunction
