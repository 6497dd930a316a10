"""What runs the model (ModelRunner.execution(), as /v1/status sends it) in a few words.

Shared by `appliance status` and the TUI's engine panel, so it imports nothing: plain strings from plain dicts.
"""

from __future__ import annotations

MISSING = "—"


def execution(path: dict | None) -> str:
    """How the engine runs the model, in a few words: "triton · fused · CUDA graphs · async · cuda:0 bfloat16"."""
    if not path:
        return ""
    words = [path.get("attention_backend") or MISSING]
    words += [name for key, name in (("fused_layers", "fused"), ("cuda_graphs", "CUDA graphs"),
                                                    ("async_scheduling", "async")) if path.get(key)]
    return " · ".join(words + [f"{path.get('device') or MISSING} {path.get('dtype') or MISSING}"])
