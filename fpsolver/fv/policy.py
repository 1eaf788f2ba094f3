"""The one place that sets the numba policy for the finite-volume kernels.

Kernels are compiled once with ``parallel=True`` (``prange`` over cells), ``cache=True``
(top-level functions with explicit array arguments, so the on-disk cache works), no
fast-math (NaN checks must keep working) and numpy's error model (a float division by
zero gives inf/NaN instead of a Python exception check, which keeps loops vectorisable).
The ``fpsolver`` command also compiles them with 512-bit vectors on AVX-512 CPUs
(:func:`fpsolver.cpu_target.prefer_full_width_vectors`), which importing fpsolver leaves
to the user.
Kernel calls below ``PARALLEL_MIN_CELLS`` cell updates run on one thread. Rate kernel on
an otherwise idle 2-core machine, one vs two threads: 64² 9.6 vs 6.1 µs, 128² 27 vs 16 µs,
256² 95 vs 51 µs, 4-D 64⁴ 107 vs 55 ms; one rate evaluation from Python, the switch to
one thread and back (~5 µs) included, with the threshold at 4096 vs 256 cells: 16² 15.5
vs 12.8 µs, 24² 18.9 vs 15.0, 40² 25.1 vs 18.3, 48² 31.3 vs 19.0 (a day the VM ran at
half its usual speed; the 2-D stationary solve evaluates the rate 30-40 times). A busy
second core turns the second thread into a loss (OpenMP threads wait for each other), so
sweep workers run with NUMBA_NUM_THREADS=1.

numba checks a cached kernel only against its own source file: after editing
:mod:`~fpsolver.fv.stores`, :mod:`~fpsolver.fv.sync` or :mod:`~fpsolver.borrow`
(intrinsics the kernels inline), delete ``fpsolver/fv/__pycache__/*.nb[ci]`` (and
``fpsolver/__pycache__/*.nb[ci]`` for the Monte-Carlo kernel) or they keep the old code.
"""

import contextlib
import functools
import os
from pathlib import Path

import numba

PARALLEL_MIN_CELLS = 1 << 8
ASSUMED_CACHE_BYTES = 32 << 20  # last-level cache where sysfs does not say

kernel = numba.njit(parallel=True, cache=True, fastmath=False, nogil=True,
                    error_model="numpy")
# helpers are inlined by LLVM (alwaysinline), not by numba: numba's IR inliner deep-copies
# the callee's IR at every call site, recursively, and spent 90 % of the compile there
# (cold compile on the 2-core VM: rate kernel 192 → 28 s, SSP step 126 → 15 s, face
# fluxes 25 → 8 s); the machine code, and its speed, are the same
helper = numba.njit(cache=True, fastmath=False, nogil=True, forceinline=True,
                    error_model="numpy")
# a helper compiled once and called (LLVM may still inline it): for bulky code that
# inlining would copy into every call site (the 4-D cross-diffusion run)
subroutine = numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")


@contextlib.contextmanager
def num_threads(n=None):
    """Run the enclosed numba kernels on ``n`` threads (None: all of NUMBA_NUM_THREADS);
    yields that number (the kernels' ``tasks``)."""
    old = numba.get_num_threads()
    want = numba.config.NUMBA_NUM_THREADS if n is None else n
    if want == old:  # the common case inside a run: skip two thread-pool calls
        yield want
        return
    numba.set_num_threads(want)
    try:
        yield want
    finally:
        numba.set_num_threads(old)


def threads_for(n_cells, passes=1):
    """Context: one thread below PARALLEL_MIN_CELLS cell updates per kernel call (``passes``
    sweeps over ``n_cells``), else all; yields the count. One rate evaluation from Python
    broke even near 256 cells (module docstring; 2304-4096 cells when this threshold was
    first set, with the kernels of that time), so only grids below 16² stay on one thread."""
    return num_threads(1 if n_cells * passes < PARALLEL_MIN_CELLS else None)


def single_threaded_blas():
    """Context limiting BLAS to one thread: threaded BLAS calls (GMRES dot products, banded
    LU) next to the numba threads thrash a 2-core machine (48² banded LU: 9.8 ms on two
    threads, 4.3 ms on one). Enter and exit take 5 µs alone, 50-80 µs next to a LAPACK call
    (threadpool_limits, which looks up the loaded libraries each time: 1.1 ms)."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, built once."""
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


@functools.cache
def last_level_cache_bytes():
    """Size of the CPU's largest cache level from Linux sysfs (None if unknown)."""
    best = (0, None)
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = int((d / "level").read_text()), (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        best = max(best, (level, int(size.rstrip("KMG")) * mult))
    return best[1]


def physical_memory_bytes():
    """The machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def streams_output(n_cells):
    """Whether kernels over ``n_cells`` float64 cells write with non-temporal stores: when
    a density and the output together (16 B per cell) exceed the last-level cache."""
    return 16 * n_cells > (last_level_cache_bytes() or ASSUMED_CACHE_BYTES)
