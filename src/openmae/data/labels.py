"""Labelled images listed in a CSV file (``data.name=csv``): a row an image, with its path and its class, as many
medical, satellite and competition datasets ship their labels, instead of class folders.

``data.path`` is the CSV file (``.tsv`` and ``;``-separated files too), or a pattern holding ``{split}``
(``/data/{split}.csv``: ``train.csv`` for training, ``test.csv`` for evaluation). Its header names the columns:
the image's path (``path``, ``image``, ``file``, ``filename``, ...; relative to the CSV's folder, or absolute; a file
of one column is a list of paths), its class (``label``, ``class``, ``target``, ``category``; a name or a number;
pretraining needs none) and, where one file holds every split, the
split of each row (``split``, ``subset``, ``set``: the values ``data.train_split`` / ``data.eval_split`` name);
``data.csv_columns=[image,label]`` (or ``[image,label,split]``) names other columns. A file whose first row names
an image file has no header: its first column is the path, its second the label. The classes are the labels of
every split the files hold, sorted (numbers by value), so that a class has one index in all splits. Without a split
column or pattern every row is a training image: evaluation then needs ``data.holdout``, as class folders without a
test folder do. Python's csv module reads the file: a CSV dialect's quoting is not worth writing again.

With ``data.multi_label`` a label cell lists each of the image's classes (``Effusion|Mass``: NIH ChestX-ray14;
``haze primary water``: satellite tags), separated by ``data.label_separator`` (unset: the first of ``|``, ``;``,
``,`` and a space that any label cell holds); an empty cell is an image of none of them, and the labels are an
(N, classes) array of zeros and ones. ``data.label_columns`` names columns that are each a class instead (1: of
it; 0 or empty: not; -1: uncertain, read as ``data.uncertain_label``): rows of several classes with
``data.multi_label``, else one-hot rows, one class each; the classes are those columns, in their order.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from openmae.data.arrays import ARRAY_SUFFIXES
from openmae.data.config import DataConfig
from openmae.data.images import IMAGE_SUFFIXES
from openmae.data.scans import VOLUME_SUFFIXES, suffix_of

log = logging.getLogger("openmae.data")

IMAGE_COLUMNS = ("path", "image", "file", "filename", "file_name", "image_path", "filepath", "file_path", "img",
                 "image_id", "image_name", "image index")
# "tags": satellite tiles' land covers; "finding labels": NIH ChestX-ray14's findings (its images: "image index")
LABEL_COLUMNS = ("label", "class", "target", "category", "class_name", "labels", "tags", "finding labels")
SPLIT_COLUMNS = ("split", "subset", "set", "partition")
FILE_SUFFIXES = frozenset(IMAGE_SUFFIXES + ARRAY_SUFFIXES + VOLUME_SUFFIXES)  # a first row naming a file: no header


class Table(NamedTuple):
    """One CSV file's rows: images (as written), labels (as written; None: no label column, images for pretraining)
    and splits (None: no split column)."""

    folder: Path
    images: list[str]
    labels: list[str] | None
    splits: list[str] | None
    marks: np.ndarray | None = None  # data.label_columns: (rows, columns) of 1, 0 or -1 (uncertain)
    marked: tuple[str, ...] = ()  # those columns' names, as the header spells them


def csv_files(cfg: DataConfig) -> dict[str, Path]:
    """The CSV file of each split: one file for all (``{'': path}``), or the pattern's file of each split."""
    if "{split}" not in cfg.path:
        return {"": Path(cfg.path)}
    return {split: Path(cfg.path.replace("{split}", split)) for split in (cfg.train_split, cfg.eval_split)}


def _column(header: list[str], given: str | None, names: tuple[str, ...], what: str, path: Path) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if given is not None:
        if given.lower() not in lowered:
            raise ValueError(f"{path} has no column {given!r} (data.csv_columns); its columns: {header}")
        return lowered.index(given.lower())
    found = next((lowered.index(n) for n in names if n in lowered), None)
    if found is None and what == "image":
        if len(header) == 1:  # a bare list of paths (pretraining reads no labels)
            return 0
        raise ValueError(f"{path}: none of its columns {header} is an image column ({', '.join(names)}); name the "
                         "image and label columns with data.csv_columns=[<image column>,<label column>]")
    return found


