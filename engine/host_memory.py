"""The process's heap after a load that freed much: glibc keeps freed memory for reuse rather than giving it
back, so a CPU load that read float weights and kept them packed (a GGUF dequantized by transformers, weights
quantized at load) would stay resident at the float size. malloc_trim gives the free pages back."""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def release_freed_heap() -> None:
    """Give the heap's free pages back to the system (glibc only; elsewhere nothing to do)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): their allocators return memory themselves
        log.debug("malloc_trim is not available (%s): the heap is left as it is", name)
        return
    trim(0)
