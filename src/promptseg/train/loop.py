"""The training loop shared by every rung: optimiser, cosine schedule, checkpoint/resume, live metrics.

One call of ``train_rung`` trains one rung from ``params.yaml`` and writes
``models/<rung>/`` (merged weights + processor + ``promptseg.json``), ``metrics/train/<rung>/``
(DVCLive, one step per epoch: :mod:`promptseg.train.live`, with the same values in the rung's MLflow run while it
trains) and ``metrics/train/<rung>.json`` (parameter counts, final figures).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from promptseg.images import list_split, overlay_image
from promptseg.machine import MACHINE_KEY, machine_facts
from promptseg.metrics import iou_dice_from_counts, pixel_counts
from promptseg.modeling.clipseg import (
    count_parameters,
    lora_parameter_count,
    merged_model,
    uses_per_image_standardization,
)
from promptseg.modeling.hed import weights_record
from promptseg.modeling.precision import autocast, device_and_autocast
from promptseg.modeling.preprocessing import normalize
from promptseg.modeling.registry import apply_method, build_model, segmentation_logits
from promptseg.paths import HED_WEIGHTS_DIR, write_json
from promptseg.settings import RungSettings, TrainCommonSettings, TrainSettings, to_plain, zeroshot_skip_reason
from promptseg.tracking import log_training_run
from promptseg.train.data import EpochShuffleSampler, JointSegmentation, PromptedSegmentation, collate
from promptseg.train.live import EpochLogger
from promptseg.train.losses import bce_dice_loss, box_components, box_projection_loss, presence_loss


def training_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    datasets: list[str],
    pixel_values: torch.Tensor,
    train: TrainCommonSettings,
) -> torch.Tensor:
    """The batch loss: BCE + (1 - soft Dice) against the rendered masks, except for samples of a dataset
    whose ``train.common.targets.<dataset>`` is ``box_projection``: their masks are filled boxes, and
    they get :func:`promptseg.train.losses.box_projection_loss` (per box, weights from
    ``train.common.box_projection``). The two parts are averaged by their number of samples."""
    weights_kw = {"bce_weight": train.bce_weight, "dice_weight": train.dice_weight}
    boxed = torch.tensor([train.targets[d] == "box_projection" for d in datasets])
    if not bool(boxed.any()):
        return bce_dice_loss(logits, targets, **weights_kw)
    box_targets = targets[boxed]
    parts = [
        box_projection_loss(
            logits[boxed],
            box_targets,
            outside_weight=train.box_projection.outside_weight,
            pairwise_weight=train.box_projection.pairwise_weight,
            images=pixel_values[boxed],
            components=box_components(box_targets.detach().cpu()).to(box_targets.device),
        )
    ]
    weights = [int(boxed.sum())]
    if not bool(boxed.all()):
        parts.append(bce_dice_loss(logits[~boxed], targets[~boxed], **weights_kw))
        weights.append(int((~boxed).sum()))
    return sum(w * part for w, part in zip(weights, parts)) / sum(weights)


def make_optimizer(
    module: nn.Module, train: TrainCommonSettings, text_lr: float | None, encoder_lr: float | None = None
) -> torch.optim.AdamW:
    """AdamW over :func:`optimizer_param_groups` with ``train.adamw``'s kernels: ``foreach`` (multi-tensor
    ops; bitwise the update of the per-tensor loop that is PyTorch's default on a CPU) or ``fused`` (one
    pass per tensor: the U-Net's optimiser step 4.6 ms vs 18.9 on 2 cores; the same formula, rounded
    differently, so the trained weights differ from foreach's in the last bits and then drift)."""
    kernels = {"fused": True} if train.adamw == "fused" else {"foreach": True}
    return torch.optim.AdamW(
        optimizer_param_groups(module, train.lr, text_lr, encoder_lr), weight_decay=train.weight_decay, **kernels
    )


