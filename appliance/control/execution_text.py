"""What runs the model (ModelRunner.execution(), as /v1/status sends it) in a few words.

Shared by `appliance status` and the TUI's engine panel, so it imports nothing: plain strings from plain dicts.
"""

from __future__ import annotations

MISSING = "—"


def execution(path: dict | None) -> str:
    """How the engine runs the model, in a few words: "triton · fused · CUDA graphs · async · cuda:0 bfloat16",
    with its experts implementation and attention variants where it has them ("experts grouped_mm",
    "sliding+sinks")."""
    if not path:
        return ""
    words = [path.get("attention_backend") or MISSING]
    words += [name for key, name in (("fused_layers", "fused"), ("cuda_graphs", "CUDA graphs"),
                                                    ("async_scheduling", "async")) if path.get(key)]
    if path.get("attention") not in (None, "full"):
        words.append(path["attention"].replace(",", "+"))
    if path.get("experts") not in (None, "none"):
        words.append(f"experts {path['experts']}")
    return " · ".join(words + [f"{path.get('device') or MISSING} {path.get('dtype') or MISSING}"])
