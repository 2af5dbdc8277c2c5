"""Model building, LoRA counts, and the gradient-reaching forward."""

import time

import pytest
import torch
from transformers import CLIPSegForImageSegmentation

from promptseg.modeling.clipseg import (
    ModelSourceError,
    apply_method,
    build_clip_tokenizer,
    build_small_model,
    count_parameters,
    load_pretrained,
    lora_parameter_count,
    rd64_refined_config,
)
from promptseg.modeling.registry import segmentation_logits
from promptseg.settings import LoraSettings

from conftest import TINY_MODEL


def lora_settings(train_decoder: bool) -> LoraSettings:
    return LoraSettings(r=16, alpha=32, dropout=0.0, targets=("q_proj", "v_proj"), train_decoder=train_decoder)


def test_tokenizer_matches_real_clipseg_ids():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("segment wall crack")["input_ids"] == [49406, 15615, 2569, 10334, 49407]
    assert tokenizer.pad_token_id == 49407


def test_lora_on_rd64_refined_shape_has_the_reports_995328_trainable():
    model = CLIPSegForImageSegmentation(rd64_refined_config())
    assert count_parameters(model)[1] == 150_747_746
    peft_model = apply_method(model, "lora", lora_settings(False))
    assert count_parameters(peft_model)[0] == 995_328 == lora_parameter_count(peft_model)


def test_lora_with_decoder_counts_decoder_too():
    model, _ = build_small_model(TINY_MODEL, 64, 0)
    decoder_params = sum(p.numel() for p in model.decoder.parameters())
    adapted = apply_method(model, "lora", lora_settings(True))
    lora = lora_parameter_count(adapted)
    assert lora > 0
    assert count_parameters(adapted)[0] == decoder_params + lora  # decoder base weights + every adapter


def _batch(processor, size=64, n=2):
    torch.manual_seed(1)
    tokens = processor.tokenizer(["segment crack", "segment taping area"][:n], padding=True, return_tensors="pt")
    return torch.randn(n, 3, size, size), tokens["input_ids"], tokens["attention_mask"]


def test_training_forward_equals_library_forward_in_eval():
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    model.eval()
    x, ids, mask = _batch(processor)
    with torch.no_grad():
        ours = segmentation_logits(model, x, ids, mask)
        library = model(pixel_values=x, input_ids=ids, attention_mask=mask).logits
    assert ours.shape == (2, 64, 64)
    assert torch.equal(ours, library)


@pytest.mark.parametrize("patch", [8, 16])
def test_small_model_restores_the_input_size_for_patch_8_and_16(patch):
    import copy

    cfg = copy.deepcopy(TINY_MODEL)
    cfg["clipseg"]["vision"]["patch_size"] = patch
    model, processor = build_small_model(cfg, 64, 0)
    assert model.config.use_complex_transposed_convolution == (patch == 16)  # transformers' x(p/4)^2 fits 16 only
    x, ids, mask = _batch(processor)
    with torch.no_grad():
        ours = segmentation_logits(model.eval(), x, ids, mask)
        library = model(pixel_values=x, input_ids=ids, attention_mask=mask).logits
    assert ours.shape == (2, 64, 64) and torch.equal(ours, library.reshape(ours.shape))


def test_small_model_logits_have_a_sane_scale_at_init():
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    x, ids, mask = _batch(processor)
    with torch.no_grad():
        logits = segmentation_logits(model.eval(), x, ids, mask)
    assert logits.abs().max() < 20  # transformers' std-1.0 decoder init gives ~1000


def _step(module, loss_fn):
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    loss_fn().backward()
    opt.step()


def test_one_step_changes_vision_text_and_decoder_lora_and_nothing_frozen():
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    adapted = apply_method(model, "lora", lora_settings(False))
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    x, ids, mask = _batch(processor)
    _step(adapted, lambda: segmentation_logits(adapted, x, ids, mask).sigmoid().mean())
    changed = {n for n, p in adapted.named_parameters() if not torch.equal(p, before[n])}
    for part in ("vision_model", "text_model", "decoder"):
        assert any(part in n and "lora_B" in n for n in changed), f"no {part} LoRA weight changed"
    assert all("lora_" in n for n in changed), "a frozen weight changed"


def test_library_forward_leaves_encoder_lora_without_gradient():
    """The trap the reference implementation fell into: documented by a test."""
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    adapted = apply_method(model, "lora", lora_settings(False))
    x, ids, mask = _batch(processor)
    adapted.base_model.model(pixel_values=x, input_ids=ids, attention_mask=mask).logits.sigmoid().mean().backward()
    graded = {n for n, p in adapted.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all(".decoder." in n for n in graded)


def test_decoder_rung_keeps_encoders_bit_identical():
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    adapted = apply_method(model, "decoder")
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    x, ids, mask = _batch(processor)
    _step(adapted, lambda: segmentation_logits(adapted, x, ids, mask).sigmoid().mean())
    for name, param in adapted.named_parameters():
        if name.startswith("clip."):
            assert torch.equal(param, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in adapted.named_parameters() if n.startswith("decoder."))


def test_unknown_method_is_a_clear_error():
    model, _ = build_small_model(TINY_MODEL, 64, 0)
    with pytest.raises(ValueError, match="unknown training method 'adapter'"):
        apply_method(model, "adapter")


def test_offline_hub_id_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelSourceError) as info:
        load_pretrained("CIDAS/clipseg-rd64-refined")
    assert time.perf_counter() - started < 10
    assert "CIDAS/clipseg-rd64-refined" in str(info.value) and "save_pretrained" in str(info.value)


def test_local_save_pretrained_directory_round_trips(tmp_path):
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_pretrained(str(tmp_path))
    x, ids, mask = _batch(processor)
    with torch.no_grad():
        assert torch.equal(
            segmentation_logits(model.eval(), x, ids, mask), segmentation_logits(loaded.eval(), x, ids, mask)
        )
    assert loaded_processor.tokenizer("segment crack")["input_ids"] == processor.tokenizer("segment crack")["input_ids"]
