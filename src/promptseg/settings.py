"""Typed settings: ``params.yaml`` checked once at a stage's boundary, then passed down as frozen dataclasses.

Every value that changes a result lives in ``params.yaml``; these classes are its schema and hold NO
defaults. Building one (``_build``) is the validation: an unknown key is an error naming the nearest
known key (``data.cracks.sorce: unknown key; did you mean 'source'?``), a missing key is an error naming
it, a value of the wrong type is an error naming the key. A field typed ``X | None`` is an OPTIONAL key:
``None`` means "absent from params.yaml" (e.g. a rung's ``text_lr``), and the code says what absent means.

Per stage (each reads exactly the keys its ``dvc.yaml`` entry declares):

* ``download@<dataset>``: :func:`download_settings` -> ``data.<dataset>.{source,roboflow,local}``, ``synthetic``
* ``masks@<dataset>``:    :func:`masks_settings` -> ``data.<dataset>.{empty_polygon,split}``, ``data.max_image_pixels``,
  ``masks``
* ``train@<rung>``:       :func:`train_settings` -> the rung resolved over ``train.common`` (:class:`RungSettings`),
  ``model.{source,image_mean,image_std,<architecture>}``, the prompts, ``eval.empty_score``, ``mlflow``
* ``evaluate@<rung>``:    :func:`evaluate_settings` -> ``infer``, ``eval``, the prompts, ``mlflow``
* ``report``:             :func:`report_settings`

:func:`validate_params` builds every section (tests and ``promptseg.profiles`` use it on the whole file).
Stages call :func:`load_stage_settings`, which turns a bad file into one message and exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from promptseg.params import DATASETS, ParamsError, load_params

T = TypeVar("T")


# ----------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """The values a number may take, stated beside its field (``lr: Positive``); :func:`_convert` checks it and
    names the key and this range (``train.common.lr: -0.001 is out of range; allowed: > 0``)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v) -> bool:
        below = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        above = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        return not (below or above)

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"

    def problem(self, value) -> str | None:
        return None if self.holds(value) else f"{value!r} is out of range; allowed: {self}"


@dataclass(frozen=True)
class NonEmpty:
    """A list that needs at least one value."""

    def problem(self, value) -> str | None:
        return None if len(value) else "is an empty list; give at least one value"


Positive = Annotated[float, Range(0, lo_open=True)]  # rates, scales: > 0
NonNegative = Annotated[float, Range(0)]  # loss weights, pixel sizes: >= 0
Share = Annotated[float, Range(0, 1)]  # probabilities and shares: [0, 1]
Threshold = Annotated[float, Range(0, 1, lo_open=True, hi_open=True)]  # probability thresholds: (0, 1)
PositiveInt = Annotated[int, Range(1)]  # sizes, counts that must be there: >= 1
Count = Annotated[int, Range(0)]  # counts, seeds, tolerances: >= 0
MaxImagePixels = Annotated[int, Range(1024)]  # data.max_image_pixels: width x height read from the header


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class RoboflowSettings:
    workspace: str
    project: str
    version: PositiveInt
    format: str  # the SDK's export name; on reading, the format is detected


@dataclass(frozen=True)
class LocalSettings:
    path: str  # a zip or folder of a Roboflow export ("" = not set)


@dataclass(frozen=True)
class SourceSettings:
    """``data.<dataset>``: where the export comes from (the download stage)."""

    source: Literal["synthetic", "local", "roboflow"]
    roboflow: RoboflowSettings
    local: LocalSettings


@dataclass(frozen=True)
class DatasetSettings(SourceSettings):
    """``data.<dataset>``: the whole block."""

    prompts: tuple[str, ...]
    empty_polygon: Literal["box", "skip"]
    split: Literal["grouped", "as_exported"]


@dataclass(frozen=True)
class SplitCounts:
    train: PositiveInt
    valid: Count
    test: Count


@dataclass(frozen=True)
class SyntheticSettings:
    seed: Count
    image_size: Annotated[int, Range(32)]
    counts: SplitCounts
    negative_share: Share
    augment_copies_share: Share


# ----------------------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class SplitRatios:
    train: Share
    val: Share
    test: Share


