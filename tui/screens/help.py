"""`?`: every key, from the same binding tables the footer and the command palette use."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.screens.key_forms import SecretScreen
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.form import FormScreen

KEY_WIDTH = 12
# Keys of the dialogs, which are not reachable from the palette and so are not in the app's tables.
DIALOGS = [("Confirmations", ConfirmScreen.BINDINGS), ("Forms", FormScreen.BINDINGS),
           ("New key's secret", SecretScreen.BINDINGS)]
MOUSE = ("Mouse: click a tab to switch screens, a row to select it, a button to press it; "
         "scroll with the wheel. Hold shift to select text the terminal's way.")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close help")]

    def __init__(self, tables: list[tuple[str, str | None, list[Binding]]]):
        super().__init__()
        self.tables = [(title, bindings) for title, _mode, bindings in tables]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help") as dialog:
            dialog.border_title = "Keys (escape closes)"
            for title, bindings in [*self.tables, *DIALOGS]:
                yield Static(Content.styled(title, "bold $text-accent"), classes="help-section")
                yield Static(Content("\n").join(self._row(b) for b in bindings if b.description))
            yield Static(MOUSE, classes="hint")

    def _row(self, binding: Binding) -> Content:
        keys = ", ".join(self.app.get_key_display(Binding(key, binding.action)) for key in binding.key.split(","))
        return Content.assemble((keys.ljust(KEY_WIDTH), "bold"), binding.description)

    def action_close(self) -> None:
        self.dismiss(None)
