"""BirdClassifier: shapes for both heads, the head registry, SED consistency, weight files, offline
errors, model files this installation cannot read, learning."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from torch import nn

from dawnchorus.config import Config, ModelSettings
from dawnchorus.errors import ModelError, ModelFileError
from dawnchorus.models.classifier import (
    BirdClassifier,
    SpectrogramClassifier,
    build_model,
    count_parameters,
    create_backbone,
)
from dawnchorus.models.features import LogMel
from dawnchorus.models.heads import (
    GeM,
    LinearHead,
    SedHead,
    SedOutput,
    create_head,
    list_heads,
    register_head,
)
from dawnchorus.models.modelfile import load_model, save_model_file

SPEC_SHAPE = (2, 1, 64, 157)  # 64 mel bands, 157 frames (2.5 s at hop 512 / 32 kHz)
NUM_CLASSES = 5


def settings(**overrides) -> ModelSettings:
    values = {"backbone": "resnet18", "pretrained": False, "drop_rate": 0.0} | overrides
    return ModelSettings(**values)


def spectrograms(seed: int = 0, shape: tuple[int, ...] = SPEC_SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "resnet18"])
@pytest.mark.parametrize("head", ["linear", "sed"])
def test_forward_gives_one_logit_per_class(backbone, head):
    model = build_model(settings(backbone=backbone, head=head), NUM_CLASSES).eval()
    with torch.no_grad():
        logits = model(spectrograms())
    assert logits.shape == (2, NUM_CLASSES)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "resnet18"])
def test_sed_frames_follow_the_backbone_time_axis(backbone):
    model = build_model(settings(backbone=backbone, head="sed"), NUM_CLASSES).eval()
    spec = spectrograms()
    with torch.no_grad():
        frames = model.forward_frames(spec)
        feature_map = model.features(spec)
    # Both backbones downsample by 32: 157 frames -> 5 time steps, 64 mel bands -> 2.
    assert feature_map.shape == (2, model.num_features, 2, 5)
    assert frames.shape == (2, NUM_CLASSES, 5)
    assert ((frames >= 0) & (frames <= 1)).all()


def test_sed_clip_probability_is_sigmoid_of_logit_and_between_frame_probabilities():
    model = build_model(settings(head="sed"), NUM_CLASSES).eval()
    with torch.no_grad():
        output = model.forward_sed(spectrograms())
        logits = model(spectrograms())
    assert isinstance(output, SedOutput)
    torch.testing.assert_close(torch.sigmoid(output.logits), output.clipwise, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(output.logits, logits)
    assert (output.clipwise >= output.framewise.amin(dim=-1) - 1e-6).all()
    assert (output.clipwise <= output.framewise.amax(dim=-1) + 1e-6).all()
    torch.testing.assert_close(output.attention.sum(dim=-1), torch.ones(2, NUM_CLASSES))


def test_linear_head_has_no_frames():
    model = build_model(settings(head="linear"), NUM_CLASSES)
    with pytest.raises(ModelError, match="forward_frames needs the SED head"):
        model.forward_frames(spectrograms())


def test_three_channel_backbone_sees_the_mel_repeated():
    model = build_model(settings(in_chans=3), NUM_CLASSES).eval()
    assert model.backbone.conv1.in_channels == 3
    spec = spectrograms()
    with torch.no_grad():
        expected = model.backbone.forward_features(spec.repeat(1, 3, 1, 1))
        torch.testing.assert_close(model.features(spec), expected)
        assert model(spec).shape == (2, NUM_CLASSES)


def test_one_channel_backbone_has_a_one_channel_stem():
    model = build_model(settings(in_chans=1), NUM_CLASSES)
    assert model.backbone.conv1.in_channels == 1


def test_heads_are_built_by_their_registered_name():
    assert {"linear", "sed"} <= set(list_heads())
    assert isinstance(build_model(settings(head="linear"), NUM_CLASSES).head, LinearHead)
    assert isinstance(build_model(settings(head="sed"), NUM_CLASSES).head, SedHead)


def test_a_newly_registered_head_is_built_without_touching_the_classifier():
    @register_head("test_mean_of_channels")
    def mean_of_channels(num_features, num_classes, *, drop_rate, pooling):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(num_features, num_classes))

    model = BirdClassifier(create_backbone("resnet18"), NUM_CLASSES, head="test_mean_of_channels").eval()
    assert "test_mean_of_channels" in list_heads()
    with torch.no_grad():
        expected = model.head[2](model.features(spectrograms()).mean(dim=(-2, -1)))
        torch.testing.assert_close(model(spectrograms()), expected)
    with pytest.raises(ModelError, match="already registered"):
        register_head("test_mean_of_channels")(mean_of_channels)


def test_unknown_head_names_the_registered_ones():
    with pytest.raises(ModelError, match=r"head must be one of .*'linear'.*'sed'.*got 'attention_nope'"):
        create_head("attention_nope", num_features=8, num_classes=2)
    with pytest.raises(ModelError, match="got 'attention_nope'"):
        BirdClassifier(create_backbone("resnet18"), NUM_CLASSES, head="attention_nope")


def test_gem_pooling_head():
    backbone = create_backbone("resnet18")
    model = BirdClassifier(backbone, NUM_CLASSES, head="linear", pooling="gem").eval()
    assert isinstance(model.head.pool, GeM)
    assert model(spectrograms()).shape == (2, NUM_CLASSES)


def test_pooling_is_chosen_in_the_config():
    assert isinstance(build_model(settings(pooling="gem"), NUM_CLASSES).head.pool, GeM)
    assert not isinstance(build_model(settings(), NUM_CLASSES).head.pool, GeM)


def test_gem_with_p_one_is_the_average():
    features = torch.rand(2, 4, 3, 5) + 0.1
    torch.testing.assert_close(GeM(p=1.0)(features), features.mean(dim=(-2, -1)))


def test_wrong_input_shape_is_explained():
    model = build_model(settings(), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"\(batch, 1, n_mels, frames\)"):
        model(torch.randn(2, 64, 157))


@pytest.fixture(scope="module")
def saved_resnet18(tmp_path_factory):
    """A resnet18 state dict (ImageNet classifier included) with recognisable stem weights."""
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["conv1.weight"] = torch.linspace(-1, 1, state["conv1.weight"].numel()).reshape(
        state["conv1.weight"].shape
    )
    path = tmp_path_factory.mktemp("weights") / "resnet18_imagenet.pth"
    torch.save(state, path)
    return path, state


def test_local_weights_file_is_loaded(saved_resnet18):
    path, state = saved_resnet18
    model = build_model(settings(weights=path, pretrained=True, in_chans=3), NUM_CLASSES)
    torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"], rtol=0, atol=0
    )


def test_local_weights_are_summed_into_a_one_channel_stem(saved_resnet18):
    path, state = saved_resnet18
    model = build_model(settings(weights=path, pretrained=True, in_chans=1), NUM_CLASSES)
    expected = state["conv1.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.backbone.conv1.weight, expected)


def test_our_own_model_file_is_refused_as_backbone_weights(tmp_path):
    classifier = build_model(settings(), NUM_CLASSES)
    path = tmp_path / "dawnchorus_model.pth"
    torch.save(classifier.state_dict(), path)  # keys start with "backbone.", not timm names
    with pytest.raises(ModelError, match=r"holds no weights for backbone resnet18"):
        build_model(settings(weights=path), NUM_CLASSES)


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_text("not a state dict")
    with pytest.raises(ModelError, match=r"broken\.pth could not be loaded into backbone resnet18"):
        build_model(settings(weights=path), NUM_CLASSES)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"absent\.pth for backbone resnet18 does not exist"):
        create_backbone("resnet18", weights=tmp_path / "absent.pth")


def test_offline_pretrained_without_weights_names_the_backbone(monkeypatch, tmp_path):
    # Offline with an empty cache, whatever this machine has downloaded before.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError) as raised:
        build_model(settings(backbone="efficientnet_b0", pretrained=True), NUM_CLASSES)
    message = str(raised.value)
    assert "no network to download ImageNet weights for efficientnet_b0" in message
    assert "--no-pretrained" in message and "--weights FILE" in message
    assert "model.pretrained: false" in message
    assert "\n" not in message  # one line


def rewritten_model_file(tmp_path, change) -> str:
    """A model file whose stored settings were changed by ``change(settings_dict)``."""
    config = Config(model=settings(backbone="test_efficientnet"))
    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), build_model(config.model, NUM_CLASSES)
    )
    path = save_model_file(tmp_path / "model.pt", network, [f"bird{i}" for i in range(NUM_CLASSES)], config)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    stored = json.loads(payload["config"])
    change(stored)
    payload["config"] = json.dumps(stored)
    torch.save(payload, path)
    return path


def test_model_file_whose_backbone_the_installed_timm_lacks_is_named(tmp_path):
    unknown = "birdnet_v9_from_2031"
    path = rewritten_model_file(tmp_path, lambda stored: stored["model"].update(backbone=unknown))
    with pytest.raises(ModelFileError) as raised:
        load_model(path)
    message = str(raised.value)
    assert str(path) in message
    assert "'birdnet_v9_from_2031'" in message
    assert f"installed timm {timm.__version__}" in message


def test_model_file_with_settings_this_version_cannot_read_is_named(tmp_path):
    path = rewritten_model_file(tmp_path, lambda stored: stored["train"].update(epochs="many"))
    with pytest.raises(ModelFileError, match=r"model\.pt: settings stored in the model file .*train\.epochs"):
        load_model(path)


def test_unknown_backbone_is_named():
    with pytest.raises(ModelError, match="no backbone named 'resnet_nope'"):
        create_backbone("resnet_nope")


def test_count_parameters_known_answer():
    layers = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))  # (3*2+2) + (2*1+1) = 11
    assert count_parameters(layers) == 11
    layers[0].requires_grad_(False)
    assert count_parameters(layers, trainable_only=True) == 3
    resnet = build_model(settings(), NUM_CLASSES)
    assert count_parameters(resnet) == count_parameters(resnet.backbone) + 512 * NUM_CLASSES + 5


def separable_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 has energy in the low mel bands, class 1 in the high ones; 8 noisy examples."""
    generator = torch.Generator().manual_seed(seed)
    spec = 0.3 * torch.randn(8, 1, 32, 32, generator=generator)
    targets = torch.zeros(8, 2)
    for item in range(8):
        label = item % 2
        rows = slice(0, 16) if label == 0 else slice(16, 32)
        spec[item, 0, rows] += 2.0
        targets[item, label] = 1.0
    return spec, targets


