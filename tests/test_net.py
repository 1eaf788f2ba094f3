"""fpsolver.net: eigen-solvers, recorder, resume after a kill, theory comparison, CLI.

Tiny configurations only (one thread, small images, few steps); every check has an exact
answer (eigvalsh, the level-2 Lyapunov solution, a deterministic rerun) and a tolerance
set by float64 round-off or by a batch-means Monte-Carlo standard error.
"""

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.net
torch.set_num_threads(1)

from fpsolver import theory  # noqa: E402
from fpsolver.net import files  # noqa: E402
from fpsolver.sgd import PhaseSpaceModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def half_mse(out, y):
    """L = (1/2N)‖Xθ − y‖² per batch (the loss of THEORY.md §4)."""
    return 0.5 * ((out[:, 0] - y) ** 2).mean()


def linear_problem(spectrum, n=2000, noise=1.0, weight_decay=0.0, seed=7):
    """Linear regression with feature covariance eigenvalues ``spectrum``: (X, y, H, Σ(μ), μ)."""
    rng = np.random.default_rng(seed)
    d = len(spectrum)
    rot = np.linalg.qr(rng.standard_normal((d, d)))[0]
    x = rng.standard_normal((n, d)) * np.sqrt(spectrum) @ rot.T
    y = x @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    hess = x.T @ x / n
    mu = np.linalg.solve(hess + weight_decay * np.eye(d), x.T @ y / n)
    g = x * (x @ mu - y)[:, None]
    sigma = g.T @ g / n - np.outer(g.mean(0), g.mean(0))
    return x, y, hess, sigma, mu


def linear_net(mu):
    model = torch.nn.Linear(len(mu), 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(np.asarray(mu))[None])
    return model


def batches_of(x, y, size):
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return [(xt[i:i + size], yt[i:i + size]) for i in range(0, len(y), size)]


# ---------------------------------------------------------------- eigen-solvers


@pytest.mark.parametrize("method", ["lanczos", "subspace"])
def test_eigensolvers_recover_known_hessian(method):
    """HVPs of a linear model (H = XᵀX/N known): top-5 eigenpairs match eigvalsh."""
    from fpsolver.net import hessian as hs

    spectrum = np.r_[10, 8, 6, 4.5, 3.5, np.linspace(1.0, 0.05, 35)]
    x, y, hess, _, mu = linear_problem(spectrum, n=400)
    op = hs.HessianOperator(linear_net(mu), half_mse, batches_of(x, y, 64), dtype=torch.float64)
    if method == "lanczos":
        res = hs.lanczos(op.matvec, op.n, 5, budget=40, tol=1e-11)
    else:
        res = hs.subspace_iteration(op.matvec, op.n, 5, budget=400, block=10, tol=1e-11)
    w, v = np.linalg.eigh(hess)
    ref_vals, ref_vecs = w[::-1][:5], v[:, ::-1][:, :5].T
    vecs = res.vectors.numpy()
    vecs = vecs * np.sign(np.sum(vecs * ref_vecs, axis=1))[:, None]
    assert res.converged and res.n_products <= (40 if method == "lanczos" else 400)
    assert np.max(np.abs(res.eigenvalues / ref_vals - 1)) < 1e-8
    assert np.max(np.abs(vecs - ref_vecs)) < 1e-6
    # the reported residuals are the explicit ‖Hu − hu‖/|h| (recomputed here)
    explicit = [np.linalg.norm(hess @ u - h * u) / h for h, u in zip(res.eigenvalues, vecs)]
    np.testing.assert_allclose(res.residuals, explicit, atol=1e-12)


def test_hvp_batch_weighting_and_bn_buffers_restored():
    """Unequal batches are weighted by size (HVP = Hv exactly); running stats untouched."""
    from fpsolver.net import hessian as hs

    x, y, hess, _, mu = linear_problem([3.0, 2.0, 1.0], n=100)
    op = hs.HessianOperator(linear_net(mu), half_mse, batches_of(x, y, 30), dtype=torch.float64)
    v = np.array([0.3, -1.2, 0.5])
    np.testing.assert_allclose(op.matvec(torch.from_numpy(v)).numpy(), hess @ v, rtol=1e-13)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                              torch.nn.Linear(4, 1)).double()
    before = [b.clone() for b in net.buffers()]
    op = hs.HessianOperator(net, half_mse, batches_of(x, y, 30), bn_mode="train")
    op.matvec(torch.ones(op.n, dtype=torch.float64))
    for a, b in zip(before, op.model.buffers()):
        assert torch.equal(a, b)


