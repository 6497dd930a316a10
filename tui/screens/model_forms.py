"""Forms that put a model into the store: pull from the Hugging Face hub, import a local folder or GGUF file."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Input, Static

from tui.widgets.form import FormScreen


class PullFormScreen(FormScreen):
    """Dismisses with the pull task the service started."""

    FORM_TITLE = "Pull a model from the Hugging Face hub"
    SUBMIT_LABEL = "Pull"

    def compose_intro(self) -> ComposeResult:
        yield Static("The revision is pinned: a branch or tag is resolved to its commit when the pull starts.",
                     classes="hint")

    def compose_fields(self) -> ComposeResult:
        yield from self.field("Repository", Input(placeholder="HuggingFaceTB/SmolLM2-360M-Instruct", id="repo",
                                                  compact=True))
        yield from self.field("Revision", Input(value="main", placeholder="main, a tag or a commit", id="revision",
                                                compact=True))
        yield from self.field("Store name", Input(placeholder="(default: from the repository)", id="name",
                                                  compact=True))

    def read(self) -> dict:
        # The service checks the repository id and says what is wrong; only an empty field is ours to catch.
        repo = self.value("repo")
        if not repo:
            raise ValueError("Repository: enter the model's hub id as owner/name")
        return {"repo": repo, "revision": self.value("revision") or "main", "name": self.value("name") or None}

    def send(self, body: dict) -> dict:
        return self.app.control.pull_model(body["repo"], body["revision"], body["name"])


class ImportFormScreen(FormScreen):
    """Dismisses with the import task the service started."""

    FORM_TITLE = "Import a model from this machine"
    SUBMIT_LABEL = "Import"

    def compose_intro(self) -> ComposeResult:
        yield Static("A Hugging Face model folder (safetensors) or a GGUF file, as a path on the server "
                     "that the service's user can read.", classes="hint")

    def compose_fields(self) -> ComposeResult:
        yield from self.field("Path", Input(placeholder="/srv/models/my-model", id="path", compact=True))
        yield from self.field("Store name", Input(placeholder="(default: the folder or file name)", id="name",
                                                  compact=True))

    def read(self) -> dict:
        path = self.value("path")
        if not path.startswith("/"):
            raise ValueError("Path: enter an absolute path (the service resolves it, not this terminal's folder)")
        return {"path": path, "name": self.value("name") or None}

    def send(self, body: dict) -> dict:
        return self.app.control.import_model(body["path"], body["name"])
