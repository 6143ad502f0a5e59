"""``dawnchorus calibrate`` on a reviewed synthetic run of known truth, and the model file's calibration.

The run: synthetic soundscapes (known calls per window), predicted by a stand-in detector (each
species' in-band over out-of-band energy peak, a real but imperfect detector: species sharing a band
are confused), half of the recordings reviewed as a reviewer would (the random queue: items drawn at
random per species and score bin; a few top-score items; verdicts from the truth, some 'other' and
'unsure'), the other half held out. Calibrate fits per-species thresholds and calibrations on the
reviewed half; the held-out half checks them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import signal
from scipy.special import expit
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.config import PredictSettings
from dawnchorus.errors import ModelFileError
from dawnchorus.evaluate.calibration import calibrate_scores, wilson_interval
from dawnchorus.inference.run import run_prediction
from dawnchorus.io.verdicts import REVIEWS_FILE, VerdictStore, score_bin
from dawnchorus.models.modelfile import load_model
from dawnchorus.synth.calls import draw_species
from dawnchorus.synth.soundscapes import make_dataset
from tests.conftest import write_model_file

SEED = 3
SPECIES = 4
SAMPLE_RATE = 32000
PER_STRATUM = 12  # random-queue verdicts per species and score bin
TARGET = 0.9


class BandDetector:
    """Stand-in engine: per species, the 95th-percentile minus median (dB) of its call band's energy
    over the energy outside it, squashed to (0, 1)."""

    def __init__(self, seed: int = SEED, species: int = SPECIES) -> None:
        self.bands = [
            (sp.call.centre_hz - sp.call.bandwidth_hz / 2, sp.call.centre_hz + sp.call.bandwidth_hz / 2)
            for sp in draw_species(species, seed)
        ]

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        freqs, _, spectrum = signal.stft(audio, fs=SAMPLE_RATE, nperseg=512, axis=-1)
        power = np.abs(spectrum) ** 2
        scores = []
        for low, high in self.bands:
            inside = (freqs >= low) & (freqs <= high)
            outside = (freqs >= 800) & (freqs <= 12000) & ~inside
            ratio = 10 * np.log10(power[:, inside].mean(axis=1) + 1e-12) - 10 * np.log10(
                power[:, outside].mean(axis=1) + 1e-12
            )
            peak = np.percentile(ratio, 95, axis=-1) - np.median(ratio, axis=-1)
            scores.append(expit((peak - 12) / 4))
        return np.stack(scores, axis=1).astype(np.float32)


def window_truth(data: Path) -> dict[tuple[str, float], set[str]]:
    """(recording stem, window start) -> the species calling in it, from test_labels.csv."""
    labels = pd.read_csv(data / "test_labels.csv")
    return {
        (r.audio_id, float(r.seconds) - 5.0): set(str(r.birds).split()) - {"nocall"}
        for r in labels.itertuples()
    }


def review_as_a_reviewer(run: Path, truth: dict[tuple[str, float], set[str]], seed: int = 0) -> int:
    """Fill ``run/reviews.sqlite`` from the truth: the random queue (up to PER_STRATUM items per species
    and score bin), then the five top-scored items per species not yet judged (queue 'score')."""
    rng = np.random.default_rng(seed)
    table = pd.read_parquet(run / "predictions.parquet")
    labels = [c for c in table.columns if c not in ("file", "start_s", "end_s")]
    store = VerdictStore(run / REVIEWS_FILE)
    judged: set[tuple[int, str]] = set()
    count = 0

    def judge(row: int, label: str, queue: str) -> None:
        nonlocal count
        window = table.iloc[row]
        heard = truth[(Path(window["file"]).stem, float(window["start_s"]))]
        score = float(window[label])
        verdict, other = ("present", None) if label in heard else ("absent", None)
        if verdict == "absent" and heard and count % 2:
            verdict, other = "other", sorted(heard)[0]
        if count % 17 == 16:
            verdict, other = "unsure", None
        store.add(
            item_id=f"{Path(window['file']).stem}:{round(window['start_s'] * 1000)}:{label}",
            file=str(window["file"]), start_s=float(window["start_s"]), end_s=float(window["end_s"]),
            label=label, score=score, verdict=verdict, other_label=other, queue=queue,
            score_bin=score_bin(score) if queue == "random" else -1,
        )
        judged.add((row, label))
        count += 1

    for label in labels:
        bins = np.array([score_bin(s) for s in table[label]])
        for stratum in range(10):
            rows = np.flatnonzero(bins == stratum)
            for row in rng.permutation(rows)[:PER_STRATUM]:
                judge(int(row), label, "random")
        for row in np.argsort(-table[label].to_numpy(), kind="stable"):
            if sum(1 for r, lab in judged if lab == label and r == row) == 0:
                judge(int(row), label, "score")
            if sum(1 for _, lab in judged if lab == label) >= 10 * PER_STRATUM + 5:
                break
    return count


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic data set, a model file over its species, a reviewed run on half its soundscapes and
    a held-out run on the other half."""
    root = tmp_path_factory.mktemp("reviewed")
    summary = make_dataset(
        root / "data", species=SPECIES, soundscapes=40, soundscape_s=60, clips_per_species=(1, 1),
        seed=SEED, workers=1,
    )
    model_path = write_model_file(root / "model.pt", labels=list(summary.species))
    model = load_model(model_path, build_network=False)
    scapes = sorted((root / "data" / "test_soundscapes").glob("*.ogg"))
    settings = PredictSettings(formats=["csv", "parquet"])
    run_prediction(model, scapes[::2], root / "run", settings, batch_function=BandDetector())
    run_prediction(model, scapes[1::2], root / "heldout", settings, batch_function=BandDetector())
    review_as_a_reviewer(root / "run", window_truth(root / "data"))
    return {
        "root": root, "data": root / "data", "model": model_path,
        "run": root / "run", "heldout": root / "heldout",
    }


