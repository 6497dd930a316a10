"""The dashboard's panels: the engine, one per other loaded model, the host, one per GPU. A row is a gauge or a line of numbers, and its graph.

A panel only updates its widgets; widgets redraw only when what they show changed.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid
from textual.content import Content
from textual.widgets import Static

from appliance.control.cost_text import NOT_PRICED, WINDOW_NAMES, money
from appliance.control.execution_text import execution, prefix_caching_off, state_slots
from tui import format as fmt
from tui.state import ServiceState
from tui.widgets.gauge import Gauge
from tui.widgets.history import History

LABEL_WIDTH = 8
STATE_STYLES = {"ready": "$text-success", "failed": "$text-error"}
# Clock-event reasons (telemetry's words) that mean the GPU is being held back, not just idle.
THROTTLE_ERRORS = ("thermal", "hardware", "power brake")
THROTTLE_WARNINGS = ("power cap", "board limit", "reliability")


def line(label: str, *parts: str | tuple[str, str]) -> Content:
    """`label   part part…`: the label bold and padded like a gauge's, so rows line up."""
    return Content.assemble((label.ljust(LABEL_WIDTH), "bold"), " ", *parts)


def clock(mhz: float | None) -> str:
    return fmt.MISSING if mhz is None else f"{mhz:.0f}"


def fraction(used: float | None, total: float | None) -> float | None:
    return used / total if used is not None and total else None


class Panel(Grid):
    """A bordered grid of rows: [gauge or text | history graph], or one full-width cell."""

    DEFAULT_CSS = """
    Panel { height: auto; border: round $foreground 30%; border-title-color: $foreground; border-title-style: bold;
            padding: 0 1;
            grid-size: 2; grid-columns: 1fr 20; grid-rows: 1; grid-gutter: 0 1; }
    Panel .wide { column-span: 2; }
    """

    def text(self, widget_id: str, content: Content) -> None:
        self.query_one(f"#{widget_id}", Static).update(content)

    def graph(self, widget_id: str, state: ServiceState, value) -> None:
        graph = self.query_one(f"#{widget_id}", History)
        graph.set(state.series(value, graph.points))


class EnginePanel(Panel):
    def compose(self) -> ComposeResult:
        yield Gauge("KV cache", label_width=LABEL_WIDTH, warn_at=0.9, critical_at=0.98, id="kv")
        yield History(maximum=1.0, id="kv-history")
        yield Static(id="queue")
        yield History(floor=1, id="queue-history")
        yield Static(id="tokens")
        yield History(floor=10, id="tokens-history")  # the idle canary's 1 token must not fill the graph
        yield Static(id="latency")
        yield History(floor=0.05, id="latency-history")
        yield Static(id="totals", classes="wide")

    def show(self, state: ServiceState) -> None:
        snapshot = state.latest or {}
        engine = snapshot.get("engine") or {}
        service = snapshot.get("service") or {}
        service_state = service.get("state") or "unknown"
        self.border_title = Content.assemble(
            "Engine · ", service.get("model") or engine.get("model") or "no model", " · ",
            (service_state, STATE_STYLES.get(service_state, "$text-warning")))
        self.border_subtitle = execution(engine.get("execution"))
        self.query_one("#kv", Gauge).set(engine.get("kv_usage"), kv_text(engine))
        self.text("queue", line("queue", f"running {fmt.number(engine.get('running'))} · "
                                         f"waiting {fmt.number(engine.get('waiting'))} · "
                                         f"{fmt.rate(engine.get('requests_per_s'))} req/s"))
        self.text("tokens", line("tokens/s", f"in {fmt.rate(engine.get('prompt_tokens_per_s'))} · "
                                             f"out {fmt.rate(engine.get('generation_tokens_per_s'))}"))
        ttft, itl = engine.get("ttft_s") or {}, engine.get("itl_s") or {}
        self.text("latency", line("latency", f"TTFT {fmt.latency(ttft.get('p50'))}/{fmt.latency(ttft.get('p99'))} · "
                                             f"ITL {fmt.latency(itl.get('p50'))}/{fmt.latency(itl.get('p99'))}"
                                             " (p50/p99)"))
        errors, preemptions = engine.get("errors") or 0, engine.get("preemptions") or 0
        rejected = engine.get("rejected") or 0
        hit_rate = engine.get("prefix_cache_hit_rate")
        self.text("totals", line(
            "totals", f"requests {fmt.number(engine.get('requests_total'))} (",
            (f"4xx {rejected:,}", "$text-warning" if rejected else ""), " · ",
            (f"5xx {errors:,}", "$text-error" if errors else ""), ") · ",
            (f"preemptions {preemptions:,}", "$text-warning" if preemptions else ""),
            " · prefix caching off" if prefix_caching_off(engine) else f" · prefix hits {fmt.percent(hit_rate)}"))
        self.graph("kv-history", state, lambda s: s["engine"]["kv_usage"])
        self.graph("queue-history", state, lambda s: s["engine"]["running"] + s["engine"]["waiting"])
        self.graph("tokens-history", state, lambda s: s["engine"]["generation_tokens_per_s"])
        self.graph("latency-history", state, lambda s: s["engine"]["ttft_s"]["p50"])


