"""The model pool: which model serves, which are retiring after a hot swap, which names reach them.

The pool is the one owner of that state. Hot swap changes it only through the methods here, and
admission asks it where a request naming `model` goes (waiting while a swap must finish first).
"""

import asyncio
import dataclasses
import logging
from pathlib import Path

from appliance.config import Config
from appliance.errors import APIError
from appliance.serving.served_model import ServedModel

log = logging.getLogger("appliance.service")


class Swap:
    """A hot swap in progress, as admission sees it."""

    def __init__(self, target: str, sequential: bool):
        self.target = target
        self.sequential = sequential
        self.finished = asyncio.Event()


class ModelPool:
    def __init__(self, config: Config):
        self.config = config
        self.active: ServedModel | None = None
        self.retiring: list[ServedModel] = []  # swapped out, finishing their requests
        self.replaced_names: set[str] = set()  # names of swapped-out models: their replacement answers them
        self.swap: Swap | None = None
        self.state = "starting"  # starting, loading, ready, failed
        self.load_error: str | None = None

    # -- names ----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The id clients send and responses carry."""
        return self.served_name(self.active)

    def served_name(self, served: ServedModel | None) -> str:
        if self.config.served_model_name:
            return self.config.served_model_name
        return served.name if served is not None else self.config.model_name

    def accepted_names(self, served: ServedModel) -> set[str]:
        """What a request's `model` may say: the model, the served name, and the models it replaced."""
        names = served.aliases | self.replaced_names
        return names | {self.config.served_model_name} if self.config.served_model_name else names

    @property
    def models(self) -> list[ServedModel]:
        """Every loaded model: the active one and those still finishing after a swap."""
        return [m for m in (self.active, *self.retiring) if m is not None]

    @property
    def loaded_names(self) -> set[str]:
        return {m.name for m in self.models}

    # -- routing --------------------------------------------------------------------------------
    def holds(self, model: str | None) -> bool:
        """Whether a request naming `model` must wait for the swap in progress to end."""
        swap = self.swap
        if swap is None:
            return False
        if swap.sequential:
            return True  # the old model is draining or gone
        return model == swap.target and (self.active is None or model not in self.active.aliases)

    async def wait_for_swap(self, model: str | None) -> None:
        """A request for the incoming model, or any request while a swap that cannot overlap has
        taken the old model down, waits until the swap ends instead of failing."""
        while self.holds(model):
            await self.swap.finished.wait()

    def resolve(self, model: str | None) -> ServedModel:
        """The model that serves a request naming `model` (None: the active one); 404 for others."""
        self.check_loaded()
        active = self.active
        if model is not None and model not in self.accepted_names(active):
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        return active

    def check_loaded(self) -> None:
        if self.state != "ready" or self.active is None:
            raise APIError(503, f"no model is loaded ({self.state}); retry later",
                           code="no_model_loaded", retry_after_s=self.config.retry_after_s)

    # -- the first load -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the configured model, or the one a hot swap left loaded (off the event loop)."""
        self.state = "loading"
        name = self.config.model_path.name if self.config.model_is_path else self.config.model
        aliases = {self.config.model, self.config.model_name}
        swapped_in = self.remembered_model()
        try:
            if swapped_in is not None:  # the configured model's names still reach its replacement
                self.replaced_names = aliases - {swapped_in}
                name, aliases, path = swapped_in, set(), self.config.models_dir / swapped_in
            else:
                path = await asyncio.to_thread(self._resolve_model_path)  # may install the default model
            self.active = await asyncio.to_thread(ServedModel.load, name, path, self.engine_config(), aliases)
        except Exception as e:
            self.fail(f"{type(e).__name__}: {e}")
            raise
        self.state = "ready"

    def engine_config(self):
        """A copy of the configured engine settings, for one engine to own."""
        return dataclasses.replace(self.config.engine)

    def _resolve_model_path(self) -> Path:
        path = self.config.model_path
        if not self.config.model_is_path and not path.exists():
            from appliance.models.default_model import MODEL_NAME, install_default_model

            if self.config.model == MODEL_NAME:
                log.info("installing the default model into %s", self.config.models_dir)
                return install_default_model(self.config.models_dir, self.config.downloads_dir)
        return path

    @property
    def _loaded_model_file(self) -> Path:
        return self.config.state_dir / "loaded-model"

    def remember_loaded(self, name: str) -> None:
        """A hot-swapped model stays loaded across restarts (until the next swap)."""
        self._loaded_model_file.write_text(name + "\n")

    def remembered_model(self) -> str | None:
        try:
            name = self._loaded_model_file.read_text().strip()
        except OSError:
            return None
        if name and (self.config.models_dir / name / "manifest.json").exists():
            return name
        log.warning("the last hot-swapped model %r is no longer in the store; loading %s", name, self.config.model)
        return None

    # -- hot swap's steps -----------------------------------------------------------------------
    def begin_swap(self, target: str, sequential: bool) -> Swap:
        self.swap = Swap(target, sequential)
        return self.swap

    def end_swap(self) -> None:
        swap, self.swap = self.swap, None
        if swap is not None:
            swap.finished.set()

    def take_down(self, old: ServedModel) -> None:
        """A sequential swap: the old model leaves before the new one loads."""
        old.retire()
        self.active, self.state = None, "loading"

    def switch_to(self, new: ServedModel) -> ServedModel | None:
        """New requests go to `new`; the previous active model (if any) starts retiring."""
        old = self.active
        if old is not None:
            self.replaced_names = (self.replaced_names | old.aliases) - new.aliases
            self.retiring.append(old)
        self.active, self.state = new, "ready"
        return old

    def stopped(self, old: ServedModel) -> None:
        """A retiring model finished its requests and was stopped."""
        self.retiring.remove(old)

    def restored(self, served: ServedModel) -> None:
        """The old model reloaded after a failed sequential swap."""
        self.active, self.state = served, "ready"

    def fail(self, error: str) -> None:
        self.state, self.load_error = "failed", error

    async def stop(self) -> None:
        for served in self.models:
            await asyncio.to_thread(served.async_engine.shutdown)