@dataclass(frozen=True)
class GroupedSplitSettings:
    seed: Count
    ratios: SplitRatios


@dataclass(frozen=True)
class NearDuplicateSettings:
    dhash_max_distance: Annotated[int, Range(0, 64)]
    min_correlation: Annotated[float, Range(-1, 1)]


@dataclass(frozen=True)
class ContactSheetSettings:
    grid: PositiveInt
    tile_px: PositiveInt


@dataclass(frozen=True)
class MasksSettings:
    min_box_side_px: NonNegative
    grouped_split: GroupedSplitSettings
    near_duplicates: NearDuplicateSettings
    suspicious_max_foreground_share: Share
    contact_sheet: ContactSheetSettings


# ----------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class VisionSettings:
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    patch_size: PositiveInt


@dataclass(frozen=True)
class TextSettings:
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt


@dataclass(frozen=True)
class ClipSegSettings:
    """``model.clipseg``: the random-init ``small`` CLIPSeg."""

    vision: VisionSettings
    text: TextSettings
    projection_dim: PositiveInt
    reduce_dim: PositiveInt
    extract_layers: Annotated[tuple[Count, ...], NonEmpty()]
    decoder_num_attention_heads: PositiveInt
    per_image_standardization: bool


@dataclass(frozen=True)
class UNetSettings:
    """``model.unet``: the text-conditioned U-Net."""

    widths: Annotated[tuple[PositiveInt, ...], NonEmpty()]
    text: TextSettings
    freeze_text: bool
    presence_gate: bool


@dataclass(frozen=True)
class HedSettings:
    """``model.hed``: the text-conditioned segmenter on the pretrained HED-VGG16 encoder (promptseg.modeling.hed)."""

    decoder: Literal["side", "unet"]  # side: HED's side outputs only; unet: + a zero-initialised U-Net branch
    decoder_widths: tuple[
        PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt
    ]  # the U-Net branch at S/16, S/8, S/4, S/2, S
    text: TextSettings
    presence_gate: bool


@dataclass(frozen=True)
class ModelSettings:
    """``model``. ``clipseg`` / ``unet`` / ``hed`` are None where a stage does not read that architecture's
    block (``train@unet`` declares ``model.unet`` only); :func:`validate_params` requires all three."""

    source: str
    clipseg: ClipSegSettings | None
    unet: UNetSettings | None
    hed: HedSettings | None
    image_mean: tuple[Share, Share, Share]
    image_std: tuple[Positive, Positive, Positive]


# ----------------------------------------------------------------------------------------- train
@dataclass(frozen=True)
class BoxProjectionSettings:
    outside_weight: NonNegative
    pairwise_weight: NonNegative


@dataclass(frozen=True)
class TrainCommonSettings:
    """``train.common``; a rung may override any of these keys except ``targets`` (which a LoRA rung uses
    for its target modules)."""

    seed: Count
    image_size: PositiveInt
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: Positive
    weight_decay: NonNegative
    warmup_steps: Count
    negative_prompt_prob: Share
    unrelated_negative_prompts: tuple[str, ...]
    unrelated_negative_share: Share
    dice_weight: NonNegative
    bce_weight: NonNegative
    targets: dict[str, Literal["mask", "box_fill", "box_projection"]]
    box_projection: BoxProjectionSettings
    hflip_prob: Share
    rot90_prob: Share  # rotations by 90/180/270 degrees (promptseg.train.data); 0.0: none
    color_jitter: Share  # brightness/contrast/saturation factors in [1 - s, 1 + s] (promptseg.train.data); 0.0: none
    num_workers: Count
    precision: Literal[
        "auto", "fp32", "bf16"
    ]  # promptseg.modeling.precision: auto = bf16 where the device runs it natively
    adamw: Literal["foreach", "fused"]  # AdamW's kernels (promptseg.train.loop.make_optimizer)
    dataset_repeats: dict[
        str, PositiveInt
    ]  # each training photo of a dataset this many times per epoch (promptseg.train.data)


@dataclass(frozen=True)
class LoraSettings:
    """A ``method: lora`` rung's keys (required there, refused elsewhere)."""

    r: PositiveInt
    alpha: PositiveInt
    dropout: Annotated[float, Range(0, 1, hi_open=True)]
    targets: tuple[str, ...]
    train_decoder: bool


