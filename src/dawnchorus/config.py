"""Every setting of a run, as validated pydantic models with defaults that work.

A training run is described by one :class:`Config`, a prediction run by one :class:`PredictSettings`
(with its :class:`ClusterSettings` for Dask on SLURM); YAML files hold any subset of either. Unknown
keys and wrong types are rejected with a message naming the field (``ConfigError``), before any work
starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dawnchorus.errors import ConfigError


def _existing_weights_file(cls: type, value: Path | None) -> Path | None:
    """Validator of a ``weights`` setting (timm or zoo backbone): the file must exist."""
    if value is not None and not Path(value).is_file():
        raise ValueError(f"weights file {value} does not exist")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AudioSettings(_Section):
    """Sample rate and clip length the model sees."""

    sample_rate: int = Field(32000, gt=0, description="Audio is resampled to this rate (Hz).")
    clip_s: float = Field(5.0, gt=0, description="Seconds per training clip and prediction window.")

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_s))


class FrontendSettings(_Section):
    """Log-mel spectrogram computed on the batch (see ``features.py``)."""

    n_fft: int = Field(2048, gt=0)
    hop_length: int = Field(512, gt=0)
    n_mels: int = Field(128, gt=0)
    fmin: float = Field(50.0, ge=0)
    fmax: float = Field(14000.0, gt=0)
    top_db: float | None = Field(80.0, description="Clip the dB range below the maximum; None keeps all.")
    normalize: Literal["per_sample", "none"] = "per_sample"

    @model_validator(mode="after")
    def _check_band(self) -> FrontendSettings:
        if self.fmin >= self.fmax:
            raise ValueError(f"fmin ({self.fmin}) must be below fmax ({self.fmax})")
        return self


class AugmentSettings(_Section):
    """Waveform and batch augmentations; each has a probability ``*_p`` (0 disables it)."""

    noise_dir: Path | None = Field(None, description="Folder of background recordings to mix in.")
    noise_p: float = Field(0.6, ge=0, le=1)
    noise_snr_db: tuple[float, float] = (0.0, 20.0)
    # Off by default: in bench/domain_shift.py (5 seeds) 0.1 raised scores on quiet audio (clean
    # soundscape copies, ROC-AUC 0.810 -> 0.831) but not on noisy soundscapes (0.798 -> 0.791).
    background_only_p: float = Field(
        0.0, ge=0, lt=1,
        description="Share of training items replaced by a bird-free clip from the noise bank with "
        "all-zero targets (needs noise_dir), so the model learns that background alone is no bird.",
    )
    colored_noise_p: float = Field(0.3, ge=0, le=1)
    colored_noise_snr_db: tuple[float, float] = (5.0, 40.0)
    # Natural broadband noise (wind, rain, streams, microphone hiss) runs from white (0 dB per octave)
    # to brown (-6 dB per octave); rising "blue" spectra are rare outdoors, so are not drawn by default.
    colored_noise_decay_db_per_octave: tuple[float, float] = Field(
        (-6.02, 0.0), description="Spectral slope range in dB per octave: -6 brown, -3 pink, 0 white."
    )
    gain_p: float = Field(0.5, ge=0, le=1)
    gain_db: tuple[float, float] = (-12.0, 12.0)
    shift_p: float = Field(0.5, ge=0, le=1)
    shift_fraction: float = Field(0.5, ge=0, le=1, description="Largest shift, as a fraction of the clip.")
    pitch_shift_p: float = Field(0.0, ge=0, le=1)
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    time_stretch_p: float = Field(0.0, ge=0, le=1)
    time_stretch_rate: tuple[float, float] = (0.9, 1.1)
    mixup_p: float = Field(0.5, ge=0, le=1)
    mixup_alpha: float = Field(0.4, gt=0)
    cutmix_p: float = Field(0.0, ge=0, le=1)
    specaugment_p: float = Field(0.5, ge=0, le=1)
    time_masks: int = Field(2, ge=0)
    time_mask_fraction: float = Field(0.1, ge=0, le=1)
    freq_masks: int = Field(2, ge=0)
    freq_mask_fraction: float = Field(0.1, ge=0, le=1)

    @field_validator(
        "noise_snr_db", "colored_noise_snr_db", "colored_noise_decay_db_per_octave", "gain_db",
        "pitch_semitones", "time_stretch_rate",
    )
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"range must be (low, high), got {value}")
        return value

    @field_validator("noise_dir")
    @classmethod
    def _noise_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"noise folder {value} does not exist")
        return value


class ImbalanceSettings(_Section):
    """Answers to a long-tailed label distribution."""

    # Measured in bench/README.md ("Imbalance options"): on a frozen BirdNET head 30 raised ROC-AUC /
    # cmAP on every seed (+0.005-0.008 / +0.011-0.015, about one seed-sd); kept 0 as the timm path,
    # which shares this section, was not measured. The weighted sampler helped only a long tail.
    min_clips_per_class: int = Field(
        0, ge=0, description="Oversample rare classes up to this count (30 helped a frozen-backbone head)."
    )
    sampler: Literal["uniform", "weighted"] = "uniform"
    sampler_power: float = Field(0.5, ge=0, description="Weight = (1 / class count) ** power.")
    loss: Literal["bce", "focal"] = "bce"
    focal_gamma: float = Field(2.0, ge=0)
    focal_alpha: float | None = Field(None, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    secondary_weight: float = Field(0.5, ge=0, le=1, description="Target value of secondary labels.")
    rating_weight: bool = Field(False, description="Weight each clip's loss by its rating / 5.")


# Validation context key: leave model.backbone unchecked (checking imports timm, ~1.5 s); the model
# file's loader sets it when the timm network may never be built (predict on a cached ONNX graph).
DEFER_BACKBONE_CHECK = "defer_backbone_check"


class ModelSettings(_Section):
    """The timm backbone and the classification head."""

    # mobilenetv4_conv_small: 2.3 against efficientnet_b0's 11.2 CNN ms per window; predict at 7.0
    # against 13.8 CPU-s per audio hour; from scratch ROC-AUC level, cmAP ~0.02 lower (bench/README).
    backbone: str = Field(
        "mobilenetv4_conv_small",
        description="timm backbone (efficientnet_b0: about 5x the CNN CPU per window; bench/backbones.py).",
    )
    pretrained: bool = Field(True, description="ImageNet weights from the hub (or `weights`).")
    weights: Path | None = Field(None, description="Local pretrained-weights file for the backbone.")
    in_chans: Literal[1, 3] = 1
    head: Literal["linear", "sed", "mlp"] = "linear"
    pooling: Literal["avgmax", "gem"] = Field(
        "avgmax", description="Global pooling of the linear head: mean of average and max, or GeM."
    )
    drop_rate: float = Field(0.2, ge=0, lt=1)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str, info: ValidationInfo) -> str:
        if info.context and info.context.get(DEFER_BACKBONE_CHECK):
            return value  # a model file read without its network: checked where the network is built
        import timm

        if not timm.is_model(value):
            close = timm.list_models(f"*{value.split('.')[0][:6]}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ValueError(f"timm has no backbone named {value!r}{hint}")
        return value

    _weights_exist = field_validator("weights")(_existing_weights_file)


class EmbeddingSettings(_Section):
    """A head trained on a frozen pretrained bird-sound backbone instead of a fine-tuned timm CNN.

    Used when ``backbone`` names a backbone of the zoo (``birdnet``, ``perch-v2``; ``train --backbone``
    sets it for a zoo name): every clip is embedded under ``draws`` waveform augmentations (the
    ``augment`` section: noise-bank mixes at random SNR, gain, shift...) *before* the backbone, the
    embeddings are cached on disk, and a small head trains on them (``train`` section: epochs, batch
    size, weight decay, seed, split, monitor; ``imbalance`` section; ``augment.mixup_*`` mixes
    embeddings).
    """

    backbone: str | None = Field(
        None, description="Zoo backbone (birdnet, perch-v2); None: fine-tune model.backbone."
    )
    weights: Path | None = Field(None, description="The backbone's weights file (default: its own).")
    head: Literal["linear", "mlp"] = Field("linear", description="Head on the embeddings.")
    draws: int = Field(
        8, ge=1, description="Embeddings per clip: the clean clip, then draws - 1 augmented random crops."
    )
    negatives: int = Field(
        16, ge=0,
        description="Bird-free noise-bank windows embedded as all-negative examples "
        "(needs augment.noise_dir).",
    )
    steps_per_epoch: int = Field(
        25, ge=1, description="Head training steps per epoch (batches drawn from the cached embeddings)."
    )
    # A linear probe on standardised embeddings moves little at the CNN's 1e-3 in 500 steps
    # (predictions stayed near 0.5 on the test tones). bench/fewshot.py, 3 seeds x k = 1, 2, 5, all
    # clips per species, two data draws: 3e-3 against 1e-2 raised held-out soundscape cmAP in all 8
    # cases (+0.001..+0.021) and F1 in 6 (two ties), ROC-AUC within -0.006..+0.004.
    lr: float = Field(3e-3, gt=0, description="Peak learning rate of the head (train.lr is the CNN's).")
    pooling: Literal["mean", "max"] = Field(
        "mean", description="Pooling of the backbone's sub-window embeddings over one clip window."
    )
    sub_windows: int | None = Field(None, ge=1, description="Sub-windows per clip window (None: fewest).")

    _weights_exist = field_validator("weights")(_existing_weights_file)


class TrainSettings(_Section):
    """Optimisation, validation and hardware."""

    epochs: int = Field(20, ge=1)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: no limit).")
    # A run's length should not shrink with its data set: 35 clips at batch 32 made one optimizer step
    # an epoch (issue 12), so 20 epochs trained 20 steps. Below this, an epoch draws the clips in
    # repeated shuffled rounds (or the weighted sampler draws more) up to this many steps; measured in
    # bench/README.md ("Epochs of at least 20 steps").
    min_steps_per_epoch: int = Field(
        20, ge=0, description="An epoch makes at least this many optimizer steps (0: one pass of the clips)."
    )
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    seed: int = 0
    num_workers: int = Field(-1, ge=-1, description="DataLoader workers (-1: one per core, max 8).")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    folds: int = Field(5, ge=2)
    fold: int | None = Field(None, ge=0, description="Use fold K of `folds` as validation.")
    monitor: str = Field("val/roc_auc", description="Metric for best checkpoint and early stopping.")
    monitor_mode: Literal["max", "min"] = "max"
    patience: int | None = Field(None, ge=1, description="Early stopping patience (epochs).")
    cache_dir: Path | None = Field(None, description="Decoded-audio cache (default RUN/cache).")
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = Field("auto", description="auto: 16-mixed on CUDA, 32 on CPU.")
    channels_last: bool = True

    @model_validator(mode="after")
    def _fold_in_range(self) -> TrainSettings:
        if self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is out of range for {self.folds} folds")
        return self


class PseudoLabelSettings(_Section):
    """How a teacher's window probabilities become soft training targets (``pseudo-label``, ``train
    --unlabelled``). Applied in this order: the keep rule on each window's largest raw probability, the
    floor on raw probabilities, then the power on what is left. The defaults (every window, the raw
    probabilities) are the simplest and not yet measured against BirdCLEF's settings
    (``bench/self_training.py --arm``: see bench/README.md)."""

    keep: float = Field(
        0.0, ge=0, le=1,
        description="Keep a window when its largest probability is >= keep (BirdCLEF 2025 2nd: 0.5); "
        "0 keeps every window.",
    )
    floor: float = Field(
        0.0, ge=0, lt=1, description="Probabilities below floor become 0 (BirdCLEF 2025 2nd: 0.1)."
    )
    power: float = Field(
        1.0, gt=0, description="Soft targets p ** power; > 1 sharpens low scores away (BirdCLEF 2025 1st)."
    )
    hop_s: float | None = Field(None, gt=0, description="Seconds between windows (None: the clip length).")


# Stronger augmentation of a noisy student (Xie et al. 2020): its clips and windows see more masking
# and mixing than the teacher did; any AugmentSettings field may be set in selftrain.student_augment.
STUDENT_AUGMENT: dict[str, Any] = {"specaugment_p": 0.75, "mixup_p": 0.75}


class SelfTrainSettings(_Section):
    """Noisy-student rounds on unlabelled recordings (``train --unlabelled DIR --rounds N``)."""

    rounds: int = Field(1, ge=1, description="Teacher -> pseudo-labels -> student rounds.")
    pseudo: PseudoLabelSettings = PseudoLabelSettings()
    mix_p: float = Field(
        0.5, ge=0, le=1,
        description="Share of labelled clips mixed with a random pseudo-labelled window (targets: the "
        "union, max; BirdCLEF 2025 1st mixed every clip).",
    )
    window_items: bool = Field(True, description="Pseudo-labelled windows are also training items.")
    window_weight: float = Field(1.0, gt=0, description="Loss weight of a pseudo-labelled window item.")
    max_windows: int | None = Field(
        None, ge=1, description="At most this many pseudo-labelled windows per round (a seeded sample)."
    )
    student_augment: dict[str, Any] = Field(
        default_factory=lambda: dict(STUDENT_AUGMENT),
        description="AugmentSettings fields the students train with instead of the teacher's.",
    )
    student_backbone: str | None = Field(
        None, description="timm backbone of the students (distillation); None: the teacher's."
    )
    student_init: Literal["pretrained", "teacher"] = Field(
        "teacher",
        description="Where a student's weights start: its teacher's (when both are the same network on the "
        "same labels; else the backbone's pretrained ones, said in a line) or the backbone's pretrained "
        "weights. Measured (bench/self_training.py, 3 seeds): teacher-started students scored ROC-AUC "
        "0.838 / 0.869 in rounds 1 / 2 against 0.813 / 0.815 for fresh ones, higher on every seed.",
    )

    @field_validator("student_augment")
    @classmethod
    def _augment_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(AugmentSettings.model_fields))
        if unknown:
            raise ValueError(f"not augment settings: {', '.join(unknown)}")
        AugmentSettings(**value)  # values checked as the augment section checks them
        return value


class ClusterSettings(_Section):
    """Where ``predict --cluster slurm`` runs: one SLURM job script (dask-jobqueue), ``jobs`` of them."""

    queue: str | None = Field(None, description="SLURM partition (#SBATCH -p).")
    account: str | None = Field(None, description="SLURM account (#SBATCH -A).")
    cores: int = Field(8, ge=1, description="CPU cores per job.")
    memory: str = Field("16GB", description="Memory per job, e.g. 16GB.")
    walltime: str = Field("04:00:00", description="Time limit per job, [D-]HH:MM:SS.")
    gpus: int = Field(0, ge=0, description="GPUs per job (#SBATCH --gres=gpu:N).")
    processes: int = Field(1, ge=1, description="Dask worker processes per job (one per GPU).")
    jobs: int = Field(1, ge=1, description="Jobs kept running (one ending at its walltime is replaced).")
    job_extra: list[str] = Field(
        default_factory=list, description="More #SBATCH options, e.g. --constraint=a100."
    )
    prologue: list[str] = Field(
        default_factory=list, description="Shell lines run before the worker (module load, venv activation)."
    )
    local_directory: str | None = Field(None, description="Node-local scratch folder for the workers.")
    interface: str | None = Field(None, description="Network interface the workers listen on, e.g. ib0.")
    python: str | None = Field(None, description="Python on the compute nodes (default: this one).")

    @model_validator(mode="after")
    def _processes_fit(self) -> ClusterSettings:
        if self.processes > self.cores:
            raise ValueError(f"processes ({self.processes}) exceeds cores ({self.cores})")
        return self


class Config(_Section):
    """The complete settings of a training run."""

    audio: AudioSettings = AudioSettings()
    frontend: FrontendSettings = FrontendSettings()
    augment: AugmentSettings = AugmentSettings()
    imbalance: ImbalanceSettings = ImbalanceSettings()
    model: ModelSettings = ModelSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    train: TrainSettings = TrainSettings()
    selftrain: SelfTrainSettings = SelfTrainSettings()

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_cluster(cls, data: Any) -> Any:
        # Run folders' config.yaml and model files written before PredictSettings carried a
        # ``cluster:`` section; it never changed training, so an old file still loads as it was.
        if isinstance(data, dict) and "cluster" in data:
            data = {key: value for key, value in data.items() if key != "cluster"}
        return data

    @model_validator(mode="after")
    def _fmax_below_nyquist(self) -> Config:
        nyquist = self.audio.sample_rate / 2
        if self.frontend.fmax > nyquist:
            raise ValueError(
                f"frontend.fmax ({self.frontend.fmax}) exceeds the Nyquist frequency ({nyquist})"
            )
        return self

    def to_yaml(self, path: str | Path) -> None:
        """Write the full configuration (defaults included) as YAML."""
        import yaml

        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


OUTPUT_FORMATS: tuple[str, ...] = ("csv", "parquet", "birdclef", "raven", "audacity")
ENGINES: tuple[str, ...] = ("auto", "torch", "onnx", "onnx-int8")


class PredictSettings(_Section):
    """The complete settings of a prediction run (``predict``, :func:`dawnchorus.predict`, both runners).

    Defaults are those of ``dawnchorus predict``: the engine and the batch size follow the device
    (``auto``: onnx and 4 windows on CPU, torch and 64 windows on a GPU; see
    :mod:`dawnchorus.inference.engines` for the measurements).
    """

    hop_s: float | None = Field(None, gt=0, description="Seconds between window starts (None: clip length).")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Windows per batch; auto: 4 on CPU, 64 on a GPU."
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="Detection threshold (None: the model's per-class ones)."
    )
    formats: list[str] = Field(
        default_factory=lambda: list(OUTPUT_FORMATS),
        description="Outputs: csv, parquet, birdclef, raven, audacity (a list or comma-separated).",
    )
    merge: bool = Field(False, description="Merge consecutive detections of a species.")
    engine: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="auto: onnx on CPU when the 'onnx' extra is installed, else torch; onnx-int8: the "
        "CNN quantised to int8 (CPU, calibrated on audio), only when asked for.",
    )
    device: str | None = Field(None, description="cpu, cuda or cuda:N (None: the best one here).")
    chunk_s: float = Field(
        600.0, gt=0, description="On dask: recordings longer than this are split into chunks this long."
    )
    checkpoint_s: float = Field(
        3600.0, gt=0, description="In one process: longer recordings are saved segment by segment."
    )
    smoothing: list[float] | None = Field(
        None,
        description="Kernel smoothing each species over neighbouring windows of a recording (odd "
        "length, weights >= 0, normalised to sum 1 when applied; a list or comma-separated), e.g. "
        "0.1,0.2,0.4,0.2,0.1. None (or 'none'): off. Off by default: measured (bench/self_training.py, "
        "3 seeds, 12 models) +0.008..+0.017 ROC-AUC on soundscapes of song bouts but -0.015..-0.053 cmAP "
        "on isolated calls; use it for recordings of singing birds.",
    )
    overlap_average: bool = Field(
        False,
        description="With a hop dividing the window length: average overlapping windows back onto the "
        "non-overlapping window grid (start_s multiples of the window length). Off by default: hop 2.5 s "
        "measured +0.014..+0.019 ROC-AUC on soundscapes of song bouts, -0.005..+0.017 on isolated calls "
        "(bench/self_training.py, 3 seeds, 12 models), at twice the windows to compute.",
    )
    max_scaling: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Per-recording max scaling a in (0, 1]: each window's probability p of a species becomes "
        "p * (1 - a + a * m), m that species' maximum over the recording. None: off.",
    )
    calibrated: bool = Field(
        False,
        description="Report calibrated scores: each species' probability of a true detection, from the "
        "calibration 'dawnchorus calibrate' stored in the model file (thresholds mapped alike).",
    )
    ensemble_weights: list[float] | None = Field(
        None,
        description="With several models (an ensemble): one weight per model, in order (a list or "
        "comma-separated; normalised to sum 1). None: equal weights.",
    )
    cluster: ClusterSettings = ClusterSettings()

    @field_validator("ensemble_weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        return _weight_list(value, off=("none", "equal"), empty="must hold one weight per model")

    @field_validator("smoothing", mode="before")
    @classmethod
    def _kernel(cls, value: Any) -> Any:
        weights = _weight_list(value, off=("none", "off"), empty="must hold at least one weight")
        if isinstance(weights, list) and len(weights) % 2 == 0:
            raise ValueError(f"needs an odd number of weights (centred on the window), got {len(weights)}")
        return weights

    @field_validator("batch_size", mode="before")
    @classmethod
    def _whole_batches(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be a whole number >= 1 or 'auto', got {value!r}")

    @field_validator("formats", mode="before")
    @classmethod
    def _known_formats(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, list | tuple):
            unknown = sorted({str(name) for name in value} - set(OUTPUT_FORMATS))
            if unknown:
                raise ValueError(
                    f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(OUTPUT_FORMATS)}"
                )
            return list(value)
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}; use cpu, cuda or cuda:N")
        return value

    def to_yaml(self, path: str | Path) -> None:
        """Write the full settings (defaults included) as YAML."""
        import yaml

        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def _weight_list(value: Any, off: tuple[str, ...], empty: str) -> Any:
    """Non-negative, finite weights, not all 0, from a list or a comma-separated string; None for
    one of the ``off`` words; anything else is left for pydantic to refuse."""
    if isinstance(value, str) and value.strip().lower() in off:
        return None
    if isinstance(value, str):
        try:
            value = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"must be comma-separated numbers, got {value!r}") from None
    if value is None or not isinstance(value, list | tuple):
        return value
    try:
        weights = [float(weight) for weight in value]
    except (TypeError, ValueError):
        raise ValueError(f"must be a list of numbers, got {value!r}") from None
    if not weights:
        raise ValueError(empty)
    if any(not math.isfinite(weight) or weight < 0 for weight in weights):
        raise ValueError(f"weights must be finite and >= 0, got {value!r}")
    if sum(weights) <= 0:
        raise ValueError("weights must not all be 0")
    return weights


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(
    data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, source: str = "settings"
) -> Config:
    """Validate nested settings (plus dotted ``overrides`` like ``{"train.epochs": 3}``)."""
    return _build(Config, data, overrides, source)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (any subset of :class:`Config`) and apply ``overrides``."""
    data, source = _read_yaml(path)
    return build_config(data, overrides, source)


