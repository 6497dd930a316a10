"""Chat templates of our own writing for the tool tests.

HERMES_TEMPLATE is a whole ChatML template in the Hermes/Qwen style: it renders `tools` into the
system message, an assistant's calls as <tool_call> blocks and tool results as <tool_response>
blocks of a user turn (consecutive results share one turn). The Llama 3 and Mistral snippets
only carry what detect_format looks at.
"""

HERMES_TEMPLATE = """\
{%- if messages and messages[0].role == 'system' -%}
  {%- set system = messages[0].content -%}
  {%- set rest = messages[1:] -%}
{%- else -%}
  {%- set system = 'You are a helpful assistant.' -%}
  {%- set rest = messages -%}
{%- endif -%}
{{- '<|im_start|>system\\n' + system -}}
{%- if tools -%}
  {{- '\\n\\n# Functions\\n\\nYou can call these functions; their signatures, one per line:\\n<tools>' -}}
  {%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}
  {{- '\\n</tools>\\n\\nTo call one, write its name and arguments as JSON between the tags, one call per block:\\n' -}}
  {{- '<tool_call>\\n{"name": <function name>, "arguments": <arguments object>}\\n</tool_call>' -}}
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- for message in rest -%}
  {%- if message.role == 'tool' -%}
    {%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
    {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' -}}
    {%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
  {%- elif message.role == 'assistant' -%}
    {{- '<|im_start|>assistant\\n' + (message.content or '') -}}
    {%- for call in message.tool_calls or [] -%}
      {%- if message.content or not loop.first -%}{{- '\\n' -}}{%- endif -%}
      {{- '<tool_call>\\n{"name": "' + call.function.name + '", "arguments": ' -}}
      {{- (call.function.arguments | tojson) + '}\\n</tool_call>' -}}
    {%- endfor -%}
    {{- '<|im_end|>\\n' -}}
  {%- else -%}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""

# As Llama 3.1's template words it: custom tools are answered with a bare JSON object.
LLAMA3_SNIPPET = """\
{%- if tools is not none -%}
  {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' -}}
  {%- for t in tools -%}{{- t | tojson(indent=4) -}}{%- endfor -%}
{%- endif -%}
{%- if message.tool_calls -%}{{- '<|python_tag|>' + message.tool_calls[0].function | tojson -}}{%- endif -%}
"""

MISTRAL_SNIPPET = """\
{%- if tools -%}{{- '[AVAILABLE_TOOLS]' + tools | tojson + '[/AVAILABLE_TOOLS]' -}}{%- endif -%}
{%- if message.tool_calls -%}{{- '[TOOL_CALLS]' + message.tool_calls | tojson + eos_token -}}{%- endif -%}
"""

# Renders tools, but spells its call marker through a variable: only the vocabulary can tell.
VARIABLE_MARKER_SNIPPET = """\
{%- set open = '<' + 'tool_call>' -%}
{%- if tools -%}{{- tools | tojson -}}{%- endif -%}
{%- if message.tool_calls -%}{{- open + message.tool_calls | tojson -}}{%- endif -%}
"""

# A template with no tool support at all (SmolLM2's is one).
PLAIN_TEMPLATE = """\
{%- for message in messages -%}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}{%- endfor -%}
"""