def kv_text(engine: dict) -> str:
    """The KV gauge's words: "70% 1,434/2,048 blocks", and the state slots of a model with recurrent layers."""
    used, total = engine.get("kv_blocks_used"), engine.get("kv_blocks_total")
    return f"{fmt.percent(engine.get('kv_usage'))} {fmt.number(used)}/{fmt.number(total)} blocks{state_slots(engine)}"


def model_engine(snapshot: dict, model: str) -> dict | None:
    """One loaded model's engine in a snapshot; None in one taken before it was loaded (a gap in its graph)."""
    return next((e for e in snapshot.get("engines") or [] if e["model"] == model), None)


class ModelEnginePanel(Panel):
    """Each model loaded besides the default: its KV cache, queue, tokens/s and TTFT."""

    def __init__(self, model: str):
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        yield Gauge("KV cache", label_width=LABEL_WIDTH, warn_at=0.9, critical_at=0.98, id="kv")
        yield History(maximum=1.0, id="kv-history")
        yield Static(id="queue")
        yield History(floor=10, id="tokens-history")

    def show(self, state: ServiceState) -> None:
        engine = model_engine(state.latest, self.model) or {}
        self.border_title = Content.assemble("Model · ", self.model, (" · pinned", "$text-accent")
                                             if engine.get("pinned") else "")
        self.border_subtitle = execution(engine.get("execution"))
        self.query_one("#kv", Gauge).set(engine.get("kv_usage"), kv_text(engine))
        ttft = engine.get("ttft_s") or {}
        self.text("queue", line("queue", f"running {fmt.number(engine.get('running'))} · "
                                         f"waiting {fmt.number(engine.get('waiting'))} · "
                                         f"out {fmt.rate(engine.get('generation_tokens_per_s'))} tok/s · "
                                         f"TTFT {fmt.latency(ttft.get('p50'))}"))
        self.graph("kv-history", state, lambda s: model_engine(s, self.model)["kv_usage"])
        self.graph("tokens-history", state, lambda s: model_engine(s, self.model)["generation_tokens_per_s"])


