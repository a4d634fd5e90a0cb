"""Recorded reference runs: the JSON files in ``book/results/`` and how chapters show them.

A chapter's live run has the profile's budget (minutes on a laptop); the question it asks is
often only answered at a larger scale. Such runs are made once, by the project's own command
(``make reference``), and recorded as one JSON file per experiment, committed with the book::

    {"name", "chapter": "chapters/NN_x.ipynb", "command", "commit", "date", "device",
     "data": {"name", "real": true | false, "train": N, "val": N}, "wall_s",
     "rows": [{"run": "scratch" | "probe" | "finetune" | ..., "metric": "top1" | "map" | ...,
               "value": float, "n_train": N (optional), "seed": N (optional), ...}]}

Runs are named ``scratch``, ``probe``, ``finetune`` (``imagenet1k-probe``, ... as needed) and
metrics ``top1``, ``top5``, ``map`` (multi-label), ``map50`` (detection), ``miou``
(segmentation), so results compare across chapters. No machine paths go into these files:
:func:`write_result` refuses them.

:func:`read_result` finds a file (``IMAGENET_BOOK_RESULTS``, else ``book/results`` in the
repository the notebook runs from) and checks its shape; :func:`provenance` is the one line a
chapter prints under a recorded table or plot; :func:`result_table` the table itself.

Taught in: chapters/06_pretraining.ipynb.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BookError
from .files import save_atomically

__all__ = ["ENV_RESULTS", "METRICS", "ResultError", "by_size", "differences", "labels_to_match", "not_recorded",
           "pack_uint8", "provenance", "read_result", "result_table", "results_folder", "unpack_uint8", "write_result"]

ENV_RESULTS = "IMAGENET_BOOK_RESULTS"
#: The metric names results use, and how tables show them.
METRICS = {"top1": "top-1", "top5": "top-5", "map": "mAP", "map50": "mAP@0.5", "miou": "mIoU",
           "accuracy": "accuracy", "knn_top1": "k-NN top-1", "holdout_top1": "held-out top-1"}
_KEYS = ("name", "chapter", "command", "commit", "date", "device", "data", "wall_s", "rows")
_MACHINE_PATH = re.compile(r"(^|[\s'\"=(])(/(home|root|tmp|work|Users|content|mnt|var)/|[A-Za-z]:\\)")


class ResultError(BookError, ValueError):
    """A results file is missing, or is not in the shape the chapters read. The message names it.

    Taught in: chapters/06_pretraining.ipynb.
    """


def results_folder() -> Path:
    """Where recorded results live: ``IMAGENET_BOOK_RESULTS`` if set, else the ``book/results``
    folder of the repository that holds the current folder (a notebook runs in ``chapters/``).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if os.environ.get(ENV_RESULTS):
        return Path(os.environ[ENV_RESULTS]).expanduser()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "book").is_dir():
            return folder / "book" / "results"
    return here / "book" / "results"


def _check(result: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in _KEYS if k not in result]
    if missing:
        raise ResultError(f"{where}: missing {missing}; a result holds {list(_KEYS)}.")
    data = result["data"]
    if not isinstance(data, dict) or not {"name", "real", "train", "val"} <= set(data):
        raise ResultError(f"{where}: 'data' must hold name, real, train and val.")
    if not isinstance(result["rows"], list) or not result["rows"]:
        raise ResultError(f"{where}: 'rows' must be a non-empty list.")
    for i, row in enumerate(result["rows"]):
        if not {"run", "metric", "value"} <= set(row):
            raise ResultError(f"{where}: row {i} needs run, metric and value, has {sorted(row)}.")
        if not isinstance(row["value"], (int, float)) or isinstance(row["value"], bool):
            raise ResultError(f"{where}: row {i}'s value is not a number: {row['value']!r}.")
    text = json.dumps(result)
    if _MACHINE_PATH.search(text):
        raise ResultError(f"{where}: holds a machine path ({_MACHINE_PATH.search(text).group(0).strip()!r}"
                          "...): name the data, not the folder it is in.")
    return result