@pytest.mark.parametrize("head", ["linear", "sed"])
def test_a_few_optimizer_steps_reduce_the_loss(head):
    torch.manual_seed(0)
    model = build_model(settings(head=head), num_classes=2).train()
    spec, targets = separable_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = loss_fn(model(spec), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # Fresh examples of the same two classes are told apart too (batch statistics, as in training:
    # eight steps are too few for the batch-norm running averages).
    unseen, unseen_targets = separable_batch(seed=2)
    with torch.no_grad():
        predicted = model(unseen).argmax(dim=1)
    assert torch.equal(predicted, unseen_targets.argmax(dim=1))


# --- model files that are damaged, foreign or crafted ------------------------------------------------


class RunsCodeWhenUnpickled:
    """A pickled object whose loading writes a marker file: what a crafted model file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def crafted_model_file(model_file: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of a valid model file with an object whose unpickling runs code; (file, marker)."""
    marker = folder / "marker"
    payload = torch.load(model_file, map_location="cpu", weights_only=True)
    crafted = folder / "model.pt"
    torch.save({**payload, "metadata": RunsCodeWhenUnpickled(marker)}, crafted)
    return crafted, marker


def test_a_crafted_model_file_runs_nothing_and_is_one_line_without_unsafe_advice(model_file, tmp_path):
    crafted, marker = crafted_model_file(model_file, tmp_path)
    torch.load(crafted, map_location="cpu", weights_only=False)  # the craft is real: unsafe loading runs it
    assert marker.read_text() == "ran"
    marker.unlink()

    with pytest.raises(ModelFileError) as raised:
        load_model(crafted)
    message = str(raised.value)
    assert not marker.exists()
    assert message.startswith(f"{crafted}: unsafe file, refused")
    assert "nothing in it ran" in message
    assert "weights_only" not in message and "trust" not in message  # PyTorch's advice is the exploit
    assert "\n" not in message


def test_a_file_that_is_no_model_file_says_so_without_unsafe_advice(tmp_path):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a model at all " * 50)
    with pytest.raises(ModelFileError) as raised:
        load_model(garbage)
    message = str(raised.value)
    assert message.startswith(f"{garbage}: not a dawnchorus model file (")
    assert "weights_only" not in message and "\n" not in message


def test_a_truncated_model_file_is_one_line_naming_it(model_file, tmp_path):
    cut = tmp_path / "model.pt"
    cut.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(ModelFileError) as raised:
        load_model(cut)
    message = str(raised.value)
    assert message.startswith(f"{cut}: not a dawnchorus model file (") and "zip archive" in message
    assert "\n" not in message


@pytest.mark.parametrize("key", ["labels", "config", "state_dict", "thresholds", "format_version"])
def test_a_model_file_missing_an_entry_names_the_file_and_the_entry(model_file, tmp_path, key):
    payload = torch.load(model_file, map_location="cpu", weights_only=True)
    del payload[key]
    damaged = tmp_path / "model.pt"
    torch.save(payload, damaged)
    with pytest.raises(ModelFileError) as raised:
        load_model(damaged)
    assert str(raised.value) == f"{damaged}: damaged model file: it has no {key!r} entry"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("labels", "aaa", "its 'labels' entry is a str, not a list or tuple"),
        ("labels", ["aaa", 3, "ccc"], "its 'labels' entry is not a list of label names"),
        ("labels", ["aaa", "bbb"], "its weights do not fit its settings and 2 labels (size mismatch"),
        ("config", "{not json", "its settings are not valid JSON"),
    ],
)
def test_a_model_file_with_a_damaged_entry_names_the_file_and_the_entry(
    model_file, tmp_path, key, value, problem
):
    payload = torch.load(model_file, map_location="cpu", weights_only=True)
    payload[key] = value
    damaged = tmp_path / "model.pt"
    torch.save(payload, damaged)
    with pytest.raises(ModelFileError) as raised:
        load_model(damaged)
    message = str(raised.value)
    assert message.startswith(f"{damaged}: damaged model file: {problem}")
    assert "\n" not in message
