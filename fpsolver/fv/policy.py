"""The one place that sets the numba policy for the finite-volume kernels.

Kernels are compiled once with ``parallel=True`` (``prange`` over cells), ``cache=True``
(top-level functions with explicit array arguments, so the on-disk cache works), no
fast-math (NaN checks must keep working) and numpy's error model (a float division by
zero gives inf/NaN instead of a Python exception check, which keeps loops vectorisable). Grids below ``PARALLEL_MIN_CELLS`` cells run on
one thread: a 2-D 256² rate evaluation (2 ms on one thread) took 4× longer on two threads
of a shared 2-core machine, while 4-D 32⁴ (1M cells) ran 1.9× faster on two.
"""

import contextlib

import numba

PARALLEL_MIN_CELLS = 1 << 18

kernel = numba.njit(parallel=True, cache=True, fastmath=False, nogil=True,
                    error_model="numpy")
helper = numba.njit(cache=True, fastmath=False, nogil=True, inline="always",
                    error_model="numpy")


@contextlib.contextmanager
def num_threads(n=None):
    """Run the enclosed numba kernels on ``n`` threads (None: all of NUMBA_NUM_THREADS)."""
    old = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS if n is None else n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def threads_for(n_cells):
    """Context: one thread below PARALLEL_MIN_CELLS cells, else all."""
    return num_threads(1 if n_cells < PARALLEL_MIN_CELLS else None)


def single_threaded_blas():
    """Context limiting BLAS to one thread: threaded BLAS calls (GMRES dot products) next
    to the numba threads thrash a 2-core machine."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")
