"""The ONNX engine: `promptseg export`, then masks from onnxruntime that agree with the PyTorch engine's."""

import json
import shutil

import cv2
import numpy as np
import pytest

from promptseg.serve.cli import main

from conftest import PROMPTS, TINY_MODEL

IMAGE_SIZE = 64
ALL_PROMPTS = [p for ps in PROMPTS.values() for p in ps] + ["segment the long thin dark crack running across the wall"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny CLIPSeg saved like models/<rung>, with per-image standardisation, exported by the CLI."""
    from promptseg.modeling.clipseg import build_small_model

    d = tmp_path_factory.mktemp("model") / "tiny"
    model, processor = build_small_model(TINY_MODEL, IMAGE_SIZE, 0)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    (d / "promptseg.json").write_text(
        json.dumps({"rung": "tiny", "prompts": PROMPTS, "per_image_standardization": True})
    )
    assert main(["export", "--model", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def images():
    """20 synthetic wall photos of both datasets, square and non-square, 48 to 160 px, with one prompt each."""
    from promptseg.ingest.synthetic import render_wall_sample

    rng = np.random.default_rng(11)
    out, prompts = [], []
    for i in range(20):
        dataset = ("cracks", "drywall")[i % 2]
        side = int(rng.integers(64, 161))
        bgr = render_wall_sample(dataset, rng, side, negative=(i % 7 == 6)).image
        if i % 3 == 1:  # non-square: crop rows
            bgr = bgr[: int(rng.integers(48, side)), :]
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        prompts.append(ALL_PROMPTS[i % len(ALL_PROMPTS)])
    return out, prompts


def test_export_writes_the_graph_its_metadata_and_the_tokenizer(model_dir):
    import onnx

    export = model_dir / "onnx"
    assert (export / "model.onnx").is_file() and (export / "tokenizer_config.json").is_file()
    meta = json.loads((export / "promptseg_onnx.json").read_text())
    assert meta["image_size"] == IMAGE_SIZE and meta["per_image_standardization"] is True
    assert meta["image_mean"] == TINY_MODEL["image_mean"] and meta["image_std"] == TINY_MODEL["image_std"]
    assert meta["card"]["rung"] == "tiny" and meta["opset"] >= 17
    graph = onnx.load(str(export / "model.onnx"), load_external_data=False).graph
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(graph.input) + list(graph.output)
    }
    assert dims == {
        "pixel_values": ["batch", 3, IMAGE_SIZE, IMAGE_SIZE],
        "input_ids": ["batch", "tokens"],
        "attention_mask": ["batch", "tokens"],
        "logits": ["batch", IMAGE_SIZE, IMAGE_SIZE],
    }


def test_the_export_adds_a_constant_position_table_instead_of_resizing_it_on_every_call(model_dir, tmp_path):
    """Under tracing transformers always interpolates CLIPSeg's position embeddings (a bicubic Resize on
    every call: a third of the small model's batch-1 time); the export's side is fixed, so the graph holds
    the table eager PyTorch adds at that side (the tiny model's config says 224 px, the export is 64)."""
    import onnx
    import onnxruntime as ort
    import torch

    from promptseg.infer.onnx_engine import export_onnx, logits_module

    graph = onnx.load(str(model_dir / "onnx" / "model.onnx"), load_external_data=False).graph
    assert "Resize" not in {node.op_type for node in graph.node}

    from transformers import CLIPSegForImageSegmentation

    model = CLIPSegForImageSegmentation.from_pretrained(model_dir).eval()
    embeddings = model.clip.vision_model.embeddings
    assert embeddings.image_size != IMAGE_SIZE  # eager interpolates at the export's side
    path = export_onnx(logits_module(model), tmp_path / "m.onnx", image_size=IMAGE_SIZE)
    assert "interpolate_pos_encoding" not in vars(embeddings)  # the class's method again after the export
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    ids, mask = torch.ones(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long)
    with torch.no_grad():
        eager = logits_module(model)(pixels, ids, mask).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(
        None, {"pixel_values": pixels.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    )
    assert np.abs(exported[0] - eager).max() < 1e-4


@pytest.mark.parametrize("per_image", [False, True])
def test_numpy_pre_and_post_processing_equal_the_torch_functions(images, per_image):
    import torch

    from promptseg.infer.logits import upsample_logits
    from promptseg.infer.onnx_engine import preprocess, sigmoid, upsample_bilinear
    from promptseg.modeling.preprocessing import preprocess_image

    mean, std = TINY_MODEL["image_mean"], TINY_MODEL["image_std"]
    rng = np.random.default_rng(0)
    for image in images[0][:6]:
        expected = preprocess_image(image, 96, mean, std, per_image).numpy()
        got = preprocess(image, 96, mean, std, per_image)
        assert got.dtype == np.float32 and got.shape == expected.shape and np.abs(got - expected).max() < 1e-5
    for (h, w), (H, W) in (
        ((64, 64), (137, 90)),
        ((64, 64), (40, 33)),
        ((5, 7), (5, 7)),
        ((16, 16), (1, 300)),
        ((224, 224), (640, 480)),
    ):
        logits = (rng.standard_normal((h, w)) * 20).astype(np.float32)
        expected = upsample_logits(torch.from_numpy(logits), (H, W))
        got = upsample_bilinear(logits, (H, W))
        assert got.shape == (H, W) and got.dtype == np.float32
        # float32 tap positions (~1e-5 px at 300 px) times neighbour differences of up to ~100: ~1e-3 at most
        assert np.abs(got - expected.numpy()).max() < 1e-3
        assert np.abs(sigmoid(got) - torch.sigmoid(expected).numpy()).max() < 1e-4


def test_infinite_logits_upsample_without_nan():
    """The exported graph's Log(Sigmoid(x)) is -inf for very negative x, where torch's logsigmoid stays finite. A
    first output row takes all of row 0 and none of row 1 (tap weight 0): it must be row 0, not inf x 0 = NaN."""
    import warnings

    from promptseg.infer.onnx_engine import sigmoid, upsample_bilinear

    logits = np.array([[3.0, -2.0], [-np.inf, -np.inf]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in multiply" fails the test
        up = upsample_bilinear(logits, (4, 4))
    assert not np.isnan(up).any()
    assert np.array_equal(up[0], np.array([3.0, 1.75, -0.75, -2.0], dtype=np.float32))  # row 0 alone, x interpolated
    assert (sigmoid(up[2:]) == 0).all()  # rows 2-3 lean on the -inf row: nothing lit there
    finite = np.array([[3.0, -2.0], [-500.0, 7.0]], dtype=np.float32)
    assert np.array_equal(upsample_bilinear(finite, (4, 4))[0], up[0])  # finite logits: unchanged by the clip


def test_onnx_and_torch_engines_agree_on_20_synthetic_images(model_dir, images):
    """Probabilities within 1e-3 and, thresholded at each image's median probability (raw masks half full, so the
    comparison is not between two empty masks), per-image IoU >= 0.99 with and without the open/close."""
    from promptseg.infer.onnx_engine import OnnxSegmenter
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.metrics import postprocess_probabilities

    rgb, prompts = images
    torch_probs = load_trained_model(model_dir).whole_image_probabilities(rgb, prompts, batch_size=16)
    onnx_probs = OnnxSegmenter(model_dir, threads=2).whole_image_probabilities(rgb, prompts, batch_size=7)
    assert len(onnx_probs) == len(torch_probs) == 20
    for image, p_torch, p_onnx in zip(rgb, torch_probs, onnx_probs):
        assert p_onnx.shape == p_torch.shape == image.shape[:2] and p_onnx.dtype == np.float32
        assert float(np.abs(p_onnx - p_torch).max()) < 1e-3
        assert float(p_torch.max() - p_torch.min()) > 1e-3  # the maps are not flat: the masks below mean something
        threshold = float(np.median(p_torch))
        for morphology in (False, True):  # the raw threshold, then the default 3x3 open/close
            m_torch = postprocess_probabilities(p_torch, threshold, morphology=morphology)
            m_onnx = postprocess_probabilities(p_onnx, threshold, morphology=morphology)
            fill = (m_torch > 0).mean()
            assert (0.3 < fill < 0.7) if not morphology else fill > 0.01
            assert _iou(m_torch, m_onnx) >= 0.99


def test_predict_engine_onnx_writes_the_masks_the_torch_engine_writes(model_dir, images, tmp_path, capsys):
    from promptseg.infer.torch_engine import load_trained_model

    folder = tmp_path / "in"
    folder.mkdir()
    rgb = images[0][:4]
    for i, image in enumerate(rgb):
        cv2.imwrite(str(folder / f"im{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    threshold = float(np.median(load_trained_model(model_dir).whole_image_probabilities(rgb[:1], ["segment crack"])[0]))
    common = ["--model", str(model_dir), "--prompt", "segment crack", str(folder), "--threshold", f"{threshold:.9f}"]
    assert main(["predict", *common, "--out", str(tmp_path / "t")]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "o"), "--engine", "onnx", "--threads", "1"]) == 0
    assert "engine onnx" in capsys.readouterr().out
    for i in range(len(rgb)):
        a = cv2.imread(str(tmp_path / "t" / f"im{i}__segment-crack.png"), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(tmp_path / "o" / f"im{i}__segment-crack.png"), cv2.IMREAD_GRAYSCALE)
        assert a.shape == b.shape == rgb[i].shape[:2]
        assert _iou(a, b) >= 0.99


def test_engine_onnx_without_an_export_names_the_export_command(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("onnx"))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    rc = main(
        [
            "predict",
            "--engine",
            "onnx",
            "--model",
            str(bare),
            "--prompt",
            "segment crack",
            str(image),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert f"promptseg export --model {bare}" in err and err.count("\n") == 1


def test_threads_flag_and_default(model_dir):
    from promptseg.infer.onnx_engine import OnnxSegmenter, default_threads

    assert OnnxSegmenter(model_dir, threads=1).session.get_session_options().intra_op_num_threads == 1
    engine = OnnxSegmenter(model_dir / "onnx")  # the export folder itself works too
    assert engine.threads == default_threads() == engine.session.get_session_options().intra_op_num_threads


def test_changed_weights_make_the_export_stale(model_dir, tmp_path):
    from promptseg.infer.onnx_engine import stale_export_reason
    from promptseg.modeling.clipseg import build_small_model

    assert stale_export_reason(model_dir / "onnx") is None
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    build_small_model(TINY_MODEL, IMAGE_SIZE, 1)[0].save_pretrained(copy)  # other weights, same folder
    reason = stale_export_reason(copy / "onnx")
    assert reason and f"promptseg export --model {copy}" in reason


def test_export_of_a_folder_that_is_not_a_model_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", "--model", str(tmp_path / "empty")]) == 2
    assert main(["export", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "missing" in err


def test_export_onnx_takes_any_module_with_the_same_forward(tmp_path):
    """Another model type (e.g. a U-Net) only needs a forward (pixel_values, input_ids, attention_mask) -> logits."""
    import onnxruntime as ort
    import torch

    from promptseg.infer.onnx_engine import export_onnx

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(100, 4)
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, pixel_values, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).float()
            text = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
            return (self.conv(pixel_values) * text[:, :, None, None]).sum(1)

    torch.manual_seed(0)
    toy = Toy().eval()
    path = export_onnx(toy, tmp_path / "toy.onnx", image_size=16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixel_values = torch.randn(3, 3, 16, 16)
    ids = torch.randint(0, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    got = session.run(
        None, {"pixel_values": pixel_values.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    )[0]
    with torch.no_grad():
        expected = toy(pixel_values, ids, mask).numpy()
    assert got.shape == (3, 16, 16) and np.abs(got - expected).max() < 1e-4


def test_the_export_check_compares_probabilities_and_counts_the_mask_pixels_that_flip():
    """A logit off by 0.00119 (what an Intel AMX machine's fp32 kernels gave against onnxruntime's, issue 32)
    moves a probability by at most a quarter of that: the check passes, and names the one pixel whose mask
    flips (its logit sits 0.0005 below 0). A graph off by 0.1 in every logit fails."""
    from promptseg.infer.onnx_engine import PROBABILITY_TOLERANCE, compare_outputs

    torch_logits = np.array([[[-0.0005, 0.5], [3.0, -3.0]]], np.float32)
    near = compare_outputs(torch_logits + 0.00119, torch_logits, {"cracks": 0.5, "drywall": 0.9})
    assert near.passed and PROBABILITY_TOLERANCE == 1e-3 and near.pixels == 4
    assert near.max_logit_difference == pytest.approx(0.00119, abs=1e-6)
    assert near.max_probability_difference == pytest.approx(0.00119 / 4, rel=1e-3)  # sigmoid's slope at 0
    assert near.mask_difference_share == {"cracks": 0.25, "drywall": 0.0}  # p = 0.9526 at logit 3: no flip at 0.9
    assert "25.0000% at the cracks threshold 0.5" in near.summary()
    far = compare_outputs(torch_logits + 0.1, torch_logits)
    assert not far.passed and far.thresholds == {"default": 0.5}
    assert far.max_probability_difference == pytest.approx(0.5 * (np.tanh(0.05) + 1) - 0.5, rel=1e-4)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_outputs(torch_logits, torch_logits[0])


def _offset_sessions(monkeypatch, offset: float):
    """onnxruntime sessions whose logits are the graph's plus ``offset`` (a stand-in for another CPU's kernels)."""
    from promptseg.infer import onnx_engine

    make = onnx_engine._make_session

    class Offset:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            return [out + np.float32(offset) for out in self.session.run(names, feeds)]

    monkeypatch.setattr(onnx_engine, "_make_session", lambda *a, **k: Offset(make(*a, **k)))


def test_export_passes_a_logit_offset_of_0_00119_and_records_the_check(model_dir, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "tiny"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("onnx"))
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"cracks": {"threshold": 0.4}, "drywall": {"threshold": 0.6}, "overall": {}}))
    _offset_sessions(monkeypatch, 0.00119)
    assert main(["export", "--model", str(copy), "--eval-metrics", str(eval_json)]) == 0
    check = json.loads((copy / "onnx" / "promptseg_onnx.json").read_text())["check"]
    assert check["passed"] is True and check["probability_tolerance"] == 1e-3
    assert check["thresholds"] == {"cracks": 0.4, "drywall": 0.6}
    assert check["max_logit_difference"] == pytest.approx(0.00119, abs=1e-5)
    assert 0.00119 / 4 * 0.9 < check["max_probability_difference"] <= 0.00119 / 4 + 1e-6
    assert set(check["mask_difference_share"]) == {"cracks", "drywall"}
    out = capsys.readouterr().out
    assert "check against PyTorch: max probability difference 2.9" in out and "the cracks threshold 0.4" in out


def test_export_of_a_wrong_graph_fails_naming_the_difference(model_dir, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "tiny"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("onnx"))
    _offset_sessions(monkeypatch, 0.2)  # every probability off by about 0.05
    assert (
        main(["export", "--model", str(copy), "--eval-metrics", str(tmp_path / "none.json")]) == 1
    )  # EXIT_NOTHING_WRITTEN
    err = capsys.readouterr().err
    assert "does not reproduce the PyTorch probabilities: max probability difference 4.9" in err
    assert "(tolerance 0.001)" in err and "at the default threshold 0.5" in err and "Traceback" not in err
    assert json.loads((copy / "onnx" / "promptseg_onnx.json").read_text())["check"]["passed"] is False
