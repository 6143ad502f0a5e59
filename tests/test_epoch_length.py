"""An epoch of the timm path makes at least ``train.min_steps_per_epoch`` optimizer steps, however few
the clips (issue 12: 35 clips at batch 32 trained one step an epoch), with plain shuffling, the weighted
sampler and under DDP sharding; a bad value is refused before training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import WeightedRandomSampler

from dawnchorus.config import build_config
from dawnchorus.data.splits import RepeatedShuffleSampler
from dawnchorus.errors import ConfigError
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.datamodule import epoch_items, train_sampler
from dawnchorus.training.run import train

QUIET_AUGMENT = {"mixup_p": 0.0, "specaugment_p": 0.0, "colored_noise_p": 0.0, "gain_p": 0.0, "shift_p": 0.0}


def tiny_config(**train_settings: object) -> object:
    """test_efficientnet on 2-s clips, batch 8, no workers; validation on the soundscape windows."""
    return build_config({
        "model": {"backbone": "test_efficientnet", "pretrained": False, "drop_rate": 0.0},
        "augment": dict(QUIET_AUGMENT),
        "audio": {"clip_s": 2.0},
        "train": {"batch_size": 8, "num_workers": 0, "val_fraction": 0.01,
                  "monitor": "val_soundscape/roc_auc", **train_settings},
    })


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 species of one clip each (all three train: a single-clip class is never held out), one
    labelled 20-s soundscape for validation."""
    root = tmp_path_factory.mktemp("three_clips") / "data"
    make_dataset(root, species=3, soundscapes=1, seed=0, clips_per_species=(1, 1), soundscape_s=20.0,
                 workers=1)
    return root


@pytest.mark.parametrize(("min_steps", "epochs", "steps"), [(6, 2, 12), (0, 2, 2)])
def test_an_epoch_of_three_clips_makes_at_least_min_steps_optimizer_steps(
    three_clips: Path, tmp_path: Path, min_steps: int, epochs: int, steps: int
) -> None:
    config = tiny_config(min_steps_per_epoch=min_steps, epochs=epochs)
    result = train(three_clips, tmp_path / "run", config, progress_bar=False)
    assert result.model_path.is_file()
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    stepped = log.dropna(subset=["train/loss_step"])  # logged every step at the trainer's global_step
    assert stepped["step"].tolist() == list(range(steps))  # 3 clips, batch 8
    assert stepped.groupby("epoch").size().tolist() == [steps // epochs] * epochs


def test_the_default_epoch_is_at_least_twenty_steps_and_a_large_set_is_one_pass() -> None:
    config = build_config({"train": {"batch_size": 32}})
    assert config.train.min_steps_per_epoch == 20
    assert epoch_items(35, config) == 20 * 32  # issue 12's 35 clips: 20 steps, not 1
    assert epoch_items(35, config, world_size=2) == 2 * 20 * 32  # 20 steps on each process
    assert epoch_items(5000, config) == 5000  # enough clips: one pass, as before
    assert epoch_items(35, build_config({"train": {"min_steps_per_epoch": 0}})) == 35


def test_a_short_epoch_draws_every_clip_once_per_round_in_a_fresh_order() -> None:
    primary = ["a", "a", "b", "c", "c"]
    config = build_config({"train": {"batch_size": 4, "min_steps_per_epoch": 3, "seed": 7}})
    sampler = train_sampler(primary, config, epoch_items(len(primary), config))
    assert isinstance(sampler, RepeatedShuffleSampler) and len(sampler) == 12
    first, second = list(sampler), list(sampler)
    assert len(first) == 12
    for rounds in (first, second):
        assert sorted(rounds[:5]) == sorted(rounds[5:10]) == list(range(5))  # whole rounds
        assert set(rounds[10:]) <= set(range(5)) and len(set(rounds[10:])) == 2  # the cut round
    assert first != second  # each epoch shuffles anew
    again = train_sampler(primary, config, 12)
    assert list(again) == first  # seeded: every DDP process draws the same sequence
    assert train_sampler(primary, config, len(primary)) is None  # enough items: plain shuffling


def test_the_weighted_sampler_draws_an_epoch_of_min_steps() -> None:
    primary = ["common"] * 9 + ["rare"]
    config = build_config({"train": {"batch_size": 4, "min_steps_per_epoch": 50},
                           "imbalance": {"sampler": "weighted", "sampler_power": 1.0}})
    sampler = train_sampler(primary, config, epoch_items(len(primary), config))
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == 200
    drawn = np.asarray(primary)[list(sampler)]
    assert 0.35 < (drawn == "rare").mean() < 0.65  # still class-balanced


def test_ddp_shards_a_repeated_epoch_into_min_steps_on_each_process() -> None:
    config = build_config({"train": {"batch_size": 4, "min_steps_per_epoch": 5}})
    items = epoch_items(3, config, world_size=2)
    shards = []
    for rank in range(2):
        sampler = train_sampler(["a", "b", "c"], config, items)
        wrapped = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True, seed=0)
        wrapped.set_epoch(0)
        shards.append(list(wrapped))
    assert [len(shard) for shard in shards] == [5 * 4, 5 * 4]  # 5 steps of 4 on each process
    full = list(train_sampler(["a", "b", "c"], config, items))
    assert Counter(shards[0] + shards[1]) == Counter(full)  # the two shards are the one draw, split


@pytest.mark.parametrize("value", [-1, "many"])
def test_a_bad_min_steps_per_epoch_is_refused_naming_the_setting(value: object) -> None:
    with pytest.raises(ConfigError, match="min_steps_per_epoch"):
        build_config({"train": {"min_steps_per_epoch": value}})


def test_repeated_shuffle_sampler_refuses_an_empty_set() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RepeatedShuffleSampler(0, 10, seed=0)
    assert torch.as_tensor(list(RepeatedShuffleSampler(1, 3, seed=0))).tolist() == [0, 0, 0]
