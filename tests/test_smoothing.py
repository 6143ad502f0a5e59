"""The prediction recipe (issue 13 item 3): temporal smoothing and overlapping windows averaged back
onto the window grid, on hand-computed arrays and through whole runs (segmented, resumed, Dask chunks,
the command line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.config import PredictSettings, build_predict_settings
from dawnchorus.errors import ConfigError, PredictionError
from dawnchorus.inference import distributed as dist
from dawnchorus.inference.run import predict_frame, run_prediction
from dawnchorus.inference.smoothing import average_overlaps, finish_table, smooth
from dawnchorus.inference.windows import plan_recordings
from dawnchorus.io.audio import write_audio
from dawnchorus.models.modelfile import load_model
from tests.conftest import FirstSamples, Interrupted, stop_after_segments

KEYS = ["file", "start_s", "end_s"]
LABELS = ["aaa", "bbb", "ccc"]
BIRDCLEF_2025 = [0.1, 0.2, 0.4, 0.2, 0.1]


def by_hand_3(p: np.ndarray) -> np.ndarray:
    """Kernel [0.25, 0.5, 0.25] written out window by window, renormalised at both ends."""
    out = np.empty_like(p, dtype=np.float64)
    last = len(p) - 1
    for i in range(len(p)):
        if last == 0:
            out[i] = p[i]
        elif i == 0:
            out[i] = (0.5 * p[0] + 0.25 * p[1]) / 0.75
        elif i == last:
            out[i] = (0.25 * p[i - 1] + 0.5 * p[i]) / 0.75
        else:
            out[i] = 0.25 * p[i - 1] + 0.5 * p[i] + 0.25 * p[i + 1]
    return out


def table(starts: list[float], values: list[list[float]], window_s: float = 5.0) -> pd.DataFrame:
    frame = pd.DataFrame(np.asarray(values, dtype=np.float32), columns=LABELS[: len(values[0])])
    frame.insert(0, "end_s", np.asarray(starts) + window_s)
    frame.insert(0, "start_s", np.asarray(starts, dtype=np.float64))
    frame.insert(0, "file", "rec.wav")
    return frame


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    folder = tmp_path / "recordings"
    write_audio(folder / "long_32k.flac", rng.uniform(-0.5, 0.5, 32000 * 62), 32000)  # 13 windows of 5 s
    write_audio(folder / "long_44k.wav", rng.uniform(-0.5, 0.5, 44100 * 47), 44100)  # 10 windows
    write_audio(folder / "short.ogg", rng.uniform(-0.5, 0.5, 32000 * 12), 32000)  # 3 windows
    write_audio(folder / "one.wav", rng.uniform(-0.5, 0.5, 32000 * 4), 32000)  # 1 padded window
    return folder


def parquet(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "predictions.parquet").sort_values(KEYS).reset_index(drop=True)


def smoothed_by_hand(frame: pd.DataFrame) -> pd.DataFrame:
    """Each recording's windows smoothed with [0.25, 0.5, 0.25] by :func:`by_hand_3`."""
    pieces = []
    for _, rows in frame.groupby("file", sort=True):
        rows = rows.sort_values("start_s").copy()
        rows[LABELS] = by_hand_3(rows[LABELS].to_numpy(np.float64)).astype(np.float32)
        pieces.append(rows)
    return pd.concat(pieces).sort_values(KEYS).reset_index(drop=True)


# --- smoothing on known arrays ---------------------------------------------------------------------------


def test_smoothing_a_single_call_spreads_it_as_the_kernel_says_renormalised_at_the_edges() -> None:
    p = np.array([[1.0], [0.0], [0.0], [0.0], [1.0]])
    found = smooth(p, [1, 2, 1])  # normalised: [0.25, 0.5, 0.25]
    # window 0: (0.5*1 + 0.25*0) / 0.75; window 1: 0.25*1; window 3: 0.25*1; window 4 like window 0
    np.testing.assert_allclose(found[:, 0], [2 / 3, 0.25, 0.0, 0.25, 2 / 3])
    np.testing.assert_allclose(smooth(p, [0.25, 0.5, 0.25]), found)  # the scale of the weights is moot


def test_birdclef_2025_kernel_on_known_windows() -> None:
    p = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    found = smooth(p, BIRDCLEF_2025)
    expected = [
        0.2 / 0.7,  # window 0: 0.4 p0 + 0.2 p1 + 0.1 p2 over 0.7 (two windows before it are missing)
        0.4 / 0.9,  # window 1: 0.2 p0 + 0.4 p1 + 0.2 p2 + 0.1 p3 over 0.9
        0.2,  # window 2: 0.1 p0 + 0.2 p1 + ...
        0.1,
        0.0,
        0.0,
    ]
    np.testing.assert_allclose(found[:, 0], expected)
    np.testing.assert_allclose(found[:, 1], 1.0)  # a constant track stays constant, edges too


