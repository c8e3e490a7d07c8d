"""The bad-input corpus: each broken file or run folder, and what the user sees."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REAL_DIR, requires_real, tiny_config
from semart_mtl import checkpoint
from semart_mtl.checks import (
    SKIPPED_IMAGES, DataCheckError, RunFolderError, check_csv, check_data, image_problem,
)
from semart_mtl.config import RunConfig
from semart_mtl.data import IGNORE_INDEX, encode_labels, fit_labels, load_image, read_split
from semart_mtl.evaluate import CHECKPOINT, evaluate_run
from semart_mtl.model import build_model
from semart_mtl.sample import make_sample
from semart_mtl.train import NonFiniteLoss, train

SIZES = {"train": 32, "val": 8, "test": 8}
TRAIN_CSV = "semart_train.csv"


@pytest.fixture(scope="module")
def base_data(tmp_path_factory) -> Path:
    return make_sample(tmp_path_factory.mktemp("base"), seed=1, sizes=SIZES)


@pytest.fixture(scope="module")
def trained_run(base_data, tmp_path_factory) -> Path:
    """One epoch of a tiny fusion run: the run folder the run-folder cases break."""
    return train(tiny_config(base_data, tmp_path_factory.mktemp("runs") / "run"))


# --- editing a copy of the data ----------------------------------------------------------


def lines_of(data: Path, csv: str = TRAIN_CSV) -> list[str]:
    return (data / csv).read_bytes().decode("latin-1").split("\n")


def write_lines(data: Path, lines: list[str], csv: str = TRAIN_CSV, encoding="latin-1") -> None:
    (data / csv).write_bytes("\n".join(lines).encode(encoding))


def set_field(data: Path, line: int, column: str, value: str, csv: str = TRAIN_CSV) -> None:
    lines = lines_of(data, csv)
    header = lines[0].split("\t")
    fields = lines[line - 1].split("\t")
    fields[header.index(column)] = value
    lines[line - 1] = "\t".join(fields)
    write_lines(data, lines, csv)


def image_at(data: Path, line: int = 2) -> Path:
    """The painting that line `line` of the training CSV names."""
    lines = lines_of(data)
    column = lines[0].split("\t").index("IMAGE_FILE")
    return data / "Images" / lines[line - 1].split("\t")[column]


def replace_image(data: Path, image: Image.Image, suffix: str, **save) -> Path:
    """Swap line 2's painting for `image`, saved under a new name the CSV then names."""
    old = image_at(data)
    new = old.with_suffix(suffix)
    image.save(new, **save)
    set_field(data, 2, "IMAGE_FILE", new.name)
    return new


# --- the cases ---------------------------------------------------------------------------


@dataclass
class Case:
    """A bad input, how it is made, and the error (regex) or None when it is accepted."""

    name: str
    make: Callable[[Path], None]
    error: str | None
    skippable: bool = False  # an unreadable image: --skip-bad-images leaves it out


def truncate(data: Path) -> None:
    path = image_at(data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cmyk(data: Path) -> None:
    replace_image(data, Image.open(image_at(data)).convert("CMYK"), ".cmyk.jpg", quality=95)


def grayscale(data: Path) -> None:
    replace_image(data, Image.open(image_at(data)).convert("L"), ".gray.jpg")


def palette(data: Path) -> None:
    image = Image.open(image_at(data)).convert("P", palette=Image.Palette.ADAPTIVE)
    replace_image(data, image, ".png")


def alpha(data: Path) -> None:
    image = Image.open(image_at(data)).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 128))
    replace_image(data, image, ".png")


def bomb(data: Path) -> None:
    # A real file 1.5 times PIL's limit (about 89M pixels), where PIL itself only warns;
    # one bit per pixel keeps it at a few kB on disk.
    side = int(np.sqrt(Image.MAX_IMAGE_PIXELS * 1.5)) + 1
    replace_image(data, Image.new("1", (side, side)), ".png")


def utf8_csv(data: Path) -> None:
    set_field(data, 3, "DESCRIPTION", "Painted in Liège by a café owner.")
    text = (data / TRAIN_CSV).read_bytes().decode("latin-1")
    (data / TRAIN_CSV).write_bytes(text.encode("utf-8"))


def drop_column(data: Path) -> None:
    rows = [line.split("\t") for line in lines_of(data)]
    i = rows[0].index("TECHNIQUE")
    write_lines(data, ["\t".join(r[:i] + r[i + 1:]) for r in rows])


def extra_column(data: Path) -> None:
    lines = lines_of(data)
    write_lines(data, [line + ("\tNOTES" if n == 0 else "\tseen") if line else line
                       for n, line in enumerate(lines)])


def extra_tab(data: Path) -> None:
    set_field(data, 4, "DESCRIPTION", "A tab\tinside the description.")


def unseen_label(data: Path) -> None:
    set_field(data, 2, "SCHOOL", "Catalan", csv="semart_val.csv")


