"""Non-temporal (streaming) stores and prefetches for kernels whose arrays do not fit in the
cache.

A plain store first reads the cache line it writes (read for ownership), so a kernel that
reads p and writes out moves 24 B per cell, not 16. A non-temporal store writes the line
to memory directly. Measured on the 2-core VM, 128 MiB arrays, two threads: a numba copy
loop 17 GB/s with plain stores, 60 GB/s with streaming ones (numpy's single-threaded
``copyto``: 40 GB/s). They are wrong for outputs that fit in the cache (the next read
then comes from memory), so the operator enables them only above the last-level cache
(:func:`fpsolver.fv.policy.streams_output`). Stores of one thread are ordered with
those of others only after a fence: every task that streams ends with
:func:`store_fence`.
"""

from llvmlite import ir
from numba import types
from numba.core import errors
from numba.extending import intrinsic


def element_pointer(context, builder, array_type, array, index):
    """LLVM pointer to array[index] (1-D contiguous array, unchecked index)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def stream_store(typingctx, array, index, value):
    """array[index] = value with a non-temporal store (1-D contiguous array; the index
    unchecked, like the kernels' unsigned offsets)."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and isinstance(index, types.Integer) and isinstance(value, types.Number)):
        raise errors.TypingError("stream_store(array, index, value): 1-D C array, integer "
                                 "index, number")

    def codegen(context, builder, signature, args):
        arr, idx, val = args
        val = context.cast(builder, val, signature.args[2], signature.args[0].dtype)
        store = builder.store(val, element_pointer(context, builder, signature.args[0], arr,
                                                   idx))
        store.set_metadata("nontemporal",
                           builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def store_fence(typingctx):
    """A sequentially consistent fence: the streaming stores before it are visible to
    every thread that synchronises with this one afterwards (an ``mfence`` on x86)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint that array[index]'s cache line will be read soon (no effect on results)."""
    def codegen(context, builder, signature, args):
        ptr = element_pointer(context, builder, signature.args[0], *args)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen
