"""The training loop shared by every variant: optimiser, cosine schedule, checkpoint/resume, CSV + MLflow.

One call of ``train_variant`` trains one variant from ``params.yaml`` and writes
``models/<variant>/`` (merged weights + processor + ``promptseg.json``), ``metrics/train/<variant>.csv``
(one row per epoch) and ``metrics/train/<variant>.json`` (parameter counts, final figures).
"""
from __future__ import annotations

import csv
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

from promptseg.data import EpochShuffleSampler, JointSegmentation, PromptedSegmentation, collate, list_split
from promptseg.losses import bce_dice_loss, box_components, box_projection_loss, presence_loss
from promptseg.model import (apply_variant, count_parameters, load_base_model, lora_parameter_count,
                             merged_model, segmentation_logits, uses_per_image_standardization)
from promptseg.precision import device_and_autocast

CSV_FIELDS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")


def training_loss(logits: torch.Tensor, targets: torch.Tensor, datasets: list[str], pixel_values: torch.Tensor,
                  common: dict) -> torch.Tensor:
    """The batch loss: BCE + (1 - soft Dice) against the rendered masks, except for samples of a dataset
    whose ``train.common.targets.<dataset>`` is ``box_projection``: their masks are filled boxes, and
    they get :func:`promptseg.losses.box_projection_loss` (per box, weights from
    ``train.common.box_projection``). The two parts are averaged by their number of samples."""
    loss_kwargs = {"bce_weight": float(common.get("bce_weight", 1.0)), "dice_weight": float(common.get("dice_weight", 1.0))}
    targets_by_dataset = common.get("targets") or {}
    boxed = torch.tensor([targets_by_dataset.get(d, "mask") == "box_projection" for d in datasets])
    if not bool(boxed.any()):
        return bce_dice_loss(logits, targets, **loss_kwargs)
    cfg = common.get("box_projection") or {}
    box_targets = targets[boxed]
    parts = [box_projection_loss(logits[boxed], box_targets, outside_weight=float(cfg.get("outside_weight", 1.0)),
                                 pairwise_weight=float(cfg.get("pairwise_weight", 0.0)), images=pixel_values[boxed],
                                 components=box_components(box_targets.detach().cpu()).to(box_targets.device))]
    weights = [int(boxed.sum())]
    if not bool(boxed.all()):
        parts.append(bce_dice_loss(logits[~boxed], targets[~boxed], **loss_kwargs))
        weights.append(int((~boxed).sum()))
    return sum(w * part for w, part in zip(weights, parts)) / sum(weights)


