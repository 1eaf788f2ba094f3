"""``fpsolver animate [CASE.toml] --out FILE.gif|mp4``: density-flow animation with currents."""

from . import add_case_argument, case_from_args


def add_parser(subparsers):
    p = subparsers.add_parser(
        "animate", help="animate the density flowing to the stationary state, with currents",
        description="Animate the phase-space density of SGD relaxing from a displaced start "
                    "(run.initial_mean, or θ displaced by 2.5 stationary standard deviations) "
                    "to the stationary state: heat map with streamlines of the probability "
                    "current J, the two marginals against the exact Gaussian, and a clock in "
                    "SGD steps k = t/η. FILE.mp4 through ffmpeg (the one on the PATH, else "
                    "imageio-ffmpeg's; with neither, FILE.gif instead), FILE.gif through "
                    "Pillow. 4-D cases show the marginal on the plane chosen with --plane.")
    add_case_argument(p, optional=True)
    p.add_argument("--out", required=True, help="output file, .gif or .mp4")
    p.add_argument("--frames", type=int, default=60, help="number of frames (default 60, >= 2)")
    p.add_argument("--fps", type=float, default=12.0, help="frames per second (default 12)")
    p.add_argument("--plane", default="theta1,v1",
                   help="two phase-space axes to show, e.g. theta1,v1 or theta1,theta2 "
                        "(default theta1,v1)")
    p.add_argument("--t-final", type=float, default=None, dest="t_final",
                   help="duration in time units t = kη (default run.t_final, else 4 slowest "
                        "relaxation times)")
    p.add_argument("--size", default="640x480",
                   help="frame size in pixels, WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--source", choices=("solver", "exact"), default="solver",
                   help="density from the finite-volume solver (default) or the exact "
                        "Gaussian transient")
    p.add_argument("--cells", type=int, default=None,
                   help="cells per phase-space axis (default: the case's grid.cells)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _size(text):
    from ..errors import UserError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must be WIDTHxHEIGHT in pixels, got {text!r}") from None
    if not (64 <= w <= 4096 and 64 <= h <= 4096):
        raise UserError(f"--size must be between 64 and 4096 pixels per side, got {text!r}")
    return w, h


def check_options(args, dim):
    """Validate the options before any work; returns (plane, size)."""
    import math

    from ..animate import output_format, parse_plane
    from ..errors import UserError

    if args.frames < 2:
        raise UserError(f"--frames must be >= 2, got {args.frames}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps must be > 0, got {args.fps}")
    if args.t_final is not None and not (math.isfinite(args.t_final) and args.t_final > 0):
        raise UserError(f"--t-final must be > 0, got {args.t_final}")
    if args.cells is not None and args.cells < 8:
        raise UserError(f"--cells must be >= 8, got {args.cells}")
    path, writer = output_format(args.out)
    size = _size(args.size)
    if writer == "ffmpeg" and (size[0] % 2 or size[1] % 2):
        raise UserError(f"--size must have even width and height for MP4 (H.264), got {args.size!r}")
    return parse_plane(args.plane, dim), size


def run(args):
    from pathlib import Path

    from .. import animate
    from ..io import make_output_folder
    from ..sgd import build_model

    case = case_from_args(args)
    plane, size = check_options(args, case.dim)
    model = build_model(case)
    make_output_folder(Path(args.out).parent, option="--out's folder")
    t_final = args.t_final if args.t_final is not None else case.run.t_final
    if args.source == "exact":
        movie = animate.exact_movie(case, model, args.frames, plane, t_final, args.cells)
    else:
        movie = animate.solver_movie(case, model, args.frames, plane, t_final, args.cells,
                                     progress=not args.quiet)
    path, writer = animate.render(movie, args.out, args.fps, size, progress=not args.quiet)
    how = "MP4 through ffmpeg" if writer == "ffmpeg" else "GIF through Pillow"
    note = " (no ffmpeg found)" if path.suffix != Path(args.out).suffix.lower() else ""
    print(f"wrote {path}: {movie.n_frames} frames, {size[0]}x{size[1]} px, {how}{note}; "
          f"density from the {movie.source}, k = 0 to {movie.steps[-1]:.0f} steps")
    return 0