def test_smoothing_one_window_or_a_one_weight_kernel_changes_nothing() -> None:
    p = np.random.default_rng(0).random((7, 4))
    np.testing.assert_allclose(smooth(p, [3.0]), p)
    np.testing.assert_allclose(smooth(p[:1], BIRDCLEF_2025), p[:1])


def test_finish_table_smooths_each_species_and_keeps_rows_and_dtype() -> None:
    frame = table([0, 5, 10, 15], [[1, 0, 0.2], [0, 0, 0.4], [0, 1, 0.6], [0, 0, 0.8]])
    found = finish_table(frame, LABELS, 5.0, 5.0, smoothing=[0.25, 0.5, 0.25])
    pd.testing.assert_frame_equal(found[KEYS], frame[KEYS])
    assert (found[LABELS].dtypes == np.float32).all()
    np.testing.assert_allclose(found[LABELS], by_hand_3(frame[LABELS].to_numpy(np.float64)), rtol=1e-6)
    assert finish_table(frame, LABELS, 5.0, 5.0) is frame  # both off: the table itself


# --- overlapping windows on known arrays -----------------------------------------------------------------


def test_windows_every_2_5_s_are_averaged_onto_the_5_s_grid_by_shared_seconds() -> None:
    # a 20 s recording at hop 2.5: windows start 0, 2.5, ..., 15 (7 windows)
    p = [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]
    found = average_overlaps(table([0, 2.5, 5, 7.5, 10, 12.5, 15], p), ["aaa"], 5.0, 2.5)
    assert list(found["start_s"]) == [0.0, 5.0, 10.0, 15.0]
    assert list(found["end_s"]) == [5.0, 10.0, 15.0, 20.0]
    assert set(found["file"]) == {"rec.wav"}
    expected = [
        (1 * 0 + 0.5 * 1) / 1.5,  # [0, 5): window 0 whole, window 2.5 half (no window at -2.5)
        0.25 * 1 + 0.5 * 2 + 0.25 * 3,  # [5, 10): 2.5-7.5 half, 5-10 whole, 7.5-12.5 half
        0.25 * 3 + 0.5 * 4 + 0.25 * 5,
        (0.5 * 5 + 1 * 6) / 1.5,  # [15, 20): window 12.5 half, window 15 whole
    ]
    np.testing.assert_allclose(found["aaa"], expected, rtol=1e-6)


def test_windows_every_1_25_s_share_each_grid_window_in_quarters() -> None:
    # 10 s at hop 1.25: windows start 0 .. 5 (5 windows)
    windows = table([0, 1.25, 2.5, 3.75, 5], [[4.0], [8.0], [0.0], [0.0], [4.0]])
    found = average_overlaps(windows, ["aaa"], 5.0, 1.25)
    assert list(found["start_s"]) == [0.0, 5.0]
    # [0, 5): weights 1, 0.75, 0.5, 0.25 (shared seconds / 5); [5, 10): 0.25, 0.5, 0.75, 1
    expected = [(4 + 0.75 * 8) / 2.5, (0.25 * 8 + 1 * 4) / 2.5]
    np.testing.assert_allclose(found["aaa"], expected, rtol=1e-6)


def test_overlap_average_refuses_a_hop_that_does_not_divide_the_window() -> None:
    with pytest.raises(PredictionError, match="hop_s 2 must divide the model's window of 5 s"):
        average_overlaps(table([0, 2, 4], [[0.0], [1.0], [2.0]]), ["aaa"], 5.0, 2.0)


def test_overlap_averaged_runs_give_the_rows_of_a_run_at_hop_5(recordings: Path, model_file: Path,
                                                              tmp_path: Path) -> None:
    model = load_model(model_file)
    run_prediction(model, [recordings], tmp_path / "hop5", batch_function=FirstSamples())
    raw = tmp_path / "hop2.5"
    run_prediction(model, [recordings], raw, PredictSettings(hop_s=2.5), batch_function=FirstSamples())
    averaged = tmp_path / "averaged"
    settings = PredictSettings(hop_s=2.5, overlap_average=True)
    run_prediction(model, [recordings], averaged, settings, batch_function=FirstSamples())
    found = parquet(averaged)
    pd.testing.assert_frame_equal(found[KEYS], parquet(tmp_path / "hop5")[KEYS])
    # interior grid windows: 0.25 / 0.5 / 0.25 of the hop-2.5 windows starting 2.5 s before, at, after
    windows = parquet(raw).set_index(["file", "start_s"])[LABELS]
    for row in found.itertuples(index=False):
        around = [(row.file, row.start_s + shift) for shift in (-2.5, 0.0, 2.5)]
        if all(key in windows.index for key in around):
            before, at, after = (windows.loc[key] for key in around)
            expected = 0.25 * before + 0.5 * at + 0.25 * after
            np.testing.assert_allclose([getattr(row, label) for label in LABELS], expected, atol=1e-6)