def optimizer_param_groups(
    module: nn.Module, lr: float, text_lr: float | None = None, encoder_lr: float | None = None
) -> list[dict]:
    """AdamW parameter groups: every trainable parameter at ``lr``; with ``text_lr`` (a rung's
    ``train.rungs.<v>.text_lr``), the CLIP text encoder of the U-Net or HED model (``text_encoder.*``) at
    ``text_lr`` instead. A transformer trained from scratch at the CNN's lr can collapse to one output for
    every prompt (measured on the real sample: README). With ``encoder_lr`` (HED rungs), the pretrained
    VGG16 blocks' own weights (``blocks.*``, not their LoRA matrices) at ``encoder_lr``. A placeholder group
    when nothing is trainable (zeroshot). Names are matched below a peft wrapper's prefix too."""
    trainable = [(_unprefixed(name), p) for name, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        return [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr}]

    def group_of(name: str) -> str:
        if text_lr is not None and name.startswith("text_encoder."):
            return "text"
        if encoder_lr is not None and name.startswith("blocks.") and "lora_" not in name:
            return "encoder"
        return "rest"

    lrs = {"rest": lr, "text": text_lr, "encoder": encoder_lr}
    groups = [{"params": [p for name, p in trainable if group_of(name) == g], "lr": lrs[g]} for g in lrs]
    return [group for group in groups if group["params"]]


def _unprefixed(name: str) -> str:
    """A parameter's name inside a peft ``PeftModel`` (``base_model.model.<name>``) -> ``<name>``."""
    return name.removeprefix("base_model.model.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warm-up, then cosine to 0."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainSetup:
    """What ``train_rung`` needs: the rung's typed settings (built once by the stage from params.yaml,
    :func:`promptseg.settings.train_settings`) and the paths it reads and writes."""

    settings: TrainSettings
    processed_root: Path
    model_dir: Path
    metrics_dir: Path
    checkpoint_dir: Path
    stop_after_epochs: int | None = None  # for tests: simulate an interruption after N epochs

    @property
    def rung(self) -> RungSettings:
        return self.settings.rung

    @property
    def rung_name(self) -> str:
        return self.settings.rung.name

    @property
    def prompts(self) -> dict[str, tuple[str, ...]]:
        return self.settings.prompts

    @property
    def architecture(self) -> str:
        """``clipseg`` or ``unet`` (``train.rungs.<v>.architecture``)."""
        return self.settings.rung.architecture

    @property
    def image_size(self) -> int:
        """The rung's input side (``train.common.image_size`` or the rung's override)."""
        return self.settings.rung.train.image_size

    @property
    def per_image_standardization(self) -> bool:
        return uses_per_image_standardization(self.settings.model, self.architecture)


def launched_world_size() -> int:
    """How many processes ``accelerate launch`` (or ``torchrun``) started: ``WORLD_SIZE``, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class TrainingForward(nn.Module):
    """:func:`promptseg.modeling.registry.segmentation_logits` as a module's ``forward``.

    Under ``accelerate launch`` this module is what DDP wraps: DDP all-reduces gradients only for
    calls that go through the wrapper's ``forward``, and ``segmentation_logits`` bypasses the library
    forward (its ``no_grad``), so the training forward itself must be a module.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, pixel_values, input_ids, attention_mask):
        """-> (logits (B, H, W), presence logits (B,) or None where the model has no presence gate)."""
        return segmentation_logits(self.module, pixel_values, input_ids, attention_mask, with_presence=True)


def check_replicas_agree(accelerator, module: nn.Module) -> None:
    """After distributed training every process must hold the same weights; raise if not."""
    checksum = torch.stack([p.detach().double().sum() for p in module.parameters() if p.requires_grad]).sum()
    gathered = accelerator.gather(checksum.reshape(1).to(accelerator.device)).cpu()
    if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=1e-6, atol=1e-6):
        raise RuntimeError(
            f"processes ended with different weights (checksums {gathered.tolist()}): "
            "gradients were not all-reduced; train with one process and report this."
        )