def test_gradient_noise_per_example_exact_and_minibatch_unbiased():
    """Per-example rows give Σ(μ) exactly; √S × mini-batch rows estimate it within 4 SE."""
    from fpsolver.net import hessian as hs
    from fpsolver.net.project import noise_covariance

    x, y, _, sigma, mu = linear_problem([2.0, 1.0, 0.5], n=2000)
    op = hs.HessianOperator(linear_net(mu), half_mse, batches_of(x, y, 500))
    eye = torch.eye(3, dtype=torch.float64)
    rows, trace = hs.gradient_noise(op, op.batches, eye)
    np.testing.assert_allclose(noise_covariance(rows), sigma, rtol=1e-10, atol=1e-12)
    assert abs(trace - np.trace(sigma)) < 1e-10 * np.trace(sigma)
    rows, trace = hs.gradient_noise(op, op.batches, eye, group=4)  # 500 batches of 4
    est = np.diag(noise_covariance(rows))
    # relative SE of a variance from M samples: √((2 + κ)/M); per-example gradients x·r
    # (Gaussian x, r) have excess kurtosis κ₁ = 6, a mean of 4 has κ = 6/4
    assert np.all(np.abs(est / np.diag(sigma) - 1) < 4 * np.sqrt(3.5 / len(rows)))


# ---------------------------------------------------------------- recorder vs theory level 2


def _record_linear(tmp_path, x, y, mu, settings, k=None):
    from fpsolver.net import pipeline, record

    model = linear_net(mu)
    full = batches_of(x, y, 500)
    eig = pipeline.eigen_analysis(model, half_mse, full, full, k or len(mu), budget=len(mu),
                                  tol=1e-10, dtype=torch.float64)
    pipeline.save_eigen(tmp_path / "eigen.h5", eig)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    record.record(model, half_mse, data, torch.from_numpy(eig["vectors"]), tmp_path / "record.h5",
                  tmp_path / "checkpoint.pt", settings, eigenvalues=eig["eigenvalues"])
    return eig


def test_recorded_variances_match_level2(tmp_path):
    """Linear regression trained by the recorder (i.i.d. batches): per-direction Var θ_i and
    Var v_i agree with theory level 2 within 10 %, with Monte-Carlo errors below 3 %.

    Level 2 neglects state-dependent noise, a bias r_s − 1 ≈ η(tr H + h)/(2S(1−β)) ≤ 1.3 %
    here; level 1 differs from level 2 by r_d − 1 = η(h+λ)/(2(1+β)) ≤ 3.4 %.
    """
    from fpsolver.net import project, record

    lr, beta, lam, batch = 0.1, 0.5, 0.01, 32
    x, y, hess, sigma, mu = linear_problem([1.0, 0.7, 0.5, 0.4], weight_decay=lam)
    settings = record.RecordSettings(lr, beta, lam, batch, steps=50000, checkpoint_every=25000)
    _record_linear(tmp_path, x, y, mu, settings)
    rec = files.load_record(tmp_path / "record.h5")
    eig = files.load_eigen(tmp_path / "eigen.h5", vectors=True)
    out = project.analyse(rec, eig, burn_in=0.02)
    # independent level 2 in the original coordinates, rotated onto the recorded directions
    p2 = theory.discrete_stationary_cov(
        PhaseSpaceModel.from_arrays(hess, sigma, lr, beta, lam, batch, minimum=None))
    d = len(mu)
    u = eig["vectors"]
    for i, entry in enumerate(out["directions"]):
        np.testing.assert_allclose(entry["var_theta_level2"], u[i] @ p2[:d, :d] @ u[i], rtol=1e-8)
        np.testing.assert_allclose(entry["var_v_level2"], u[i] @ p2[d:, d:] @ u[i], rtol=1e-8)
        for var in ("theta", "v"):
            assert entry[f"var_{var}_se"] / entry[f"var_{var}"] < 0.03
            assert abs(entry[f"ratio_{var}_level2"] - 1) < 0.10, (i, var, entry)
    # stationary mean: θ_ref = μ exactly, so the predicted offset is 0
    assert max(abs(e["mu_theta"]) for e in out["directions"]) < 1e-10
    # η²‖buf‖² against η² tr Σ/(S(1−β²)) (level 1; level 2 raises it by ≤ r_d)
    s = out["step_norm2"]
    assert abs(s["level1"] / (lr ** 2 * np.trace(sigma) / (batch * (1 - beta ** 2))) - 1) < 1e-10
    assert abs(s["ratio"] - 1) < 0.10 and s["stderr"] / s["measured"] < 0.025