@dataclass(frozen=True)
class CropSettings:
    size: PositiveInt  # px side of a crop cut from the photo at its own resolution
    share: Share  # share of training samples that are crops (the rest: whole resized views)


@dataclass(frozen=True)
class RungOwnSettings:
    """The keys only a rung has (``train.rungs.<rung>``)."""

    method: Literal["zeroshot", "decoder", "lora", "full"]
    architecture: Literal["clipseg", "unet", "hed"]
    datasets: Annotated[tuple[str, ...], NonEmpty()]
    text_lr: Positive | None  # absent: the U-Net's text encoder trains at the rung's lr
    encoder_lr: Positive | None  # HED: the pretrained VGG16 blocks' lr (absent: the rung's lr)
    presence_weight: (
        NonNegative | None
    )  # absent: no presence-gate loss (required for a U-Net with model.unet.presence_gate)
    r: PositiveInt | None  # LoRA keys: see LoraSettings
    alpha: PositiveInt | None
    dropout: Annotated[float, Range(0, 1, hi_open=True)] | None
    targets: tuple[str, ...] | None
    train_decoder: bool | None
    crop: CropSettings | None  # absent: whole resized views only (promptseg.train.data)


ARCHITECTURES = ("clipseg", "unet", "hed")  # train.rungs.<v>.architecture; each has its model.<architecture> block
LORA_KEYS = tuple(f.name for f in fields(LoraSettings))
OVERRIDABLE = tuple(f.name for f in fields(TrainCommonSettings) if f.name != "targets")


@dataclass(frozen=True)
class RungSettings:
    """One ladder rung, resolved: ``train`` is ``train.common`` with the rung's overrides applied."""

    name: str
    method: str
    architecture: str
    datasets: tuple[str, ...]
    train: TrainCommonSettings
    text_lr: float | None
    presence_weight: float | None
    lora: LoraSettings | None  # set for method: lora only
    crop: CropSettings | None  # native-resolution crops (train.rungs.<v>.crop); None: none
    encoder_lr: float | None = None  # HED's pretrained blocks (train.rungs.<v>.encoder_lr); None: the rung's lr

    @property
    def epochs(self) -> int:
        """Epochs actually trained: 0 for zero-shot, which trains nothing."""
        return 0 if self.method == "zeroshot" else self.train.epochs

    def own_params(self) -> dict:
        """The rung's own keys as written in params (for the model card and MLflow)."""
        out = {"method": self.method, "architecture": self.architecture, "datasets": list(self.datasets)}
        out.update(
            {
                k: v
                for k, v in (
                    ("text_lr", self.text_lr),
                    ("encoder_lr", self.encoder_lr),
                    ("presence_weight", self.presence_weight),
                )
                if v is not None
            }
        )
        if self.lora is not None:
            out.update(to_plain(self.lora))
        if self.crop is not None:
            out["crop"] = to_plain(self.crop)
        return out


# ----------------------------------------------------------------------------------------- infer / eval / report
@dataclass(frozen=True)
class MorphologySettings:
    enabled: bool
    kernel: PositiveInt


@dataclass(frozen=True)
class TilingSettings:
    upscale: Positive
    overlap: Annotated[float, Range(0, 1, hi_open=True)]


MaskShape = Literal["pixels", "boxes", "strips", "choose_on_val"]
BOX_SHAPES = ("boxes", "strips")  # the mask shapes of box labels, simpler first (choose_on_val takes it on a tie)
MASK_SHAPES = ("pixels", *BOX_SHAPES)  # what a recipe draws (promptseg.infer.recipe.Recipe.shaped)