def build_predict_settings(
    data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, source: str = "settings"
) -> PredictSettings:
    """Validate prediction settings (plus dotted ``overrides`` like ``{"cluster.jobs": 4}``; None
    values are left out)."""
    return _build(PredictSettings, data, overrides, source)


def load_predict_settings(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> PredictSettings:
    """Read a YAML file (any subset of :class:`PredictSettings`, e.g. only its ``cluster:`` section)
    and apply ``overrides``."""
    data, source = _read_yaml(path)
    return build_predict_settings(data, overrides, source)


_Settings = TypeVar("_Settings", bound=BaseModel)


def _build(
    model: type[_Settings], data: dict[str, Any] | None, overrides: dict[str, Any] | None, source: str
) -> _Settings:
    merged: dict[str, Any] = dict(data or {})
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node: dict[str, Any] = {}
        cursor = node
        parts = dotted.split(".")
        for part in parts[:-1]:
            cursor[part] = {}
            cursor = cursor[part]
        cursor[parts[-1]] = value
        merged = _deep_merge(merged, node)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def _read_yaml(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The mapping in a YAML file and its name for messages; nothing for no path."""
    if path is None:
        return {}, "settings"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    import yaml  # here, not at the top: predict without --config never reads YAML (~10 ms to import)

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML {_yaml_problem(exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return loaded, str(path)


def _yaml_problem(exc: Exception) -> str:
    """What a YAML parser error says is wrong and where, on one line (its own message spans several,
    quoting the text under a caret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return f"({' '.join(str(exc).split())})"
    return f"at line {mark.line + 1}, column {mark.column + 1}: {' '.join(str(problem).split())}"
