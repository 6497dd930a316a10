"""transformers' own Llama 4 image processor beside engine.llama4_images, on the same images: run as a process of
its own (`python -m tests.engine.llama4_reference REFERENCE_DIR`), since the torchvision it needs must not be seen by
the tests' process (transformers would then pick torchvision image processors for every family).

REFERENCE_DIR holds PyPI's torchvision (./dev.sh installs requirements-reference.lock there). That wheel is built
for CUDA torch: its compiled operators do not load beside CPU torch, and its import fails where it registers their
fake kernels; those registrations are skipped here (the processor uses torchvision's Python transforms alone, which
call torch's own ops). Prints one JSON object: the cases compared and those whose outputs differ.
"""

import json
import sys

import numpy as np
import torch
from PIL import Image

# (options, [(height, width), ...]): square, wide, tall, tiny, huge, a tile exactly, and sizes whose canvas scale
# rounds differently in float32 and float64 (resize_to_max_canvas: (100, 50))
CASES = [
    ({}, [(500, 800), (336, 336), (100, 50), (1344, 1344), (2000, 300), (37, 1999), (700, 701), (3000, 4000), (20, 20)]),
    ({"max_patches": 4}, [(500, 800), (1344, 1344), (2000, 300), (336, 672)]),
    ({"resize_to_max_canvas": True}, [(100, 50), (500, 800), (336, 336), (2000, 300), (3000, 4000)]),
    ({"size": {"height": 56, "width": 56}, "max_patches": 4}, [(100, 50), (112, 56), (56, 112), (300, 30)]),
]
MODES = ("RGB", "L", "RGBA")  # the processor converts to RGB first


def import_torchvision(folder: str) -> None:
    sys.path.insert(0, folder)
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = register_fake


def main(folder: str) -> None:
    import_torchvision(folder)
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor as Reference

    from engine.llama4_images import Llama4ImageProcessor

    rng = np.random.default_rng(0)
    compared, differ = 0, []
    for options, sizes in CASES:
        reference, ours = Reference(**options), Llama4ImageProcessor(**options)
        images = []
        for i, (height, width) in enumerate(sizes):
            mode = MODES[i % len(MODES)]
            channels = len(mode)
            pixels = rng.integers(0, 256, (height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)
            images.append(Image.fromarray(pixels, mode))
        # each image alone, then all of them in one call (the reference groups images by size)
        for batch in [[image] for image in images] + [images]:
            want, got = reference(images=batch, return_tensors="pt"), ours(images=batch, return_tensors="pt")
            compared += 1
            if not all(torch.equal(want[k], got[k]) for k in ("pixel_values", "aspect_ratios")):
                differ.append({"options": options, "sizes": [image.size for image in batch]})
    print(json.dumps({"compared": compared, "differ": differ}))


if __name__ == "__main__":
    main(sys.argv[1])