# --- settings ----------------------------------------------------------------------------------------------


def test_smoothing_setting_takes_a_list_or_comma_separated_text_and_is_off_by_default() -> None:
    assert PredictSettings().smoothing is None and PredictSettings().overlap_average is False
    assert build_predict_settings({"smoothing": "0.25, 0.5,0.25"}).smoothing == [0.25, 0.5, 0.25]
    assert build_predict_settings({"smoothing": BIRDCLEF_2025}).smoothing == BIRDCLEF_2025
    assert build_predict_settings({"smoothing": "none"}).smoothing is None


@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        ([], "at least one weight"),
        ("", "at least one weight"),
        ([0.5, 0.5], "odd number of weights"),
        ([0.2, -0.1, 0.2], "finite and >= 0"),
        ([0.0, 0.0, 0.0], "not all be 0"),
        ([0.2, float("nan"), 0.2], "finite and >= 0"),
        ("0.2,x,0.2", "comma-separated numbers"),
    ],
)
def test_a_bad_smoothing_kernel_is_named(kernel: object, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"smoothing: .*{message}"):
        build_predict_settings({"smoothing": kernel})


# --- whole runs ------------------------------------------------------------------------------------------


def test_segmented_and_resumed_runs_smooth_like_one_pass(recordings: Path, model_file: Path,
                                                         tmp_path: Path) -> None:
    model = load_model(model_file)
    smoothing = [0.25, 0.5, 0.25]
    raw = tmp_path / "raw"
    run_prediction(model, [recordings], raw, batch_function=FirstSamples())
    whole = tmp_path / "whole"
    settings = PredictSettings(smoothing=smoothing)
    run_prediction(model, [recordings], whole, settings, batch_function=FirstSamples())
    expected = smoothed_by_hand(parquet(raw))
    pd.testing.assert_frame_equal(parquet(whole), expected, atol=1e-6)

    segmented = PredictSettings(smoothing=smoothing, checkpoint_s=20.0)  # segments of 4 windows
    out = tmp_path / "segmented"
    with pytest.raises(Interrupted):
        run_prediction(model, [recordings / "long_32k.flac"], out, segmented, batch_function=FirstSamples(),
                       progress=stop_after_segments(2))
    assert len(list((out / "parts").glob("*/*.windows-*"))) == 2  # parts/<tag>/
    again = FirstSamples()
    run_prediction(model, [recordings], out, segmented, batch_function=again)
    assert again.windows == (13 - 8) + 10 + 3 + 1  # the saved segments are not recomputed
    pd.testing.assert_frame_equal(parquet(out), expected, atol=1e-6)


def test_dask_chunks_are_smoothed_as_one_recording(
    recordings: Path, model_file: Path, tmp_path: Path
) -> None:
    recording = recordings / "long_32k.flac"
    smoothing = (0.1, 0.2, 0.4, 0.2, 0.1)
    reference = tmp_path / "single"
    model = load_model(model_file)
    settings = PredictSettings(engine="torch", batch_size=4, smoothing=list(smoothing), formats=["parquet"])
    run_prediction(model, [recording], reference, settings)
    (plan,), _ = plan_recordings([recording], 32000, 5.0, 5.0, segment_s=20.0, batch_size=4, absolute=True)
    assert len(plan.segments) == 4
    out = tmp_path / "chunks"
    parts = out / "parts" / "tag"
    parts.mkdir(parents=True)
    options = dist.TaskOptions(
        model_path=str(model_file), model_stamp=dist.model_stamp(model_file), hop_s=5.0, batch_size=4,
        thresholds=(0.5,) * 3, out_dir=str(out), parts_dir=str(parts), formats=("parquet",), merge=False,
        device="cpu", torch_threads=1, engine="torch", smoothing=smoothing,
    )
    chunks = [dist.predict_chunk(plan, segment, options) for segment in plan.segments]
    done = dist.finish_recording(plan, options, *chunks)
    assert done.error is None and done.windows == 13
    expected = pd.read_parquet(next((reference / "parts").glob("*/*.parquet")))
    found = pd.read_parquet(parts / f"{plan.key}.parquet")
    pd.testing.assert_frame_equal(found[KEYS], expected[KEYS])
    # a chunk's resampler restart moves probabilities by ~2e-6 (see tests/test_distributed.py)
    np.testing.assert_allclose(found[LABELS], expected[LABELS], atol=1e-5)
    raw = pd.concat([chunk.frame for chunk in chunks], ignore_index=True)
    assert np.abs(found[LABELS].to_numpy() - raw[LABELS].to_numpy()).max() > 1e-3  # smoothing did act