@dataclass(frozen=True)
class InferSettings:
    batch_size: PositiveInt
    threshold_grid: Annotated[tuple[Threshold, ...], NonEmpty()]
    morphology: MorphologySettings
    hflip_tta: bool
    prompt_ensemble: bool
    tiled: dict[str, bool]
    tiling: TilingSettings
    precision: Literal["auto", "fp32", "bf16"]  # evaluation's forward (promptseg.modeling.precision)
    native_resolution: dict[str, bool]  # dataset -> U-Net on the whole photo at its own size
    # dataset -> its masks as thresholded pixels, as the bounding boxes of their regions, as one box per horizontal
    # or vertical strip (and per leftover region), or whichever scores the highest val Dice (promptseg.score.evaluate);
    # a dataset not named: pixels
    mask_shape: dict[str, MaskShape]
    strip_length: Annotated[float, Range(0, 1, lo_open=True)]  # strips: their least length, a share of the shorter side
    # choose_on_val keeps boxes (or strips) only if they keep prompt switching where pixels do: on every other
    # dataset's val photos, this dataset's prompts (so shaped) light less than this share of what its own prompts light
    boxes_switching_limit: Threshold


@dataclass(frozen=True)
class EvalSettings:
    boundary_tolerance_px: Count
    empty_score: Share  # an image whose GT and prediction are both empty scores IoU = Dice = this
    figure_images: Count
    unrelated_prompts: tuple[str, ...]
    measure_inference_options: bool
    paraphrases: dict[str, tuple[str, ...]]
    missing_test_split: Literal["report_val", "error"]  # a dataset without test split (promptseg.score.evaluate)
    worst_images: Count  # k lowest-Dice images of the reported split per dataset in a gallery figure


@dataclass(frozen=True)
class BootstrapParams:
    """``report.bootstrap``: how the report's mIoU intervals resample whole source photos (promptseg.score.intervals)."""

    resamples: PositiveInt
    level: Threshold  # the interval's coverage, in (0, 1)
    seed: Count


@dataclass(frozen=True)
class ReportParams:
    darkest_share: Threshold
    ceiling_radii: Annotated[
        tuple[Count, ...], NonEmpty()
    ]  # label centerlines drawn at these radii (promptseg.score.ceilings)
    bootstrap: BootstrapParams


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str
    experiment: str
    artifact_root: str | None  # optional key; absent: ./mlartifacts (tests use a temporary folder)


# ----------------------------------------------------------------------------------------- per stage
@dataclass(frozen=True)
class DownloadSettings:
    dataset: str
    source: SourceSettings
    synthetic: SyntheticSettings


@dataclass(frozen=True)
class MasksStageSettings:
    dataset: str
    empty_polygon: str
    split: str
    masks: MasksSettings
    max_image_pixels: int  # data.max_image_pixels: larger images are skipped from their header (image_too_large)


@dataclass(frozen=True)
class TrainSettings:
    rung: RungSettings
    model: ModelSettings
    prompts: dict[str, tuple[str, ...]]  # dataset -> its prompts
    empty_score: float  # eval.empty_score: validation Dice uses the evaluation's empty rule
    mlflow: MlflowSettings | None  # None: no tracking (tests)


@dataclass(frozen=True)
class EvaluateSettings:
    infer: InferSettings
    eval: EvalSettings
    prompts: dict[str, tuple[str, ...]]
    mlflow: MlflowSettings


@dataclass(frozen=True)
class OutsideSettings:  # python -m promptseg.score.outside: an outside export read and leak-checked as masks@ does
    masks: MasksStageSettings  # empty_polygon, max_image_pixels, min_box_side_px, the near-duplicate test
    eval: EvalSettings  # empty_score, boundary_tolerance_px
    prompts: tuple[str, ...]  # data.<dataset>.prompts: every one scored on every kept image


@dataclass(frozen=True)
class ReportSettings:
    rungs: tuple[str, ...]  # the ladder, in params order
    clipseg_rungs: tuple[str, ...]  # those with architecture: clipseg (model.source describes only them)
    model_source: str
    boundary_tolerance_px: int
    hflip_tta: bool
    prompt_ensemble: bool
    bootstrap: BootstrapParams


@dataclass(frozen=True)
class BaselinesSettings:
    empty_score: float
    missing_test_split: str  # eval.missing_test_split: report_val scores val where a dataset has no test
    boundary_tolerance_px: int
    darkest_share: float
    morphology: MorphologySettings
    ceiling_radii: tuple[int, ...]


@dataclass(frozen=True)
class RuntimeParams:
    images: PositiveInt  # test images timed (alternating datasets)
    rounds: PositiveInt  # interleaved timed rounds after one warm-up; the fastest counts
    threads: Count  # torch and onnxruntime intra-op threads (0: the libraries' defaults)
    onnx: bool  # also time the ONNX engine (exported to a temporary folder)


