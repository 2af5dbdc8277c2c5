"""Land a Roboflow export in ``data/raw/<dataset>/``: from Roboflow, from a local zip/folder, or synthetic.

Whatever the source, the stage writes into a sibling ``<out>.partial`` folder first and renames it
into place only when complete, so a failure never leaves a half-written export behind.
"""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path

from promptseg.images import IMAGE_SUFFIXES
from promptseg.ingest.exports import ExportError, detect_export_format
from promptseg.ingest.synthetic import write_synthetic_export
from promptseg.paths import broken_link_reason
from promptseg.settings import RoboflowSettings, SourceSettings, SyntheticSettings, to_plain

SOURCES = ("synthetic", "local", "roboflow")
API_KEY_VARIABLE = "ROBOFLOW_API_KEY"


class SourceError(RuntimeError):
    """A dataset source cannot be used; the message says why and what to do instead."""


def _alternatives(dataset: str) -> str:
    return (
        f"Alternatives: set data.{dataset}.source: local with data.{dataset}.local.path pointing at an "
        f"export you already have (zip or folder), or data.{dataset}.source: synthetic for the embedded offline set."
    )


def _scrub(text: str, secret: str | None) -> str:
    """Remove the API key from any text that might reach a log or an error message."""
    return text.replace(secret, "***") if secret else text


def download_from_roboflow(dataset: str, roboflow_cfg: RoboflowSettings, out_dir: Path) -> None:
    """Download workspace/project/version in the configured format with the roboflow SDK.

    The key comes from the environment only (``ROBOFLOW_API_KEY``); it never appears in messages.
    """
    api_key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if not api_key:
        raise SourceError(
            f"data.{dataset}.source is 'roboflow' but the environment variable {API_KEY_VARIABLE} is not set. "
            f"Export it in your shell (never put it in params.yaml). {_alternatives(dataset)}"
        )
    try:
        import requests  # noqa: PLC0415 (heavy, optional: roboflow (and its requests))
        from roboflow import Roboflow  # noqa: PLC0415 (heavy, optional: roboflow)
    except ImportError as exc:  # pragma: no cover - roboflow is a pinned dependency
        raise SourceError(f"the roboflow package is not installed ({exc}); run `make install`.") from None

    where = f"{roboflow_cfg.workspace}/{roboflow_cfg.project} version {roboflow_cfg.version}"
    try:
        client = Roboflow(api_key=api_key)
        version = client.workspace(roboflow_cfg.workspace).project(roboflow_cfg.project).version(roboflow_cfg.version)
        version.download(model_format=roboflow_cfg.format, location=str(out_dir), overwrite=True)
    except requests.exceptions.RequestException as exc:
        raise SourceError(
            f"could not reach Roboflow to download {where} ({type(exc).__name__}: no network access?). "
            f"{_alternatives(dataset)}"
        ) from None
    except Exception as exc:  # the SDK raises bare RuntimeError/KeyError for a wrong workspace or version
        raise SourceError(
            f"Roboflow refused the download of {where} in format {roboflow_cfg.format!r}: "
            f"{_scrub(str(exc), api_key)}. Check data.{dataset}.roboflow in params.yaml and that your key "
            f"can read this project. {_alternatives(dataset)}"
        ) from None


def _export_root(folder: Path) -> Path:
    """A zip often wraps the export in one top folder: descend while there is exactly one folder and no split."""
    markers = ("train", "valid", "val", "test", "data.yaml")
    current = folder
    while not any((current / m).exists() for m in markers):
        children = [c for c in current.iterdir() if not c.name.startswith((".", "__MACOSX"))]
        if len(children) == 1 and children[0].is_dir():
            current = children[0]
        else:
            break
    return current


def copy_local_export(dataset: str, path: str | os.PathLike, out_dir: Path) -> None:
    """Copy a Roboflow export the user already has (a .zip or a folder) into ``out_dir``."""
    if not str(path).strip():
        raise SourceError(
            f"data.{dataset}.source is 'local' but data.{dataset}.local.path is empty. {_alternatives(dataset)}"
        )
    src = Path(path).expanduser()
    if not src.exists():
        raise SourceError(f"data.{dataset}.local.path {str(src)!r} {_why_missing(src)}")
    if _contains(src, out_dir):
        raise SourceError(
            f"data.{dataset}.local.path {str(src)!r} contains the folder the export is copied into ({out_dir}): "
            "copying it would copy the repository into itself. Point it at the export's own folder or zip."
        )
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise SourceError(
                f"{src} is a file but not a zip archive: give a Roboflow export .zip or its unzipped folder."
            )
        staging = out_dir.with_name(out_dir.name + ".unzip")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            try:
                with zipfile.ZipFile(src) as archive:
                    archive.extractall(staging)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
                raise SourceError(
                    f"{src} cannot be unzipped ({type(exc).__name__}: {exc}): the archive is corrupt "
                    "or truncated. Download the export again (or unzip it yourself and point "
                    f"data.{dataset}.local.path at the folder)."
                ) from None
            except OSError as exc:
                raise SourceError(f"cannot unzip {src} into {staging}: {exc}") from None
            _copy_folder(dataset, _export_root(staging), out_dir, src)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        _copy_folder(dataset, _export_root(src), out_dir, src)