def optimizer_param_groups(module: nn.Module, lr: float, text_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups: every trainable parameter at ``lr``; with ``text_lr`` (a rung's
    ``train.variants.<v>.text_lr``), the U-Net's CLIP text encoder (``text_encoder.*``) at ``text_lr``
    instead. A transformer trained from scratch at the CNN's lr can collapse to one output for every
    prompt (measured on the real sample: README). A placeholder group when nothing is trainable (zeroshot)."""
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        return [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr}]
    if text_lr is None:
        return [{"params": [p for _, p in trainable], "lr": lr}]
    text = [p for name, p in trainable if name.startswith("text_encoder.")]
    rest = [p for name, p in trainable if not name.startswith("text_encoder.")]
    return [group for group in ({"params": rest, "lr": lr}, {"params": text, "lr": text_lr}) if group["params"]]


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
    """What ``train_variant`` needs, resolved from params by the stage."""
    variant: str
    variant_cfg: dict
    common: dict
    model_cfg: dict
    prompts: dict[str, list[str]]          # dataset -> prompts
    processed_root: Path
    model_dir: Path
    metrics_dir: Path
    checkpoint_dir: Path
    mlflow_cfg: dict | None = None
    stop_after_epochs: int | None = None    # for tests: simulate an interruption after N epochs

    @property
    def architecture(self) -> str:
        """``clipseg`` or ``unet`` (``train.variants.<v>.architecture``)."""
        return self.variant_cfg.get("architecture", "clipseg")

    @property
    def image_size(self) -> int:
        """The variant's input side: ``train.variants.<v>.image_size`` or ``train.common.image_size``."""
        return int(self.variant_cfg.get("image_size", self.common["image_size"]))

    @property
    def per_image_standardization(self) -> bool:
        return uses_per_image_standardization(self.model_cfg, self.architecture)


def launched_world_size() -> int:
    """How many processes ``accelerate launch`` (or ``torchrun``) started: ``WORLD_SIZE``, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class TrainingForward(nn.Module):
    """:func:`promptseg.model.segmentation_logits` as a module's ``forward``.

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
        raise RuntimeError(f"processes ended with different weights (checksums {gathered.tolist()}): "
                           "gradients were not all-reduced; train with one process and report this.")


def build_datasets(setup: TrainSetup, processor, split: str, training: bool):
    common = setup.common
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    datasets = setup.variant_cfg.get("datasets", list(setup.prompts)) if training else list(setup.prompts)
    crop = (setup.variant_cfg.get("crop") or {}) if training else {}  # train.variants.<v>.crop: native-resolution crops
    parts = []
    for name in datasets:
        # negatives: the other datasets' prompts, and prompts naming things absent from both datasets
        others = [p for other, ps in setup.prompts.items() if other != name for p in ps]
        unrelated = [p for p in common.get("unrelated_negative_prompts", []) if p not in others]
        parts.append(PromptedSegmentation(
            list_split(setup.processed_root, name, split), name, setup.prompts[name],
            image_size=setup.image_size, mean=mean, std=std, seed=int(common["seed"]),
            hflip_prob=float(common.get("hflip_prob", 0.0)) if training else 0.0,
            negative_prompts=others if training else (),
            unrelated_prompts=unrelated if training else (),
            unrelated_share=float(common.get("unrelated_negative_share", 0.5)),
            negative_prompt_prob=float(common.get("negative_prompt_prob", 0.0)) if training else 0.0,
            per_image=setup.per_image_standardization,
            crop_size=int(crop.get("size", 0)), crop_share=float(crop.get("share", 0.0)),
        ))
    return JointSegmentation(parts)


def _tokenize(processor, prompts, device):
    tokens = processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
    return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)


def run_epoch_validation(module, processor, loader, device, loss_kwargs) -> tuple[float, float]:
    """(mean val loss, mean per-image Dice at threshold 0.5) with each image's first prompt."""
    module.eval()
    losses, dices = [], []
    with torch.no_grad():
        for pixel_values, targets, prompts, _ in loader:
            ids, mask = _tokenize(processor, prompts, device)
            logits = segmentation_logits(module, pixel_values.to(device), ids, mask).float()
            targets = targets.to(device)
            losses.append(bce_dice_loss(logits, targets, **loss_kwargs).item() * len(targets))
            pred, gt = logits > 0, targets > 0.5
            inter = (pred & gt).sum((1, 2)).float()
            denom = (pred.sum((1, 2)) + gt.sum((1, 2))).float()
            dices += torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom)).tolist()
    module.train()
    return sum(losses) / max(1, len(dices)), float(np.mean(dices)) if dices else float("nan")


