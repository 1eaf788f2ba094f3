"""Array views without a reference count, for hot loops of numba code.

numba counts the references to an array's memory: a jitted function increments the count
of each array argument it keeps and decrements it on return, and LLVM, which inlines the
kernels' helpers afterwards, keeps those calls into numba's runtime (each an atomic add).
The row loop of :func:`fpsolver.fv.kernels._task_rows` passes about fifteen arrays to its
helpers per row: its machine code made 16 increment calls per row, and the decrements to
match, which took half the time of a 24-cell row (one thread, fixed cost per row 175-185
ns against 57-67 ns with borrowed views). A :func:`borrowed` view has the same data, shape and strides
and no count (numba's runtime skips a null one), so it is valid only while an owner holds
the array: a function may borrow its own arguments for the length of its call. The
Monte-Carlo kernel (:mod:`fpsolver.simulate`) rebinds borrowed rows of its scratch the
same way.
"""

from numba import types
from numba.core import cgutils, errors
from numba.extending import intrinsic


@intrinsic
def borrowed(typingctx, array):
    """``array`` (a numba array) as a view without a reference count: same data, shape and
    strides, no owner; it must not outlive the array it was taken from."""
    if not isinstance(array, types.Array):
        raise errors.TypingError("borrowed(array): a numba array")

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen
