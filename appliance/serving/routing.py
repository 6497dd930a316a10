"""Routing: the names requests send, which loaded model answers one, and when its fallback does instead.

A name reaches a model (its own name, an alias from [routing.aliases] or [models.NAME].aliases, a
swapped-out model's names) and has a chain: that model, then its fallbacks ([routing.fallbacks]).
The request goes to the first in the chain that is ready, not past `fallback_queue_depth` waiting
requests (unless it is the last resort), not failed before its first token for this request, and
allowed to the key. With none ready it waits for the first that can become ready (a swap, a load,
a load on demand) up to load_timeout_s, then gets the 503 it gets today.

A key's allowed_models apply to the name sent and to every fallback: a fallback is taken only if
the key may use it by name or through an alias of it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import APIError
from appliance.serving.pool import ModelPool
from appliance.serving.served_model import ServedModel


@dataclass(frozen=True)
class Fallback:
    """Why a request was answered by `to` instead of `from_`."""

    from_: str
    to: str
    reason: str  # not_ready, overloaded, failed

    @property
    def header(self) -> str:
        return f"{self.reason}; from={self.from_}; to={self.to}"


@dataclass(frozen=True)
class Route:
    served: ServedModel
    fallback: Fallback | None


class Router:
    def __init__(self, pool: ModelPool, count_fallback: Callable[[Fallback], None]):
        self.pool = pool
        self.count_fallback = count_fallback

    # -- names --------------------------------------------------------------------------------
    def target(self, name: str | None) -> str | None:
        """The model a request naming `name` is for (None: the default); None when nothing answers to it."""
        pool, config = self.pool, self.pool.config
        if name is None:
            return pool.default
        found = config.routing.aliases.get(name)
        if found is None:
            found = next((m.name for m in pool.resident.values() if name in m.aliases), None)
        if found is None:
            found = next((n for n, s in config.models.items() if name in s.aliases), None)
        if found is None and name == config.served_model_name:
            found = pool.default
        swap = pool.swap
        if found is None and swap is not None and (name == swap.target or name in swap.replaced_names):
            found = swap.target  # coming in, or taken down by a sequential swap: wait for the new model
        if found is None and (name in pool.replaced or name in pool.loads or (config.load_on_demand and pool.stored(name))):
            found = name
        seen = set()
        while found in pool.replaced and found not in pool.resident and found not in seen:
            seen.add(found)
            found = pool.replaced[found]
        return found

    def chain(self, name: str | None) -> list[str]:
        """Where a request naming `name` may go, in order: its model, then its fallbacks."""
        first = self.target(name)
        if first is None:
            return []
        fallbacks = self.pool.config.routing.fallbacks
        rest = fallbacks.get(name) if name in fallbacks else fallbacks.get(first, [])
        chain = [first]
        for fallback in rest:
            found = self.target(fallback)
            if found is not None and found not in chain:
                chain.append(found)
        return chain

    def routable_names(self) -> dict[str, str]:
        """Every name a request may send → the model it reaches."""
        pool, config = self.pool, self.pool.config
        names = {m: m for m in pool.resident} | {a: m.name for m in pool.resident.values() for a in m.aliases}
        if config.load_on_demand and config.models_dir.is_dir():
            names |= {p.name: p.name for p in config.models_dir.iterdir() if pool.stored(p.name)}
        for alias in (*config.routing.aliases, *(a for s in config.models.values() for a in s.aliases)):
            found = self.target(alias)
            if found is not None and (found in pool.resident or found in names):
                names[alias] = found
        if config.model_is_path:  # a request may name the model by its path; the list shows its name
            names.pop(config.model, None)
        return names

    def resolve(self, model: str | None) -> ServedModel:
        """The resident model a request naming `model` reaches now (tokenize, admission's fast path)."""
        name = self.target(model)
        if name is None:
            raise self.unknown(model)
        served = self.pool.ready(name)
        if served is None:
            raise self.pool.not_ready(name)
        return served

    def unknown(self, model: str | None) -> APIError:
        names = ", ".join(repr(n) for n in sorted(self.routable_names())) or "nothing"
        return APIError(404, f"the model {model!r} does not exist; this server serves {names}",
                        param="model", code="model_not_found")

    # -- routing ------------------------------------------------------------------------------
    def allows(self, allowed_models: list[str] | None, name: str) -> bool:
        """Whether a key limited to `allowed_models` may reach the model `name`."""
        if allowed_models is None or name in allowed_models:
            return True
        return any(self.target(a) == name for a in allowed_models)

    def candidates(self, model: str | None, allowed_models: list[str] | None, avoid: set[str]) -> list[str]:
        """The chain for `model`, less the fallbacks the key may not use and the models that failed."""
        chain = self.chain(model)
        if not chain:
            raise self.unknown(model)
        return [n for i, n in enumerate(chain) if n not in avoid and (i == 0 or self.allows(allowed_models, n))]

    async def route(self, model: str | None, allowed_models: list[str] | None = None,
                    avoid: frozenset[str] = frozenset()) -> Route:
        """The model that answers now (waiting for a swap or load when nothing in the chain is ready)."""
        deadline = time.monotonic() + self.pool.config.load_timeout_s
        while True:
            chain = self.chain(model)
            candidates = self.candidates(model, allowed_models, set(avoid))
            skipped = [Fallback(n, "", "failed") for n in chain if n in avoid][:1]
            for i, name in enumerate(candidates):
                served = self.pool.ready(name)
                last = i == len(candidates) - 1
                if served is None:
                    self.pool.load_on_demand(name)  # in the background: a fallback answers meanwhile
                    if not last:
                        skipped.append(Fallback(name, "", "not_ready"))
                    continue
                if not last and self._overloaded(served):
                    skipped.append(Fallback(name, "", "overloaded"))
                    continue
                return self._route(served, skipped)
            waiting_on = next((n for n in candidates if self.pool.loadable(n)), None)
            if waiting_on is None or not await self.pool.wait_step(waiting_on, deadline):
                raise self._refusal(model, candidates)

    def _overloaded(self, served: ServedModel) -> bool:
        depth = self.pool.config.routing.fallback_queue_depth
        return depth > 0 and served.async_engine.stats().num_waiting >= depth

    def _route(self, served: ServedModel, skipped: list[Fallback]) -> Route:
        if not skipped:
            return Route(served, None)
        first = skipped[0]
        fallback = Fallback(first.from_, served.name, first.reason)
        self.count_fallback(fallback)
        return Route(served, fallback)

    def _refusal(self, model: str | None, candidates: list[str]) -> APIError:
        if not candidates:
            return APIError(503, f"every model {model!r} could go to failed for this request; retry later",
                            param="model", code="model_not_loaded", retry_after_s=self.pool.config.retry_after_s)
        return self.pool.not_ready(candidates[0])
