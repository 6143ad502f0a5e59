"""The demo end to end at a tiny scale (every artefact checked, the report opened in headless
Chromium), and its pieces and refusals at full speed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from dawnchorus.demo import (
    DemoResult,
    DemoSettings,
    demo_config,
    prepare_out,
    run_demo,
    split_soundscape_labels,
    write_synthetic_ambience,
)
from dawnchorus.errors import DemoError
from dawnchorus.io.audio import info, load
from dawnchorus.models.modelfile import load_model
from dawnchorus.report.figures import format_metric
from tests.browser_check import open_in_chromium, require_browser
from tests.report_checks import check_report

TINY = DemoSettings(
    backbone="test_efficientnet",
    epochs=1,
    batch_size=8,
    min_clips_per_class=4,
    clips_per_species=(2, 6),
    tune_soundscapes=1,
    eval_soundscapes=2,
    soundscape_s=20.0,
)
SPECIES = 4
WINDOWS_PER_SOUNDSCAPE = 4  # 20 s in 5-s windows
SECTIONS = [
    "overview",
    "training-set--class-distribution",
    "augmentation--one-clip--and-the-same-clip-under-each-augmentation",
    "training-curves",
    "evaluation--per-class-metrics-and-precision-recall-curves",
    "detection-timelines",
    "clean-vs-noisy--what-the-field-background-costs",
]


# --- the whole demo, once ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    console = Console(record=True, width=200)
    result = run_demo(out, species=SPECIES, seed=0, console=console, settings=TINY)
    return result, console.export_text()


@pytest.mark.slow
def test_demo_writes_every_artefact(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    out = result.out
    for path in (result.model_path, result.evaluation_path, result.report_path, out / "demo.json"):
        assert path.is_file(), path
    assert (result.run_dir / "logs" / "metrics.csv").is_file()
    assert (result.run_dir / "config.yaml").is_file()
    for predictions in (result.predictions_dir, result.clean_predictions_dir):
        for name in ("predictions.csv", "predictions.parquet", "submission_2022.csv", "submission_2023.csv"):
            assert (predictions / name).is_file(), predictions / name
        assert len(list((predictions / "raven").glob("*.txt"))) == TINY.eval_soundscapes
        assert len(list((predictions / "audacity").glob("*.txt"))) == TINY.eval_soundscapes
    noise = sorted(p.stem for p in (out / "noise").glob("*.ogg"))
    assert noise == ["insects", "mixed_1", "mixed_2", "rain", "stream", "wind"]
    summary = json.loads((out / "demo.json").read_text())
    assert summary["status"] == "complete"
    assert list(summary["stage_seconds"]) == ["data", "train", "tune", "predict", "evaluate", "report"]
    assert summary["wall_seconds"] == result.wall_seconds > 0


@pytest.mark.slow
def test_thresholds_are_tuned_only_on_the_tuning_soundscapes(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    data = result.data_dir
    tune = pd.read_csv(data / "tune_labels.csv", dtype={"audio_id": str})
    held_out = pd.read_csv(data / "eval_labels.csv", dtype={"audio_id": str})
    assert tune["audio_id"].nunique() == TINY.tune_soundscapes
    assert held_out["audio_id"].nunique() == TINY.eval_soundscapes
    assert not set(tune["audio_id"]) & set(held_out["audio_id"])
    every = {p.stem for p in (data / "test_soundscapes").glob("*.ogg")}
    assert set(tune["audio_id"]) | set(held_out["audio_id"]) == every
    # Training validates on test_labels.csv: it must hold the tuning soundscapes only.
    pd.testing.assert_frame_equal(pd.read_csv(data / "test_labels.csv", dtype={"audio_id": str}), tune)
    model = load_model(result.model_path)
    assert model.thresholds == result.thresholds
    assert len(model.thresholds["per_class"]) == len(model.labels) == SPECIES
    predicted = pd.read_csv(result.predictions_dir / "predictions.csv")
    assert {Path(f).stem for f in predicted["file"]} == set(held_out["audio_id"])
    assert len(predicted) == TINY.eval_soundscapes * WINDOWS_PER_SOUNDSCAPE


@pytest.mark.slow
def test_evaluation_is_on_the_held_out_soundscapes(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    evaluation = json.loads(result.evaluation_path.read_text())
    assert set(evaluation) == {"noisy", "clean"}
    assert evaluation == json.loads(json.dumps(result.evaluation))
    for name, scores in evaluation.items():
        assert scores["n_recordings"] == TINY.eval_soundscapes, name
        assert scores["n_windows"] == TINY.eval_soundscapes * WINDOWS_PER_SOUNDSCAPE
        assert Path(scores["labels_path"]).name == "eval_labels.csv"
        assert 0.0 <= scores["cmap_padded"] <= 1.0
    assert "predictions_clean" in evaluation["clean"]["predictions_path"]


@pytest.mark.slow
def test_report_images_and_numbers(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    parsed = check_report(result.report_path, result.evaluation_path)
    assert parsed.sections == SECTIONS
    assert not parsed.notes, parsed.notes  # a demo folder has data for every section
    names = {Path(source).name for source in parsed.images}
    assert {
        "class_distribution.png",
        "augmentations.png",
        "training_curves.png",
        "precision_recall.png",
    } <= names
    assert {f"timeline_{k}.png" for k in (1, 2)} <= names
    assert "clean_vs_noisy.png" in names
    assert {path.name for path in (result.out / "report_files").iterdir()} == names


@pytest.mark.slow
def test_console_shows_stages_scores_and_next_commands(demo: tuple[DemoResult, str]) -> None:
    result, text = demo
    for number, title in enumerate(["Data", "Train", "Tune thresholds", "Predict", "Evaluate", "Report"], 1):
        assert f"{number}/6  {title}" in text
    # The last table is the final summary: one column per condition.
    summary = [line for line in text.splitlines() if "padded cmAP (BirdCLEF 2023)" in line][-1]
    scores = result.scores()
    assert format_metric(scores["noisy"]["cmap_padded"]) in summary
    assert format_metric(scores["clean"]["cmap_padded"]) in summary
    assert f"dawnchorus predict {result.model_path} /path/to/recordings --out" in text
    assert str(result.report_path) in text


@pytest.mark.slow
def test_report_opens_in_headless_chromium(demo: tuple[DemoResult, str], tmp_path: Path) -> None:
    require_browser()
    result, _ = demo
    screenshot = tmp_path / "report.png"
    seen = open_in_chromium(result.report_path, screenshot)
    assert seen.title.startswith("dawnchorus report")
    assert len(seen.images) == len(check_report(result.report_path).images)
    assert not seen.broken_images, seen.broken_images
    assert not seen.console_errors, seen.console_errors
    assert not seen.failed_requests, seen.failed_requests
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


# --- pieces and refusals (fast) --------------------------------------------------------------------


def test_refuses_bad_arguments_before_doing_anything(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DemoError, match="--species must be at least 2, not 1"):
        run_demo(out, species=1)
    with pytest.raises(DemoError, match="--epochs must be at least 1, not 0"):
        run_demo(out, epochs=0)
    with pytest.raises(DemoError, match="--noise-dir .*nowhere: folder not found"):
        run_demo(out, noise_dir=tmp_path / "nowhere")
    (tmp_path / "silent").mkdir()
    (tmp_path / "silent" / "notes.txt").write_text("no audio here")
    with pytest.raises(DemoError, match="--noise-dir .*silent: no audio files"):
        run_demo(out, noise_dir=tmp_path / "silent")
    assert not out.exists()
    with pytest.raises(DemoError, match="epochs must be at least 1, not 0; eval_soundscapes must be"):
        DemoSettings(epochs=0, eval_soundscapes=0)


def test_never_deletes_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "precious.wav").write_bytes(b"RIFF")
    with pytest.raises(DemoError, match="mine: folder holds other files .*data.* not a previous demo"):
        run_demo(mine)
    (mine / "thesis.tex").write_text("...")
    (mine / "demo.json").write_text("{}")
    with pytest.raises(DemoError, match=r"holds other files \(thesis.tex\)"):
        run_demo(mine)
    assert (mine / "data" / "precious.wav").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DemoError, match="exists and is not a folder"):
        run_demo(tmp_path / "file")


def test_a_previous_demo_is_replaced(tmp_path: Path) -> None:
    old = tmp_path / "old_demo"
    (old / "data" / "train_audio").mkdir(parents=True)
    (old / "report_files").mkdir()
    (old / "report.html").write_text("old")
    (old / "demo.json").write_text('{"status": "complete"}')
    prepare_out(old)
    assert sorted(p.name for p in old.iterdir()) == ["demo.json"]
    assert json.loads((old / "demo.json").read_text()) == {"status": "running"}
    prepare_out(tmp_path / "new" / "nested")  # missing folders are created
    assert (tmp_path / "new" / "nested" / "demo.json").is_file()


def test_synthetic_ambience_is_deterministic_and_sounds_like_its_name(tmp_path: Path) -> None:
    first = write_synthetic_ambience(tmp_path / "a", seed=3, seconds=2.0)
    again = write_synthetic_ambience(tmp_path / "b", seed=3, seconds=2.0)
    other = write_synthetic_ambience(tmp_path / "c", seed=4, seconds=2.0)
    assert [p.name for p in first] == [
        "wind.ogg",
        "rain.ogg",
        "stream.ogg",
        "insects.ogg",
        "mixed_1.ogg",
        "mixed_2.ogg",
    ]
    for path, same, different in zip(first, again, other, strict=True):
        header = info(path)
        assert header.sample_rate == 32000 and header.duration_s == pytest.approx(2.0)
        samples = load(path, 32000)
        assert np.sqrt(np.mean(samples**2)) > 0.01
        np.testing.assert_array_equal(samples, load(same, 32000))
        assert not np.allclose(samples, load(different, 32000))

    def share_below(path: Path, hz: float) -> float:
        power = np.abs(np.fft.rfft(load(path, 32000))) ** 2
        frequencies = np.fft.rfftfreq(64000, 1 / 32000)
        return float(power[frequencies < hz].sum() / power.sum())

    by_name = {p.stem: p for p in first}
    assert share_below(by_name["wind"], 1000) > 0.9  # wind rumbles low
    assert share_below(by_name["insects"], 3000) < 0.05  # insects buzz high
    assert share_below(by_name["rain"], 800) < 0.2  # rain hisses and ticks


def test_split_soundscape_labels(tmp_path: Path) -> None:
    rows = [
        {
            "row_id": f"s{k}_{end}",
            "audio_id": f"s{k}",
            "seconds": end,
            "birds": "abc" if end == 5 else "nocall",
        }
        for k in (7, 3, 9)
        for end in (5, 10)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "test_labels.csv", index=False)
    tune, held_out = split_soundscape_labels(tmp_path, tune_count=1)
    assert pd.read_csv(tune)["audio_id"].tolist() == ["s7", "s7"]
    assert pd.read_csv(held_out)["audio_id"].tolist() == ["s3", "s3", "s9", "s9"]
    assert pd.read_csv(tmp_path / "test_labels.csv")["audio_id"].tolist() == ["s7", "s7"]
    with pytest.raises(DemoError, match="need more than 1 soundscapes"):
        split_soundscape_labels(tmp_path, tune_count=1)  # only s7 is left in test_labels.csv


def test_demo_config_is_the_domain_shift_and_imbalance_recipe(tmp_path: Path) -> None:
    config = demo_config(tmp_path, seed=5, settings=TINY)
    assert config.model.backbone == "test_efficientnet" and not config.model.pretrained
    assert config.augment.noise_dir == tmp_path and config.augment.noise_p > 0
    assert config.augment.mixup_p > 0 and config.augment.specaugment_p > 0
    assert config.imbalance.min_clips_per_class == TINY.min_clips_per_class
    assert (config.train.epochs, config.train.seed) == (1, 5)
    assert config.train.monitor == "val_soundscape/cmap"
