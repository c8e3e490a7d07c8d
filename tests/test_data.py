"""Reading SemArt CSVs and images: real rows where present, generated ones always."""

import html

import pandas as pd
import pytest
from PIL import Image

from conftest import REAL_DIR, requires_real
from semart_mtl.config import DataConfig
from semart_mtl.data import (
    MEDIA, TASK_COLUMNS, DataError, carve_validation, encode_labels, fit_labels, is_generated,
    load_image, load_splits, read_split,
)
from semart_mtl.sample import SPLIT_SIZES


@requires_real
@pytest.mark.parametrize("name", ["semart_val.csv", "semart_test.csv"])
def test_real_split_reads_every_row(name):
    frame = read_split(REAL_DIR / name)
    assert len(frame) == 1069
    assert set(frame["MEDIUM"]) <= set(MEDIA)
    # Entities are unescaped: no description keeps an entity that html.unescape would change.
    assert all(html.unescape(d) == d for d in frame["DESCRIPTION"])
    assert not frame["DESCRIPTION"].str.contains(r"\s{2,}").any()
    # "-" dates are missing values, not strings.
    assert frame["DATE"].isna().any() and not (frame["DATE"] == "-").any()


@requires_real
def test_real_entities_are_decoded():
    raw = pd.read_csv(REAL_DIR / "semart_val.csv", sep="\t", encoding="latin-1", dtype=str,
                      keep_default_na=False, quoting=3)
    with_entity = raw["DESCRIPTION"].str.contains(r"&(?:#\d+|[a-z]+);")
    assert with_entity.sum() > 20  # about 5% of rows carry entities
    clean = read_split(REAL_DIR / "semart_val.csv")
    row = with_entity.idxmax()
    expected = " ".join(html.unescape(raw.loc[row, "DESCRIPTION"]).split())
    assert clean.loc[row, "DESCRIPTION"] == expected


@requires_real
def test_real_unseen_labels_are_counted():
    val = read_split(REAL_DIR / "semart_val.csv")
    test = read_split(REAL_DIR / "semart_test.csv")
    _, unseen = encode_labels(test, fit_labels(val))
    for task, column in TASK_COLUMNS.items():
        expected = (~test[column].isin(set(val[column]))).sum()
        assert unseen[task] == expected
    assert sum(unseen.values()) > 0  # the README promises labels found in one split only


@requires_real
def test_real_images_csv():
    frame = read_split(REAL_DIR / "semart_images.csv")
    assert len(frame) == 12
    assert (frame["DESCRIPTION"] == "").any()  # empty descriptions survive
    assert all((REAL_DIR / "Images" / name).is_file() for name in frame["IMAGE_FILE"])


@requires_real
def test_carving_copes_with_classes_of_one_row():
    frame = read_split(REAL_DIR / "semart_images.csv")
    train, val = carve_validation(frame, 0.25, seed=0)
    assert len(train) + len(val) == len(frame) and len(val) == 3
    assert not set(train["IMAGE_FILE"]) & set(val["IMAGE_FILE"])
    again_train, _ = carve_validation(frame, 0.25, seed=0)
    assert list(again_train["IMAGE_FILE"]) == list(train["IMAGE_FILE"])  # seeded


def test_carving_is_stratified_by_type(sample_dir):
    frame = read_split(sample_dir / "semart_train.csv")
    _, val = carve_validation(frame, 0.25, seed=1)
    assert set(val["TYPE"]) == set(frame["TYPE"])


def test_sample_splits_and_marker(sample_dir):
    cfg = DataConfig(data_dir=str(sample_dir))
    splits = load_splits(cfg, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (160, 40, 24)
    assert not splits.val_carved
    assert is_generated(cfg)
    assert all((splits.images_dir / name).is_file() for name in splits.train["IMAGE_FILE"])
    assert set(SPLIT_SIZES) == {"train", "val", "test"}


def test_val_is_carved_when_absent(sample_dir):
    cfg = DataConfig(train_csv=str(sample_dir / "semart_train.csv"), val_fraction=0.25)
    splits = load_splits(cfg, seed=0)
    assert splits.val_carved and len(splits.val) == 40 and len(splits.train) == 120
    assert splits.test is None and splits.images_dir == sample_dir / "Images"


def test_missing_columns_name_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("IMAGE_FILE\tDESCRIPTION\nx.jpg\thello\n", encoding="latin-1")
    with pytest.raises(DataError, match="bad.csv.*missing columns"):
        read_split(path)


def test_exif_orientation_and_mode_are_applied(tmp_path):
    image = Image.new("L", (40, 20), 128)
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    image.save(tmp_path / "rot.jpg", exif=exif)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.mode == "RGB" and loaded.size == (20, 40)
