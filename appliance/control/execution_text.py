"""What runs the model (ModelRunner.execution(), as /v1/status sends it) in a few words.

Shared by `appliance status` and the TUI's engine panel, so it imports nothing: plain strings from plain dicts.
"""

from __future__ import annotations

MISSING = "—"


def execution(path: dict | None) -> str:
    """How the engine runs the model, in a few words: "triton · fused · CUDA graphs · async · cuda:0 bfloat16",
    with its attention variants and experts implementation where it has them ("sliding+sinks", "experts
    grouped_mm"), then its weights when packed ("weights int4 g32 + bfloat16, 3.1 GiB"), an fp8 KV cache
    ("KV fp8"), what runs recurrent layers ("recurrent fla") and whether it reads images ("takes images")."""
    if not path:
        return ""
    words = [path.get("attention_backend") or MISSING]
    words += [name for key, name in (("fused_layers", "fused"), ("cuda_graphs", "CUDA graphs"),
                                                    ("async_scheduling", "async")) if path.get(key)]
    if path.get("attention") not in (None, "full"):
        words.append(path["attention"].replace(",", "+"))
    if path.get("experts") not in (None, "none"):
        words.append(f"experts {path['experts']}")
    words.append(f"{path.get('device') or MISSING} {path.get('dtype') or MISSING}")
    weights = path.get("weights")
    if weights and weights != path.get("dtype"):
        words.append(f"weights {weights}, {size(path.get('weight_bytes'))}")
    if str(path.get("kv_cache_dtype", "")).startswith("float8"):
        words.append("KV fp8")
    if path.get("recurrent") not in (None, "none"):
        words.append(f"recurrent {path['recurrent']}")
    if path.get("images") not in (None, "none"):
        words.append("takes images")
    return " · ".join(words)


def size(n: int | None) -> str:
    if n is None:
        return MISSING
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def state_slots(engine: dict) -> str:
    """" · 3/64 state slots" for a model with recurrent layers (one slot per running sequence); "" for others."""
    total = engine.get("state_slots_total")
    return f" · {engine.get('state_slots_used') or 0:,}/{total:,} state slots" if total else ""


def prefix_caching_off(engine: dict) -> str | None:
    """Why prefix caching is off, where the engine says it is ("off: num_state_snapshots is 0, ..."); None when on
    ("on", or "on (state snapshots: N)" for a model with recurrent layers)."""
    setting = (engine.get("execution") or {}).get("prefix_caching")
    return setting if setting is not None and not setting.startswith("on") else None