def build_datasets(setup: TrainSetup, processor, split: str, training: bool):
    train = setup.rung.train
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    datasets = setup.rung.datasets if training else tuple(setup.prompts)
    crop = setup.rung.crop if training else None  # train.rungs.<v>.crop: native-resolution crops
    parts = []
    for name in datasets:
        # negatives: the other datasets' prompts, and prompts naming things absent from both datasets
        others = [p for other, ps in setup.prompts.items() if other != name for p in ps]
        unrelated = [p for p in train.unrelated_negative_prompts if p not in others]
        parts.append(
            PromptedSegmentation(
                list_split(setup.processed_root, name, split),
                name,
                setup.prompts[name],
                image_size=setup.image_size,
                mean=mean,
                std=std,
                seed=train.seed,
                hflip_prob=train.hflip_prob if training else 0.0,
                rot90_prob=train.rot90_prob if training else 0.0,
                color_jitter=train.color_jitter if training else 0.0,
                negative_prompts=others if training else (),
                unrelated_prompts=unrelated if training else (),
                unrelated_share=train.unrelated_negative_share,
                negative_prompt_prob=train.negative_prompt_prob if training else 0.0,
                per_image=setup.per_image_standardization,
                crop_size=crop.size if crop else 0,
                crop_share=crop.share if crop else 0.0,
                repeats=train.dataset_repeats.get(name, 1) if training else 1,
            )
        )
    return JointSegmentation(parts)


def _tokenize(processor, prompts, device):
    tokens = processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
    return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)


def run_epoch_validation(
    module, processor, loader, device, train: TrainCommonSettings, empty_score: float, precision: str = "fp32"
) -> tuple[float, float]:
    """(mean val loss, mean per-image Dice at threshold 0.5) with each image's first prompt; an image whose
    prediction and target are both empty scores ``empty_score`` (``eval.empty_score``, the evaluation's rule).

    ``precision``: the training's resolved precision (``Run.precision``), so the per-epoch curve costs what a
    training forward costs (bf16 on the real sample's HED: 11 s per epoch against 37 s in fp32); the loss and
    Dice are taken on float logits. The evaluation stage scores in its own ``infer.precision``."""
    module.eval()
    losses, dices = [], []
    with torch.no_grad(), autocast(precision, device):
        for pixel_values, targets, prompts, _ in loader:
            ids, mask = _tokenize(processor, prompts, device)
            logits = segmentation_logits(module, pixel_values.to(device), ids, mask).float()
            targets = targets.to(device)
            losses.append(
                bce_dice_loss(logits, targets, bce_weight=train.bce_weight, dice_weight=train.dice_weight).item()
                * len(targets)
            )
            dices += iou_dice_from_counts(pixel_counts(logits > 0, targets > 0.5), empty_score)[1].tolist()
    module.train()
    return sum(losses) / max(1, len(dices)), float(np.mean(dices)) if dices else float("nan")


