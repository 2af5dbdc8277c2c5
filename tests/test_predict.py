"""`promptseg predict`: folders with bad files, exit codes, overlays, the threshold actually used."""

import json

import cv2
import numpy as np
import pytest

from promptseg.serve.cli import main

from conftest import predict_argv


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "b.jpg"), rng.integers(0, 256, (33, 47, 3), dtype=np.uint8))
    (d / "bad.jpg").write_bytes(b"\x00garbage, not a jpeg" * 10)
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_with_bad_files_writes_good_masks_and_reports_the_rest(tiny_model_dir, folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        predict_argv(
            str(tiny_model_dir),
            str(folder),
            out=str(out),
            extra=["--batch-size", "2", "--eval-metrics", str(tmp_path / "none.json")],
        )
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert sorted(p.name for p in out.glob("[!.]*")) == ["a__segment-crack.png", "b__segment-crack.png"]
    for name, shape in (("a", (40, 56)), ("b", (33, 47))):
        mask = cv2.imread(str(out / f"{name}__segment-crack.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
    assert f"skipped {folder / 'bad.jpg'}: not a readable image" in captured.err
    assert "notes.txt" in captured.err
    assert "2 masks written, 2 skipped" in captured.out
    assert "threshold 0.5" in captured.out and "none.json" in captured.out


def test_threshold_default_comes_from_the_eval_file_of_the_prompts_dataset(tiny_model_dir, folder, tmp_path, capsys):
    eval_path = tmp_path / "tiny.json"
    eval_path.write_text(json.dumps({"cracks": {"threshold": 0.3}, "drywall": {"threshold": 0.7}}))
    rc = main(
        predict_argv(
            str(tiny_model_dir),
            str(folder / "a.png"),
            out=str(tmp_path / "o"),
            prompt="segment joint tape",
            extra=["--eval-metrics", str(eval_path)],
        )
    )
    out = capsys.readouterr().out
    assert rc == 0 and "threshold 0.7: chosen on val for dataset 'drywall'" in out
    main(
        [
            "predict",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "segment a cat",
            str(folder / "a.png"),
            "--out",
            str(tmp_path / "o2"),  # o holds another prompt's masks: refused there without --overwrite
            "--eval-metrics",
            str(eval_path),
        ]
    )
    assert (
        "threshold 0.5: the default recipe (threshold 0.5 is the fallback), because 'segment a cat' is not one of "
        "the model's training prompts" in capsys.readouterr().out
    )


def test_threshold_one_gives_empty_masks_and_overlay_is_written(tiny_model_dir, folder, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            predict_argv(
                str(tiny_model_dir),
                str(folder / "a.png"),
                str(folder / "b.jpg"),
                out=str(out),
                extra=["--threshold", "1.0", "--overlay"],
            )
        )
        == 0
    )
    for name in ("a", "b"):
        assert not cv2.imread(str(out / f"{name}__segment-crack.png"), cv2.IMREAD_GRAYSCALE).any()
        overlay = cv2.imread(str(out / f"{name}__segment-crack_overlay.png"), cv2.IMREAD_COLOR)
        original = cv2.imread(str(folder / f"{name}.{'png' if name == 'a' else 'jpg'}"), cv2.IMREAD_COLOR)
        assert overlay.shape == original.shape
        assert np.array_equal(overlay, original)  # nothing lit: the overlay is the image itself
    zero = tmp_path / "zero"
    assert (
        main(
            predict_argv(
                str(tiny_model_dir),
                str(folder / "a.png"),
                out=str(zero),
                extra=["--threshold", "0", "--overlay", "--no-morphology"],
            )
        )
        == 0
    )
    mask = cv2.imread(str(zero / "a__segment-crack.png"), cv2.IMREAD_GRAYSCALE)
    overlay = cv2.cvtColor(cv2.imread(str(zero / "a__segment-crack_overlay.png")), cv2.COLOR_BGR2RGB)
    image = cv2.cvtColor(cv2.imread(str(folder / "a.png")), cv2.COLOR_BGR2RGB).astype(float)
    lit = mask > 0
    assert lit.all()  # sigmoid > 0 everywhere
    expected = np.rint(0.5 * image + 0.5 * np.array([255.0, 0.0, 0.0]))
    assert np.abs(overlay.astype(float) - expected).max() <= 1


def test_usage_errors_exit_2(tiny_model_dir, folder, tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(predict_argv(str(tiny_model_dir), str(missing), out=str(tmp_path / "o"))) == 2
    assert str(missing) in capsys.readouterr().err
    for prompt in ("", "   "):
        assert main(predict_argv(str(tiny_model_dir), str(folder), out=str(tmp_path / "o"), prompt=prompt)) == 2
        assert "give a non-empty --prompt" in capsys.readouterr().err
    assert main(predict_argv(str(tmp_path / "no-model"), str(folder), out=str(tmp_path / "o"))) == 2
    assert "no-model" in capsys.readouterr().err
    assert (
        main(
            predict_argv(
                str(tiny_model_dir), str(folder), out=str(tmp_path / "o"), prompt="x", extra=["--threshold", "1.5"]
            )
        )
        == 2
    )


def test_nothing_readable_exits_1(tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "broken.png").write_bytes(b"not a png")
    assert main(predict_argv(str(tiny_model_dir), str(d), out=str(tmp_path / "o"))) == 1
    assert "0 masks written, 1 skipped" in capsys.readouterr().out


def test_engine_and_threads_options(tiny_model_dir, folder, tmp_path, capsys):
    """--engine onnx on a folder without an export: one line naming `promptseg export`; bad values exit 2."""
    args = predict_argv(str(tiny_model_dir), str(folder / "a.png"), out=str(tmp_path / "o"))
    assert main([*args, "--engine", "onnx"]) == 2
    err = capsys.readouterr().err
    assert f"run `promptseg export --model {tiny_model_dir}` first" in err and err.count("\n") == 1
    assert main([*args, "--engine", "tensorrt"]) == 2
    assert main([*args, "--threads", "0"]) == 2
    import torch

    before = torch.get_num_threads()
    try:
        assert main([*args, "--threads", "1", "--threshold", "1.0"]) == 0  # the torch engine with one thread
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)  # the setting is process-wide: do not slow the tests after this one
