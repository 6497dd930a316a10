"""POST /v1/embeddings and GET /v1/models."""

from typing import Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr

from appliance.api.schemas.common import StrictRequest, Usage, no_effect
from appliance.api.schemas.completions import Prompt


class EmbeddingRequest(StrictRequest):
    model: StrictStr = Field(max_length=1024)
    input: Prompt
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)
    user: StrictStr | None = no_effect("the server does not track end users", max_length=1024)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "appliance"
    max_model_len: int | None = None
    state: str = Field("loaded", description="loaded, loading, or on_demand (loads on its first request)")
    model: str | None = Field(None, description="for an alias: the model it routes to")
    weights: str | None = Field(None, description="a loaded model's weight packing, e.g. \"int4 g32 + float32\"")
    weight_bytes: int | None = Field(None, description="a loaded model's weights in memory, in bytes")
    kv_cache_dtype: str | None = Field(None, description="a loaded model's KV cache dtype, e.g. float8_e4m3fn")
    input_modalities: list[str] | None = Field(None, description="what a loaded model reads: [\"text\"], or "
                                                                 "[\"text\", \"image\"] for one that takes images")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
