"""Evaluation reuses the prompt-independent half of the model: same probabilities as without the cache."""

import numpy as np
import pytest
import torch

from promptseg.cache import ByteBudgetCache
from promptseg.infer.torch_engine import TorchSegmenter
from promptseg.modeling.registry import build_model

from conftest import PROMPTS, TINY_MODEL, tiny_eval_config

UNET_MODEL = {
    **TINY_MODEL,
    "unet": {
        "widths": [8, 16, 32, 64],
        "freeze_text": False,
        "presence_gate": True,
        "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    },
}


def trained_model(architecture, cache_bytes=0):
    torch.manual_seed(0)
    model, processor = build_model(UNET_MODEL, 64, 0, architecture)
    if architecture == "unet":  # FiLM starts at identity: give it weights so the prompt matters
        for film in model.film:
            torch.nn.init.normal_(film.weight, std=0.5)
    return TorchSegmenter(
        model, processor, {"per_image_standardization": architecture == "clipseg"}, cache_bytes=cache_bytes
    )


@pytest.mark.parametrize("architecture", ["clipseg", "unet"])
def test_cached_encodings_give_the_same_probabilities_for_every_prompt(architecture):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((64, 64, 3), (50, 80, 3), (64, 48, 3))]
    trained = trained_model(architecture)
    prompt_lists = [
        ["segment crack"] * 3,
        ["segment taping area"] * 3,
        ["segment crack", ["segment crack", "segment joint tape"], "segment sky"],
    ]  # ensemble: row subsets
    fresh = [
        trained.whole_image_probabilities(images, prompts, batch_size=2, hflip_tta=True) for prompts in prompt_lists
    ]
    trained = trained_model(architecture, cache_bytes=512 * 2**20)  # the same weights, with the cache on
    cached = [
        trained.whole_image_probabilities(images, prompts, batch_size=2, hflip_tta=True) for prompts in prompt_lists
    ]
    assert trained.encodings.used > 0  # the cache was filled and used
    for a_list, b_list in zip(fresh, cached):
        for a, b in zip(a_list, b_list):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert not np.allclose(fresh[0][0], fresh[1][0], atol=1e-4)  # the prompt changes the output


def test_cache_stays_within_its_byte_budget_and_drops_the_oldest():
    cache = ByteBudgetCache(max_bytes=3 * 400)  # three 10 x 10 float32 tensors
    calls = []
    for key in range(5):
        cache.get(key, lambda: calls.append(1) or torch.zeros(10, 10))
    assert cache.used <= cache.max_bytes and list(cache._entries) == [2, 3, 4]
    cache.get(4, lambda: calls.append(1) or torch.zeros(10, 10))
    assert len(calls) == 5  # key 4 came from the cache
    off = ByteBudgetCache(max_bytes=0)
    off.get("k", lambda: torch.zeros(3))
    assert off.used == 0 and not off._entries


def test_unknown_cache_policy_is_an_error():
    with pytest.raises(ValueError, match="cache policy 'fifo'"):
        ByteBudgetCache(100, policy="fifo")


def test_keep_policy_hits_on_what_it_holds_where_lru_hits_nothing_under_a_cyclic_scan():
    """Every prompt over a split larger than the budget: LRU drops each entry just before its next use."""
    computed = {"lru": 0, "keep": 0}
    for policy in computed:
        cache = ByteBudgetCache(max_bytes=6 * 400, policy=policy)  # six of the ten 10 x 10 float32 tensors
        for _ in range(3):  # three prompts, each over the ten images
            for key in range(10):
                cache.get(key, lambda p=policy: computed.__setitem__(p, computed[p] + 1) or torch.zeros(10, 10))
        assert cache.used <= cache.max_bytes
    assert computed == {"lru": 30, "keep": 10 + 2 * 4}  # keep: the first six hit on the second and third pass
    cache.clear()
    assert cache.used == 0 and not cache._entries


def test_evaluation_encodes_each_split_once_when_the_budget_holds_one_split(processed_root, monkeypatch):
    """The cache is emptied at each new split, so a budget of one split's encodings is enough: every split's images
    are encoded once (one batch: 4 images), whatever the number of prompt passes over it (nine here), except the
    second dataset's val split: its recipe is chosen on it before the first dataset is scored (so that each prompt is
    masked with its own dataset's recipe in prompt switching), then it is scored: twice."""
    import promptseg.infer.torch_engine
    from promptseg.score.evaluate import evaluate_rung

    encoded, original = [], promptseg.infer.torch_engine.encode_images
    monkeypatch.setattr(
        promptseg.infer.torch_engine,
        "encode_images",
        lambda model, pixel_values: encoded.append(len(pixel_values)) or original(model, pixel_values),
    )
    cfg = tiny_eval_config()
    roomy = trained_model("unet", cache_bytes=512 * 2**20)
    held = []  # what the cache holds when each split ends
    forget = roomy.forget_encodings
    monkeypatch.setattr(roomy, "forget_encodings", lambda: held.append(roomy.encodings.used) or forget())
    expected, _ = evaluate_rung(roomy, processed_root, PROMPTS, cfg)
    # drywall val (choose), cracks val (choose, then scored from the cache), cracks test, drywall val, drywall test
    assert len(held) == 5 and held[0] == 0 and encoded == [4] * 5
    one_split = roomy.encodings.used
    assert one_split == max(held) > 0
    encoded.clear()
    tight = trained_model("unet", cache_bytes=one_split)
    results, _ = evaluate_rung(tight, processed_root, PROMPTS, cfg)
    assert encoded == [4] * 5
    assert results == expected
