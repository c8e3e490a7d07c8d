"""Checks run before the first step: every problem with the data or a run folder, at once.

A run takes hours, so a bad row or an unreadable painting must stop it before training
starts, with the file and row named, rather than as a traceback in the middle of an epoch.
The checks read the CSVs byte by byte, the way `data.read_split` will, and open every
painting a split names; each problem is collected, and one error lists them all.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .config import DataConfig
from .data import COLUMNS, TASK_COLUMNS, DataError, split_paths

SKIPPED_IMAGES = "skipped_images.csv"  # in a run folder: paintings left out by --skip-bad-images
MAX_LISTED = 50  # problems printed in one error; the rest are counted
# Columns that must not be empty: a painting without a label or file name cannot be used.
# NOTE: an empty TECHNIQUE is allowed (its medium is "other"), and so is an empty
# DESCRIPTION (SemArt has such rows): the text branch then sees no words, which is noted.
REQUIRED_VALUES = ("IMAGE_FILE", "TYPE", "SCHOOL", "TIMEFRAME")


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file, the line in it (1 is the header; None: the whole file)."""

    file: str
    line: int | None
    what: str

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line is not None else self.file
        return f"{where}: {self.what}"


@dataclass(frozen=True)
class BadImage:
    """A painting that cannot be read, and the CSV row that names it."""

    csv: str
    line: int
    image: str
    reason: str

    def problem(self, images_dir: Path) -> Problem:
        return Problem(self.csv, self.line, f"image {images_dir / self.image}: {self.reason}")


class DataCheckError(DataError):
    """The data a run needs has problems; the message lists every one."""

    def __init__(self, problems: list[Problem], hint: str = ""):
        self.problems = problems
        super().__init__(_listing(f"{len(problems)} problem(s) with the data", problems, hint))