@dataclass(frozen=True)
class MeasureParams:  # promptseg measure / predict --measure / the app (promptseg.serve.measure)
    min_area_px: Count
    prune_factor: NonNegative
    min_spur_px: Count
    orientation_tolerance_deg: Annotated[float, Range(0, 45)]


@dataclass(frozen=True)
class RuntimeSettings:
    runtime: RuntimeParams
    batch_size: int  # infer.batch_size
    prompts: dict[str, tuple[str, ...]]


# ----------------------------------------------------------------------------------------- building
# Keys renamed since a release: a params.yaml written before names the old key, and gets told the new one.
RENAMED_KEYS = {"train.variants": "train.rungs"}


def _unknown(key: str, known, where: str) -> ParamsError:
    renamed = RENAMED_KEYS.get(f"{where}.{key}")
    if renamed:
        return ParamsError(f"{where}.{key}: renamed; call it {renamed} (same contents)")
    near = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
    return ParamsError(f"{where}.{key}: unknown key; {hint}")


def _node(params: Any, dotted: str) -> Any:
    node = params
    for i, key in enumerate(dotted.split(".")):
        where = ".".join(dotted.split(".")[: i + 1])
        if not isinstance(node, Mapping):
            raise ParamsError(f"{where}: expected a mapping above it")
        if key not in node:
            old = next((o for o, new in RENAMED_KEYS.items() if new == where and o.rsplit(".", 1)[-1] in node), None)
            raise ParamsError(
                f"{old}: renamed; call it {where} (same contents)" if old else f"{where}: missing key; add it"
            )
        node = node[key]
    return node


def _optional(tp) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0]
    return False, tp


def _convert(tp, value, where: str):
    optional, inner = _optional(tp)
    if value is None:
        if optional:
            return None
        raise ParamsError(f"{where}: is null; give it a value")
    tp, origin, args = inner, typing.get_origin(inner), typing.get_args(inner)
    if origin is Annotated:  # a type with its allowed range (Range, NonEmpty) stated beside the field
        value = _convert(args[0], value, where)
        for mark in tp.__metadata__:
            problem = mark.problem(value)
            if problem:
                raise ParamsError(f"{where}: {problem}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"{where}: {value!r} is not a finite number; give a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"settings: unsupported field type {tp!r} at {where}")  # a schema bug, not a params error


def _build(cls: type[T], raw: Any, where: str, known: tuple[str, ...] | None = None) -> T:
    """``cls`` from the mapping ``raw`` at ``where``; ``known``: the key names accepted there (default: the
    fields of ``cls``; wider where a stage builds part of a block)."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = tuple(f.name for f in fields(cls))
    known = known or names
    for key in raw:
        if key not in known:
            raise _unknown(key, known, where)
    values = {}
    for name in names:
        optional, _ = _optional(hints[name])
        if name not in raw:
            if optional:
                values[name] = None
                continue
            raise ParamsError(f"{where}.{name}: missing key; add it")
        values[name] = _convert(hints[name], raw[name], f"{where}.{name}")
    return cls(**values)


def check_value(tp, value, where: str):
    """``value`` converted to ``tp`` and checked against its range (a recipe field: promptseg.infer.recipe)."""
    return _convert(tp, value, where)


def build(cls: type[T], raw: Any, where: str) -> T:
    """Public: one settings class from a plain mapping (tests build settings from small dicts)."""
    return _build(cls, raw, where)


def to_plain(obj) -> Any:
    """Settings -> plain dicts/lists (JSON-able), leaving out absent optional keys (None)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj) if getattr(obj, f.name) is not None}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _dataset(name: str) -> str:
    if name not in DATASETS:
        near = difflib.get_close_matches(name, DATASETS, n=1)
        raise ParamsError(
            f"unknown dataset {name!r}"
            + (f"; did you mean {near[0]!r}?" if near else f": expected one of {', '.join(DATASETS)}")
        )
    return name


