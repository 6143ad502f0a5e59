"""The HTML report on every kind of folder (training run, evaluated run, demo-style, evaluation only),
its refusals, and the console tables of an evaluation. No training: an untrained model file and a
hand-written Lightning log stand in for a run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.config import PredictSettings
from dawnchorus.data.layouts import load_training_set
from dawnchorus.errors import ReportError
from dawnchorus.evaluate.metrics import evaluate_files
from dawnchorus.inference.run import run_prediction
from dawnchorus.models.modelfile import load_model
from dawnchorus.report.figures import format_metric
from dawnchorus.report.html import build_report, render_evaluation
from dawnchorus.synth.soundscapes import make_dataset
from tests.conftest import write_model_file
from tests.report_checks import check_report

EPOCHS = 3


def write_lightning_log(path: Path, epochs: int = EPOCHS) -> None:
    """A metrics.csv shaped as Lightning's CSVLogger writes it: step rows, then epoch rows."""
    rows = []
    for epoch in range(epochs):
        for step in range(2):
            rows.append(
                {"epoch": epoch, "step": 2 * epoch + step, "train/loss_step": 0.7 - 0.1 * epoch - 0.02 * step}
            )
        rows.append(
            {
                "epoch": epoch,
                "step": 2 * epoch + 1,
                "val/loss": 0.6 - 0.1 * epoch,
                "val/roc_auc": 0.6 + 0.1 * epoch,
                "val/cmap": 0.7 + 0.05 * epoch,
                "val_soundscape/roc_auc": 0.5 + 0.08 * epoch,
                "val_soundscape/cmap": 0.6 + 0.06 * epoch,
            }
        )
        rows.append({"epoch": epoch, "step": 2 * epoch + 1, "train/loss_epoch": 0.65 - 0.1 * epoch})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic set, an untrained model file 'trained' on it, a log, and predictions + evaluations."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    make_dataset(
        data,
        species=3,
        soundscapes=2,
        seed=1,
        clips_per_species=(2, 4),
        soundscape_s=20.0,
        clean_copies=True,
        workers=1,
    )
    labels = load_training_set(data, check_audio=False).labels
    run = root / "run"
    model_file = write_model_file(
        run / "model.pt",
        labels,
        metadata={
            "trained_on": str(data.resolve()),
            "train_clips": 6,
            "val_clips": 2,
            "monitor": "val/roc_auc",
            "best_score": 0.8123,
        },
    )
    model = load_model(model_file)
    model.config.to_yaml(run / "config.yaml")
    write_lightning_log(run / "logs" / "metrics.csv")
    evaluations = {}
    for name, folder in (("noisy", "test_soundscapes"), ("clean", "test_soundscapes_clean")):
        settings = PredictSettings(formats="parquet", engine="torch")
        run_prediction(model, [data / folder], root / f"predictions_{name}", settings)
        evaluations[name] = evaluate_files(
            root / f"predictions_{name}" / "predictions.parquet", data / "test_labels.csv", model=model
        )
    (root / "evaluation_single.json").write_text(json.dumps(evaluations["noisy"]))
    (root / "evaluation_pair.json").write_text(json.dumps(evaluations))
    return {"root": root, "data": data, "run": run}


def run_folder(material: dict[str, Path], target: Path, evaluation: str | None = None) -> Path:
    """A copy of the training run folder, with ``evaluation_<kind>.json`` as its evaluation.json."""
    shutil.copytree(material["run"], target)
    if evaluation is not None:
        shutil.copy(material["root"] / f"evaluation_{evaluation}.json", target / "evaluation.json")
    return target


def images_of(parsed) -> set[str]:
    return {Path(source).name for source in parsed.images}


def test_training_run_without_evaluation(material: dict[str, Path], tmp_path: Path) -> None:
    folder = run_folder(material, tmp_path / "run")
    (folder / "report_files").mkdir()
    (folder / "report_files" / "timeline_9.png").write_bytes(b"stale, from an earlier report")
    written = build_report(folder)
    assert not (folder / "report_files" / "timeline_9.png").exists()
    assert written == folder / "report.html"
    parsed = check_report(written)
    assert images_of(parsed) == {
        "class_distribution.png",
        "example_clip.png",
        "augmentations.png",
        "training_curves.png",
    }
    assert len(parsed.notes) == 3, parsed.notes
    assert all(note.startswith("Skipped:") for note in parsed.notes)
    assert any("no evaluation.json" in note for note in parsed.notes)
    assert "clean and a noisy" in parsed.notes[-1]
    page = written.read_text()
    assert "test_efficientnet" in page and "0.812" in page  # backbone and best score from the model file
    assert not parsed.metrics


