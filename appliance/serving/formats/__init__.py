"""What a served model writes, and how to read it back: its output format, one object per model.

    output_format(tokenizer)   the first format of FORMATS that recognises the model (ServedModel.output_format)
    output                     OutputFormat, OutputReading (per request), ChoiceParser (per choice)
    events                     what every parser produces and every API formatter consumes
    harmony                    gpt-oss: reasoning from its analysis channel, calls from commentary messages to
                               functions.NAME, content from its final channel
    template                   tools as the chat template speaks them (tools/), `<think>` reasoning (think.py)

A format is a module with a `detect(tokenizer)` that returns its OutputFormat or None, listed in
FORMATS before `template`, which recognises every model.
"""

from appliance.serving.formats import harmony, template
from appliance.serving.formats.output import OutputFormat, OutputReading

FORMATS = (harmony.detect, template.detect)


def output_format(tokenizer) -> OutputFormat:
    for detect in FORMATS:
        found = detect(tokenizer)
        if found is not None:
            return found
    raise AssertionError("template.detect recognises every model")


__all__ = ["FORMATS", "OutputFormat", "OutputReading", "output_format"]
