"""Distributed data-parallel training: two CPU processes (gloo) through the command line, whose model
file loads and predicts; validation scores each item once although DistributedSampler repeats some."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import dawnchorus
from dawnchorus.models.modelfile import load_model
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.module import first_of_each_index


def test_first_of_each_index_scores_every_item_once() -> None:
    # Two ranks; 5 items padded to 6 by DistributedSampler: rank 0 got 0, 2, 4 and rank 1 got 1, 3, 0.
    indices = torch.tensor([0, 2, 4, 1, 3, 0])
    probs = torch.tensor([[0.0], [0.2], [0.4], [0.1], [0.3], [0.0]])
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [1.0]])
    kept_probs, kept_targets = first_of_each_index(indices, probs, targets)
    assert kept_probs.flatten().tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert kept_targets.flatten().tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.slow
def test_two_process_ddp_training_writes_a_model_that_loads_and_predicts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, species=3, soundscapes=1, seed=0, clips_per_species=(3, 9), workers=1)
    settings = {
        "model": {"backbone": "test_efficientnet", "pretrained": False},
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "num_workers": 0,
            "accelerator": "cpu",
            "devices": 2,
            "strategy": "ddp",
        },
        "imbalance": {"sampler": "weighted"},  # a custom sampler Lightning must shard across ranks
    }
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(settings))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "dawnchorus", "train", str(data), "--out", str(run)]
    command += ["--config", str(config)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "distributed_backend=gloo" in output

    model = load_model(run / "model.pt")
    assert model.labels == sorted(pd.read_csv(data / "train_metadata.csv")["primary_label"].unique())
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert not list(run.glob(".*.tmp"))  # the model file was written once, atomically
    val_clips = model.metadata["val_clips"]
    assert val_clips % 2 == 1  # odd: DistributedSampler repeats one item to give both ranks the same
    metrics = pd.read_csv(run / "logs" / "metrics.csv")
    scored = metrics["val/items"].dropna()
    assert scored.tolist() == [val_clips]  # gathered from both ranks, the repeat dropped

    soundscape = next((data / "test_soundscapes").glob("*.ogg"))
    frame = dawnchorus.predict(model, soundscape)
    assert frame.shape == (12, len(model.labels))  # 60 s in 5-s windows
    values = frame.to_numpy()
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