# --------------------------------------------------------------------------------------- checkpoints
def _config_fingerprint(setup: TrainSetup) -> str:
    blob = json.dumps(
        [to_plain(setup.rung), to_plain(setup.settings.model), setup.prompts, setup.settings.empty_score],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _save_checkpoint(
    path: Path, run: Run, epoch: int, rows: list, fingerprint: str, mlflow_run_id: str | None = None
) -> None:
    """Everything the next epoch depends on, at an epoch boundary: the WHOLE state_dict (buffers too:
    BatchNorm running stats and num_batches_tracked), optimiser, scheduler, every RNG state and the
    sampler's epoch (and the MLflow run id, so a resumed run continues the same run). The data order and augmentation are pure functions of (seed, epoch, index)
    (:mod:`promptseg.train.data`), so the sampler's position is its epoch: a run killed mid-epoch restarts that
    epoch from its boundary and ends with bit-identical weights."""
    state = {
        "epoch": epoch,
        "model": {k: v.detach().cpu().clone() for k, v in run.module.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rows": rows,
        "fingerprint": fingerprint,
        "rng": _rng_states(),
        "sampler_epoch": epoch,
        "mlflow_run_id": mlflow_run_id,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint intact


def _load_checkpoint(path: Path, run: Run, fingerprint: str) -> tuple[int, list, str | None]:
    """(epochs done, their rows, the MLflow run id) of the checkpoint, restored into ``run``; (0, [], None)
    without a usable one."""
    if not path.exists():
        return 0, [], None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint or "model" not in state:
        print(f"[train] ignoring checkpoint {path}: it was written with other params")
        return 0, [], None
    run.module.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"])
    run.sampler.set_epoch(state["sampler_epoch"])
    print(f"[train] resumed from {path} after epoch {state['epoch']}")
    return state["epoch"], state["rows"], state.get("mlflow_run_id")


# --------------------------------------------------------------------------------------- live metrics
@contextlib.contextmanager
def _rng_kept():
    """Run logging code without touching the training's RNG streams (resume stays exact whatever a
    library does inside)."""
    states = _rng_states()
    try:
        yield
    finally:
        _set_rng_states(states)


def _logged_params(setup: TrainSetup) -> dict:
    """The rung's settings as DVCLive's ``params.yaml`` and the MLflow run's params hold them."""
    return {
        "rung": setup.rung.own_params(),
        "train": to_plain(setup.rung.train),
        "model": to_plain(setup.settings.model),
        "prompts": to_plain(setup.prompts),
    }


def open_epoch_logger(
    setup: TrainSetup,
    resume_epoch: int = 0,
    history: list[dict] | None = None,
    mlflow_run_id: str | None = None,
    *,
    mlflow: bool = True,
) -> EpochLogger:
    """The rung's :class:`promptseg.train.live.EpochLogger` (``metrics/train/<rung>/`` and, with ``mlflow``
    settings, the rung's MLflow run), continuing a checkpoint's step series and run on resume."""
    with _rng_kept():
        return EpochLogger(
            setup.rung_name,
            setup.metrics_dir / setup.rung_name,
            mlflow_cfg=setup.settings.mlflow if mlflow else None,
            params=_logged_params(setup),
            resume_epoch=resume_epoch,
            history=history,
            mlflow_run_id=mlflow_run_id,
            overlay_store=setup.checkpoint_dir / "val_overlay",  # survives `dvc repro` deleting the outputs
        )


def validate_epoch(setup: TrainSetup, run: Run) -> tuple[float, float]:
    """The per-epoch (val loss, val Dice) of ``run``'s model now, in the training's precision."""
    return run_epoch_validation(
        run.module,
        run.processor,
        run.val_loader,
        run.device,
        setup.rung.train,
        setup.settings.empty_score,
        run.precision,
    )


def val_overlay(run: Run) -> np.ndarray:
    """The fixed image logged each epoch: the first val image (first dataset) at the training size, with its
    dataset's first prompt, the predicted mask (logit > 0) drawn in red (:func:`promptseg.images.overlay_image`)."""
    part = run.val_loader.dataset.datasets[0]
    rgb, _ = part.load_resized(0)
    pixel_values = normalize(np.ascontiguousarray(rgb), part.mean, part.std, part.per_image)[None].to(run.device)
    ids, mask = _tokenize(run.processor, part.prompts[:1], run.device)
    run.module.eval()
    with torch.no_grad(), run.autocast:  # the training's own forward context
        logits = segmentation_logits(run.module, pixel_values, ids, mask).float()
    run.module.train()
    return overlay_image(rgb, (logits[0] > 0).cpu().numpy())


def skip_zeroshot(setup: TrainSetup, reason: str) -> dict:
    """A rung with nothing to train or score (:func:`promptseg.settings.zeroshot_skip_reason`): write a card
    and a summary that say why, no numbers, and a DVCLive folder with no steps (header-only series)."""
    summary = {"rung": setup.rung_name, "method": "zeroshot", "skipped": reason}
    shutil.rmtree(setup.model_dir, ignore_errors=True)
    setup.model_dir.mkdir(parents=True)
    _write_model_card(setup, summary)
    open_epoch_logger(setup, mlflow=False).close()
    write_json(setup.metrics_dir / f"{setup.rung_name}.json", summary)
    print(f"[train] {setup.rung_name}: skipped: {reason}")
    return summary


# --------------------------------------------------------------------------------------- build
@dataclass
class Run:
    """A built training run: model, data, optimiser and schedule, on this process's device."""

    module: nn.Module
    processor: object
    forward: nn.Module  # TrainingForward, DDP-wrapped under `accelerate launch`
    optimizer: torch.optim.Optimizer
    step_optimizer: object  # the optimizer, or accelerate's wrapper of it
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_set: JointSegmentation
    sampler: EpochShuffleSampler
    train_loader: DataLoader
    val_loader: DataLoader
    device: torch.device
    autocast: object
    precision: str  # the resolved train.common.precision: fp32 or bf16
    accelerator: object | None
    steps_per_epoch: int  # this process's batches: ceil(images / batch_size / processes)

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process


def _accelerator():
    """One process: None (plain PyTorch). Several (`accelerate launch`): an Accelerator that shards the
    batches (train.common.batch_size is per process) while DDP all-reduces the gradients."""
    if launched_world_size() <= 1:
        return None
    from accelerate import Accelerator, DistributedDataParallelKwargs  # noqa: PLC0415 (heavy, optional: accelerate)

    # find_unused_parameters: CLIP's logit_scale and projections the decoder never reads get no gradient
    return Accelerator(
        mixed_precision="no",
        cpu=not torch.cuda.is_available(),  # bf16 autocast is ours
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def build_run(setup: TrainSetup) -> Run:
    """Model, loaders, optimiser and cosine schedule of one rung."""
    rung, train = setup.rung, setup.rung.train
    seed_everything(train.seed)
    accelerator = _accelerator()
    # train.common.precision: auto | fp32 | bf16 (promptseg.modeling.precision); BN stats, loss and optimiser stay fp32
    device, forward_context, precision = device_and_autocast(
        train.precision, accelerator.device if accelerator else None
    )
    base, processor = build_model(setup.settings.model, setup.image_size, train.seed, setup.architecture, rung.method)
    module = apply_method(base, rung.method, rung.lora).to(device)
    module.train()
    train_set = build_datasets(setup, processor, "train", training=True)
    val_set = build_datasets(setup, processor, "val", training=False)
    sampler = EpochShuffleSampler(len(train_set), train.seed)
    train_loader = DataLoader(
        train_set, batch_size=train.batch_size, sampler=sampler, collate_fn=collate, num_workers=train.num_workers
    )
    val_loader = DataLoader(val_set, batch_size=train.batch_size, shuffle=False, collate_fn=collate)
    optimizer = make_optimizer(module, train, rung.text_lr, rung.encoder_lr)
    forward, step_optimizer = TrainingForward(module), optimizer
    if accelerator is not None and rung.epochs:
        forward, step_optimizer, train_loader = accelerator.prepare(forward, optimizer, train_loader)
    total_steps = rung.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_lr_factor(step, total_steps, train.warmup_steps)
    )
    return Run(
        module,
        processor,
        forward,
        optimizer,
        step_optimizer,
        scheduler,
        train_set,
        sampler,
        train_loader,
        val_loader,
        device,
        forward_context,
        precision,
        accelerator,
        len(train_loader),
    )


# --------------------------------------------------------------------------------------- one epoch
def train_step(setup: TrainSetup, run: Run, batch) -> float:
    """One optimiser step on one batch (pixels, targets, prompts, datasets): forward under the training's
    autocast, the loss on float logits (+ the presence gate's own loss), backward, AdamW, schedule; its loss."""
    pixel_values, targets, prompts, datasets = batch
    pixel_values, targets = pixel_values.to(run.device), targets.to(run.device)
    ids, mask = _tokenize(run.processor, prompts, run.device)
    with run.autocast:
        logits, presence = run.forward(pixel_values, ids, mask)
    loss = training_loss(logits.float(), targets, datasets, pixel_values, setup.rung.train)
    if presence is not None:  # the gate's own image-level supervision (promptseg.modeling.unet)
        loss = loss + setup.rung.presence_weight * presence_loss(presence.float(), targets)
    run.step_optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP the gradients are all-reduced here
    run.step_optimizer.step()
    run.scheduler.step()
    return loss.item()


def train_one_epoch(setup: TrainSetup, run: Run, epoch: int) -> float:
    """One pass over this process's training batches; returns the mean loss over every process's batches."""
    batches = tqdm(
        run.train_loader, desc=f"{setup.rung_name} epoch {epoch + 1}/{setup.rung.epochs}", leave=False, disable=None
    )
    losses = [train_step(setup, run, batch) for batch in batches]
    train_loss = float(np.mean(losses))
    if run.accelerator is not None:  # the mean over every process's batches
        train_loss = float(run.accelerator.gather(torch.tensor([train_loss], device=run.device)).mean())
    return train_loss


# --------------------------------------------------------------------------------------- the loop
def train_rung(setup: TrainSetup) -> dict:
    """Train one rung; returns the summary written to ``metrics/train/<rung>.json``.

    ``method: zeroshot`` trains nothing: with a pretrained source the model is saved as it is (0 epochs);
    with the random ``small`` model the rung is skipped and says why (:func:`skip_zeroshot`).
    """
    skipped = zeroshot_skip_reason(setup.rung.method, setup.architecture, setup.settings.model.source)
    if skipped:
        return skip_zeroshot(setup, skipped)
    run = build_run(setup)
    fingerprint, checkpoint = _config_fingerprint(setup), setup.checkpoint_dir / "last.pt"
    start_epoch, rows, mlflow_run_id = _load_checkpoint(checkpoint, run, fingerprint)
    # live metrics (main process): continue the checkpoint's step series and MLflow run; closed FAILED or
    # KILLED if the loop raises
    logger = open_epoch_logger(setup, start_epoch, rows, mlflow_run_id) if run.is_main else None
    with logger or contextlib.nullcontext():
        train_epochs(setup, run, start_epoch, rows, logger, checkpoint, fingerprint)
        return finish(setup, run, rows, logger)


def train_epochs(
    setup: TrainSetup,
    run: Run,
    start_epoch: int,
    rows: list[dict],
    logger: EpochLogger | None,
    checkpoint: Path,
    fingerprint: str,
) -> None:
    """The epochs after the checkpoint's: train, validate, then (main process) log and checkpoint each;
    appends each epoch's row to ``rows``."""
    for epoch in range(start_epoch, setup.rung.epochs):
        if setup.stop_after_epochs is not None and epoch >= setup.stop_after_epochs:
            raise KeyboardInterrupt(f"stopped after {epoch} epochs (test hook)")
        # this epoch's data order and augmentation: pure functions of (seed, epoch, index)
        run.train_set.set_epoch(epoch)
        run.sampler.set_epoch(epoch)
        lr, started = run.scheduler.get_last_lr()[0], time.perf_counter()
        # train: one pass over this process's batches
        train_loss = train_one_epoch(setup, run, epoch)
        seconds = time.perf_counter() - started
        # validate: every process scores the same whole val set with the same weights (no collective)
        val_loss, val_dice = validate_epoch(setup, run)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val_loss, 6),
            "val_dice": round(val_dice, 6),
            "lr": lr,
            "seconds": round(seconds, 3),
        }
        rows.append(row)
        # report, log (DVCLive + MLflow) and checkpoint (main process only)
        if run.is_main:
            print(
                f"[train] {setup.rung_name} epoch {epoch + 1}/{setup.rung.epochs}: "
                + ", ".join(f"{k} {v}" for k, v in row.items())
            )
            with _rng_kept():
                logger.log_epoch(
                    row["epoch"],
                    row["train_loss"],
                    row["val_loss"],
                    row["val_dice"],
                    row["lr"],
                    val_overlay(run),
                    seconds=row["seconds"],
                )
            _save_checkpoint(checkpoint, run, epoch + 1, rows, fingerprint, logger.mlflow_run_id)


# --------------------------------------------------------------------------------------- finish
TIMING_KEYS = (
    "seconds_per_epoch",
    "train_seconds",
)  # in metrics/train/<rung>.json only: the model folder stays deterministic


def finish(setup: TrainSetup, run: Run, rows: list[dict], logger: EpochLogger | None = None) -> dict:
    """Summary, replica check, save the model folder and the metrics, finish the MLflow run (counts and the
    model folder), drop the checkpoint. ``logger``: the main process's live log (None on the others)."""
    if not rows:  # zeroshot on a pretrained model: score the untouched model once (logged at step 0)
        val_loss, val_dice = validate_epoch(setup, run)
        rows = [
            {
                "epoch": 0,
                "train_loss": float("nan"),
                "val_loss": round(val_loss, 6),
                "val_dice": round(val_dice, 6),
                "lr": 0.0,
                "seconds": 0.0,
            }
        ]
        if logger is not None:
            with _rng_kept():
                logger.log_epoch(1, None, rows[0]["val_loss"], rows[0]["val_dice"], 0.0, val_overlay(run), seconds=0.0)
    trainable, total = count_parameters(run.module)
    summary = {
        "rung": setup.rung_name,
        "method": setup.rung.method,
        "architecture": setup.architecture,
        "trainable_params": trainable,
        "total_params": total,
        "lora_params": lora_parameter_count(run.module),
        "epochs": setup.rung.epochs,
        "image_size": setup.image_size,
        "final_train_loss": rows[-1]["train_loss"],
        "final_val_loss": rows[-1]["val_loss"],
        "final_val_dice": rows[-1]["val_dice"],
        "seconds_per_epoch": round(float(np.mean([r["seconds"] for r in rows])), 3),
        "device": str(run.device),
        "precision": run.precision,
        "processes": run.accelerator.num_processes if run.accelerator else 1,
        "steps_per_epoch_per_process": run.steps_per_epoch,
        MACHINE_KEY: machine_facts(run.precision, str(run.device)),  # what made these numbers (promptseg.machine)
    }
    summary["train_seconds"] = round(float(sum(r["seconds"] for r in rows)), 1)
    if hasattr(run.module, "peft_config"):  # the adapter alone, as a user of peft would ship it
        summary["adapter_params"] = lora_parameter_count(run.module)
    if setup.architecture == "hed":  # which pretrained file the rung started from (promptseg.modeling.hed)
        summary["pretrained_weights"] = weights_record(HED_WEIGHTS_DIR)
    if run.accelerator is not None:
        check_replicas_agree(run.accelerator, run.module)
        run.accelerator.wait_for_everyone()
        if not run.is_main:
            return summary
    save_trained_model(run.module, run.processor, setup, summary)
    if logger is not None and logger.mlflow_run_id is not None:
        summary["mlflow_run_id"] = log_training_run(setup, summary, logger.mlflow_run_id, logger.live_dir)
    write_json(setup.metrics_dir / f"{setup.rung_name}.json", summary)
    shutil.rmtree(setup.checkpoint_dir, ignore_errors=True)  # finished: the next run starts fresh
    return summary


def _write_model_card(setup: TrainSetup, summary: dict) -> None:
    """``promptseg.json``: what inference needs and what the model was trained with; no timings and no run
    ids, so two trainings to the same weights give byte-identical folders (and one DVC hash)."""
    card = {
        "rung": setup.rung_name,
        "architecture": setup.architecture,
        "per_image_standardization": setup.per_image_standardization,
        "rung_params": setup.rung.own_params(),
        "train_params": to_plain(setup.rung.train),
        "model_params": to_plain(setup.settings.model),
        "prompts": {d: list(p) for d, p in setup.prompts.items()},
        "summary": {k: v for k, v in summary.items() if k not in TIMING_KEYS and k != "mlflow_run_id"},
    }
    write_json(setup.model_dir / "promptseg.json", card)


def save_trained_model(module, processor, setup: TrainSetup, summary: dict) -> None:
    """``models/<rung>/``: merged CLIPSeg weights + processor (+ the LoRA adapter) + promptseg.json."""
    out = setup.model_dir
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if hasattr(module, "peft_config"):
        module.save_pretrained(out / "adapter")  # the adapter alone, for users of peft
        # peft keeps target_modules as a set: its JSON order follows the process's hash seed; sort it
        config_path = out / "adapter" / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    model = merged_model(module).cpu()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _write_model_card(setup, summary)