def test_rotation_sense_is_clockwise(tmp_path):
    """Underdamped modes rotate clockwise in (θ, v) at the level-2 frequency (within 10 %)."""
    from fpsolver.net import project, record

    lr, beta, batch = 0.1, 0.9, 16
    x, y, _, _, mu = linear_problem([2.0, 1.0], n=500)
    settings = record.RecordSettings(lr, beta, 0.0, batch, steps=20000, checkpoint_every=20000)
    _record_linear(tmp_path, x, y, mu, settings)
    out = project.analyse(files.load_record(tmp_path / "record.h5"),
                          files.load_eigen(tmp_path / "eigen.h5"), burn_in=0.05)
    for entry in out["directions"]:
        assert entry["rotation_sense"] == "clockwise"
        assert abs(-entry["rotation_peak"] / entry["freq_level2"] - 1) < 0.10


# ---------------------------------------------------------------- resume after a kill

_CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    import test_net as t
    from fpsolver.net import record
    mode, kill_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "step":
        progress = lambda step, total: step == kill_at and os.kill(os.getpid(), signal.SIGKILL)
    else:  # die after the records are flushed but before the checkpoint is saved
        progress = None
        save = record._save_checkpoint
        def dying(path, model, opt, ref, step):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            save(path, model, opt, ref, step)
        record._save_checkpoint = dying
    x, y, _, _, mu = t.linear_problem([1.0, 0.5, 0.25], n=300)
    eig = t.run_child_problem(out, x, y, mu, progress)
""")


def run_child_problem(out, x, y, mu, progress=None):
    """The recording the resume test kills and resumes (also run uninterrupted)."""
    from fpsolver.net import record

    out = Path(out)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    rot = np.linalg.qr(np.random.default_rng(1).standard_normal((len(mu), len(mu))))[0]
    settings = record.RecordSettings(0.05, 0.9, 0.01, 8, steps=1200, record_every=3,
                                     checkpoint_every=200)
    return record.record(linear_net(mu), half_mse, data, torch.from_numpy(rot[:2]),
                         out / "record.h5", out / "checkpoint.pt", settings, progress=progress)


@pytest.mark.parametrize("mode,kill_at", [("step", 777), ("checkpoint", 600)])
def test_killed_recorder_resumes_to_one_consistent_file(tmp_path, mode, kill_at):
    """SIGKILL mid-run (between checkpoints, or between the record flush and the checkpoint),
    then resume: the file equals an uninterrupted run's, record for record."""

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir(), clean.mkdir()
    script = _CHILD.format(tests=str(Path(__file__).parent))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, mode, str(kill_at), str(killed)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = files.load_record(killed / "record.h5")
    assert partial["attrs"]["last_step"] < 1200
    x, y, _, _, mu = linear_problem([1.0, 0.5, 0.25], n=300)
    info = run_child_problem(killed, x, y, mu)
    assert info["resumed_from"] == (600 if mode == "step" else 400)
    run_child_problem(clean, x, y, mu)
    a, b = files.load_record(killed / "record.h5"), files.load_record(clean / "record.h5")
    np.testing.assert_array_equal(a["step"], np.arange(3, 1201, 3))
    for name in ("step", "theta_proj", "buf_proj", "dist2", "step_norm2", "loss"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-15)
    assert a["attrs"]["last_step"] == 1200


# ---------------------------------------------------------------- data, CLI, ResNet-18


def test_idx_loader_reads_mnist_format(tmp_path):
    """A hand-written idx file (Fashion-MNIST's format) round-trips pixel for pixel."""
    from fpsolver.net.data import load_images

    imgs = np.arange(5 * 28 * 28, dtype=np.uint32).reshape(5, 28, 28) % 256
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">HBB3I", 0, 8, 3, 5, 28, 28) + imgs.astype(np.uint8).tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">HBBI", 0, 8, 1, 5) + bytes([0, 1, 2, 3, 9]))
    data = load_images(str(tmp_path), image_size=28)
    xb, yb = data.train.batch([4, 1])
    raw = imgs[[4, 1]] / 255.0
    np.testing.assert_allclose(xb[:, 0].numpy() * data.train.std + data.train.mean, raw, atol=1e-6)
    assert xb.shape == (2, 3, 28, 28) and yb.tolist() == [9, 1] and data.num_classes == 10


