"""The training loop: schedule, a falling loss, determinism, resume, MLflow."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from promptseg.images import list_split
from promptseg.train.loop import TrainSetup, cosine_lr_factor, train_rung

from conftest import PROMPTS, TINY_COMMON, TINY_MODEL, TINY_RUNGS, TINY_UNET, tiny_train_settings

COMMON = TINY_COMMON
FULL, LORA = TINY_RUNGS["full"], TINY_RUNGS["lora"]


def make_setup(root, processed_root, rung="full", cfg=FULL, mlflow=None, model=None, **overrides):
    return TrainSetup(
        settings=tiny_train_settings(rung, cfg, overrides, model=model, mlflow=mlflow),
        processed_root=processed_root,
        model_dir=root / "models" / rung,
        metrics_dir=root / "metrics",
        checkpoint_dir=root / "checkpoints" / rung,
    )


def series(setup, rung, name):
    """(steps, values) of one DVCLive series of a trained rung: metrics/train/<rung>/plots/metrics/<name>.tsv."""
    lines = (setup.metrics_dir / rung / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    assert lines[0] == f"step\t{name}", lines[0]
    rows = [line.split("\t") for line in lines[1:]]
    return [int(s) for s, _ in rows], [float(v) for _, v in rows]


def weights(setup):
    return load_file(str(setup.model_dir / "model.safetensors"))


def test_cosine_schedule_starts_at_lr_and_ends_near_zero():
    assert cosine_lr_factor(0, 100) == 1.0
    assert cosine_lr_factor(50, 100) == pytest.approx(0.5)
    assert cosine_lr_factor(99, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert cosine_lr_factor(100, 100) == pytest.approx(0.0)
    assert cosine_lr_factor(0, 100, warmup_steps=4) == 0.25


def test_training_loss_falls_and_is_deterministic(tmp_path, processed_root):
    first = make_setup(tmp_path / "a", processed_root)
    summary = train_rung(first)
    steps, losses = series(first, "full", "train_loss")
    assert steps == [0, 1, 2] and series(first, "full", "val_dice")[0] == [0, 1, 2]  # DVCLive: one step per epoch
    assert losses[-1] < losses[0], losses
    live = first.metrics_dir / "full"
    assert set(json.loads((live / "metrics.json").read_text())) == {
        "train_loss",
        "val_loss",
        "val_dice",
        "lr",
        "seconds",
        "step",
    }
    assert sorted(p.name for p in (live / "plots" / "images" / "val_overlay").iterdir()) == ["0.png", "1.png", "2.png"]
    assert not (first.metrics_dir / "full.csv").exists()  # the hand-written CSV is gone
    assert summary["trainable_params"] == summary["total_params"]
    second = make_setup(tmp_path / "b", processed_root)
    train_rung(second)
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the model folder holds no timings: the same seed gives byte-identical files (one DVC hash)
    files = {p.relative_to(first.model_dir): p.read_bytes() for p in sorted(first.model_dir.rglob("*")) if p.is_file()}
    assert files == {
        p.relative_to(second.model_dir): p.read_bytes() for p in sorted(second.model_dir.rglob("*")) if p.is_file()
    }
    assert "seconds_per_epoch" in json.loads((first.metrics_dir / "full.json").read_text())  # timings: metrics only
    for name in ("config.json", "processor_config.json", "tokenizer.json", "promptseg.json"):
        assert (first.model_dir / name).exists(), name
    assert not first.checkpoint_dir.exists()  # removed after a finished run


def test_resume_after_interruption_gives_the_same_final_weights(tmp_path, processed_root):
    straight = make_setup(tmp_path / "straight", processed_root, "lora", LORA)
    train_rung(straight)
    interrupted = make_setup(tmp_path / "resumed", processed_root, "lora", LORA)
    interrupted.stop_after_epochs = 1
    with pytest.raises(KeyboardInterrupt):
        train_rung(interrupted)
    assert (interrupted.checkpoint_dir / "last.pt").exists()
    interrupted.stop_after_epochs = None
    train_rung(interrupted)
    a, b = weights(straight), weights(interrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (interrupted.model_dir / "adapter" / "adapter_config.json").exists()


def test_checkpoint_from_other_params_is_ignored(tmp_path, processed_root):
    setup = make_setup(tmp_path, processed_root, epochs=2)
    setup.stop_after_epochs = 1
    with pytest.raises(KeyboardInterrupt):
        train_rung(setup)
    changed = make_setup(tmp_path, processed_root, epochs=2, lr=1e-3)
    train_rung(changed)
    reference = make_setup(tmp_path / "ref", processed_root, epochs=2, lr=1e-3)
    train_rung(reference)
    a, b = weights(changed), weights(reference)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mlflow_run_has_params_metrics_and_artifacts(tmp_path, processed_root, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {"tracking_uri": uri, "experiment": "test-promptseg", "artifact_root": str(tmp_path / "artifacts")}
    setup = make_setup(tmp_path, processed_root, mlflow=cfg, epochs=1)
    summary = train_rung(setup)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["train.lr"] == str(COMMON["lr"])
    assert run.data.params["rung.method"] == "full"
    assert "val_dice" in run.data.metrics and run.data.metrics["trainable_params"] == summary["trainable_params"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics", "model", "val_overlay"} <= artifacts and run.info.status == "FINISHED"
    # the same per-epoch values as DVCLive, logged while training ran, in the one run of the rung
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_dice")]
    assert history == list(zip(*series(setup, "full", "val_dice")))
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert json.loads((setup.metrics_dir / "full.json").read_text())["mlflow_run_id"] == run.info.run_id
    assert "mlflow_run_id" not in (setup.model_dir / "promptseg.json").read_text()  # the folder stays deterministic
    # the machine that trained it (promptseg.machine): in the metrics file, the model card and the run's tags
    from promptseg.machine import cpu_model

    facts = json.loads((setup.metrics_dir / "full.json").read_text())["machine"]
    assert facts["cpu"] == cpu_model() and facts["precision"] == summary["precision"] and facts["device"] == "cpu"
    assert json.loads((setup.model_dir / "promptseg.json").read_text())["summary"]["machine"] == facts
    assert {k: v for k, v in run.data.tags.items() if k.startswith("machine.")} == {
        f"machine.{k}": v for k, v in facts.items()
    }


UNET_MODEL = {**TINY_MODEL, "unet": TINY_UNET}


def test_zeroshot_on_the_random_small_model_writes_no_numbers_and_says_why(tmp_path, processed_root, capsys):
    from promptseg.score.evaluate import skipped_reason, write_skipped_outputs

    setup = make_setup(
        tmp_path,
        processed_root,
        rung="zeroshot",
        cfg={"method": "zeroshot", "architecture": "clipseg", "datasets": ["cracks", "drywall"]},
    )
    summary = train_rung(setup)
    assert "pretrained" in summary["skipped"] and "skipped" in capsys.readouterr().out
    written = json.loads((setup.metrics_dir / "zeroshot.json").read_text())
    assert set(written) == {"rung", "method", "skipped"}  # no numbers
    assert not (setup.model_dir / "model.safetensors").exists()
    # a DVCLive folder with no steps: every file the train stage declares exists, with no numbers
    assert json.loads((setup.metrics_dir / "zeroshot" / "metrics.json").read_text()) == {}
    assert (setup.metrics_dir / "zeroshot" / "params.yaml").exists()
    assert series(setup, "zeroshot", "val_dice") == ([], [])
    reason = skipped_reason(setup.model_dir)
    assert reason == summary["skipped"]
    write_skipped_outputs("zeroshot", reason, tmp_path / "eval", tmp_path / "pred", ["cracks", "drywall"])
    assert json.loads((tmp_path / "eval" / "zeroshot.json").read_text()) == {"skipped": reason}
    assert (tmp_path / "eval" / "figures" / "zeroshot_cracks.png").stat().st_size > 0


def test_unet_rung_trains_in_the_same_loop_and_predicts_after_reload(tmp_path, processed_root, monkeypatch):
    import numpy as np

    import promptseg.train.loop
    from promptseg.images import list_split, read_rgb
    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.train.losses import presence_loss

    gate_batches = []  # the loop adds the presence gate's own loss on every training batch

    def recording_presence_loss(presence_logits, target):
        gate_batches.append((tuple(presence_logits.shape), tuple(target.shape)))
        return presence_loss(presence_logits, target)

    monkeypatch.setattr(promptseg.train.loop, "presence_loss", recording_presence_loss)

    cfg = {
        "method": "full",
        "architecture": "unet",
        "image_size": 64,
        "lr": 3e-3,
        "presence_weight": 0.3,
        "datasets": ["cracks", "drywall"],
    }
    setup = make_setup(tmp_path, processed_root, "unet", cfg, model=UNET_MODEL, epochs=2)
    summary = train_rung(setup)
    losses = series(setup, "unet", "train_loss")[1]
    assert losses[-1] < losses[0], losses
    assert gate_batches and all(p == t[:1] and len(t) == 3 for p, t in gate_batches), gate_batches
    assert summary["architecture"] == "unet" and summary["trainable_params"] == summary["total_params"]
    trained = load_trained_model(setup.model_dir)
    assert trained.per_image is False and trained.image_size == 64
    images = [read_rgb(p) for p, _ in list_split(processed_root, "cracks", "test")[:2]]
    first = trained.masks(images, ["segment crack"] * 2, Recipe(threshold=0.5))
    again = load_trained_model(setup.model_dir).masks(images, ["segment crack"] * 2, Recipe(threshold=0.5))
    assert all(a.shape == im.shape[:2] and np.array_equal(a, b) for a, b, im in zip(first, again, images))


def test_box_projection_target_applies_only_to_its_dataset():
    from dataclasses import replace

    from promptseg.settings import TrainCommonSettings, build
    from promptseg.train.loop import training_loss
    from promptseg.train.losses import bce_dice_loss, box_components, box_projection_loss

    torch.manual_seed(0)
    logits, pixels = torch.randn(4, 16, 16), torch.randn(4, 3, 16, 16)
    targets = torch.zeros(4, 16, 16)
    targets[:, 4:8, 2:14] = 1.0
    names = ["cracks", "drywall", "cracks", "drywall"]
    plain = build(TrainCommonSettings, TINY_COMMON, "train.common")
    assert torch.allclose(training_loss(logits, targets, names, pixels, plain), bce_dice_loss(logits, targets))
    boxed = replace(plain, targets={"cracks": "mask", "drywall": "box_projection"})
    expected = (
        2 * bce_dice_loss(logits[[0, 2]], targets[[0, 2]])
        + 2
        * box_projection_loss(
            logits[[1, 3]], targets[[1, 3]], images=pixels[[1, 3]], components=box_components(targets[[1, 3]])
        )
    ) / 4
    assert torch.allclose(training_loss(logits, targets, names, pixels, boxed), expected, atol=1e-6)


def test_unrelated_negative_prompts_are_a_second_pool_drawn_at_their_share(tmp_path, processed_root):
    from types import SimpleNamespace

    from promptseg.train.loop import build_datasets

    processor = SimpleNamespace(image_processor=SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3))

    def negatives_drawn(share):
        setup = make_setup(
            tmp_path,
            processed_root,
            negative_prompt_prob=1.0,
            unrelated_negative_share=share,
            unrelated_negative_prompts=["segment sky", "segment joint tape"],
        )
        cracks, drywall = build_datasets(setup, processor, "train", training=True).datasets
        assert cracks.negative_prompts == PROMPTS["drywall"] and cracks.unrelated_prompts == ["segment sky"]
        assert drywall.negative_prompts == PROMPTS["cracks"]
        assert drywall.unrelated_prompts == ["segment sky", "segment joint tape"]
        drawn = []
        for epoch in range(20):
            cracks.set_epoch(epoch)
            for i in range(len(cracks)):
                _, target, prompt, _ = cracks[i]
                assert float(target.sum()) == 0.0
                drawn.append(prompt)
        assert set(drawn) <= set(PROMPTS["drywall"]) | {"segment sky"}
        return drawn.count("segment sky") / len(drawn)

    assert negatives_drawn(0.0) == 0.0
    assert 0.35 < negatives_drawn(0.5) < 0.65  # the other dataset's negatives are not diluted by the pool's size
    assert negatives_drawn(1.0) == 1.0
    setup = make_setup(tmp_path, processed_root, unrelated_negative_prompts=["segment sky"])
    val_parts = build_datasets(setup, processor, "val", training=False).datasets
    assert all(
        not part.negative_prompts and not part.unrelated_prompts and part.negative_prompt_prob == 0.0
        for part in val_parts
    )


def test_dataset_repeats_reach_the_training_set_and_never_the_validation_set(tmp_path, processed_root):
    from types import SimpleNamespace

    from promptseg.train.loop import build_datasets

    processor = SimpleNamespace(image_processor=SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3))
    setup = make_setup(tmp_path, processed_root, dataset_repeats={"cracks": 1, "drywall": 3})
    cracks, drywall = build_datasets(setup, processor, "train", training=True).datasets
    photos = {name: len(list_split(processed_root, name, "train")) for name in ("cracks", "drywall")}
    assert (len(cracks), len(drywall)) == (photos["cracks"], 3 * photos["drywall"])
    assert len(build_datasets(setup, processor, "train", training=True)) == photos["cracks"] + 3 * photos["drywall"]
    val = build_datasets(setup, processor, "val", training=False).datasets
    assert [part.repeats for part in val] == [1, 1]


def test_params_keep_training_negatives_apart_from_the_held_out_unrelated_prompts():
    import yaml

    params = yaml.safe_load(open("params.yaml"))
    train_negatives = set(params["train"]["common"]["unrelated_negative_prompts"])
    dataset_prompts = {p for ds in params["data"].values() if isinstance(ds, dict) for p in ds.get("prompts", [])}
    assert train_negatives and not train_negatives & set(params["eval"]["unrelated_prompts"])
    assert not train_negatives & dataset_prompts


def test_text_lr_puts_the_unet_text_encoder_in_its_own_optimizer_group():
    from promptseg.modeling.registry import build_model
    from promptseg.train.loop import optimizer_param_groups

    model, _ = build_model(UNET_MODEL, 64, 0, "unet")
    single = optimizer_param_groups(model, 2e-3)
    assert len(single) == 1 and single[0]["lr"] == 2e-3
    rest, text = optimizer_param_groups(model, 2e-3, text_lr=3e-4)
    text_ids = {id(p) for p in model.text_encoder.parameters()}
    assert (rest["lr"], text["lr"]) == (2e-3, 3e-4)
    assert {id(p) for p in text["params"]} == text_ids and not text_ids & {id(p) for p in rest["params"]}
    assert len(rest["params"]) + len(text["params"]) == len(list(model.parameters()))
    model.text_encoder.requires_grad_(False)  # frozen text: nothing for text_lr to act on
    assert len(optimizer_param_groups(model, 2e-3, text_lr=3e-4)) == 1


def test_zeroshot_on_a_pretrained_folder_logs_its_one_validation_row_at_step_0(tmp_path, processed_root):
    from promptseg.modeling.clipseg import build_small_model

    source = tmp_path / "pretrained"  # a pretrained-format folder, as a hub download would be
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    model.save_pretrained(source)
    processor.save_pretrained(source)
    setup = make_setup(
        tmp_path,
        processed_root,
        rung="zeroshot",
        model={**UNET_MODEL, "source": str(source)},
        cfg={"method": "zeroshot", "architecture": "clipseg", "datasets": ["cracks", "drywall"]},
    )
    summary = train_rung(setup)
    assert summary["epochs"] == 0 and math.isnan(summary["final_train_loss"])
    assert series(setup, "zeroshot", "val_dice") == ([0], [summary["final_val_dice"]])
    assert series(setup, "zeroshot", "val_loss") == ([0], [summary["final_val_loss"]])
    assert series(setup, "zeroshot", "train_loss") == ([], [])  # nothing trained: no train loss, the file exists
    live = setup.metrics_dir / "zeroshot"
    assert json.loads((live / "metrics.json").read_text())["step"] == 0
    assert [p.name for p in (live / "plots" / "images" / "val_overlay").iterdir()] == ["0.png"]


def test_adamw_kernels_foreach_is_the_for_loop_update_and_fused_the_same_formula():
    """train.common.adamw: foreach gives bitwise the per-tensor loop's weights (PyTorch's CPU default);
    fused the same formula rounded differently: equal to ~1e-6 after a few steps, not bitwise."""
    import dataclasses

    from promptseg.train.loop import make_optimizer

    common = tiny_train_settings("unet", TINY_RUNGS["unet"]).rung.train
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Linear(64, 3))
    grads = [[torch.randn_like(p) for p in start.parameters()] for _ in range(5)]

    def trained(adamw: str | None) -> torch.Tensor:
        module = copy.deepcopy(start)
        if adamw is None:  # the for-loop implementation
            optimizer = torch.optim.AdamW(module.parameters(), lr=common.lr, weight_decay=0.01, foreach=False)
        else:
            optimizer = make_optimizer(module, dataclasses.replace(common, adamw=adamw, weight_decay=0.01), None)
        for step_grads in grads:
            for p, g in zip(module.parameters(), step_grads):
                p.grad = g.clone()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    loop, foreach, fused = trained(None), trained("foreach"), trained("fused")
    assert not torch.equal(loop, torch.cat([p.detach().flatten() for p in start.parameters()]))
    assert torch.equal(foreach, loop)
    assert torch.allclose(fused, loop, atol=1e-5) and not torch.equal(fused, loop)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_per_epoch_validation_runs_in_the_training_precision(tmp_path, processed_root, monkeypatch, precision):
    """The val curve's forward runs under the training's autocast (bf16 costs a third of fp32 on this CPU),
    and its loss and Dice are still taken on float logits."""
    import promptseg.train.loop

    seen = []  # (training mode, autocast on, logits dtype) of every forward the loop makes
    original = promptseg.train.loop.segmentation_logits

    def recording(module, *args, **kwargs):
        logits = original(module, *args, **kwargs)
        first = logits[0] if isinstance(logits, tuple) else logits  # (logits, presence) in the training forward
        seen.append((module.training, torch.is_autocast_enabled("cpu"), first.dtype))
        return logits

    monkeypatch.setattr(promptseg.train.loop, "segmentation_logits", recording)
    setup = make_setup(tmp_path, processed_root, precision=precision, epochs=1)
    summary = train_rung(setup)
    validation = [(on, dtype) for training, on, dtype in seen if not training]
    assert validation, seen  # the val set's batches and the logged overlay
    bf16 = precision == "bf16"
    assert all(on == bf16 for on, _ in validation), validation
    assert all(dtype == (torch.bfloat16 if bf16 else torch.float32) for _, dtype in validation), validation
    assert summary["precision"] == precision and 0.0 <= summary["final_val_dice"] <= 1.0