def _dataset_block(params, dataset: str, cls):
    known = tuple(f.name for f in fields(DatasetSettings))
    raw = _node(params, f"data.{_dataset(dataset)}")
    if not isinstance(raw, Mapping):
        raise ParamsError(f"data.{dataset}: expected a mapping of keys")
    for key in raw:
        if key not in known:
            raise _unknown(key, known, f"data.{dataset}")
    return _build(cls, {k: v for k, v in raw.items() if k in {f.name for f in fields(cls)}}, f"data.{dataset}", known)


def prompts_of(params) -> dict[str, tuple[str, ...]]:
    return {d: _convert(tuple[str, ...], _node(params, f"data.{d}.prompts"), f"data.{d}.prompts") for d in DATASETS}


def model_settings(params, architecture: str | None = None) -> ModelSettings:
    """``model``; with ``architecture``, only that architecture's block is read (the other is None)."""
    raw = _node(params, "model")
    known = tuple(f.name for f in fields(ModelSettings))
    if architecture is not None and isinstance(raw, Mapping):
        skip = set(ARCHITECTURES) - {architecture}
        raw = {k: v for k, v in raw.items() if k not in skip}
    settings = _build(ModelSettings, raw, "model", known)
    for name in (architecture,) if architecture else ARCHITECTURES:
        if getattr(settings, name) is None:
            raise ParamsError(f"model.{name}: missing key; add it")
    return settings


def resolve_rung(name: str, raw_rung: Any, common: TrainCommonSettings | Mapping, where: str = "") -> RungSettings:
    """One rung of ``train.rungs`` over ``train.common`` (a mapping or already built)."""
    where = where or f"train.rungs.{name}"
    if isinstance(common, Mapping):
        common = _build(TrainCommonSettings, common, "train.common")
    if not isinstance(raw_rung, Mapping):
        raise ParamsError(f"{where}: expected a mapping of keys")
    own_names = tuple(f.name for f in fields(RungOwnSettings))
    known = own_names + OVERRIDABLE
    own = _build(RungOwnSettings, {k: v for k, v in raw_rung.items() if k in own_names}, where, known)
    for key in raw_rung:
        if key not in known:
            raise _unknown(key, known, where)
    hints = typing.get_type_hints(TrainCommonSettings, include_extras=True)
    overrides = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in raw_rung.items() if k in OVERRIDABLE}
    for dataset in own.datasets:
        _dataset(dataset)
    for dataset in common.targets:
        if dataset not in DATASETS:
            raise _unknown(dataset, DATASETS, "train.common.targets")
    train = dataclasses.replace(common, **overrides)
    for dataset in train.dataset_repeats:
        if dataset not in DATASETS:
            raise _unknown(
                dataset,
                DATASETS,
                f"{where}.dataset_repeats" if "dataset_repeats" in overrides else "train.common.dataset_repeats",
            )
    for dataset in DATASETS:
        if dataset not in common.targets:
            raise ParamsError(f"train.common.targets.{dataset}: missing key; add it (mask, box_fill or box_projection)")
    lora_given = {k: getattr(own, k) for k in LORA_KEYS if getattr(own, k) is not None}
    lora = None
    if own.method == "lora":
        for key in LORA_KEYS:
            if key not in lora_given:
                raise ParamsError(f"{where}.{key}: missing key; a method: lora rung needs {', '.join(LORA_KEYS)}")
        lora = LoraSettings(**lora_given)
    elif lora_given:
        raise ParamsError(f"{where}.{next(iter(lora_given))}: only a method: lora rung takes it; remove it")
    if own.architecture == "unet" and own.method != "full":
        raise ParamsError(f"{where}.method: the unet architecture trains with method: full, not {own.method!r}")
    if own.encoder_lr is not None and own.architecture != "hed":
        raise ParamsError(f"{where}.encoder_lr: only an architecture: hed rung takes it (its pretrained encoder)")
    return RungSettings(
        name=name,
        method=own.method,
        architecture=own.architecture,
        datasets=own.datasets,
        train=train,
        text_lr=own.text_lr,
        presence_weight=own.presence_weight,
        lora=lora,
        crop=own.crop,
        encoder_lr=own.encoder_lr,
    )


def rung_names(params) -> tuple[str, ...]:
    rungs = _node(params, "train.rungs")
    if not isinstance(rungs, Mapping) or not rungs:
        raise ParamsError("train.rungs: expected a mapping of rung names to their settings")
    return tuple(rungs)


