"""Models: what is in the store, which are loaded (resident, on demand, idle) and the memory plan; load beside the
others, swap in for the default (hot swap), unload, pin, pull, import and delete, with live progress."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Static

from tui import format as fmt
from tui.screens.base import LiveScreen
from tui.screens.model_forms import ImportFormScreen, PullFormScreen
from tui.state import ServiceState
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.gauge import Gauge

COLUMNS = ("", "Name", "State", "Memory", "Weights", "Architecture", "Size", "Revision", "Source", "Added")
TASK_VERBS = {"load": "Loading", "unload": "Unloading", "pull": "Pulling", "import": "Importing"}


def revision_text(model: dict) -> str:
    revision = model.get("revision")
    requested = model.get("requested_revision")
    if revision and requested and requested != revision:
        return f"{requested}@{revision[:10]}"
    return revision[:12] if revision else (requested or fmt.MISSING)


def state_text(model: dict) -> str:
    """resident / loading / on demand / stored, and default, pinned or idle."""
    state = (model.get("state") or "stored").replace("_", " ")
    if model.get("default"):
        state += " · default"
    if model.get("pinned"):
        state += " · pinned"
    elif model.get("idle_s") is not None and not model.get("default"):
        state += f" · idle {fmt.duration(model['idle_s'])}"
    return state


def weights_text(model: dict) -> str:
    """A loaded model's weights as packed, and an fp8 KV cache: "int4 g32 + float32 · KV fp8"."""
    if not model.get("weights"):
        return fmt.MISSING
    kv = " · KV fp8" if str(model.get("kv_cache_dtype") or "").startswith("float8") else ""
    return f"{model['weights']}{kv}"


def plan_text(answer: dict) -> str:
    """The memory plan in a line: what the loaded models take, what is free, and the budget."""
    memory = answer.get("memory")
    if not memory:
        return ""
    used = sum((memory.get("used_bytes") or {}).values())
    budget = f" of a {fmt.size(memory['budget_bytes'])} budget" if memory.get("budget_bytes") else ""
    on_demand = " · stored models load on their first request" if answer.get("load_on_demand") else ""
    return (f"Memory: {fmt.size(used)} planned for {len(memory.get('used_bytes') or {})} loaded{budget} · "
            f"{fmt.size(memory.get('free_bytes'))} free{on_demand}")


