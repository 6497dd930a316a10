"""Llama 4's image processor without torchvision.

transformers has Llama 4's image processor for its torchvision backend only, and PyPI's torchvision is built
for CUDA torch (it does not import beside CPU torch). This is the same processing on torch's own ops, step for
step: the canvas of at most max_patches tiles that fits the image best (get_best_fit: the least upscaling, else
the least downscaling, then the least area), the image resized into it without distortion (bilinear with
antialias on uint8, as torchvision's resize calls torch) and padded with zeros at the right and bottom,
rescaled and normalized in bfloat16 (as the model's reference code does), cut into tiles; where there is more
than one tile, the whole image resized to one tile follows them. tests/engine/test_llama4_images.py checks it
against transformers' own processor, run beside PyPI's torchvision.
"""

import math

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import split_to_tiles
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs


class Llama4ImagesKwargs(ImagesKwargs, total=False):
    max_patches: int  # tiles an image may be cut into, the global tile not counted
    resize_to_max_canvas: bool  # True: the canvas that upscales most; False: as little resizing as the tiles allow


def supported_canvases(max_patches: int, tile: int) -> torch.Tensor:
    """Every (height, width) of whole tiles, at most max_patches of them, in the reference's order (grouped by
    aspect ratio, as they first occur from the most tiles down): ties go to the first."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for count in range(max_patches, 0, -1):
        for rows in sorted(d for d in range(1, count + 1) if count % d == 0):
            by_ratio.setdefault(rows / (count // rows), []).append((rows, count // rows))
    return torch.tensor([(rows * tile, columns * tile) for grids in by_ratio.values() for rows, columns in grids])


def best_canvas(height: int, width: int, canvases: torch.Tensor, to_max: bool) -> torch.Tensor:
    """The canvas the image fits: the smallest scale at or above 1 (the largest with to_max), else the largest below
    1; among canvases of that scale, the least area. In float32, as the reference computes it (ties are exact)."""
    scales = torch.minimum(canvases[:, 0] / height, canvases[:, 1] / width)
    up = scales[scales >= 1]
    scale = (up.max() if to_max else up.min()) if len(up) else scales.max()
    chosen = canvases[scales == scale]
    return chosen[torch.argmin(chosen[:, 0] * chosen[:, 1])]


def fit_without_distortion(height: int, width: int, target_height, target_width) -> tuple[int, int]:
    """The largest size of the image's aspect ratio within the target, with the reference's rounding: its scale is
    float32 arithmetic where a bound is the canvas (a tensor), float64 where it is the image's own size."""
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return max(min(math.floor(height * scale_w), int(target_height)), 1), max(int(target_width), 1)
    return max(int(target_height), 1), max(min(math.floor(width * scale_h), int(target_width)), 1)


class Llama4ImageProcessor(PilBackend):
    """transformers' Llama4ImageProcessor on torch's ops; saved under that name (its preprocessor_config.json)."""

    resample = PILImageResampling.BILINEAR
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 336, "width": 336}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    max_patches = 16
    resize_to_max_canvas = False
    valid_kwargs = Llama4ImagesKwargs
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.resample != PILImageResampling.BILINEAR:  # what the published checkpoints ask, and all this resizes with
            raise ValueError(f"Llama 4's image processor here resizes bilinearly (resample 2), not with {self.resample}")

    def _preprocess(self, images: list[np.ndarray], size: SizeDict, rescale_factor: float, image_mean: list[float],
                    image_std: list[float], max_patches: int, resize_to_max_canvas: bool, return_tensors=None,
                    **kwargs) -> BatchFeature:
        """images: uint8 [channels, height, width] each. pixel_values: every image's tiles in order, bfloat16."""
        if size.height != size.width:
            raise ValueError(f"Llama 4's tiles are square; size is {size.height} x {size.width}")
        tile = size.height
        canvases = supported_canvases(max_patches, tile)
        normalized = _normalizer(rescale_factor, image_mean, image_std)
        tiles, aspect_ratios = [], []
        for array in images:
            image = torch.from_numpy(np.ascontiguousarray(array))[None]
            height, width = image.shape[-2:]
            canvas = best_canvas(height, width, canvases, resize_to_max_canvas)
            # without resize_to_max_canvas an image is not upscaled past one tile's side
            bound = canvas if resize_to_max_canvas else (min(max(height, tile), canvas[0]),
                                                         min(max(width, tile), canvas[1]))
            resized = _resize(image, fit_without_distortion(height, width, *bound))
            canvas_height, canvas_width = canvas.tolist()
            padded = torch.nn.functional.pad(resized, (0, canvas_width - resized.shape[-1],
                                                       0, canvas_height - resized.shape[-2]))
            rows, columns = canvas_height // tile, canvas_width // tile
            image_tiles = split_to_tiles(normalized(padded), rows, columns)[0]
            if rows * columns > 1:  # the whole image as one more tile
                image_tiles = torch.cat([image_tiles, normalized(_resize(image, (tile, tile)))])
            tiles.append(image_tiles)
            aspect_ratios.append([rows, columns])
        return BatchFeature(data={"pixel_values": torch.cat(tiles), "aspect_ratios": torch.tensor(aspect_ratios)},
                            tensor_type=return_tensors)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [1, channels, height, width] resized (torch's native uint8 bilinear with antialias: torchvision's)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(image, size=list(size), mode="bilinear", align_corners=False, antialias=True)


def _normalizer(rescale_factor: float, mean: list[float], std: list[float]):
    """uint8 pixels to the model's inputs: rescaled, then normalized, in bfloat16."""
    mean_t = torch.tensor(mean, dtype=torch.bfloat16).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.bfloat16).view(-1, 1, 1)
    return lambda pixels: (pixels.to(torch.bfloat16) * rescale_factor).sub(mean_t).div_(std_t)
