"""Atomic counters for kernels whose parallel tasks wait for each other inside one call.

numba's ``prange`` ends every parallel loop with a fork-join of the thread pool: about
2 µs on the 2-core VM, a fifth of an SSP-RK stage on a 48² grid. A kernel that keeps its
tasks alive across stages instead counts finished blocks with :func:`atomic_add` and
waits for the count with :func:`wait_for` (see :func:`fpsolver.fv.kernels.ssp_rk3_kernel`).
"""

import os

from llvmlite import ir
from numba import types
from numba.core import errors
from numba.extending import intrinsic

from .policy import helper
from .stores import element_pointer


def _check_counter(array, index, name):
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and array.dtype == types.int64 and isinstance(index, types.Integer)):
        raise errors.TypingError(f"{name}(array, index, ...): 1-D C int64 array, integer "
                                 "index")


@intrinsic
def atomic_add(typingctx, array, index, value):
    """array[index] += value atomically (sequentially consistent: the stores before it are
    visible to a thread whose :func:`atomic_load` sees the sum); returns the old value."""
    _check_counter(array, index, "atomic_add")

    def codegen(context, builder, signature, args):
        arr, idx, val = args
        val = context.cast(builder, val, signature.args[2], types.int64)
        ptr = element_pointer(context, builder, signature.args[0], arr, idx)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return types.int64(array, index, value), codegen


@intrinsic
def atomic_load(typingctx, array, index):
    """array[index], read atomically with acquire order (never hoisted out of a loop)."""
    _check_counter(array, index, "atomic_load")

    def codegen(context, builder, signature, args):
        ptr = element_pointer(context, builder, signature.args[0], *args)
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(array, index), codegen


@intrinsic
def yield_cpu(typingctx):
    """Give the CPU to another thread (POSIX ``sched_yield``): a task that has spun long
    on a counter lets a descheduled partner run on a busy machine. Elsewhere a no-op (the
    task keeps polling)."""

    def codegen(context, builder, signature, args):
        if os.name == "posix":
            fnty = ir.FunctionType(ir.IntType(32), [])
            fn = (builder.module.globals.get("sched_yield")
                  or ir.Function(builder.module, fnty, "sched_yield"))
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


# polls of a counter before a waiting task starts yielding (~10-20 µs, longer than a 48²
# stage's imbalance, far shorter than a scheduler time slice)
SPINS_BEFORE_YIELD = 200


@helper
def wait_for(counter, index, target):
    """Return once counter[index] ≥ target: poll, then yield the CPU between polls."""
    spins = 0
    while atomic_load(counter, index) < target:
        spins += 1
        if spins > SPINS_BEFORE_YIELD:
            yield_cpu()
