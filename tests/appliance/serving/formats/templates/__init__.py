"""Real chat templates, vendored verbatim (LF line endings) for the format tests, and where each comes from:

    gpt-oss.jinja            openai/gpt-oss-20b and -120b's chat_template.jinja (Hugging Face), as llama.cpp keeps it
                             in models/templates/openai-gpt-oss-120b.jinja
    gemma-2.jinja            google/gemma-2-2b-it's chat template (llama.cpp models/templates/google-gemma-2-2b-it.jinja)
    gemma-3.jinja            the Gemma 3 instruction models' chat template, as transformers writes it with a checkpoint
                             (src/transformers/models/gemma3/convert_gemma3_weights.py, _CHAT_TEMPLATE)
    mistral-small-3.2.jinja  mistralai/Mistral-Small-3.2-24B-Instruct-2506's chat template (llama.cpp
                             models/templates/Mistral-Small-3.2-24B-Instruct-2506.jinja): tekken v11+ calls,
                             `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}` in the history
"""

from pathlib import Path


def real_template(name: str) -> str:
    return (Path(__file__).parent / f"{name}.jinja").read_text()