def held_out_truth(reviewed: dict[str, Path], label: str) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_parquet(reviewed["heldout"] / "predictions.parquet")
    truth = window_truth(reviewed["data"])
    keys = zip(table["file"], table["start_s"], strict=True)
    present = np.array([label in truth[(Path(f).stem, float(s))] for f, s in keys])
    return table[label].to_numpy(dtype=np.float64), present


def test_calibrated_thresholds_reach_the_target_precision_on_held_out_windows(
    reviewed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = reviewed["root"] / "calibrated.pt"
    result = CliRunner().invoke(
        app,
        [
            "calibrate", str(reviewed["run"]), "--model", str(reviewed["model"]),
            "--target-precision", str(TARGET), "--out", str(out),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    model = load_model(out, build_network=False)
    before = load_model(reviewed["model"], build_network=False)
    assert model.calibration is not None and model.calibration["target_precision"] == TARGET
    lines = []
    reached = 0
    pooled_hits = pooled_detections = 0
    for index, label in enumerate(model.labels):
        scores, present = held_out_truth(reviewed, label)
        threshold = float(model.class_thresholds[index])
        changed = threshold != float(before.class_thresholds[index])
        default = present[scores >= before.class_thresholds[index]].mean()
        detections = scores >= threshold
        precision = present[detections].mean() if detections.any() else float("nan")
        lines.append(
            f"{label}: threshold {threshold:.3f} ({'fitted' if changed else 'kept'}), held-out precision "
            f"{precision:.3f} over {int(detections.sum())} detections (at the model's "
            f"{before.class_thresholds[index]:.2f}: {default:.3f}); {int(present.sum())} true windows"
        )
        if changed:
            reached += 1
            pooled_hits += int(present[detections].sum())
            pooled_detections += int(detections.sum())
            assert precision > default, lines[-1]  # the fitted threshold is stricter and better
            # One species' held-out precision varies with its 20-50 detections: it must be
            # consistent with the target (the target inside its 95 % interval, or above it).
            hits = int(present[detections].sum())
            assert wilson_interval(hits, int(detections.sum()))[1] >= TARGET, lines[-1]
    with capsys.disabled():
        print("\n" + result.output + "\n".join(lines))
    assert reached >= 2
    assert pooled_hits / pooled_detections >= TARGET - 0.03  # all fitted species together


def test_calibration_is_closer_to_the_truth_than_raw_scores_on_held_out_windows(
    reviewed: dict[str, Path],
) -> None:
    out = reviewed["root"] / "calibrated-brier.pt"
    command = ["calibrate", str(reviewed["run"]), "--model", str(reviewed["model"]), "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    model = load_model(out, build_network=False)
    slopes, intercepts = model.calibration_arrays
    for index, label in enumerate(model.labels):
        if np.isnan(slopes[index]):
            continue
        scores, present = held_out_truth(reviewed, label)
        calibrated = calibrate_scores(scores, slopes[index], intercepts[index])
        raw_brier = np.mean((scores - present) ** 2)
        calibrated_brier = np.mean((calibrated - present) ** 2)
        assert calibrated_brier < raw_brier, (label, calibrated_brier, raw_brier)


def test_without_a_model_only_the_precision_table_is_printed(
    reviewed: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reviewed["run"], run)
    (run / "run.json").unlink()  # it names the run's model, which calibrate takes (tests/test_runinfo.py)
    def listing() -> tuple[list[str], list[str]]:
        return sorted(p.name for p in reviewed["root"].iterdir()), sorted(p.name for p in run.iterdir())

    before, model = listing(), reviewed["model"].read_bytes()
    result = CliRunner().invoke(app, ["calibrate", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "precision" in result.output and "slope" not in result.output
    for label in load_model(reviewed["model"], build_network=False).labels:
        assert label in result.output
    assert listing() == before
    assert reviewed["model"].read_bytes() == model


def test_a_run_without_verdicts_is_one_line(tmp_path: Path, reviewed: dict[str, Path]) -> None:
    run = tmp_path / "run"
    shutil.copytree(reviewed["heldout"], run)
    result = CliRunner().invoke(app, ["calibrate", str(run)])
    assert result.exit_code == 2
    assert "no verdicts" in result.output and "Traceback" not in result.output
    empty = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "not a folder" in empty.output


def test_a_model_lacking_the_runs_labels_is_refused(reviewed: dict[str, Path], model_file: Path) -> None:
    result = CliRunner().invoke(app, ["calibrate", str(reviewed["run"]), "--model", str(model_file)])
    assert result.exit_code == 2
    assert "lacks" in result.output and "Traceback" not in result.output


def test_old_model_files_load_without_calibration(model_file: Path) -> None:
    assert load_model(model_file, build_network=False).calibration is None
    assert load_model(model_file, build_network=False).calibration_arrays is None


def test_a_damaged_calibration_entry_is_refused_with_one_line(tmp_path: Path, model_file: Path) -> None:
    import torch

    payload = torch.load(model_file, weights_only=True)
    payload["calibration"] = {"method": "logistic-logit", "labels": {"aaa": {"slope": -1, "intercept": 0.0}}}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="slope <= 0"):
        load_model(tmp_path / "bad.pt", build_network=False)
    payload["calibration"] = {"method": "isotonic-v9", "labels": {}}
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(ModelFileError, match="upgrade dawnchorus"):
        load_model(tmp_path / "newer.pt", build_network=False)
    payload["calibration"] = {"method": "logistic-logit", "labels": {"zzz": {"slope": 1.0, "intercept": 0.0}}}
    torch.save(payload, tmp_path / "stranger.pt")
    with pytest.raises(ModelFileError, match="not a label"):
        load_model(tmp_path / "stranger.pt", build_network=False)


# --- report --------------------------------------------------------------------------------------------


def test_report_of_a_reviewed_run_shows_precision_per_species(
    reviewed: dict[str, Path], tmp_path: Path
) -> None:
    import re
    from dataclasses import replace

    from dawnchorus.evaluate.verified import read_reviewed_run, review_species
    from dawnchorus.io.runinfo import read_run_info, write_run_info

    run = tmp_path / "run"
    shutil.copytree(reviewed["run"], run)
    info = read_run_info(run)  # the run's own thresholds are the ones the report shows precision at
    thresholds = {label: 0.6 + 0.05 * index for index, label in enumerate(info.labels)}
    write_run_info(run, replace(info, thresholds=thresholds))
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "Review: precision per species" in page and "its run.json" in page
    expected = review_species(*read_reviewed_run(run), thresholds)
    assert len(expected) == len(thresholds)
    for review in expected:
        shown = re.search(rf'data-precision="{review.label}">([0-9.]+)<', page)
        assert shown is not None
        assert float(shown.group(1)) == pytest.approx(review.precision.precision, abs=5e-4)
        assert f"{review.precision.low:.3f}-{review.precision.high:.3f}" in page
    assert (run / "report_files" / "reviewed_precision_0.png").is_file()


def test_a_predict_folder_without_reviews_is_not_reportable(reviewed: dict[str, Path]) -> None:
    from dawnchorus.errors import ReportError
    from dawnchorus.report.html import RunFolder

    assert RunFolder.find(reviewed["run"]).reviewed_runs == [reviewed["run"]]
    with pytest.raises(ReportError, match="reviewed predict folder"):
        RunFolder.find(reviewed["heldout"])


# --- predict --calibrated -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_model(reviewed: dict[str, Path]) -> Path:
    out = reviewed["root"] / "calibrated-for-predict.pt"
    command = ["calibrate", str(reviewed["run"]), "--model", str(reviewed["model"]), "--out", str(out)]
    assert CliRunner().invoke(app, command).exit_code == 0
    return out


def test_predict_calibrated_reports_probabilities_and_detects_the_same_windows(
    reviewed: dict[str, Path], calibrated_model: Path, tmp_path: Path
) -> None:
    from dawnchorus.inference.run import run_tag
    from dawnchorus.io.outputs import detections

    model = load_model(calibrated_model, build_network=False)
    scapes = sorted((reviewed["data"] / "test_soundscapes").glob("*.ogg"))[1::2][:6]
    plain = PredictSettings(formats=["parquet", "raven"])
    calibrated = PredictSettings(formats=["parquet", "raven"], calibrated=True)
    run_prediction(model, scapes, tmp_path / "raw", plain, batch_function=BandDetector())
    run_prediction(model, scapes, tmp_path / "cal", calibrated, batch_function=BandDetector())
    raw = pd.read_parquet(tmp_path / "raw" / "predictions.parquet")
    cal = pd.read_parquet(tmp_path / "cal" / "predictions.parquet")
    slopes, intercepts = model.calibration_arrays
    expected = calibrate_scores(raw[model.labels].to_numpy(), slopes[None, :], intercepts[None, :])
    np.testing.assert_allclose(cal[model.labels].to_numpy(), expected, atol=1e-6)
    assert not np.allclose(cal[model.labels].to_numpy(), raw[model.labels].to_numpy(), atol=1e-3)
    # The model's thresholds, mapped through the calibration, detect the same windows.
    cutoffs = calibrate_scores(model.class_thresholds, slopes, intercepts)
    found_raw = detections(raw, model.labels, model.class_thresholds)
    found_cal = detections(cal, model.labels, cutoffs.astype(np.float32))
    assert len(found_raw) > 0
    assert found_raw[["file", "start_s", "label"]].equals(found_cal[["file", "start_s", "label"]])
    raven = sorted((tmp_path / "cal" / "raven").glob("*.txt"))
    assert raven, "Raven tables written"
    assert run_tag(model, calibrated) == run_tag(model, plain) + "-cal"
    # Calibrating again on calibrated scores is refused (it would fit a calibration of a calibration).
    shutil.copy(reviewed["run"] / REVIEWS_FILE, tmp_path / "cal" / REVIEWS_FILE)
    again = CliRunner().invoke(app, ["calibrate", str(tmp_path / "cal"), "--model", str(calibrated_model)])
    assert again.exit_code == 2 and "calibrated ones" in again.output


def test_predict_calibrated_without_a_calibration_is_refused_before_any_output(
    model_file: Path, tmp_path: Path
) -> None:
    from dawnchorus.io.audio import write_audio
    from tests.conftest import synthetic_audio

    write_audio(tmp_path / "rec.wav", synthetic_audio(10.0, seed=1), 32000)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", str(model_file), str(tmp_path / "rec.wav"), "--out", str(out), "--calibrated",
              "--engine", "torch"],
    )
    assert result.exit_code == 2, result.output
    assert "no calibration" in result.output and "dawnchorus calibrate" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_without_a_usable_model_precision_is_at_the_runs_own_thresholds(
    reviewed: dict[str, Path], tmp_path: Path
) -> None:
    from dataclasses import replace

    from dawnchorus.io.runinfo import read_run_info, write_run_info

    run = tmp_path / "run"
    shutil.copytree(reviewed["run"], run)
    info = read_run_info(run)
    changed = replace(info.models[0], sha256="0" * 64)  # the model file changed since: not taken
    write_run_info(run, replace(info, models=(changed,), thresholds=dict.fromkeys(info.labels, 0.65)))
    result = CliRunner().invoke(app, ["calibrate", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "slope" not in result.output
    rows = [line for line in result.output.splitlines() if any(f" {label} " in line for label in info.labels)]
    assert len(rows) == len(info.labels) and all("0.650" in row for row in rows)
