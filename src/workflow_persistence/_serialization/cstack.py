"""Whether the calling thread's C stack has room for code that recurses in C.

MessagePack's packer recurses on the C stack, about 450 bytes per level of nesting, and
refuses only beyond 1024 levels: up to some 460 KiB, which a thread of the usual size
(8 MiB on Linux, 2 MiB on Windows) has to spare, but one started with
``threading.stack_size(256 * 1024)`` has not. The size of the current thread's stack is
asked of the C library once per thread; where it cannot be (an unknown platform, no
ctypes), the thread is taken to be small, which is only slower.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

ROOMY = 1 << 20  # the packer's worst case and what the caller may already use

_known = threading.local()


def roomy() -> bool:
    """Whether this thread's C stack has at least ``ROOMY`` bytes."""
    try:
        return bool(_known.roomy)
    except AttributeError:
        size = _stack_size()
        _known.roomy = size is not None and size >= ROOMY
        return bool(_known.roomy)


def _stack_size() -> int | None:
    try:
        import ctypes

        if sys.platform.startswith("linux"):
            return _posix_size(ctypes)
        if sys.platform == "darwin":
            libc: Any = ctypes.CDLL(None)
            libc.pthread_self.restype = ctypes.c_void_p
            libc.pthread_get_stacksize_np.restype = ctypes.c_size_t
            libc.pthread_get_stacksize_np.argtypes = [ctypes.c_void_p]
            return int(libc.pthread_get_stacksize_np(libc.pthread_self()))
        if sys.platform == "win32":
            low, high = ctypes.c_size_t(), ctypes.c_size_t()
            kernel32: Any = ctypes.windll.kernel32  # type: ignore[attr-defined]
            kernel32.GetCurrentThreadStackLimits(ctypes.byref(low), ctypes.byref(high))
            return high.value - low.value
    except Exception:  # no ctypes, no such function: a small stack is assumed
        return None
    return None


def _posix_size(ctypes: Any) -> int | None:
    libc = ctypes.CDLL(None)
    libc.pthread_self.restype = ctypes.c_ulong
    libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    libc.pthread_attr_getstacksize.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libc.pthread_attr_destroy.argtypes = [ctypes.c_void_p]
    attr = ctypes.create_string_buffer(256)  # a pthread_attr_t is 56 or 64 bytes
    if libc.pthread_getattr_np(libc.pthread_self(), attr):
        return None
    try:
        size = ctypes.c_size_t()
        if libc.pthread_attr_getstacksize(attr, ctypes.byref(size)):
            return None
        return int(size.value)
    finally:
        libc.pthread_attr_destroy(attr)