class GpuPanel(Panel):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def compose(self) -> ComposeResult:
        yield Gauge("util", label_width=LABEL_WIDTH, id="util")
        yield History(maximum=100, id="util-history")
        yield Gauge("memory", label_width=LABEL_WIDTH, id="memory")
        yield History(maximum=100, id="memory-history")
        yield Gauge("temp", label_width=LABEL_WIDTH, warn_at=0.9, critical_at=0.97, id="temp")
        yield History(floor=40, id="temp-history")
        yield Gauge("power", label_width=LABEL_WIDTH, warn_at=0.98, id="power")
        yield History(floor=1, id="power-history")
        yield Static(id="clocks", classes="wide")
        yield Static(id="status", classes="wide")

    def _gpu(self, snapshot: dict) -> dict | None:
        """This GPU in a snapshot; None in one taken before it appeared (its graph shows a gap there)."""
        return next((g for g in snapshot["gpus"] if g["index"] == self.index), None)

    def show(self, state: ServiceState) -> None:
        gpu = self._gpu(state.latest)
        self.border_title = f"GPU {self.index} · {gpu.get('name') or 'unknown'}"
        util = gpu.get("utilization_pct")
        self.query_one("#util", Gauge).set(fraction(util, 100), fmt.percent(fraction(util, 100)))
        used, total = gpu.get("memory_used_bytes"), gpu.get("memory_total_bytes")
        self.query_one("#memory", Gauge).set(fraction(used, total), fmt.size_pair(used, total))
        temp, slowdown = gpu.get("temperature_c"), gpu.get("temperature_slowdown_c")
        self.query_one("#temp", Gauge).set(
            fraction(temp, slowdown), f"{fmt.number(temp)}°C / {fmt.number(slowdown)}°C slowdown")
        power, power_limit = gpu.get("power_w"), gpu.get("power_limit_w")
        self.query_one("#power", Gauge).set(
            fraction(power, power_limit), f"{fmt.number(power)}/{fmt.number(power_limit)} W")
        fan = gpu.get("fan_pct")
        self.text("clocks", line(
            "clocks", f"SM {clock(gpu.get('sm_clock_mhz'))}/{clock(gpu.get('sm_clock_max_mhz'))} MHz · "
                      f"mem {clock(gpu.get('memory_clock_mhz'))} MHz · fan {fmt.MISSING if fan is None else f'{fan}%'}"
                      f" · PCIe ↑{fmt.size(gpu.get('pcie_tx_bytes_s'))}/s ↓{fmt.size(gpu.get('pcie_rx_bytes_s'))}/s"))
        processes = len(gpu.get("processes") or [])
        self.text("status", line("status", *throttle_parts(gpu.get("throttle_reasons")), " · ",
                                 *ecc_parts(gpu.get("ecc_corrected"), gpu.get("ecc_uncorrected")),
                                 f" · {processes} process{'' if processes == 1 else 'es'}"))
        self.graph("util-history", state, lambda s: self._gpu(s)["utilization_pct"])
        self.graph("memory-history", state,
                   lambda s: 100 * self._gpu(s)["memory_used_bytes"] / self._gpu(s)["memory_total_bytes"])
        self.query_one("#temp-history", History).maximum = slowdown
        self.graph("temp-history", state, lambda s: self._gpu(s)["temperature_c"])
        self.query_one("#power-history", History).maximum = power_limit
        self.graph("power-history", state, lambda s: self._gpu(s)["power_w"])


def throttle_parts(reasons: list[str] | None) -> list[tuple[str, str]]:
    if reasons is None:
        return [("throttle: not reported", "")]
    if not reasons:
        return [("throttle: none", "")]
    text = "throttle: " + ", ".join(reasons)
    if any(bad in r for r in reasons for bad in THROTTLE_ERRORS):
        return [(text, "$text-error")]
    if any(bad in r for r in reasons for bad in THROTTLE_WARNINGS):
        return [(text, "$text-warning")]
    return [(text, "")]


def ecc_parts(corrected: int | None, uncorrected: int | None) -> list[tuple[str, str]]:
    if corrected is None and uncorrected is None:
        return [("ECC n/a", "")]
    return [("ECC ", ""), (f"{fmt.number(corrected)} corrected", "$text-warning" if corrected else ""), "/",
            (f"{fmt.number(uncorrected)} uncorrected", "$text-error" if uncorrected else "")]