def test_evaluated_run_shows_metrics_curves_and_timelines(material: dict[str, Path], tmp_path: Path) -> None:
    folder = run_folder(material, tmp_path / "run", evaluation="single")
    parsed = check_report(build_report(folder), folder / "evaluation.json")
    evaluation = json.loads((folder / "evaluation.json").read_text())
    n_labels = len(evaluation["per_class"])
    assert {f"per_class.{k}.f1" for k in range(n_labels)} <= set(parsed.metrics)
    assert {"cmap_padded", "roc_auc_macro", "f1_macro_2022", "balanced_accuracy"} <= set(parsed.metrics)
    assert {"precision_recall.png", "timeline_1.png", "timeline_2.png"} <= images_of(parsed)
    assert parsed.notes == ["Skipped: evaluation.json does not hold both a clean and a noisy evaluation."]


def test_demo_style_evaluation_compares_clean_and_noisy(material: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    shutil.copytree(material["run"], folder / "run")  # a demo keeps its run one level down
    shutil.copy(material["root"] / "evaluation_pair.json", folder / "evaluation.json")
    (folder / "demo.json").write_text(
        json.dumps(
            {"species": 3, "seed": 1, "wall_seconds": 12.34, "stage_seconds": {"data": 1.0, "train": 9.0}}
        )
    )
    parsed = check_report(build_report(folder), folder / "evaluation.json")
    assert not parsed.notes
    assert "clean_vs_noisy.png" in images_of(parsed)
    assert {"noisy.cmap_padded", "clean.cmap_padded", "noisy.per_class.0.ap"} <= set(parsed.metrics)
    page = (folder / "report.html").read_text()
    assert "demo:" in page and "12.3 s" in page
    pair = json.loads((folder / "evaluation.json").read_text())
    clean, noisy = (format_metric(pair[name]["cmap_padded"]) for name in ("clean", "noisy"))
    assert f"padded cmAP {clean} clean vs {noisy} noisy" in page


def test_evaluation_only_folder(material: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(material["root"] / "evaluation_single.json", tmp_path / "evaluation.json")
    parsed = check_report(build_report(tmp_path), tmp_path / "evaluation.json")
    assert {"precision_recall.png", "timeline_1.png"} <= images_of(parsed)
    assert any("no model.pt" in note for note in parsed.notes)
    assert any("logs/metrics.csv" in note for note in parsed.notes)


def test_training_set_gone_is_a_note_not_an_error(material: dict[str, Path], tmp_path: Path) -> None:
    folder = run_folder(material, tmp_path / "run")
    model = load_model(folder / "model.pt")
    model.metadata["trained_on"] = str(tmp_path / "moved_away")
    model.save()
    parsed = check_report(build_report(folder))
    assert images_of(parsed) == {"training_curves.png"}
    assert sum("moved_away) is not on this machine" in note for note in parsed.notes) == 2


def test_refusals_name_the_folder_or_file(material: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="missing.*folder not found"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="empty: no model.pt, logs/metrics.csv or evaluation.json"):
        build_report(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ReportError, match="not a folder"):
        build_report(tmp_path / "file.txt")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "evaluation.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"broken/evaluation.json: cannot read it as JSON"):
        build_report(broken)
    (broken / "evaluation.json").write_text(json.dumps({"noisy": {"cmap_padded": 0.5}}))
    with pytest.raises(ReportError, match=r"evaluation.json: not an evaluation result"):
        build_report(broken)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ReportError, match="not a dawnchorus model file"):
        build_report(garbage)


def test_render_evaluation_prints_headline_and_per_class(material: dict[str, Path]) -> None:
    result = json.loads((material["root"] / "evaluation_single.json").read_text())
    console = Console(record=True, width=160)
    render_evaluation(result, console)
    text = console.export_text()
    assert "padded cmAP (BirdCLEF 2023)" in text
    assert format_metric(result["cmap_padded"]) in text
    for row in result["per_class"]:
        line = next(line for line in text.splitlines() if f" {row['label']} " in line)
        assert format_metric(row["support"]) in line and format_metric(row["f1"]) in line


def test_render_evaluation_of_a_pair_prints_both(material: dict[str, Path]) -> None:
    pair = json.loads((material["root"] / "evaluation_pair.json").read_text())
    console = Console(record=True, width=160)
    render_evaluation(pair, console)
    text = console.export_text()
    assert "Scores: noisy soundscapes" in text and "Scores: clean copies" in text
    with pytest.raises(ReportError, match="not an evaluation result"):
        render_evaluation({"cmap_padded": 0.3}, console)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "n/a"), (math.nan, "n/a"), (7, "7"), (np.int64(12), "12"), (0.12345, "0.123"), (1.0, "1.000")],
)
def test_format_metric(value, shown: str) -> None:
    assert format_metric(value) == shown


def test_cli_report_and_evaluate(material: dict[str, Path], tmp_path: Path) -> None:
    folder = run_folder(material, tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert "report written" in result.output and (folder / "report.html").is_file()
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "folder not found" in result.output
    predictions = material["root"] / "predictions_noisy" / "predictions.parquet"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(predictions),
            str(material["data"] / "test_labels.csv"),
            "--model",
            str(folder / "model.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "padded cmAP" in result.output and "Per class" in result.output