def test_package_and_cli_import_no_torch():
    """`import fpsolver.net`, the comparison and the CLI parser never import torch."""
    code = ("import sys, fpsolver.net, fpsolver.net.project, fpsolver.cli; "
            "fpsolver.cli.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_cli_fields_match_config():
    from fpsolver.commands.net import _FIELDS
    from fpsolver.net.pipeline import NetConfig
    import dataclasses

    assert list(_FIELDS) == [f.name for f in dataclasses.fields(NetConfig)]


def test_bad_config_is_a_user_error(tmp_path):
    from fpsolver.cli import main

    assert main(["net", "record", str(tmp_path / "r"), "--preset", "demo", "--momentum", "1.5"]) == 2
    assert main(["net", "record", str(tmp_path / "r"), "--data", str(tmp_path / "missing")]) == 2
    assert main(["net", "eigen", str(tmp_path / "r"), "--model", "no_such_net"]) == 2
    assert not (tmp_path / "r").exists()


def test_resnet18_record_eigen_compare(tmp_path, capsys):
    """A real torchvision resnet18 (weights=None) through record → eigen → compare."""
    from fpsolver.cli import main
    from fpsolver.net import hessian as hs, pipeline
    from fpsolver.net.figures import FILES

    run, out = tmp_path / "run", tmp_path / "report"
    tiny = ["--preset", "demo", "--data", "digits", "--image-size", "8", "--pretrain-steps", "10",
            "--settle-steps", "4",
            "--steps", "24", "--batch-size", "8", "--checkpoint-every", "12", "--k", "2",
            "--eigen-budget", "4", "--hessian-subset", "16", "--hessian-batch", "8",
            "--noise-subset", "4", "--trace-probes", "1", "--lr", "1e-4"]
    assert main(["net", "record", str(run)] + tiny) == 0
    assert main(["net", "eigen", str(run), "--at", "final"]) == 0
    assert main(["net", "compare", str(run), "--out", str(out), "--burn-in", "0.1"]) == 0
    for name in ("config.json", "reference.pt", "eigen.h5", "eigen_final.h5", "record.h5",
                 "checkpoint.pt"):
        assert (run / name).is_file(), name
    for name in FILES + ("summary.json",):
        assert (out / name).is_file(), name
    rec = files.load_record(run / "record.h5")
    np.testing.assert_array_equal(rec["step"], np.arange(1, 25))
    # first update from a zero buffer: θ₁ − θ₀ = −η buf₁, so Δ(1) = η²‖buf₁‖²
    np.testing.assert_allclose(rec["dist2"][0], rec["step_norm2"][0], rtol=1e-4)
    # stored residuals are ‖Hu − hu‖/|h| (one more float32 HVP recomputes the top one)
    config = pipeline.open_config(run)
    data, model, _ = pipeline.prepare_reference(run, config)
    eig = files.load_eigen(run / "eigen.h5", vectors=True)
    batches = pipeline.fixed_batches(data.train, 16, 8, config.seed)
    op = hs.HessianOperator(model, pipeline.cross_entropy, batches)
    u = torch.from_numpy(eig["vectors"][0])
    r = float(torch.linalg.vector_norm(op.matvec(u) - eig["eigenvalues"][0] * u)) / abs(eig["eigenvalues"][0])
    np.testing.assert_allclose(r, eig["residuals"][0], rtol=0.05, atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["directions"]) == 2 and summary["eigen"]["bn_mode"] == "eval"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resnet18_on_gpu(tmp_path):
    """ResNet-18 steps and a Lanczos on CUDA: the residuals it reports are explicit ones."""
    import torchvision
    from fpsolver.net import hessian as hs, record

    model = torchvision.models.resnet18(weights=None, num_classes=10).cuda()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    data = torch.utils.data.TensorDataset(x, y)
    opt = record.make_optimizer(model, 0.01, 0.9, 1e-4)
    for step in range(1, 6):
        idx = record.batch_indices(64, 32, step, 0)
        assert np.isfinite(record.sgd_step(model, opt, pipeline_loss, data, idx, "cuda"))
    op = hs.HessianOperator(model, pipeline_loss, [(x[:32].cuda(), y[:32].cuda())])
    res = hs.lanczos(op.matvec, op.n, 3, budget=20, tol=1e-3, dtype=torch.float32, device="cuda")
    u = res.vectors[0]
    h = float(res.eigenvalues[0])
    r = float(torch.linalg.vector_norm(op.matvec(u) - h * u)) / h
    assert abs(r - res.residuals[0]) < 1e-2 and res.residuals[0] < 0.5


def pipeline_loss(out, y):
    return torch.nn.functional.cross_entropy(out, y)
