"""Tool calling in the formats chat templates speak: which one a model uses, its prompt, its grammar, its parser.

    formats        ToolFormat, detect_format(chat_template, vocab), marker_token_ids(fmt, tokenizer)
    functions      ToolRequest, tool_request(tools, tool_choice, parallel); the 400s for bad definitions
    generic        messages_with_tools(...): tools as system text, for templates without tool support
    history        native_history(messages): the history as tool-aware templates expect it
    grammar        constraint_for(...) -> Constraint: the answer's JSON schema or xgrammar EBNF
    parsers        parser_for(fmt) (feed/close) and parse(fmt, text): content and tool-call events
    stream, call_object, scanning: what the parsers share

One request goes: tool_request -> prompt (native_history and `tools=` for a tool-aware template,
messages_with_tools otherwise) -> constraint_for -> generate -> parser over the detokenized text
(../template.py puts these together). `grammar` imports xgrammar (and with it torch) when first used.
"""