class RunFolderError(ValueError):
    """A run folder whose files are missing or disagree with each other."""

    def __init__(self, run_dir: Path, problems: list[str]):
        self.problems = problems
        lines = [f"run folder {run_dir} cannot be used:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def _listing(title: str, problems: list, hint: str) -> str:
    lines = [f"{title}, found before the first step:"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


# --- CSVs --------------------------------------------------------------------------------


@dataclass
class RawSplit:
    """A CSV's rows as `read_split` will split them: (line number, fields) per data row."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]

    def column(self, name: str) -> list[tuple[int, str]]:
        """(line, value) of one column over the rows that have all their fields."""
        i = self.header.index(name)
        return [(line, fields[i]) for line, fields in self.rows if len(fields) == len(self.header)]


def check_csv(path: Path) -> tuple[RawSplit | None, list[Problem]]:
    """Encoding, header, field counts and empty values of one SemArt CSV."""
    name = str(path)
    if not path.is_file():
        return None, [Problem(name, None, "no such file")]
    raw = path.read_bytes()
    if not raw.strip():
        return None, [Problem(name, None, "empty file (no header, no rows)")]
    problems = _utf8_rows(name, raw)
    # NOTE: latin-1 decodes any byte; pandas splits lines on \n (and \r\n), fields on tabs,
    # with quoting off, exactly as here.
    lines = raw.decode("latin-1").split("\n")
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        problems.append(Problem(name, 1, f"missing column(s) {missing}; the header has {header}"))
        return None, problems
    rows = []
    for number, text in enumerate(lines[1:], start=2):
        text = text.rstrip("\r")
        if not text.strip():
            continue  # pandas skips blank lines too
        fields = text.split("\t")
        rows.append((number, fields))
        if len(fields) != len(header):
            problems.append(Problem(name, number, (
                f"{len(fields)} tab-separated fields, the header has {len(header)} "
                f"({'a tab inside a field?' if len(fields) > len(header) else 'cut short?'})"
            )))
    split = RawSplit(path, header, rows)
    for column in REQUIRED_VALUES:
        for number, value in split.column(column):
            if not value.strip():
                problems.append(Problem(name, number, f"empty {column}"))
    if not rows:
        problems.append(Problem(name, None, "no data rows under the header"))
    return split, problems


def _utf8_rows(name: str, raw: bytes) -> list[Problem]:
    """Rows of a UTF-8 file: SemArt's CSVs are latin-1, so they would read as mojibake."""
    if raw.isascii():
        return []
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return []  # not UTF-8: latin-1 (or cp1252) as expected
    problems = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.isascii():
            text = line.decode("utf-8")
            word = next(w for w in text.split() if not w.isascii())
            problems.append(Problem(name, number, (
                f"UTF-8 text ({word!r} would read as {word.encode('utf-8').decode('latin-1')!r}); "
                "SemArt CSVs are latin-1: convert with `iconv -f utf-8 -t latin-1`"
            )))
    return problems


def extra_columns(split: RawSplit) -> list[str]:
    """Header columns the loader does not use (kept, ignored)."""
    return [c for c in split.header if c not in COLUMNS]


# --- images ------------------------------------------------------------------------------


def image_problem(path: Path, mode: str = "decode") -> str | None:
    """Why a painting cannot be read, or None when it can.

    `mode`: "exists" looks at the file only, "header" opens it (format, size, PIL's
    decompression-bomb limit), "decode" also decodes all the pixel data (at 1/8 scale for
    JPEGs, which still reads every byte) so truncated files are caught.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size == 0:
        return "empty file (0 bytes)"
    if mode == "exists":
        return None
    try:
        with Image.open(path) as image:
            if mode == "decode":
                width, height = image.size
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return (f"over PIL's decompression-bomb limit: {err} Shrink the file, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    except UnidentifiedImageError:
        return f"not an image PIL can read ({size} bytes, starting {_head(path)!r})"
    except (OSError, SyntaxError, ValueError) as err:
        return f"truncated or corrupt: {err}"
    return None


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def check_images(
    rows: list[tuple[str, int, str]], images_dir: Path, mode: str = "decode",
    workers: int | None = None, progress: bool = True,
) -> list[BadImage]:
    """Open every painting that (csv, line, image file) rows name, in a thread pool."""
    first_row = {}
    for csv_name, line, image in rows:
        first_row.setdefault(image, (csv_name, line))
    names = list(first_row)
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    # PIL decodes outside the GIL, so threads give real parallelism. The filter turns PIL's
    # bomb warning (1x to 2x its limit) into an error: warnings are process-wide, so it is
    # set here, around the pool, not inside the threads.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(tqdm(
                pool.map(lambda n: image_problem(images_dir / n, mode), names), total=len(names),
                desc=f"checking images ({mode})", leave=False, disable=not progress,
            ))
    return [BadImage(*first_row[name], name, reason)
            for name, reason in zip(names, reasons) if reason is not None]


# --- a run's data ------------------------------------------------------------------------


@dataclass
class DataReport:
    """What the checks found: problems that stop a run, bad images, and notes for the log."""

    problems: list[Problem] = field(default_factory=list)
    bad_images: list[BadImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images_dir: Path | None = None

    def raise_if_problems(self, skip_bad_images: bool, skipping_allowed: bool = True) -> None:
        """One error listing every problem; bad images count only without skipping."""
        problems = list(self.problems)
        if not skip_bad_images:
            problems += [bad.problem(self.images_dir) for bad in self.bad_images]
        if problems:
            hint = "Fix these rows and files, then run again."
            if self.bad_images and not skip_bad_images and skipping_allowed:
                hint += (f" Or pass --skip-bad-images to leave the {len(self.bad_images)} "
                         "unreadable painting(s) out, listed in the run folder's "
                         f"{SKIPPED_IMAGES}.")
            raise DataCheckError(problems, hint)


def check_data(
    cfg: DataConfig, images_needed: bool, text_needed: bool, image_splits=("train", "val", "test"),
    progress: bool = True,
) -> DataReport:
    """Check the CSVs of every split and the paintings of `image_splits`; raise nothing."""
    from .data import images_dir_of

    report = DataReport(images_dir=images_dir_of(cfg))
    raw = {}
    for split, path in split_paths(cfg).items():
        if path is None:
            continue
        found, problems = check_csv(path)
        report.problems += problems
        if found is not None:
            raw[split] = found
            if extra_columns(found):
                report.notes.append(f"{path}: extra column(s) {extra_columns(found)} ignored")
            empty = [n for n, text in found.column("DESCRIPTION") if not text.strip()]
            if text_needed and empty:
                report.notes.append(f"{path}: {len(empty)} row(s) with an empty DESCRIPTION: "
                                    f"the text branch sees no words for them (lines {empty[:20]})")
    if "train" in raw:
        report.problems += _label_problems(raw["train"])
        report.notes += _unseen_notes(raw)
    if images_needed:
        if not report.images_dir.is_dir():
            report.problems.append(Problem(str(report.images_dir), None, "no such folder"))
        else:
            rows = [(str(raw[s].path), line, name) for s in image_splits if s in raw
                    for line, name in raw[s].column("IMAGE_FILE") if name.strip()]
            report.bad_images = check_images(rows, report.images_dir, cfg.image_check,
                                             progress=progress)
    return report


def _label_problems(train: RawSplit) -> list[Problem]:
    """A task whose training rows all share one class has nothing to learn."""
    problems = []
    for task, column in TASK_COLUMNS.items():
        if column not in train.header:
            continue  # MEDIUM is derived from TECHNIQUE
        counts = Counter(value.strip() for _, value in train.column(column) if value.strip())
        if len(counts) == 1:
            only = next(iter(counts))
            problems.append(Problem(str(train.path), None, (
                f"every training row has {column} {only!r}: the {task} head cannot learn"
            )))
    return problems


def _unseen_notes(raw: dict[str, RawSplit]) -> list[str]:
    """Per split and task, rows whose label training never saw (left out of loss, metrics)."""
    notes = []
    for split, found in raw.items():
        if split == "train":
            continue
        for task, column in TASK_COLUMNS.items():
            if column not in found.header:
                continue
            seen = {value.strip() for _, value in raw["train"].column(column)}
            unseen = [line for line, value in found.column(column) if value.strip() not in seen]
            if unseen:
                notes.append(f"{found.path}: {len(unseen)} row(s) with a {task} label unseen in "
                             f"training, left out of its loss and metrics (lines {unseen[:10]}"
                             f"{' ...' if len(unseen) > 10 else ''})")
    return notes


def drop_bad_images(frame, bad_images: list[BadImage]):
    """`frame` without the rows whose painting cannot be read."""
    bad = {b.image for b in bad_images}
    return frame[~frame["IMAGE_FILE"].isin(bad)].reset_index(drop=True)


def write_skipped(bad_images: list[BadImage], path: Path) -> None:
    """The paintings left out, with the CSV row naming each and why."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["csv", "line", "image_file", "reason"])
        writer.writerows([b.csv, b.line, b.image, b.reason] for b in bad_images)


# --- a run folder ------------------------------------------------------------------------


def load_run_config(run_dir: Path, needs: tuple[str, ...]):
    """The run's config, once `needs` (file names in the folder) and its own files exist."""
    from .config import RunConfig
    from .pipeline import TEXT_DIR, needs_text

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(run_dir, ["no such folder"])
    problems = [f"{name} is missing" for name in ("config.json", *needs)
                if not (run_dir / name).is_file()]
    cfg = None
    if (run_dir / "config.json").is_file():
        try:
            cfg = RunConfig.load(run_dir / "config.json")
        except (ValueError, TypeError) as err:
            problems.append(f"config.json cannot be read: {err}")
    if cfg is not None and needs_text(cfg) and not (run_dir / TEXT_DIR).is_dir():
        problems.append(f"{TEXT_DIR}/ is missing, but config.json describes a "
                        f"{cfg.model.modality} run, which needs its text model")
    if problems:
        raise RunFolderError(run_dir, problems)
    return cfg


def checkpoint_problems(state: dict, model, cfg, name: str) -> list[str]:
    """How a loaded checkpoint disagrees with the model its run's config.json builds."""
    from .checkpoint import run_meta

    problems = []
    saved = state.get("meta")
    if saved is not None:
        expected = run_meta(cfg)
        for key in ("backbone", "modality", "text_model"):
            if saved.get(key) != expected[key]:
                problems.append(f"{name} was written by a run with {key} {saved.get(key)!r}, "
                                f"config.json says {expected[key]!r}")
        for task, classes in expected["labels"].items():
            if saved.get("labels", {}).get(task) != classes:
                problems.append(f"{name} was trained on other {task} classes than config.json "
                                f"lists ({len(saved.get('labels', {}).get(task, []))} vs "
                                f"{len(classes)})")
    weights, wanted = state["model"], model.state_dict()
    missing = [k for k in wanted if k not in weights]
    unexpected = [k for k in weights if k not in wanted]
    shapes = [f"{k} {tuple(weights[k].shape)} in {name}, {tuple(v.shape)} from config.json"
              for k, v in wanted.items() if k in weights and weights[k].shape != v.shape]
    if missing:
        problems.append(f"{len(missing)} weight(s) the config's model has are not in {name}, "
                        f"e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) in {name} have no place in the config's "
                        f"model, e.g. {unexpected[:3]}")
    if shapes:
        problems.append(f"{len(shapes)} weight(s) differ in shape, e.g. {shapes[:3]}")
    return problems