def _config_fingerprint(setup: TrainSetup) -> str:
    blob = json.dumps([setup.variant_cfg, setup.common, setup.model_cfg, setup.prompts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, module, optimizer, scheduler, epoch: int, rows: list, fingerprint: str) -> None:
    trainable = {n: p.detach().cpu() for n, p in module.named_parameters() if p.requires_grad}
    state = {"epoch": epoch, "trainable": trainable, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rows": rows, "fingerprint": fingerprint,
             "torch_rng": torch.get_rng_state()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint intact


def _load_checkpoint(path: Path, module, optimizer, scheduler, fingerprint: str):
    if not path.exists():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        print(f"[train] ignoring checkpoint {path}: it was written with other params")
        return 0, []
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    print(f"[train] resumed from {path} after epoch {state['epoch']}")
    return state["epoch"], state["rows"]


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


ZEROSHOT_NEEDS_PRETRAINED = ("zero-shot needs pretrained weights, and model.source is `small` (random init): "
                             "there is nothing to evaluate, so no numbers are written")


def skip_zeroshot(setup: TrainSetup) -> dict:
    """The ``zeroshot`` rung on the random ``small`` model: write a card and a summary that say why, no numbers."""
    summary = {"variant": setup.variant, "method": "zeroshot", "skipped": ZEROSHOT_NEEDS_PRETRAINED}
    shutil.rmtree(setup.model_dir, ignore_errors=True)
    setup.model_dir.mkdir(parents=True)
    _write_model_card(setup, summary)
    _write_csv(setup.metrics_dir / f"{setup.variant}.csv", [])
    (setup.metrics_dir / f"{setup.variant}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[train] {setup.variant}: skipped: {ZEROSHOT_NEEDS_PRETRAINED}")
    return summary


def train_variant(setup: TrainSetup) -> dict:
    """Train one variant; returns the summary written to ``metrics/train/<variant>.json``.

    ``method: zeroshot`` trains nothing: with a pretrained source the model is saved as it is (0 epochs);
    with the random ``small`` model the rung is skipped and says why (:func:`skip_zeroshot`).
    """
    common = setup.common
    zeroshot = setup.variant_cfg["method"] == "zeroshot"
    if zeroshot and setup.model_cfg["source"] == "small" and setup.architecture == "clipseg":
        return skip_zeroshot(setup)
    seed = int(common["seed"])
    seed_everything(seed)
    # One process: plain PyTorch. Several (`accelerate launch`): an Accelerator shards the batches
    # (train.common.batch_size is per process) and DDP all-reduces the gradients.
    accelerator = None
    if launched_world_size() > 1:
        from accelerate import Accelerator, DistributedDataParallelKwargs
        # find_unused_parameters: CLIP's logit_scale and projections the decoder never reads get no gradient
        accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available(),  # bf16 autocast is ours
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    # train.common.precision: auto | fp32 | bf16 (promptseg.precision); a config without the key trains in fp32
    device, autocast, precision = device_and_autocast(str(common.get("precision", "fp32")), accelerator.device if accelerator else None)
    is_main = accelerator is None or accelerator.is_main_process
    base, processor = load_base_model(setup.model_cfg, setup.image_size, seed, setup.architecture)
    module = apply_variant(base, setup.variant_cfg).to(device)
    module.train()
    trainable, total = count_parameters(module)
    lora_count = lora_parameter_count(module)

    train_set = build_datasets(setup, processor, "train", training=True)
    val_set = build_datasets(setup, processor, "val", training=False)
    sampler = EpochShuffleSampler(len(train_set), seed)
    batch_size = int(common["batch_size"])
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                              num_workers=int(common.get("num_workers", 0)))
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, collate_fn=collate)

    epochs = 0 if zeroshot else int(setup.variant_cfg.get("epochs", common["epochs"]))
    text_lr = setup.variant_cfg.get("text_lr")
    optimizer = torch.optim.AdamW(optimizer_param_groups(module, float(setup.variant_cfg.get("lr", common["lr"])),
                                                         None if text_lr is None else float(text_lr)),
                                  weight_decay=float(common["weight_decay"]))
    forward, step_optimizer = TrainingForward(module), optimizer
    if accelerator is not None and not zeroshot:
        forward, step_optimizer, train_loader = accelerator.prepare(forward, optimizer, train_loader)
    steps_per_epoch = len(train_loader)  # this process's batches: ceil(images / batch_size / processes)
    total_steps = epochs * steps_per_epoch
    warmup = int(common.get("warmup_steps", 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr_factor(s, total_steps, warmup))
    loss_kwargs = {"bce_weight": float(common.get("bce_weight", 1.0)), "dice_weight": float(common.get("dice_weight", 1.0))}
    presence_weight = float(setup.variant_cfg.get("presence_weight", 0.3))  # a gated rung's train.variants.<v>

    fingerprint = _config_fingerprint(setup)
    checkpoint = setup.checkpoint_dir / "last.pt"
    start_epoch, rows = _load_checkpoint(checkpoint, module, optimizer, scheduler, fingerprint)
    csv_path = setup.metrics_dir / f"{setup.variant}.csv"

    for epoch in range(start_epoch, epochs):
        if setup.stop_after_epochs is not None and epoch >= setup.stop_after_epochs:
            raise KeyboardInterrupt(f"stopped after {epoch} epochs (test hook)")
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        started, losses = time.perf_counter(), []
        lr = scheduler.get_last_lr()[0]
        for pixel_values, targets, prompts, datasets in tqdm(train_loader, desc=f"{setup.variant} epoch {epoch + 1}/{epochs}",
                                                      leave=False, disable=None):
            ids, mask = _tokenize(processor, prompts, device)
            with autocast:
                logits, presence = forward(pixel_values.to(device), ids, mask)
            loss = training_loss(logits.float(), targets.to(device), datasets, pixel_values.to(device), common)
            if presence is not None:  # the gate's own image-level supervision (promptseg.unet)
                loss = loss + presence_weight * presence_loss(presence.float(), targets.to(device))
            step_optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP the gradients are all-reduced here
            step_optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - started
        train_loss = float(np.mean(losses))
        if accelerator is not None:  # the mean over every process's batches
            train_loss = float(accelerator.gather(torch.tensor([train_loss], device=device)).mean())
        # every process validates the same (whole) val set with the same weights: no collective needed
        val_loss, val_dice = run_epoch_validation(module, processor, val_loader, device, loss_kwargs)
        rows.append({"epoch": epoch + 1, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
                     "val_dice": round(val_dice, 6), "lr": lr, "seconds": round(seconds, 3)})
        if is_main:
            print(f"[train] {setup.variant} epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items()))
            _write_csv(csv_path, rows)
            _save_checkpoint(checkpoint, module, optimizer, scheduler, epoch + 1, rows, fingerprint)

    if not rows:  # zeroshot on a pretrained model: score the untouched model once
        val_loss, val_dice = run_epoch_validation(module, processor, val_loader, device, loss_kwargs)
        rows = [{"epoch": 0, "train_loss": float("nan"), "val_loss": round(val_loss, 6), "val_dice": round(val_dice, 6),
                 "lr": 0.0, "seconds": 0.0}]
        if is_main:
            _write_csv(csv_path, rows)
    summary = {
        "variant": setup.variant, "method": setup.variant_cfg["method"], "architecture": setup.architecture,
        "trainable_params": trainable, "total_params": total, "lora_params": lora_count,
        "epochs": epochs, "image_size": setup.image_size,
        "final_train_loss": rows[-1]["train_loss"], "final_val_loss": rows[-1]["val_loss"],
        "final_val_dice": rows[-1]["val_dice"],
        "seconds_per_epoch": round(float(np.mean([r["seconds"] for r in rows])), 3),
        "device": str(device), "precision": precision,
        "processes": accelerator.num_processes if accelerator else 1,
        "steps_per_epoch_per_process": steps_per_epoch,
    }
    if accelerator is not None:
        check_replicas_agree(accelerator, module)
        accelerator.wait_for_everyone()
        if not is_main:
            return summary
    save_trained_model(module, processor, setup, summary)
    (setup.metrics_dir / f"{setup.variant}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if setup.mlflow_cfg:
        from promptseg.tracking import log_training_run
        summary["mlflow_run_id"] = log_training_run(setup, summary, rows, csv_path)
        _write_model_card(setup, summary)
    shutil.rmtree(setup.checkpoint_dir, ignore_errors=True)  # finished: the next run starts fresh
    return summary


def _write_model_card(setup: TrainSetup, summary: dict) -> None:
    card = {"variant": setup.variant, "architecture": setup.architecture,
            "per_image_standardization": setup.per_image_standardization, "variant_params": setup.variant_cfg, "train_params": setup.common,
            "model_params": setup.model_cfg, "prompts": setup.prompts, "summary": summary}
    (setup.model_dir / "promptseg.json").write_text(json.dumps(card, indent=2) + "\n")


def save_trained_model(module, processor, setup: TrainSetup, summary: dict) -> None:
    """``models/<variant>/``: merged CLIPSeg weights + processor (+ the LoRA adapter) + promptseg.json."""
    out = setup.model_dir
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if hasattr(module, "peft_config"):
        module.save_pretrained(out / "adapter")  # the adapter alone, for users of peft
    model = merged_model(module).cpu()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _write_model_card(setup, summary)
