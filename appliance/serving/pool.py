"""The model pool: the models loaded at once, each with its own engine thread and KV budget.

The pool is the one owner of that state: which models are resident, which is the default (requests
without `model`, /ready and the canary use it), which are retiring after a swap, which loads are in
progress, and what each was planned to take in memory. Hot swap and the control socket change it
only through the methods here; routing (routing.py) asks it what is ready.

Adding a model loads it next to the others when the memory plan says it fits, evicting idle models
(least recently used first, never pinned ones or the default) when room is needed.
"""

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

from appliance.config import Config
from appliance.errors import APIError
from appliance.serving import memory_plan
from appliance.serving.canary import canary_generation
from appliance.serving.served_model import ServedModel, drain_requests

log = logging.getLogger("appliance.service")


class PoolError(Exception):
    """A load or unload the pool refuses; the message says why and what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Swap:
    """A hot swap in progress (`replaced` leaves, `target` comes), as routing sees it."""

    def __init__(self, target: str, replaced: ServedModel | None, sequential: bool):
        self.target = target
        self.replaced = replaced.name if replaced is not None else None
        self.replaced_names = replaced.aliases if replaced is not None else set()
        self.sequential = sequential
        self.finished = asyncio.Event()

    def holds(self, name: str) -> bool:
        """Whether a request routed to `name` must wait for this swap to end."""
        return name == self.target or (self.sequential and name == self.replaced)


class ModelPool:
    def __init__(self, config: Config):
        self.config = config
        self.resident: dict[str, ServedModel] = {}  # loaded and taking requests
        self.default: str | None = None
        self.retiring: list[ServedModel] = []  # swapped out or unloading, finishing their requests
        self.replaced: dict[str, str] = {}  # a swapped-out model's names → the model that replaced it
        self.swap: Swap | None = None
        self.loads: dict[str, asyncio.Future] = {}  # additions in progress
        self.load_errors: dict[str, str] = {}  # the last failed load of each model
        self.planned: dict[str, memory_plan.Needs] = {}  # what each resident (or loading) model was planned to take
        self.pinned: set[str] = {name for name, s in config.models.items() if s.pinned}
        self.state = "starting"  # of the default model: starting, loading, ready, failed
        self.load_error: str | None = None

    # -- names ----------------------------------------------------------------------------------
    @property
    def active(self) -> ServedModel | None:
        """The default model, when it is loaded."""
        return self.resident.get(self.default) if self.default is not None else None

    @property
    def model_name(self) -> str:
        """The id clients send for the default model and responses carry."""
        return self.served_name(self.active)

    def served_name(self, served: ServedModel | None) -> str:
        """The `model` a response from `served` carries."""
        if self.config.served_model_name and (served is None or served.name == self.default):
            return self.config.served_model_name
        return served.name if served is not None else self.config.model_name

    @property
    def models(self) -> list[ServedModel]:
        """Every loaded model: the resident ones and those still finishing after a swap or unload."""
        return [*self.resident.values(), *self.retiring]

    @property
    def loaded_names(self) -> set[str]:
        return {m.name for m in self.models}

    def stored(self, name: str) -> bool:
        return (self.config.models_dir / name / "manifest.json").exists()

    # -- what can answer now --------------------------------------------------------------------
    def ready(self, name: str) -> ServedModel | None:
        """The resident model `name`, unless a swap holds it."""
        if self.swap is not None and self.swap.holds(name):
            return None
        return self.resident.get(name)

    def loadable(self, name: str) -> bool:
        """Whether a request may wait for `name`: it is loading, being swapped in, or loads on demand."""
        return (name in self.loads or (self.swap is not None and self.swap.holds(name))
                or (name == self.default and self.state in ("starting", "loading"))
                or (self.config.load_on_demand and self.stored(name)))

    async def wait_step(self, name: str, deadline: float) -> bool:
        """Wait for what keeps `name` from answering: its swap, its load (starting it on demand), the
        first load. True when that ended (route again: names may now reach another model); False when
        nothing can make `name` ready or the deadline passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.loadable(name):
            return False
        try:
            if self.swap is not None and self.swap.holds(name):
                await asyncio.wait_for(self.swap.finished.wait(), remaining)
            elif name == self.default and name not in self.loads and self.state in ("starting", "loading"):
                await asyncio.sleep(min(0.05, remaining))
            else:
                await asyncio.wait_for(asyncio.shield(self.start_loading(name)), remaining)
        except asyncio.TimeoutError:
            return False
        except PoolError as e:
            raise APIError(503, f"the model {name} could not be loaded: {e.message}", param="model",
                           code="model_not_loaded", retry_after_s=self.config.retry_after_s) from None
        return True

    def not_ready(self, name: str) -> APIError:
        """The 503 for a request whose model did not become ready."""
        if name == self.default and (self.state != "ready" or self.active is None):
            return APIError(503, f"no model is loaded ({self.state}); retry later",
                            code="no_model_loaded", retry_after_s=self.config.retry_after_s)
        why = f"still loading after {self.config.load_timeout_s:g} s" if self.loadable(name) else "not loaded"
        return APIError(503, f"the model {name} is {why}; retry later", param="model", code="model_not_loaded",
                        retry_after_s=self.config.retry_after_s)

    def check_loaded(self) -> None:
        if self.state != "ready" or self.active is None:
            raise self.not_ready(self.default)

    # -- memory ---------------------------------------------------------------------------------
    def engine_config(self, name: str | None = None):
        """The engine.EngineConfig for one engine to own: [engine], then [models.NAME]'s settings."""
        config = dataclasses.replace(self.config.engine)
        settings = self.config.model_settings(name) if name is not None else None
        for key in settings.ENGINE_KEYS if settings is not None else ():
            if getattr(settings, key) is not None:
                setattr(config, key, getattr(settings, key))
        return config

    def plan(self) -> memory_plan.Plan:
        used = {n: need.total for n, need in self.planned.items()}
        free = memory_plan.free_memory_bytes(self.config.engine.device)
        if free is None:  # RAM's availability hidden: what the loaded models were not planned to take
            free = memory_plan.ram_bytes() - sum(used.values())
        return memory_plan.Plan(self.config.pool_memory_bytes, used, free)

    def evictable(self) -> list[ServedModel]:
        """Resident models that may make room, least recently used first: idle past their keep_alive_s,
        not pinned, not the default, nothing in flight."""
        now = time.monotonic()
        idle = [m for m in self.resident.values() if m.name not in self.pinned and m.name != self.default
                and not m.busy and now - m.last_used >= self.keep_alive_s(m.name)]
        return sorted(idle, key=lambda m: m.last_used)

    def keep_alive_s(self, name: str) -> float:
        own = self.config.model_settings(name).keep_alive_s
        return own if own is not None else self.config.keep_alive_s

    async def make_room(self, name: str, need: memory_plan.Needs) -> None:
        """Evict idle models until `need` fits; PoolError with the numbers when it cannot."""
        while True:
            plan = self.plan()
            unloadable = [m for m in self.resident if m != self.default]
            refusal = plan.refusal(name, need, unloadable)
            if refusal is None:
                return
            victims = self.evictable()
            if not victims:
                raise PoolError(507, refusal)
            log.info("evicting %s (idle %.0f s) to make room for %s", victims[0].name,
                     time.monotonic() - victims[0].last_used, name)
            await self.unload(victims[0].name, reason=f"evicted to make room for {name}")

    # -- loading and unloading ------------------------------------------------------------------
    def start_loading(self, name: str) -> asyncio.Future:
        """Load the stored model `name` next to the others (or join its load in progress)."""
        if name not in self.loads:
            self.loads[name] = asyncio.ensure_future(self._add(name))
            self.loads[name].add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        return self.loads[name]

    def load_on_demand(self, name: str) -> None:
        """Start loading `name` if it loads on demand and nothing (a load, a swap) is bringing it already."""
        if (self.config.load_on_demand and name not in self.resident and self.stored(name)
                and not (self.swap is not None and self.swap.holds(name))):
            self.start_loading(name)

    async def add(self, name: str) -> ServedModel:
        if name in self.resident:
            raise PoolError(409, f"{name} is already loaded")
        return await asyncio.shield(self.start_loading(name))

    async def _add(self, name: str) -> ServedModel:
        try:
            if not self.stored(name):
                raise PoolError(404, f"no model {name!r} in the store; `appliance models list` shows them")
            path = self.config.models_dir / name
            served = await self.load(name, path, set(self.config.model_settings(name).aliases))
            error = await canary_generation(served.async_engine, self.config.canary_timeout_s)
            if error is not None:
                await self.stop_model(served)
                raise PoolError(500, f"{name} loaded but a test generation failed: {error}")
            self.resident[name] = served
            self.load_errors.pop(name, None)
            log.info("loaded %s next to %s", name, ", ".join(sorted(set(self.resident) - {name})) or "nothing")
            return served
        except PoolError as e:
            self.load_errors[name] = e.message
            raise
        except Exception as e:
            self.load_errors[name] = f"{type(e).__name__}: {e}"
            raise PoolError(500, f"{name} could not be loaded: {self.load_errors[name]}") from None
        finally:
            self.loads.pop(name, None)

    async def load(self, name: str, path: Path, aliases: set[str], config=None) -> ServedModel:
        """Plan `name`'s memory (making room), then load it off the event loop; not yet routed to."""
        config = config or self.engine_config(name)
        need = await asyncio.to_thread(memory_plan.needs, path, config, self.config.kv_context)
        if config.num_kv_blocks is None:
            config.kv_cache_bytes = need.cache  # the engine allocates what was planned (KV cache and state slots)
        await self.make_room(name, need)
        self.planned[name] = need  # before the load: a concurrent one sees the room taken
        try:
            return await asyncio.to_thread(ServedModel.load, name, path, config, aliases)
        except BaseException:
            self.planned.pop(name, None)
            raise

    async def unload(self, name: str, reason: str) -> None:
        """Stop routing to `name`, let its requests finish (swap_drain_timeout_s), stop its engine."""
        served = self.resident.pop(name, None)
        if served is None:
            raise PoolError(404, f"{name} is not loaded")
        self.retiring.append(served)
        await drain_requests(served, self.config.swap_drain_timeout_s, f"the model {name} was {reason} and the "
                             "drain timeout ended this request; retry", admitted=True)
        served.retire()
        await self.stop_model(served)
        self.retiring.remove(served)

    async def stop_model(self, served: ServedModel) -> None:
        await asyncio.to_thread(served.stop)
        self.planned.pop(served.name, None)

    # -- the first load -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the configured model (or the one a hot swap left loaded), then the pinned ones."""
        self.state = "loading"
        name = self.config.model_path.name if self.config.model_is_path else self.config.model
        aliases = {self.config.model, self.config.model_name, *self.config.model_settings(name).aliases}
        swapped_in = self.remembered_model()
        self.default = name
        try:
            if swapped_in is not None:  # the configured model's names still reach its replacement
                self.replaced = {alias: swapped_in for alias in aliases - {swapped_in}}
                name, aliases, path = swapped_in, set(self.config.model_settings(swapped_in).aliases), \
                    self.config.models_dir / swapped_in
                self.default = name
            else:
                path = await asyncio.to_thread(self._resolve_model_path)  # may install the default model
            self.resident[name] = await self.load(name, path, aliases)
        except Exception as e:
            self.fail(f"{type(e).__name__}: {e}")
            raise
        self.state = "ready"
        for pinned in sorted(self.pinned - {name}):
            try:
                await self.add(pinned)
            except PoolError as e:  # the default serves; the operator sees why in status and the log
                log.error("the pinned model %s did not load: %s", pinned, e.message)

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
        """A hot-swapped default model stays loaded across restarts (until the next swap)."""
        self._loaded_model_file.write_text(name + "\n")

    def remembered_model(self) -> str | None:
        try:
            name = self._loaded_model_file.read_text().strip()
        except OSError:
            return None
        if name and self.stored(name):
            return name
        log.warning("the last hot-swapped model %r is no longer in the store; loading %s", name, self.config.model)
        return None

    # -- hot swap's steps -----------------------------------------------------------------------
    def begin_swap(self, target: str, replaced: ServedModel | None, sequential: bool) -> Swap:
        self.swap = Swap(target, replaced, sequential)
        return self.swap

    def end_swap(self) -> None:
        swap, self.swap = self.swap, None
        if swap is not None:
            swap.finished.set()

    def take_down(self, old: ServedModel) -> None:
        """A sequential swap: the old model leaves before the new one loads."""
        old.retire()
        self.resident.pop(old.name, None)
        self.retiring.append(old)
        if old.name == self.default:
            self.state = "loading"

    def switch_to(self, new: ServedModel, old: ServedModel | None) -> None:
        """Requests for `old` (and its names) go to `new` from now on; `old` starts retiring."""
        if old is not None:
            for alias in old.aliases:
                self.replaced[alias] = new.name
            self.replaced = {a: (new.name if m == old.name else m) for a, m in self.replaced.items()}
            if self.resident.pop(old.name, None) is not None:
                self.retiring.append(old)
        if self.default not in self.resident:  # it was `old`, or it failed to load: `new` is the default now
            self.default = new.name
        for alias in new.aliases:
            self.replaced.pop(alias, None)
        self.resident[new.name] = new
        if new.name == self.default:
            self.state = "ready"

    def stopped(self, old: ServedModel) -> None:
        """A retiring model finished its requests and was stopped."""
        if old in self.retiring:
            self.retiring.remove(old)

    def restored(self, served: ServedModel) -> None:
        """The old model reloaded after a failed sequential swap."""
        self.resident[served.name] = served
        if served.name == self.default:
            self.state = "ready"

    def fail(self, error: str) -> None:
        self.state, self.load_error = "failed", error

    async def stop(self) -> None:
        for served in self.models:
            await asyncio.to_thread(served.async_engine.shutdown)
