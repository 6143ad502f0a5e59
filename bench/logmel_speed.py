"""Log-mel frontend: the fused power + mel projection of ``LogMel`` against the unfused formula it
replaced, in CPU ms per 5-s window on one thread.

Both run on the same batches (``--batch`` windows of 32 kHz noise with whistles), interleaved over
``--rounds`` rounds under ``torch.inference_mode`` (the prediction path); CPU time is the thread's
own (``time.thread_time``). Printed per variant: the whole frontend and its STFT alone (medians),
and the largest difference of the outputs (dB, per-sample normalised). The unfused formula is the
frontend as trained before the change: ``real² + imag²`` of every STFT bin, then the whole
filterbank.

    python bench/logmel_speed.py                 # 30 rounds of 5 batches of 4 (~10 s)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from dawnchorus.models.features import AMIN, NORM_EPS, LogMel


def unfused(frontend: LogMel, audio: torch.Tensor) -> torch.Tensor:
    """The frontend before the fusion: full power spectrum, then the whole filterbank."""
    spectrum = torch.stft(
        audio, n_fft=frontend.n_fft, hop_length=frontend.hop_length, window=frontend.window,
        center=True, pad_mode="reflect", return_complex=True,
    )
    mel = torch.matmul(frontend.mel_fb, spectrum.real.square() + spectrum.imag.square())
    decibels = 10.0 * torch.log10(mel.clamp(min=AMIN))
    decibels = torch.maximum(decibels, decibels.amax(dim=(-2, -1), keepdim=True) - frontend.top_db)
    mean = decibels.mean(dim=(-2, -1), keepdim=True)
    std = decibels.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return ((decibels - mean) / (std + NORM_EPS)).unsqueeze(1)


def stft_only(frontend: LogMel, audio: torch.Tensor) -> torch.Tensor:
    return torch.stft(
        audio, n_fft=frontend.n_fft, hop_length=frontend.hop_length, window=frontend.window,
        center=True, pad_mode="reflect", return_complex=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="windows per batch (predict: 4)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=5, help="batches per round and variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frontend = LogMel().eval()
    rng = np.random.default_rng(0)
    seconds = np.arange(5 * 32000) / 32000
    audio = 0.05 * rng.standard_normal((args.batch, len(seconds)))
    audio += 0.2 * np.sin(2 * np.pi * (3000 * seconds + 400 * np.sin(2 * np.pi * 5 * seconds)))
    batch = torch.from_numpy(audio.astype(np.float32))
    variants = {
        "fused (LogMel now)": frontend,
        "unfused (before)": lambda a: unfused(frontend, a),
        "STFT alone": lambda a: stft_only(frontend, a),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        difference = float((frontend(batch) - unfused(frontend, batch)).abs().max())
        for _ in range(args.rounds):
            for name, function in variants.items():
                started = time.thread_time()
                for _ in range(args.calls):
                    function(batch)
                times[name].append((time.thread_time() - started) / (args.calls * args.batch) * 1000)
    print(f"CPU ms per 5-s window, one thread, batches of {args.batch}, median of {args.rounds} rounds")
    stft = statistics.median(times["STFT alone"])
    for name, values in times.items():
        median = statistics.median(values)
        beyond = "" if name == "STFT alone" else f"   (beyond the STFT: {median - stft:.2f})"
        print(f"  {name:20s} {median:6.2f}  [{min(values):.2f}-{max(values):.2f}]{beyond}")
    print(f"largest |fused - unfused| (per-sample normalised output): {difference:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