class ModelsScreen(LiveScreen):
    MODE = "models"
    BINDINGS = [
        Binding("l", "load", "Load beside"),
        Binding("s", "swap", "Swap for default"),
        Binding("u", "unload", "Unload"),
        Binding("n", "pin", "Pin/unpin"),
        Binding("p", "pull", "Pull"),
        Binding("i", "import_model", "Import"),
        Binding("d", "delete", "Delete"),
        Binding("r", "reload", "Refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        table = DataTable(id="models-table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="models-empty")
        yield Static("", id="memory-plan")
        with Vertical(id="task"):
            yield Static(id="task-title")
            yield Gauge("progress", label_width=9, id="task-progress")
            yield Static(id="task-message")

    def on_mount(self) -> None:
        self.models: dict[str, dict] = {}
        self.loaded: str | None = None

    # -- data -----------------------------------------------------------------------------------
    def reload(self) -> None:
        self.call_service(lambda c: c.models(), self._show_models, what="Listing models", group="models",
                          failed=lambda e: self._show_empty(f"Could not list the models: {e.message}"))

    def _show_models(self, answer: dict) -> None:
        table = self.query_one(DataTable)
        selected = self.selected_name()
        self.models = {m["name"]: m for m in answer.get("models") or []}
        self.loaded = answer.get("loaded")
        self.query_one("#memory-plan", Static).update(plan_text(answer))
        if answer.get("task"):
            self.app.state.update_task(answer["task"])
        table.clear()
        for name, model in self.models.items():
            loaded = name == self.loaded
            memory = (model.get("memory") or {}).get("total_bytes")
            cells = [state_text(model), fmt.size(memory) if memory else fmt.MISSING, weights_text(model),
                     model.get("architecture") or fmt.MISSING, fmt.size(model.get("size_bytes")), revision_text(model),
                     model.get("source") or fmt.MISSING, fmt.day(model.get("created_at"))]
            # Text, not str: DataTable would read a str as Rich markup (names and sources come from outside).
            table.add_row(Text("●" if loaded else "○" if model.get("loaded") else "", style="green"),
                          Text(name, style="bold" if loaded else ""), *map(Text, cells), key=name)
        if selected in self.models:
            table.move_cursor(row=table.get_row_index(selected))
        self._show_empty("" if self.models else "No models in the store yet: press p to pull one from the hub, "
                                                "or i to import a folder or GGUF file from this machine.")
        self._show_task(self.app.state)

    def _show_empty(self, message: str) -> None:
        empty = self.query_one("#models-empty", Static)
        empty.update(message)
        empty.display = bool(message)

    def show_state(self, state: ServiceState) -> None:
        super().show_state(state)
        snapshot = state.latest or {}
        loaded = (snapshot.get("service") or {}).get("loaded_model")
        resident = {e["model"] for e in snapshot.get("engines") or []}
        shown = {name for name, m in self.models.items() if m.get("loaded")}
        if self.models and ((loaded is not None and loaded != self.loaded) or (resident and resident != shown)):
            self.reload()  # loaded, swapped or evicted behind our back (another operator, the CLI, a request)
        self._show_task(state)

    def show_task(self, state: ServiceState) -> None:
        super().show_task(state)
        self._show_task(state)

    def _show_task(self, state: ServiceState) -> None:
        task = state.task
        panel = self.query_one("#task", Vertical)
        panel.display = task is not None
        if task is None:
            return
        verb = TASK_VERBS.get(task.get("kind"), task.get("kind") or "Task")
        outcome = {"running": ("", ""), "done": (" — done", "$text-success"), "failed": (" — failed", "$text-error")}
        suffix, style = outcome.get(task.get("state"), ("", ""))
        stage = f" · {task['stage']}" if task.get("stage") and task.get("state") == "running" else ""
        who = f" (by {task['user']})" if task.get("user") else ""
        self.query_one("#task-title", Static).update(Content.assemble(
            (f"{verb} {task.get('target')}", "bold"), (suffix, style), stage, who))
        done, total = task.get("bytes_done"), task.get("bytes_total")
        fraction = task.get("fraction")
        if task.get("state") == "done":
            fraction = 1.0
        text = fmt.percent(fraction) if fraction is not None else "in progress"
        if total:
            text += f" · {fmt.size_pair(done, total)}"
        level = {"failed": "critical", "done": "ok"}.get(task.get("state"), "neutral")
        self.query_one("#task-progress", Gauge).set(fraction, text, level)
        message = task.get("error") or task.get("message") or ""
        self.query_one("#task-message", Static).update(
            Content.styled(message, "$text-error") if task.get("error") else message)

    def selected_name(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    # -- actions --------------------------------------------------------------------------------
    def action_reload(self) -> None:
        self.reload()

    def action_load(self) -> None:
        name = self._selected_unloaded()
        if name is not None:
            self._start(lambda c: c.load_model(name), f"Loading {name}")

    def action_swap(self) -> None:
        name = self._selected_unloaded()
        if name is None:
            return
        current = self.loaded or "nothing"
        question = (f"Swap the live model from {current} to {name}?\n\n"
                    f"Requests in flight on {current} finish first; new requests wait for {name}. "
                    f"If {name} fails to load, {current} keeps serving.")
        self.app.push_screen(ConfirmScreen("Swap model", question, "Swap"), lambda yes: yes and self._start(
            lambda c: c.load_model(name, replace=self.loaded), f"Loading {name}"))

    def _selected_unloaded(self) -> str | None:
        name = self.selected_name()
        if name is None:
            self.notify("No model selected: pull or import one first (p, i).", severity="warning")
            return None
        if self.models[name].get("loaded"):
            self.notify(f"{name} is already loaded.")
            return None
        return name

    def action_unload(self) -> None:
        name = self.selected_name()
        if name is None or not self.models[name].get("loaded"):
            self.notify("Select a loaded model to unload.", severity="warning")
            return
        if name == self.loaded:
            self.notify(f"{name} is the default model: swap another in for it instead (s).", severity="warning")
            return
        question = f"Unload {name}?\n\nIts requests in flight finish first; then its memory is freed."
        self.app.push_screen(ConfirmScreen("Unload model", question, "Unload"),
                             lambda yes: yes and self._start(lambda c: c.unload_model(name), f"Unloading {name}"))

    def action_pin(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        pinned = not self.models[name].get("pinned")
        self.call_service(lambda c: c.pin_model(name, pinned), lambda answer: self._pinned(answer),
                          what=f"{'Pinning' if pinned else 'Unpinning'} {name}")

    def _pinned(self, answer: dict) -> None:
        self.notify(f"{answer['name']} {'is pinned: never evicted' if answer['pinned'] else 'may be evicted when idle'}.")
        self.reload()

    def action_pull(self) -> None:
        self.app.push_screen(PullFormScreen(), self._task_started)

    def action_import_model(self) -> None:
        self.app.push_screen(ImportFormScreen(), self._task_started)

    def action_delete(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        if self.models[name].get("loaded"):
            self.notify(f"{name} is loaded: unload it (or swap another in) first, then delete it.", severity="warning")
            return
        model = self.models[name]
        question = (f"Delete {name} ({fmt.size(model.get('size_bytes'))}) from the store?\n\n"
                    f"Its files under {model.get('path') or 'the models folder'} are removed; "
                    "to use it again it must be pulled or imported again.")
        self.app.push_screen(ConfirmScreen("Delete model", question, "Delete"),
                             lambda yes: yes and self.call_service(lambda c: c.delete_model(name), self._deleted,
                                                                   what=f"Deleting {name}"))

    def _deleted(self, answer: dict) -> None:
        self.notify(f"Deleted {answer.get('deleted')}.")
        self.reload()

    def _start(self, call, what: str) -> None:
        self.call_service(call, self._task_started, what=what)

    def _task_started(self, task: dict | None) -> None:
        if task is None:  # the form was cancelled
            return
        self.app.state.update_task(task)
        self._show_task(self.app.state)