CASES = [
    Case("truncated_jpeg", truncate, r"line 2: image .*: truncated or corrupt", True),
    Case("zero_byte_file", lambda d: image_at(d).write_bytes(b""),
         r"line 2: image .*: empty file \(0 bytes\)", True),
    Case("not_an_image", lambda d: image_at(d).write_bytes(b"<html>404 Not Found</html>"),
         r"line 2: image .*: not an image PIL can read .*<html>", True),
    Case("missing_image", lambda d: image_at(d).unlink(), r"line 2: image .*: missing", True),
    Case("decompression_bomb", bomb,
         r"line 2: image .*: over PIL's decompression-bomb limit", True),
    Case("cmyk_jpeg", cmyk, None),
    Case("grayscale_jpeg", grayscale, None),
    Case("palette_png", palette, None),
    Case("alpha_png", alpha, None),
    Case("csv_utf8", utf8_csv, r"semart_train.csv, line 3: UTF-8 text \('Liège' would read as "
                               r"'LiÃ¨ge'\).*iconv"),
    Case("csv_missing_column", drop_column,
         r"semart_train.csv, line 1: missing column\(s\) \['TECHNIQUE'\]"),
    Case("csv_extra_column", extra_column, None),
    Case("csv_extra_tab", extra_tab,
         r"semart_train.csv, line 4: 10 tab-separated fields, the header has 9 \(a tab inside"),
    Case("empty_description", lambda d: set_field(d, 5, "DESCRIPTION", "  "), None),
    Case("empty_label", lambda d: set_field(d, 6, "TYPE", ""),
         r"semart_train.csv, line 6: empty TYPE"),
    Case("unseen_label", unseen_label, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_data(case: Case, base_data: Path, tmp_path: Path):
    data = shutil.copytree(base_data, tmp_path / "data")
    case.make(data)
    cfg = tiny_config(data, tmp_path / "run")
    report = check_data(cfg.data, images_needed=True, text_needed=True, progress=False)
    if case.error is None:
        report.raise_if_problems(skip_bad_images=False)
        _accepted(case.name, data, report)
        return
    with pytest.raises(DataCheckError, match=case.error) as caught:
        report.raise_if_problems(skip_bad_images=False)
    assert len(caught.value.problems) == 1, caught.value.problems
    if case.skippable:
        assert "--skip-bad-images" in str(caught.value)
        report.raise_if_problems(skip_bad_images=True)
        assert [b.line for b in report.bad_images] == [2]


def _accepted(name: str, data: Path, report) -> None:
    """What an accepted oddity becomes: an RGB painting, an ignored column, a left-out label."""
    if name.endswith(("jpeg", "png")):
        image = load_image(image_at(data))
        assert image.mode == "RGB"
        # Not a black placeholder: the painting's own colours survive the conversion.
        pixels = np.asarray(image, dtype=np.float32)
        assert pixels.mean() > 40 and pixels.std() > 5
    elif name == "csv_extra_column":
        assert any("extra column(s) ['NOTES'] ignored" in n for n in report.notes)
        assert "NOTES" in read_split(data / TRAIN_CSV).columns
    elif name == "empty_description":
        assert any("semart_train.csv: 1 row(s) with an empty DESCRIPTION" in n and "[5]" in n
                   for n in report.notes)
        assert read_split(data / TRAIN_CSV)["DESCRIPTION"].iloc[3] == ""
    elif name == "unseen_label":
        assert any("semart_val.csv: 1 row(s) with a school label unseen" in n and "[2]" in n
                   for n in report.notes)
        labels = fit_labels(read_split(data / TRAIN_CSV))
        targets, unseen = encode_labels(read_split(data / "semart_val.csv"), labels)
        assert unseen["school"] == 1 and targets[0, 1] == IGNORE_INDEX


def test_every_problem_at_once(base_data: Path, tmp_path: Path):
    """Several broken rows and files in several splits: one error lists them all."""
    data = shutil.copytree(base_data, tmp_path / "data")
    truncate(data)
    extra_tab(data)
    set_field(data, 3, "TYPE", "", csv="semart_test.csv")
    (data / "Images" / lines_of(data, "semart_val.csv")[1].split("\t")[0]).unlink()
    cfg = tiny_config(data, tmp_path / "run")
    with pytest.raises(DataCheckError) as caught:
        train(cfg)
    message = str(caught.value)
    assert len(caught.value.problems) == 4, message
    for expected in ("semart_train.csv, line 2: image", "semart_train.csv, line 4: 10",
                     "semart_test.csv, line 3: empty TYPE", "semart_val.csv, line 2: image"):
        assert expected in message
    assert not (tmp_path / "run").exists()  # no run folder for data that stops the run


def test_skip_bad_images_counts_and_lists(base_data: Path, tmp_path: Path):
    data = shutil.copytree(base_data, tmp_path / "data")
    truncate(data)
    image_at(data, 3).write_bytes(b"")
    cfg = tiny_config(data, tmp_path / "run", modality="image")
    cfg.data.skip_bad_images = True
    with pytest.warns(UserWarning, match="2 unreadable painting"):
        run = train(cfg)
    skipped = (run / SKIPPED_IMAGES).read_text().splitlines()
    assert skipped[0] == "csv,line,image_file,reason" and len(skipped) == 3
    assert "truncated" in skipped[1] and "empty file" in skipped[2]
    history = (run / "history.csv").read_text()
    assert len(history.splitlines()) == 2


def test_image_check_modes(base_data: Path, tmp_path: Path):
    """The cheaper modes see less: a truncated JPEG passes 'header', a missing file none."""
    data = shutil.copytree(base_data, tmp_path / "data")
    truncate(data)
    path = image_at(data)
    assert image_problem(path, "decode").startswith("truncated")
    assert image_problem(path, "header") is None
    assert image_problem(path, "exists") is None
    assert image_problem(path.with_name("absent.jpg"), "exists") == "missing"


# --- run folders -------------------------------------------------------------------------


def _copy_run(trained_run: Path, tmp_path: Path) -> Path:
    return shutil.copytree(trained_run, tmp_path / "run")


def test_evaluate_accepts_a_sound_run(trained_run: Path, tmp_path: Path):
    metrics = evaluate_run(_copy_run(trained_run, tmp_path), "test", device="cpu")
    assert 0.0 <= metrics["mean_accuracy"] <= 1.0


def test_run_config_disagrees_with_checkpoint(trained_run: Path, tmp_path: Path):
    run = _copy_run(trained_run, tmp_path)
    cfg = RunConfig.load(run / "config.json")
    cfg.model.fusion_dim = 32
    cfg.labels["school"] = cfg.labels["school"][:-1]
    cfg.save(run / "config.json")
    with pytest.raises(RunFolderError) as caught:
        evaluate_run(run, "test", device="cpu")
    message = str(caught.value)
    assert "best.pt was trained on other school classes than config.json lists" in message
    assert "differ in shape, e.g. ['image_proj.2.weight (64, 512) in best.pt, (32, 512)" in message


def test_checkpoint_of_another_backbone(trained_run: Path, tmp_path: Path):
    run = _copy_run(trained_run, tmp_path)
    cfg = RunConfig.load(run / "config.json")
    cfg.model.backbone = "efficientnet_b0"
    other = build_model(cfg.model, cfg.labels, text_source=str(run / "text_encoder"))
    torch.save({"model": other.state_dict(), "epoch": 1, "meta": checkpoint.run_meta(cfg)},
               run / CHECKPOINT)
    with pytest.raises(RunFolderError, match=r"best.pt was written by a run with backbone "
                                             r"'efficientnet_b0', config.json says 'resnet18'"):
        evaluate_run(run, "test", device="cpu")


def test_run_folder_missing_files(trained_run: Path, tmp_path: Path):
    run = _copy_run(trained_run, tmp_path)
    (run / CHECKPOINT).unlink()
    shutil.rmtree(run / "text_encoder")
    with pytest.raises(RunFolderError) as caught:
        evaluate_run(run, "test", device="cpu")
    assert "best.pt is missing" in str(caught.value)
    assert "text_encoder/ is missing" in str(caught.value)


def test_non_finite_loss_stops_with_checkpoint_intact(base_data: Path, tmp_path: Path,
                                                      monkeypatch):
    """A NaN in the school loss at the third step of epoch 2 names all of that, and stops."""
    import semart_mtl.train as training

    calls = {"n": 0}
    real_loss = training.multitask_loss

    def poisoned(logits, labels, weights=None):
        loss, per_task = real_loss(logits, labels, weights)
        calls["n"] += 1
        if calls["n"] == 3:  # 2 steps per epoch: the 3rd step is epoch 2's first
            per_task["school"] = per_task["school"] * float("nan")
            loss = sum(per_task.values())
        return loss, per_task

    cfg = tiny_config(base_data, tmp_path / "run", modality="text")
    cfg.train.epochs = 3
    monkeypatch.setattr(training, "multitask_loss", poisoned)
    # The validation pass calls multitask_loss through evaluate.predict, not this name.
    with pytest.raises(NonFiniteLoss) as caught:
        train(cfg)
    message = str(caught.value)
    assert re.search(r"loss is nan at epoch 2, step 3 \(batch 1 of 2\), task\(s\) \['school'\]",
                     message), message
    assert "paintings ['" in message
    assert "last good checkpoint: " in message and "last.pt (epoch 1), untouched" in message
    last = checkpoint.load(tmp_path / "run" / checkpoint.LAST)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert not list((tmp_path / "run").glob(".*tmp*"))


@requires_real
def test_real_csvs_pass_the_checks():
    """SemArt's own latin-1 CSVs must not be mistaken for UTF-8 or broken rows."""
    for split in ("val", "test"):
        found, problems = check_csv(REAL_DIR / f"semart_{split}.csv")
        assert problems == [] and len(found.rows) == 1069