def _why_missing(src: Path) -> str:
    """The end of 'data.<d>.local.path X ...' for a path that cannot be reached: a symbolic link that loops or
    points nowhere, or a path that does not exist."""
    link = broken_link_reason(src)
    if link:
        return f"{link}: point it at the export's real folder or zip."
    return "does not exist. Point it at a Roboflow export zip or folder."


def _contains(folder: Path, inner: Path) -> bool:
    """Whether ``inner`` is ``folder`` or lies inside it (both resolved)."""
    try:
        folder, inner = folder.resolve(), Path(inner).resolve()
    except (OSError, RuntimeError):
        return False
    return inner == folder or folder in inner.parents


def _copy_folder(dataset: str, folder: Path, out_dir: Path, came_from: Path) -> None:
    """``shutil.copytree`` of an export folder; a file it cannot copy (a symbolic link that loops or points
    nowhere, a file without read permission) is one message naming the first few."""
    try:
        shutil.copytree(folder, out_dir)
    except shutil.Error as exc:
        failed = [f"{src} ({why})" for src, _, why in exc.args[0][:3]] if exc.args and exc.args[0] else [str(exc)]
        raise SourceError(
            f"data.{dataset}.local.path {str(came_from)!r}: {len(exc.args[0]) if exc.args else 1} file(s) cannot be "
            f"copied, e.g. {'; '.join(failed)}: remove or fix those links/files in the export and run again."
        ) from None
    except (OSError, RecursionError) as exc:
        raise SourceError(f"data.{dataset}.local.path {str(came_from)!r}: cannot copy {folder}: {exc}") from None


def check_landed_export(dataset: str, folder: Path, came_from: str) -> None:
    """Refuse a landed export that the masks stage could not use: no split folder with annotations
    (an empty folder, a wrong folder) or not a single image file in its split folders."""

    try:
        detect_export_format(folder)
    except ExportError:
        found = sorted(p.name for p in Path(folder).iterdir())[:8]
        raise SourceError(
            f"{came_from} is not a Roboflow export: it holds {', '.join(found) if found else 'nothing'}; expected "
            "train/ valid/ test/ folders with _annotations.coco.json (COCO) or images/ + labels/ (YOLO). "
            f"Point data.{dataset}.local.path at the unzipped export (or its .zip). {_alternatives(dataset)}"
        ) from None
    if not any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in Path(folder).rglob("*")):
        raise SourceError(
            f"{came_from} holds no image files: re-download the export (a complete zip). {_alternatives(dataset)}"
        )


def land_export(dataset: str, data_cfg: SourceSettings, synthetic_cfg: SyntheticSettings, out_dir: Path) -> str:
    """Put the export of ``dataset`` in ``out_dir`` (replaced atomically). Returns the source used."""
    source = data_cfg.source
    if source not in SOURCES:
        raise SourceError(f"data.{dataset}.source is {source!r}; choose one of {', '.join(SOURCES)} in params.yaml.")
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        if source == "synthetic":
            write_synthetic_export(
                dataset,
                partial,
                seed=synthetic_cfg.seed,
                image_size=synthetic_cfg.image_size,
                counts=to_plain(synthetic_cfg.counts),
                negative_share=synthetic_cfg.negative_share,
                augment_copies_share=synthetic_cfg.augment_copies_share,
            )
        elif source == "local":
            path = data_cfg.local.path
            copy_local_export(dataset, path, partial)
            check_landed_export(dataset, partial, f"data.{dataset}.local.path {str(path)!r}")
        else:
            download_from_roboflow(dataset, data_cfg.roboflow, partial)
            rf = data_cfg.roboflow
            check_landed_export(
                dataset, partial, f"the Roboflow download of {rf.workspace}/{rf.project} version {rf.version}"
            )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return source