ZEROSHOT_NEEDS_PRETRAINED = (
    "zero-shot needs pretrained weights, and model.source is `small` (random init): "
    "there is nothing to evaluate, so no numbers are written"
)


def zeroshot_skip_reason(method: str, architecture: str, model_source: str) -> str | None:
    """THE rule for skipping a rung: zero-shot on the randomly initialised ``small`` CLIPSeg has nothing to
    train or score. Training records the reason in the model card and metrics; evaluation and the report
    read it from there (or ask this function)."""
    if method == "zeroshot" and architecture == "clipseg" and model_source == "small":
        return ZEROSHOT_NEEDS_PRETRAINED
    return None


# ----------------------------------------------------------------------------------------- per-stage builders
def download_settings(params, dataset: str) -> DownloadSettings:
    return DownloadSettings(
        dataset,
        _dataset_block(params, dataset, SourceSettings),
        _build(SyntheticSettings, _node(params, "synthetic"), "synthetic"),
    )


def masks_settings(params, dataset: str) -> MasksStageSettings:
    d = f"data.{_dataset(dataset)}"
    hints = typing.get_type_hints(DatasetSettings, include_extras=True)
    return MasksStageSettings(
        dataset,
        _convert(hints["empty_polygon"], _node(params, f"{d}.empty_polygon"), f"{d}.empty_polygon"),
        _convert(hints["split"], _node(params, f"{d}.split"), f"{d}.split"),
        _check_ratios(_build(MasksSettings, _node(params, "masks"), "masks")),
        _convert(MaxImagePixels, _node(params, "data.max_image_pixels"), "data.max_image_pixels"),
    )


def _check_ratios(masks: MasksSettings) -> MasksSettings:
    """``masks.grouped_split.ratios`` are shares of images: train needs some, and they add up to 1."""
    r = masks.grouped_split.ratios
    if r.train <= 0 or abs(r.train + r.val + r.test - 1.0) > 1e-6:
        raise ParamsError(
            f"masks.grouped_split.ratios: train {r.train:g}, val {r.val:g}, test {r.test:g}; "
            "allowed: shares with train > 0 that add up to 1"
        )
    return masks


def train_settings(params, rung: str) -> TrainSettings:
    names = rung_names(params)
    if rung not in names:
        raise _unknown(rung, names, "train.rungs")
    resolved = resolve_rung(
        rung,
        _node(params, f"train.rungs.{rung}"),
        _build(TrainCommonSettings, _node(params, "train.common"), "train.common"),
    )
    model = model_settings(params, resolved.architecture)
    check_rung_against_model(resolved, model)
    return TrainSettings(
        resolved,
        model,
        prompts_of(params),
        _convert(float, _node(params, "eval.empty_score"), "eval.empty_score"),
        _build(MlflowSettings, _node(params, "mlflow"), "mlflow"),
    )


def check_rung_against_model(rung: RungSettings, model: ModelSettings) -> None:
    """Keys that one rung needs because of the model block: a gated U-Net needs ``presence_weight``."""
    block = getattr(model, rung.architecture, None)
    gated = getattr(block, "presence_gate", False) and rung.method != "zeroshot"
    if rung.architecture in ("unet", "hed") and gated and rung.presence_weight is None:
        raise ParamsError(
            f"train.rungs.{rung.name}.presence_weight: missing key; model.{rung.architecture}.presence_gate "
            "is true, so the gate's loss needs its weight"
        )


def evaluate_settings(params) -> EvaluateSettings:
    infer = _build(InferSettings, _node(params, "infer"), "infer")
    for dataset in infer.mask_shape:
        if dataset not in DATASETS:
            raise _unknown(dataset, DATASETS, "infer.mask_shape")
    return EvaluateSettings(
        infer,
        _build(EvalSettings, _node(params, "eval"), "eval"),
        prompts_of(params),
        _build(MlflowSettings, _node(params, "mlflow"), "mlflow"),
    )


