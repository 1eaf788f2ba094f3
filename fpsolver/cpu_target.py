"""numba's CPU target for processes that fpsolver owns (the ``fpsolver`` command, the
benchmarks).

Outside :mod:`fpsolver.fv` so that it runs before any kernel module is imported: numba
sets up its CPU target, and with it the CPU features it compiles for, when the first
jitted function is created.
"""


EPILOGUE_MIN_LANES = 8  # vectorised loops of at least this many lanes get vector remainders


def prefer_full_width_vectors():
    """On AVX-512 CPUs let LLVM vectorise with 512-bit registers: it prefers 256 bits there
    (``prefer-256-bit``, for the clock throttling of early AVX-512 cores), and the explicit
    kernels are bound by arithmetic, not memory. Sets numba's ``CPU_FEATURES`` (the setting
    numba's own tests use for this) to the host's feature string with that preference
    removed, so it acts on everything numba compiles in this process: the ``fpsolver``
    command calls it (:func:`fpsolver.cli.console`), importing fpsolver does not. Only
    before numba's CPU target is set up (the first compile), and never over a
    NUMBA_CPU_FEATURES the user set; numba keys its cache by the feature string. Returns
    whether the kernels will use 512-bit vectors. The results are the same bits (no
    fast-math, so no reassociation; checked on 2-D and 4-D rates, Jacobian products and SSP
    steps). Emerald Rapids VM, one thread, best of six runs alternating with the 256-bit
    build: SSP stage 48² 4.88 → 4.31, 96² 4.17 → 3.61, 256² 3.92 → 3.37 ns per cell
    update; 4-D 32⁴ rate kernel 0.088-0.092 → 0.098-0.106e9 cells/s. Also lets LLVM
    vectorise loop remainders (EPILOGUE_MIN_LANES; an LLVM option, for the process)."""
    from numba.core import config, registry
    if config.CPU_FEATURES is not None or "_toplevel_target_context" in vars(
            registry.cpu_target):
        return "-prefer-256-bit" in (config.CPU_FEATURES or "").split(",")
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    if not features.get("avx512f"):
        return False
    config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"
    # eight lanes leave up to seven faces of a row to the loop's scalar remainder, ~25 ns
    # each: vectorise remainders (LLVM does so only behind loops of 16 lanes or more by
    # default). One thread, SSP stage, 44 rows of 44 / 47 / 48 cells: 307 → 219, 397 →
    # 273, 232 → 222 ns per row, the same bits (docs/numerics.rst: whole steps)
    llvm.set_option("", f"-epilogue-vectorization-minimum-VF={EPILOGUE_MIN_LANES}")
    return True