def test_python_predict_smooths_each_recording(recordings: Path, model_file: Path) -> None:
    model = load_model(model_file)
    raw = predict_frame(model, recordings, batch_function=FirstSamples()).reset_index()
    smoothed = predict_frame(
        model, recordings, PredictSettings(smoothing=[1, 2, 1]), batch_function=FirstSamples()
    ).reset_index()
    pd.testing.assert_frame_equal(
        smoothed.sort_values(KEYS).reset_index(drop=True), smoothed_by_hand(raw), atol=1e-6
    )


def test_predict_command_smoothing_changes_outputs_exactly_as_the_kernel_says(
    recordings: Path, model_file: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    inputs = [str(model_file), str(recordings / "short.ogg"), str(recordings / "long_44k.wav")]
    common = ["--engine", "torch", "--format", "csv,parquet,birdclef"]
    plain = runner.invoke(app, ["predict", *inputs, "--out", str(tmp_path / "plain"), *common])
    assert plain.exit_code == 0, plain.output
    kernel = ["--smoothing", "0.25,0.5,0.25"]
    smoothed = runner.invoke(app, ["predict", *inputs, "--out", str(tmp_path / "smoothed"), *common, *kernel])
    assert smoothed.exit_code == 0, smoothed.output
    found, raw = parquet(tmp_path / "smoothed"), parquet(tmp_path / "plain")
    assert np.abs(found[LABELS].to_numpy() - raw[LABELS].to_numpy()).max() > 1e-4
    pd.testing.assert_frame_equal(found, smoothed_by_hand(raw), atol=1e-6)
    csv = pd.read_csv(tmp_path / "smoothed" / "predictions.csv").sort_values(KEYS).reset_index(drop=True)
    np.testing.assert_allclose(csv[LABELS], found[LABELS], atol=1e-5)
    submission = pd.read_csv(tmp_path / "smoothed" / "submission_2023.csv")
    assert np.isclose(submission[LABELS].to_numpy().sum(), found[LABELS].to_numpy().sum(), rtol=1e-4)


def test_predict_config_file_gives_the_kernel_and_smoothing_none_typed_turns_it_off(
    recordings: Path, model_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "predict.yaml"
    config.write_text("smoothing: [1, 2, 1]\nengine: torch\nformats: [parquet]\n")
    runner = CliRunner()
    inputs = [str(model_file), str(recordings / "short.ogg"), "--config", str(config)]
    assert runner.invoke(app, ["predict", *inputs, "--out", str(tmp_path / "yaml")]).exit_code == 0
    off = runner.invoke(app, ["predict", *inputs, "--out", str(tmp_path / "off"), "--smoothing", "none"])
    assert off.exit_code == 0, off.output
    raw = parquet(tmp_path / "off")
    assert raw[LABELS].to_numpy().std() > 1e-3
    pd.testing.assert_frame_equal(parquet(tmp_path / "yaml"), smoothed_by_hand(raw), atol=1e-6)


def test_predict_command_names_a_bad_kernel_or_hop_in_one_line(
    recordings: Path, model_file: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    inputs = [str(model_file), str(recordings / "short.ogg"), "--engine", "torch"]
    bad = runner.invoke(app, ["predict", *inputs, "--out", str(tmp_path / "a"), "--smoothing", "0.5,0.5"])
    assert bad.exit_code == 2 and "smoothing: needs an odd number of weights" in bad.output
    overlap = ["--hop", "2", "--overlap-average"]
    hop = runner.invoke(app, ["predict", *inputs, "--out", str(tmp_path / "b"), *overlap])
    assert hop.exit_code == 2 and "hop_s 2 must divide the model's window of 5 s" in hop.output
    assert "Traceback" not in bad.output + hop.output
    assert not (tmp_path / "b").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_local_cluster_run_smooths_and_averages_like_the_single_process_run(
    recordings: Path, model_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("distributed", reason="needs the 'distributed' extra (dask.distributed)")
    settings = PredictSettings(
        hop_s=2.5, overlap_average=True, smoothing=BIRDCLEF_2025, chunk_s=20.0, engine="torch",
        formats=["parquet"],
    )
    single = tmp_path / "single"
    run_prediction(load_model(model_file), [recordings], single, settings)
    cluster = tmp_path / "cluster"
    summary = dist.run_distributed_prediction(model_file, [recordings], cluster, settings, cluster="local:2")
    assert summary.predicted == 4 and summary.tasks > 5  # the long recordings ran in several chunks
    expected, found = parquet(single), parquet(cluster)
    pd.testing.assert_frame_equal(found[KEYS], expected[KEYS])
    assert set(found["start_s"] % 5.0) == {0.0}  # the 5-s grid
    np.testing.assert_allclose(found[LABELS], expected[LABELS], atol=1e-5)  # chunk resampler restarts
