"""The output constraint a request's own fields ask for: response_format, vLLM's structured_outputs, or its
older guided_* names. At most one may constrain a request (the tools' grammar is the model's output
format's: appliance.serving.formats)."""

from appliance.errors import invalid
from appliance.serving.constraint import OutputConstraint

GUIDED_NAMES = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


def requested_constraint(req) -> OutputConstraint | None:
    """The constraint the request's structured-output fields ask for, or None (free text)."""
    found = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(OutputConstraint("response_format", "json_object", True))
    elif fmt is not None and fmt.type == "json_schema":
        found.append(OutputConstraint("response_format", "json", fmt.json_schema.schema_))
    if req.structured_outputs is not None:
        members = req.structured_outputs.model_dump(by_alias=True, exclude_none=True)
        if len(members) != 1:
            raise invalid("structured_outputs", "structured_outputs takes exactly one of json, regex, choice, grammar "
                                                f"or json_object, got {len(members)}; give one, or drop the field")
        [(kind, value)] = members.items()
        found.append(OutputConstraint("structured_outputs", kind, value))
    for name, kind in GUIDED_NAMES.items():
        value = getattr(req, name)
        if value is not None:
            found.append(OutputConstraint(name, kind, value))
    if len(found) > 1:
        names = ", ".join(c.param for c in found)
        raise invalid(found[1].param, f"only one output constraint may be given, got {names}; keep one")
    return found[0] if found else None
