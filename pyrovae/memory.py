"""Memory the allocator keeps for the next pass (glibc's ``mallopt``)."""

from __future__ import annotations

import ctypes
import os
import platform


def reuse_freed_memory() -> bool:
    """Keep memory that tensors free in the heap for the next ones (glibc; every ``pyrovae``
    command calls it, a Python script may call it once at the start).

    glibc maps large allocations (up to 32 MB, its dynamic threshold, and always above it) from
    the kernel and unmaps them when freed, so each pass that builds them faults in freshly zeroed
    pages. A text model's logits (batch x length x 10,002 words) made a third of a PTB training
    epoch system time (docs/text.md); importance sampling in chunks of 65,536 pairs took 1.6x as
    long as with the pages kept (docs/benchmarks.md). Serving them from the heap, and not trimming
    it, keeps the peak's pages for the life of the process: resident memory stays at its peak.
    The same as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment;
    ``PYROVAE_SYSTEM_MALLOC=1`` keeps glibc's defaults. The settings are process-wide and cannot
    be undone (glibc's dynamic threshold stays off); forked workers inherit them.

    :returns: whether the settings took (``False`` off glibc or with ``PYROVAE_SYSTEM_MALLOC``).
    """
    if os.environ.get("PYROVAE_SYSTEM_MALLOC") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1
