"""A request's images: the URLs of its image parts checked and read into PIL images under the operator's limits.

A data: URL (base64; PNG, JPEG, WebP, GIF: what PIL reads) is decoded here. An http(s) URL is fetched only
when its host is one the operator lists in image_url_hosts, none by default: a URL the server fetches is a
way into the network it sits in. Every URL is checked before any is fetched, so a refused one costs no
connection; redirects are not followed (they could lead off the list). Each refusal is a 400 naming the
part and, where a limit refused it, the limit: max_images_per_request, max_image_bytes, max_image_pixels.
A stored response's images (previous_response_id) come as the bytes first read, decoded again, never fetched.
"""

import asyncio
import base64
import binascii
import io
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from appliance.config import Config
from appliance.errors import invalid

DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<options>(;[\w.+-]+=[^;,]*)*);base64,(?P<data>.*)", re.S)
FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ImageRef:
    """An image part's URL and the part's place in the body, e.g. "messages.1.content.0.image_url.url"; or a stored
    response's image, its bytes as they were first read (url None, param "previous_response_id")."""

    url: str | None
    param: str
    data: bytes | None = None


@dataclass(frozen=True)
class RequestImage:
    data: bytes  # as sent (a data: URL's, decoded from base64) or fetched: what a stored response keeps
    picture: Image.Image  # decoded, RGB


@dataclass(frozen=True)
class ImageLimits:
    max_images: int
    max_bytes: int
    max_pixels: int
    hosts: frozenset[str]  # lower-case host names whose http(s) URLs may be fetched

    @classmethod
    def from_config(cls, config: Config) -> "ImageLimits":
        return cls(config.max_images_per_request, config.max_image_bytes, config.max_image_pixels,
                   frozenset(h.lower() for h in config.image_url_hosts))


def check_urls(refs: tuple[ImageRef, ...], limits: ImageLimits) -> None:
    """The count and every URL's kind and host, before anything is decoded or fetched."""
    if len(refs) > limits.max_images:
        stored = sum(ref.data is not None for ref in refs)
        counted = f" ({stored} of them previous_response_id's)" if stored else ""
        raise invalid(refs[limits.max_images].param,
                      f"{refs[limits.max_images].param}: {len(refs)} images in one request{counted}; this server "
                      f"takes at most {limits.max_images} (max_images_per_request)")
    for ref in refs:
        if ref.data is not None or ref.url.startswith("data:"):
            continue
        parts = urlsplit(ref.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid(ref.param, f"{ref.param}: an image URL is a data: URL (data:image/png;base64,...) or an "
                                     "http(s) URL; send the image inline as a base64 data: URL")
        if parts.hostname.lower() not in limits.hosts:
            raise invalid(ref.param, f"{ref.param}: this server does not fetch images from {parts.hostname} (its "
                                     "operator lists the hosts it may fetch from in image_url_hosts); send the image "
                                     "inline as a base64 data: URL")


async def read_images(refs: tuple[ImageRef, ...], limits: ImageLimits) -> tuple[RequestImage, ...]:
    """The request's images, decoded to RGB off the event loop; 400s name the part that is refused."""
    check_urls(refs, limits)
    images = []
    for ref in refs:
        if ref.data is not None:
            raw = ref.data
        else:
            raw = _data_url_bytes(ref, limits) if ref.url.startswith("data:") else await _fetch(ref, limits)
        images.append(RequestImage(raw, await asyncio.to_thread(_decode, raw, ref, limits)))
    return tuple(images)


def _data_url_bytes(ref: ImageRef, limits: ImageLimits) -> bytes:
    match = DATA_URL.fullmatch(ref.url)
    if match is None:
        raise invalid(ref.param, f"{ref.param}: a data: URL must be base64, as data:image/png;base64,<data>")
    data = match["data"]
    if len(data) * 3 // 4 > limits.max_bytes + 2:
        raise _too_large(ref, limits)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(ref.param, f"{ref.param}: the data: URL's data is not valid base64") from None
    if len(raw) > limits.max_bytes:
        raise _too_large(ref, limits)
    return raw


def _too_large(ref: ImageRef, limits: ImageLimits):
    return invalid(ref.param, f"{ref.param}: the image is larger than {limits.max_bytes} bytes (max_image_bytes)")


async def _fetch(ref: ImageRef, limits: ImageLimits) -> bytes:
    """An allowed host's image, read up to the byte limit."""
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
            async with client.stream("GET", ref.url) as response:
                if response.status_code != 200:
                    raise invalid(ref.param, f"{ref.param}: fetching the image answered HTTP {response.status_code}")
                raw = bytearray()
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > limits.max_bytes:
                        raise _too_large(ref, limits)
                return bytes(raw)
    except httpx.HTTPError as e:
        raise invalid(ref.param, f"{ref.param}: the image could not be fetched: {type(e).__name__}") from None


def _decode(raw: bytes, ref: ImageRef, limits: ImageLimits) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _unreadable(ref, e) from None
    width, height = image.size  # from the header: nothing decoded yet
    if width * height > limits.max_pixels:
        raise invalid(ref.param, f"{ref.param}: the image is {width} x {height} pixels, more than {limits.max_pixels} "
                                 "(max_image_pixels)")
    try:
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(ref, e) from None


def _unreadable(ref: ImageRef, error: Exception):
    return invalid(ref.param, f"{ref.param}: the data is not an image this server reads (PNG, JPEG, WebP, GIF): "
                              f"{error}")
