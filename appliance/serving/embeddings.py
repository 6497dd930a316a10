"""Embeddings on the admitted model: strings are tokenized here, the engine checks the token ids."""

from appliance.errors import APIError, engine_errors
from appliance.ops.cost import BusyClock
from appliance.serving.context import RequestContext
from appliance.serving.served_model import ServedModel


async def embed(served: ServedModel, ctx: RequestContext, inputs: list, retry_after_s: float,
                busy: BusyClock) -> tuple[list[list[float]], int]:
    """Mean-pooled embeddings of strings or token-id lists; returns (vectors, prompt tokens).

    The time on the engine is the request's busy time (its cost is shared by it), as for generation.
    """

    def run(engine):
        batch = [engine.tokenizer.encode(x, add_special_tokens=False) if isinstance(x, str) else list(x) for x in inputs]
        return engine.embed(batch), sum(len(ids) for ids in batch)

    started = busy.start()
    with engine_errors(retry_after_s, {"prompt": "input"}):
        try:
            return await served.async_engine.call(run)
        except Exception as e:
            from engine.errors import EngineError

            if isinstance(e, EngineError):
                raise
            raise APIError(400, f"this model cannot compute embeddings: {type(e).__name__}: {e}",
                           param="model", code="embeddings_unsupported") from None
        finally:
            ctx.add_busy(busy.end(started))
