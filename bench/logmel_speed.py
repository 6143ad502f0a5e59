"""Log-mel frontends in CPU ms per 5-s window on one thread: the numpy ``NumpyLogMel`` (the onnx
engines'), optionally against another commit's, and the torch ``LogMel`` (training, the torch engine)
with its fused power + mel projection against the unfused formula it replaced.

Every variant runs on the same batches (``--batch`` windows of 32 kHz noise with whistles), the
variants of a table interleaved over ``--rounds`` rounds; CPU time is the thread's own
(``time.thread_time``), BLAS and torch limited to one thread. The numpy frontends are timed first,
in a process of their own that never imports torch, as ``predict --engine onnx`` runs them (a
process that has run torch's frontend allocates differently: the numpy frontend before its buffers
took ~2.3 ms per window there against ~4 ms in a torch-free process); the torch frontends then, under
``torch.inference_mode`` (the prediction path). Printed per variant: the median and range over
rounds, the largest difference from the torch frontend's output (per-sample normalised units), and
for torch the STFT alone. The unfused formula is the torch frontend as trained before the fusion:
``real² + imag²`` of every STFT bin, then the whole filterbank. ``--numpy-before COMMIT`` loads
``src/dawnchorus/models/logmel_numpy.py`` as it was at ``COMMIT`` (``git show``) and times it beside
today's (a before/after on one machine).

    python bench/logmel_speed.py                            # 30 rounds of 5 batches of 4 (~30 s)
    python bench/logmel_speed.py --numpy-before d093628     # and the numpy frontend before its buffers
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads its BLAS: one thread per frontend
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402 - after the thread limits
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from dawnchorus.models.logmel_numpy import AMIN, NORM_EPS, NumpyLogMel  # noqa: E402

MODULE = "src/dawnchorus/models/logmel_numpy.py"
ROOT = Path(__file__).resolve().parent.parent


def test_audio(batch: int) -> np.ndarray:
    """``batch`` 5-s windows at 32 kHz: noise and a warbling whistle, float32."""
    rng = np.random.default_rng(0)
    seconds = np.arange(5 * 32000) / 32000
    audio = 0.05 * rng.standard_normal((batch, len(seconds)))
    audio += 0.2 * np.sin(2 * np.pi * (3000 * seconds + 400 * np.sin(2 * np.pi * 5 * seconds)))
    return audio.astype(np.float32)


def module_at(commit: str) -> ModuleType:
    """``logmel_numpy`` as it was at ``commit`` of this repository, loaded under another name."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{MODULE}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="logmel-before-")) / "logmel_numpy_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("logmel_numpy_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def numpy_variants(before: str | None) -> dict[str, Callable[[np.ndarray], Any]]:
    variants: dict[str, Callable[[np.ndarray], Any]] = {"numpy (NumpyLogMel now)": NumpyLogMel()}
    if before:
        variants[f"numpy ({before})"] = module_at(before).NumpyLogMel()
    return variants


def unfused(frontend: Any, audio: Any) -> Any:
    """The torch frontend before the fusion: full power spectrum, then the whole filterbank."""
    import torch

    spectrum = stft_only(frontend, audio)
    mel = torch.matmul(frontend.mel_fb, spectrum.real.square() + spectrum.imag.square())
    decibels = 10.0 * torch.log10(mel.clamp(min=AMIN))
    decibels = torch.maximum(decibels, decibels.amax(dim=(-2, -1), keepdim=True) - frontend.top_db)
    mean = decibels.mean(dim=(-2, -1), keepdim=True)
    std = decibels.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return ((decibels - mean) / (std + NORM_EPS)).unsqueeze(1)


def stft_only(frontend: Any, audio: Any) -> Any:
    import torch

    return torch.stft(
        audio, n_fft=frontend.n_fft, hop_length=frontend.hop_length, window=frontend.window,
        center=True, pad_mode="reflect", return_complex=True,
    )


def time_variants(
    variants: dict[str, Callable[[Any], Any]], batch: Any, rounds: int, calls: int
) -> dict[str, list[float]]:
    """CPU ms per window of each variant, one figure per round, the variants interleaved (after one
    untimed call each: imports, buffers)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for function in variants.values():
        function(batch)
    windows = len(batch)
    for _ in range(rounds):
        for name, function in variants.items():
            started = time.thread_time()
            for _ in range(calls):
                function(batch)
            times[name].append((time.thread_time() - started) / (calls * windows) * 1000)
    return times


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def numpy_table(args: argparse.Namespace) -> int:
    """The numpy frontends' timings (this process never imports torch), one line per variant."""
    loaded = load()
    times = time_variants(numpy_variants(args.numpy_before), test_audio(args.batch), args.rounds, args.calls)
    assert "torch" not in sys.modules
    print(f"numpy frontends, in a process without torch; load average before {loaded}, after {load()}")
    for name, values in times.items():
        print(f"  {name:26s} {statistics.median(values):6.2f}  [{min(values):.2f}-{max(values):.2f}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="windows per batch (predict: 4)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=5, help="batches per round and variant")
    parser.add_argument("--numpy-before", metavar="COMMIT", help="also time the numpy frontend of COMMIT")
    parser.add_argument("--numpy-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.numpy_only:
        return numpy_table(args)
    print(
        f"CPU ms per 5-s window, one thread, batches of {args.batch}, median [range] of {args.rounds} "
        "interleaved rounds"
    )
    child = [sys.executable, __file__, "--numpy-only", *(argv if argv is not None else sys.argv[1:])]
    sys.stdout.flush()
    subprocess.run(child, check=True)

    import torch

    from dawnchorus.models.features import LogMel

    torch.set_num_threads(1)
    frontend = LogMel().eval()
    audio = test_audio(args.batch)
    batch = torch.from_numpy(audio)
    variants: dict[str, Callable[[Any], Any]] = {
        "torch fused (LogMel now)": frontend,
        "torch unfused (before)": lambda a: unfused(frontend, a),
        "STFT alone (torch)": lambda a: stft_only(frontend, a),
    }
    loaded = load()
    with torch.inference_mode():
        reference = frontend(batch).numpy()
        differences = {name: np.abs(np.asarray(f(audio)) - reference).max()
                       for name, f in numpy_variants(args.numpy_before).items()}
        differences["torch unfused (before)"] = np.abs(unfused(frontend, batch).numpy() - reference).max()
        times = time_variants(variants, batch, args.rounds, args.calls)
    print(f"torch frontends; load average before {loaded}, after {load()}")
    stft = statistics.median(times["STFT alone (torch)"])
    for name, values in times.items():
        median = statistics.median(values)
        beyond = "" if name.startswith("STFT") else f"   (beyond the STFT: {median - stft:5.2f})"
        print(f"  {name:26s} {median:6.2f}  [{min(values):.2f}-{max(values):.2f}]{beyond}")
    print("largest |x - torch fused| (per-sample normalised output):")
    for name, difference in differences.items():
        print(f"  {name:26s} {difference:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