@functools.lru_cache(maxsize=8)
def _read(path: str, size: int, mtime: int, columns: tuple[str, ...], multi: bool,  # size, mtime: rewrites
          class_columns: tuple[str, ...] = ()) -> Table:
    file = Path(path)
    with open(file, newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: the byte-order mark a spreadsheet writes
        first = fh.readline()
        fh.seek(0)
        delimiter = "\t" if "\t" in first or file.suffix == ".tsv" else ";" if ";" in first and "," not in first else ","
        rows = list(csv.reader(fh, delimiter=delimiter))
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines
    if not rows:
        raise ValueError(f"{file} is empty: a labelled image list needs a header row and a row per image")
    if not columns and suffix_of(Path(rows[0][0].strip())) in FILE_SUFFIXES:  # no header: a path, and its label
        header, body = [f"column {i + 1}" for i in range(len(rows[0]))], rows
        image, label, split = 0, (1 if len(header) > 1 else None), None
    else:
        header, body = rows[0], rows[1:]
        given = list(columns) + [None] * (3 - len(columns))
        image = _column(header, given[0], IMAGE_COLUMNS, "image", file)
        label = _column(header, given[1], LABEL_COLUMNS, "label", file)
        split = _column(header, given[2], SPLIT_COLUMNS, "split", file)
    assert image is not None
    if class_columns:  # a column a class: no label column
        label = None
        marked = [_class_column(header, name, file) for name in class_columns]
    needed = [c for c in (image, label if not multi else None) if c is not None]  # several labels: may be none
    wanted = max(c for c in (image, label, split) if c is not None)
    for number, row in enumerate(body, start=2):
        if len(row) <= wanted or not all(row[c].strip() for c in needed):
            needs = ("an image and its label (images of several classes each, or of none: data.multi_label=true)"
                     if label is not None and not multi else "an image")
            raise ValueError(f"{file}, line {number}: {row} has no {' or '.join(repr(header[c]) for c in needed)} "
                             f"value; every row needs {needs}")
    column = lambda c: [r[c].strip() for r in body] if c is not None else None
    if not class_columns:
        return Table(file.parent, column(image), column(label), column(split))
    marks = np.zeros((len(body), len(marked)), dtype=np.float32)
    for number, row in enumerate(body, start=2):
        for j, c in enumerate(marked):
            marks[number - 2, j] = _mark(row[c] if c < len(row) else "", header[c], file, number)
    return Table(file.parent, column(image), None, column(split), marks, tuple(header[c].strip() for c in marked))


def _class_column(header: list[str], name: str, path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    if name.lower() not in lowered:
        raise ValueError(f"{path} has no column {name!r} (data.label_columns); its columns: {header}")
    return lowered.index(name.lower())


def _mark(cell: str, name: str, path: Path, number: int) -> float:
    """A class column's cell: 1 (of the class), 0 or empty (not), -1 (uncertain)."""
    try:
        value = float(cell) if cell.strip() else 0.0
    except ValueError:
        value = float("nan")
    if value not in (0.0, 1.0, -1.0):
        raise ValueError(f"{path}, line {number}: {name.strip()!r} holds {cell!r}; a class column holds 1 (of the "
                         "class), 0 or nothing (not), -1 (uncertain)")
    return value


def read_table(path: Path, cfg: DataConfig) -> Table:
    if not path.is_file():
        raise FileNotFoundError(f"data.path {path} does not exist (data.name=csv reads a CSV file listing images and "
                                "their labels" + (", one per split" if "{split}" in cfg.path else "") + ")")
    stat = path.stat()
    return _read(str(path), stat.st_size, stat.st_mtime_ns, tuple(cfg.csv_columns), cfg.multi_label,
                 tuple(cfg.label_columns))


_WARNED: set[str] = set()  # lists whose labels looked like several classes each, said once a process
SEPARATORS = ("|", ";", ",", " ")  # data.label_separator unset: the first that a label cell holds


def label_separator(cfg: DataConfig) -> str:
    """The separator of a multi-label list's classes: ``data.label_separator``, else the first of ``SEPARATORS``
    that any label cell of the files holds (none: every image has one class at most, and any separator splits
    nothing)."""
    if cfg.label_separator:
        return cfg.label_separator
    cells = [cell for path in csv_files(cfg).values() if path.is_file() for cell in read_table(path, cfg).labels or ()]
    return next((sep for sep in SEPARATORS if any(sep in cell for cell in cells)), "|")


def _classes_of(cell: str, separator: str) -> list[str]:
    return [name.strip() for name in cell.split(separator) if name.strip()]


def listed_files(path: Path, columns: tuple[str, ...] = ()) -> list[Path]:
    """Every image a CSV list names, whatever its split (``openmae visualize labels.csv``)."""
    table = read_table(path, DataConfig(name="csv", path=str(path), csv_columns=columns))
    return [Path(os.path.join(table.folder, image)) for image in table.images]


def holds_split(cfg: DataConfig, split: str) -> bool:
    """Whether the list has images of ``split`` (its pattern's file, or rows of it; a list without splits: all)."""
    files = csv_files(cfg)
    if "" not in files:
        return Path(cfg.path.replace("{split}", split)).is_file()
    splits = read_table(files[""], cfg).splits
    return splits is None or any(s.lower() == split.lower() for s in splits)


def has_splits(cfg: DataConfig) -> bool:
    """Whether the files say which images are for evaluation (a pattern, or a split column)."""
    files = csv_files(cfg)
    return "" not in files or read_table(files[""], cfg).splits is not None


def class_names(cfg: DataConfig) -> list[str]:
    """Every split's labels, sorted: numbers by value, else as text (``data.label_columns``: those columns)."""
    if cfg.label_columns:
        path = next((p for p in csv_files(cfg).values() if p.is_file()), None)
        return list(read_table(path, cfg).marked) if path is not None else list(cfg.label_columns)
    labels = {label for path in csv_files(cfg).values() if path.is_file() for label in read_table(path, cfg).labels or ()}
    if cfg.multi_label:
        separator = label_separator(cfg)
        labels = {name for cell in labels for name in _classes_of(cell, separator)}
    elif (listed := next((label for label in sorted(labels) if "|" in label), None)) and cfg.path not in _WARNED:
        _WARNED.add(cfg.path)  # once a list, not at every split built
        log.warning("data.path %s: labels such as %r read as classes of their own; if they list several classes of "
                    "an image, set data.multi_label=true", cfg.path, listed)
    try:
        return sorted(labels, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(labels)


def csv_split(cfg: DataConfig, split: str) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """The files of ``split``, their class indices (N,) (``data.multi_label``: (N, classes) float32, 1 where the
    image is of the class) and the classes' names (None and none: a list without labels)."""
    files = csv_files(cfg)
    listed = files[""] if "" in files else Path(cfg.path.replace("{split}", split))
    table = read_table(listed, cfg)
    rows: range | list[int] = range(len(table.images))
    if table.splits is not None:
        rows = [i for i, s in enumerate(table.splits) if s.lower() == split.lower()]
        if not rows:
            raise ValueError(f"{files['']} has no rows of the '{split}' split; its split column holds "
                             f"{sorted(set(table.splits))[:10]}: set data.train_split / data.eval_split to those")
    classes = class_names(cfg)
    index = {name: i for i, name in enumerate(classes)}
    paths = [Path(os.path.join(table.folder, table.images[i])) for i in rows]
    if paths and not any(p.is_file() for p in paths[:8]):
        raise FileNotFoundError(f"the first images listed for the '{split}' split do not exist ({paths[0]}, ...): "
                                f"paths in {'the files' if '' not in files else files['']} are read relative to "
                                f"its folder {table.folder} unless absolute")
    if table.marks is not None:
        return paths, _class_rows(table, rows, cfg, listed), classes
    if table.labels is None:
        return paths, None, []
    if not cfg.multi_label:
        return paths, np.array([index[table.labels[i]] for i in rows], dtype=np.int64), classes
    separator, hot = label_separator(cfg), np.zeros((len(rows), len(classes)), dtype=np.float32)
    for n, i in enumerate(rows):
        hot[n, [index[name] for name in _classes_of(table.labels[i], separator)]] = 1.0
    return paths, hot, classes


def _class_rows(table: Table, rows: range | list[int], cfg: DataConfig, where: Path) -> np.ndarray:
    """The rows of ``data.label_columns`` (N, classes), -1 read as ``data.uncertain_label`` (``ignore``: nan, an
    unknown label); without ``data.multi_label`` each row's one class (N,)."""
    marks = table.marks[np.asarray(list(rows), dtype=np.int64)]
    unsure = np.argwhere(marks < 0)
    if len(unsure) and cfg.uncertain_label is None:
        n, c = unsure[0]
        line = list(rows)[n] + 2
        raise ValueError(f"{where}, line {line}: {table.marked[c]!r} is -1 (uncertain); set data.uncertain_label=0 or "
                         "1 (read as not of the class, or as of it: CheXpert's U-Zeros / U-Ones), or ignore (left out "
                         "of the losses and the measures: U-Ignore)")
    marks[marks < 0] = np.nan if cfg.uncertain_label == "ignore" else cfg.uncertain_label or 0.0
    if cfg.multi_label:
        return marks
    counts = marks.sum(1)
    if (counts != 1).any():
        n = int(np.flatnonzero(counts != 1)[0])
        raise ValueError(f"{where}, line {list(rows)[n] + 2}: {int(counts[n])} of data.label_columns marked "
                         f"({', '.join(table.marked)}); one class an image needs exactly one (images of several "
                         "classes each, or of none: data.multi_label=true)")
    return marks.argmax(1).astype(np.int64)