def outside_settings(params, dataset: str) -> OutsideSettings:
    """What scoring on an outside export reads: the masks stage's settings of ``dataset`` (so that the export is
    rendered and leak-checked with the same rules and thresholds), ``eval`` and the dataset's prompts."""
    return OutsideSettings(
        masks_settings(params, dataset),
        _build(EvalSettings, _node(params, "eval"), "eval"),
        prompts_of(params)[dataset],
    )


def report_settings(params) -> ReportSettings:
    rungs = rung_names(params)
    ladder = _node(params, "train.rungs")
    return ReportSettings(
        rungs=rungs,
        clipseg_rungs=tuple(
            r for r in rungs if isinstance(ladder[r], Mapping) and ladder[r].get("architecture") == "clipseg"
        ),
        model_source=_convert(str, _node(params, "model.source"), "model.source"),
        boundary_tolerance_px=_convert(int, _node(params, "eval.boundary_tolerance_px"), "eval.boundary_tolerance_px"),
        hflip_tta=_convert(bool, _node(params, "infer.hflip_tta"), "infer.hflip_tta"),
        prompt_ensemble=_convert(bool, _node(params, "infer.prompt_ensemble"), "infer.prompt_ensemble"),
        bootstrap=_build(BootstrapParams, _node(params, "report.bootstrap"), "report.bootstrap"),
    )


def baselines_settings(params) -> BaselinesSettings:
    return BaselinesSettings(
        empty_score=_convert(float, _node(params, "eval.empty_score"), "eval.empty_score"),
        missing_test_split=_build(EvalSettings, _node(params, "eval"), "eval").missing_test_split,
        boundary_tolerance_px=_convert(int, _node(params, "eval.boundary_tolerance_px"), "eval.boundary_tolerance_px"),
        darkest_share=_build(ReportParams, _node(params, "report"), "report").darkest_share,
        morphology=_build(MorphologySettings, _node(params, "infer.morphology"), "infer.morphology"),
        ceiling_radii=_build(ReportParams, _node(params, "report"), "report").ceiling_radii,
    )


def runtime_settings(params) -> RuntimeSettings:
    return RuntimeSettings(
        _build(RuntimeParams, _node(params, "runtime"), "runtime"),
        _convert(int, _node(params, "infer.batch_size"), "infer.batch_size"),
        prompts_of(params),
    )


SECTIONS = ("data", "synthetic", "masks", "model", "train", "infer", "eval", "report", "runtime", "measure", "mlflow")


def validate_params(params) -> dict[str, Any]:
    """Build every section of a whole params file (unknown top-level keys included); returns them by name."""
    if not isinstance(params, Mapping):
        raise ParamsError("expected a mapping of sections at the top")
    for key in params:
        if key not in SECTIONS:
            raise _unknown(key, SECTIONS, "params")
    for key in _node(params, "data"):
        if key not in (*DATASETS, "max_image_pixels"):
            raise _unknown(key, (*DATASETS, "max_image_pixels"), "data")
    train = _node(params, "train")
    for key in train:
        if key not in ("common", "rungs"):
            raise _unknown(key, ("common", "rungs"), "train")
    return {
        "data": {d: _build(DatasetSettings, _node(params, f"data.{d}"), f"data.{d}") for d in DATASETS},
        "download": {d: download_settings(params, d) for d in DATASETS},
        "masks": {d: masks_settings(params, d) for d in DATASETS},
        "model": model_settings(params),
        "train": {r: train_settings(params, r) for r in rung_names(params)},
        "evaluate": evaluate_settings(params),
        "report": report_settings(params),
        "baselines": baselines_settings(params),
        "runtime": runtime_settings(params),
        "measure": _build(MeasureParams, _node(params, "measure"), "measure"),
    }


def load_stage_settings(stage: str, builder: Callable[..., T], *args, path: str | Path = "params.yaml") -> T:
    """``builder(params, *args)`` on the params file, or exit 2 with ONE message naming the stage, the file
    and the key (no traceback)."""
    try:
        return builder(load_params(path), *args)
    except ParamsError as exc:
        text = str(exc)
        where = "" if text.startswith(str(path)) else f"{path}: "
        print(f"{stage}: {where}{text}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # python -m promptseg.settings [params.yaml]: validate a whole file
    file = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
    load_stage_settings("promptseg.settings", validate_params, path=file)
    print(f"{file}: valid")