def write_result(name: str, *, chapter: str, command: str, commit: str, device: str,
                 data: dict[str, Any], rows: list[dict[str, Any]], wall_s: float,
                 folder: str | os.PathLike[str] | None = None, day: str | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``<folder>/<name>.json`` (default :func:`results_folder`) atomically.

    Args:
        name: the experiment (the file's stem). chapter: ``"chapters/NN_x.ipynb"`` that renders it.
        command: the command that produced it (``make reference``, ...). commit: the code's commit.
        device: the device in words (``"CPU (2 cores)"``, ``"NVIDIA H200"``).
        data: ``{"name", "real", "train", "val"}``. rows: see the module docstring.
        wall_s: seconds the experiment took. day: ISO date (default: today).
        extra: what a chapter draws besides the rows (JSON values, e.g. first-layer filters),
            kept under ``"extra"``.

    Returns:
        The file written.

    Raises:
        ResultError: a malformed result, or one that holds a machine path.

    Taught in: chapters/06_pretraining.ipynb.
    """
    result = {"name": name, "chapter": chapter, "command": command, "commit": commit,
              "date": day or date.today().isoformat(), "device": device, "data": dict(data),
              "wall_s": round(float(wall_s), 1), "rows": [dict(r) for r in rows]}
    if extra:
        result["extra"] = dict(extra)
    _check(result, f"result {name!r}")
    path = Path(folder if folder is not None else results_folder()) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(json.dumps(result, indent=1, allow_nan=False) + "\n", path,
                    lambda text, p: p.write_text(text, encoding="utf-8"))
    return path


def read_result(name: str, folder: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The recorded result ``name``, checked; ``None`` when there is no such file (a chapter
    then says the reference run has not been made here, and how to make it).

    Raises:
        ResultError: the file exists but is not a result in the expected shape.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(folder if folder is not None else results_folder()) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultError(f"{str(path)!r} is not valid JSON ({err}). Run `make reference` again.") from None
    return _check(result, str(path))


def provenance(result: dict[str, Any]) -> str:
    """One line: what data (real or stand-in, sizes), which device, when, which command and commit.
    The evaluated images are "val" unless ``data["evaluated_on"]`` names them (a study scored on
    held-out training images); a record whose runs were made at several commits (``"commit": "a, b"``)
    names each.

    Taught in: chapters/06_pretraining.ipynb.
    """
    d = result["data"]
    kind = "real data" if d["real"] else "stand-in data"
    minutes = result["wall_s"] / 60
    several = result["commit"].split(", ")  # runs made at several commits name each one
    commits = ("s " if len(several) > 1 else " ") + ", ".join(c[:10] for c in several)
    return (f"Recorded run '{result['name']}': {d['name']} ({kind}; {d['train']:,} train / {d['val']:,} "
            f"{d.get('evaluated_on', 'val')} images), {result['device']}, {result['date']}, {minutes:.0f} min, "
            f"`{result['command']}` at commit{commits}.")


def not_recorded(name: str) -> str:
    """What a chapter prints where the recorded run ``name`` is missing, and how to make it.

    Taught in: chapters/06_pretraining.ipynb.
    """
    return (f"No recorded reference run '{name}' in book/results/ here. Make it with "
            f"`make reference` (IMAGENET_BOOK_DATA pointing at the real data; "
            f"`python -m imagenet_book reference {name}` for this one alone).")


def differences(result: dict[str, Any], pairs: list[tuple[str, str]]) -> list[str]:
    """``"a - b: +0.123 mAP (2.0x)"`` for each pair of runs that the result holds (seed 0, all
    images): the difference and the ratio, so that the prose quotes no number a cell has not printed.

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """
    value = {r["run"]: (r["value"], METRICS.get(r["metric"], r["metric"])) for r in result["rows"]
             if r.get("seed", 0) == 0 and "layer" not in r}
    return [f"{a} - {b}: {value[a][0] - value[b][0]:+.3f} {value[a][1]}"
            + (f" ({value[a][0] / value[b][0]:.1f}x)" if value[b][0] > 0 else "")
            for a, b in pairs if a in value and b in value]


def by_size(result: dict[str, Any]) -> dict[str, dict[int, tuple[float, float, float, int]]]:
    """A data-efficiency result summarised: ``{run: {n_train: (mean, lowest, highest, seeds)}}``
    over the seeds of each point, runs and sizes in the order of the rows.

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """
    values: dict[str, dict[int, list[float]]] = {}
    for r in result["rows"]:
        values.setdefault(r["run"], {}).setdefault(r["n_train"], []).append(float(r["value"]))
    return {run: {n: (sum(v) / len(v), min(v), max(v), len(v)) for n, v in sorted(points.items())}
            for run, points in values.items()}


def labels_to_match(result: dict[str, Any], ahead: str, behind: str) -> dict[int, int | None]:
    """The horizontal reading of a data-efficiency curve: for each size ``n`` of run ``ahead``, the
    fewest labelled images at which run ``behind`` reaches (by its mean over seeds) the mean that
    ``ahead`` had with ``n``; ``None`` when no recorded size of ``behind`` does.

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """
    sizes = by_size(result)
    if ahead not in sizes or behind not in sizes:
        raise KeyError(f"the result {result.get('name')!r} has no run {ahead!r} or {behind!r}; "
                       f"its runs: {sorted(sizes)}")
    return {n: next((m for m, point in sizes[behind].items() if point[0] >= mean), None)
            for n, (mean, *_) in sizes[ahead].items()}


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def result_table(result: dict[str, Any], columns: tuple[str, ...] = ("run", "metric", "value")) -> str:
    """A Markdown table of the result's rows (the given columns; metric names as in
    :data:`METRICS`), followed by its :func:`provenance` line.

    Taught in: chapters/06_pretraining.ipynb.
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in result["rows"]:
        cells = []
        for c in columns:
            v = row.get(c)
            if c == "metric":
                v = METRICS.get(v, v)
            cells.append(_fmt(v) if isinstance(v, float) else ("-" if v is None else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + provenance(result)


def pack_uint8(values: Any) -> dict[str, Any]:
    """An array of uint8 (images, filters scaled to 0..255) as a JSON value for ``extra``:
    ``{"shape": [...], "uint8_b64": "..."}``, 4/3 bytes per value.

    Taught in: chapters/06_pretraining.ipynb.
    """
    array = np.asarray(values)
    if array.dtype != np.uint8:
        raise ResultError(f"pack_uint8 takes uint8 values, got {array.dtype}.")
    return {"shape": list(array.shape), "uint8_b64": base64.b64encode(array.tobytes()).decode("ascii")}


def unpack_uint8(record: dict[str, Any]) -> np.ndarray:
    """The array :func:`pack_uint8` packed.

    Raises:
        ResultError: the record is not one (wrong keys, or a size that does not fit its shape).

    Taught in: chapters/06_pretraining.ipynb.
    """
    try:
        raw = base64.b64decode(record["uint8_b64"], validate=True)
        return np.frombuffer(raw, dtype=np.uint8).reshape(record["shape"]).copy()
    except (KeyError, TypeError, ValueError) as err:
        raise ResultError(f"Not a packed uint8 array ({err}); pack_uint8 writes them.") from err