class CostPanel(Panel):
    """What the box costs per million tokens over the last hour, today and 30 days (idle time priced in)."""

    HEADER = f"{'window':<10}{'cost':>9}{'busy':>6}{'/M out':>10}{'/M in+out':>11}{'embed /M':>10}{'× hosted':>10}"

    def compose(self) -> ComposeResult:
        yield Static(id="cost-header", classes="wide")
        for name in WINDOW_NAMES:
            yield Static(id=f"cost-{name}", classes="wide")

    def show(self, state: ServiceState) -> None:
        cost = (state.latest or {}).get("cost")
        priced = bool(cost and cost.get("configured"))
        for name in WINDOW_NAMES:
            self.query_one(f"#cost-{name}").display = priced
        if not priced:
            self.border_title = "Cost"
            self.text("cost-header", Content.styled(NOT_PRICED, "$text-muted"))
            return
        currency, reference = cost["currency"], cost.get("reference_price_per_million")
        self.border_title = f"Cost · {money(cost['gpu_cost_per_hour'], currency)}/h" + (
            f" · hosted {money(reference, currency)}/M" if reference else "")
        self.text("cost-header", Content.styled(self.HEADER, "$text-muted"))
        for name, window in cost["windows"].items():
            kinds = window.get("kinds") or {}
            generation, embedding = kinds.get("generation") or {}, kinds.get("embedding") or {}
            busy = window["busy_s"] / window["billed_s"] if window.get("billed_s") else None
            ratio = window.get("vs_reference")
            self.text(f"cost-{name}", Content.assemble(
                (f"{WINDOW_NAMES[name]:<10}", "bold"), f"{money(window.get('cost'), currency):>9}",
                f"{fmt.percent(busy):>6}", f"{money(generation.get('per_million_output'), currency):>10}",
                f"{money(generation.get('per_million_tokens'), currency):>11}",
                f"{money(embedding.get('per_million_tokens'), currency):>10}",
                (f"{fmt.MISSING if ratio is None else f'{ratio:,.1f}×':>10}",
                 "$text-warning" if ratio is not None and ratio > 1 else "$text-success" if ratio is not None else "")))


class HostPanel(Panel):
    BORDER_TITLE = "Host"

    def compose(self) -> ComposeResult:
        yield Gauge("CPU", label_width=LABEL_WIDTH, id="cpu")
        yield History(maximum=100, id="cpu-history")
        yield Gauge("memory", label_width=LABEL_WIDTH, warn_at=0.85, critical_at=0.95, id="host-memory")
        yield History(maximum=100, id="host-memory-history")
        yield Static(id="net", classes="wide")

    def show(self, state: ServiceState) -> None:
        host = (state.latest or {}).get("host") or {}
        cpu = host.get("cpu_pct")
        load = " ".join(f"{x:.2f}" for x in host.get("load_avg") or [])
        self.query_one("#cpu", Gauge).set(
            fraction(cpu, 100), f"{fmt.number(cpu)}% of {fmt.number(host.get('cpu_count'))} cores · load {load}")
        used, total = host.get("memory_used_bytes"), host.get("memory_total_bytes")
        swap_total = host.get("swap_total_bytes")
        swap = fmt.size_pair(host.get("swap_used_bytes"), swap_total) if swap_total else "none"
        self.query_one("#host-memory", Gauge).set(fraction(used, total), f"{fmt.size_pair(used, total)} · swap {swap}")
        self._show_disks(host.get("disks") or [])
        self.text("net", line("network", f"↓ {fmt.size(host.get('net_rx_bytes_s'))}/s · "
                                         f"↑ {fmt.size(host.get('net_tx_bytes_s'))}/s"))
        self.graph("cpu-history", state, lambda s: s["host"]["cpu_pct"])
        self.graph("host-memory-history", state,
                   lambda s: 100 * s["host"]["memory_used_bytes"] / s["host"]["memory_total_bytes"])

    def _show_disks(self, disks: list[dict]) -> None:
        gauges = list(self.query(".disk").results(Gauge))
        if len(gauges) != len(disks):  # the service's disk list changed (rare): rebuild the rows
            for gauge in gauges:
                gauge.remove()
            gauges = [Gauge("disk", label_width=LABEL_WIDTH, warn_at=0.85, critical_at=0.95, classes="disk wide")
                      for _ in disks]
            self.mount_all(gauges, before="#net")
        for gauge, disk in zip(gauges, disks):
            used, total = disk.get("used_bytes"), disk.get("total_bytes")
            gauge.set(fraction(used, total), f"{disk.get('path')} {fmt.size_pair(used, total)}")
