"""The label rules: medium from TECHNIQUE, vocabularies, unseen labels."""

import numpy as np
import pandas as pd
import pytest

from semart_mtl.config import TASKS
from semart_mtl.data import IGNORE_INDEX, MEDIA, encode_labels, fit_labels, medium_from_technique

MEDIUM_CASES = [
    ("Oil on canvas, 91 x 72 cm", "canvas"),
    ("Fresco", "wall"),
    ("Fresco transferred to canvas", "wall"),
    ("Oil on oak panel, 50 x 40 cm", "wood"),
    ("Tempera and gold on panel", "wood"),
    ("Poplar", "wood"),
    ("Oil on copper", "metal"),
    ("Oil on slate", "stone"),
    ("Pastel on blue paper", "paper"),
    ("Oil on cardboard", "paper"),
    ("Oil on canvas transferred from wood", "canvas"),
    ("Oil on paper laid down on board", "paper"),
    ("Walnut oil on plaster", "wall"),
    ("Photo", "other"),
    ("-", "other"),
    ("Marble", "stone"),
    ("Oil on board", "wood"),
    ("Watercolour on ivory", "other"),
    # Further shapes seen in the real splits.
    ("Oil on wood transferred to canvas", "canvas"),
    ("Oil on canvas on panel", "canvas"),
    ("Oil on canvas laid on panel", "canvas"),
    ("Oil on paper fixed onto canvas", "paper"),
    ("Oil on copper beech panel", "wood"),
    ("Oil and tempera on limewood", "wood"),
    ("Oil on lime wood panel", "wood"),
    ("Red beechwood panel", "wood"),
    ("Egg tempera on spruce", "wood"),
    ("Oil on panel.118 x 89 cm", "wood"),
    ("Detached fresco", "wall"),
    ("Mural painting", "wall"),
    ("Sinopia", "wall"),
    ("Oil on linen", "canvas"),
    ("Tempera on parchment", "paper"),
    ("Gouache on vellum", "paper"),
    ("Oil on tin", "metal"),
    ("Oil on alabaster", "stone"),
    ("Oil on lapis lazuli", "stone"),
    ("Oil on glass", "other"),
    ("Tapestry", "other"),
    ("", "other"),
    ("Oil", "other"),
]


@pytest.mark.parametrize("technique, medium", MEDIUM_CASES)
def test_medium_from_technique(technique, medium):
    assert medium_from_technique(technique) == medium


def test_media_are_the_documented_set():
    assert {m for _, m in MEDIUM_CASES} == set(MEDIA)


def _frame(rows):
    return pd.DataFrame(rows, columns=["TYPE", "SCHOOL", "TIMEFRAME", "MEDIUM"])


def test_vocabularies_come_from_training_rows_only():
    train = _frame([("portrait", "Dutch", "1601-1650", "canvas"),
                    ("landscape", "Italian", "1501-1550", "wood")])
    labels = fit_labels(train)
    assert labels == {"type": ["landscape", "portrait"], "school": ["Dutch", "Italian"],
                      "timeframe": ["1501-1550", "1601-1650"], "medium": ["canvas", "wood"]}


def test_unseen_labels_are_ignored_and_counted_never_merged():
    train = _frame([("portrait", "Dutch", "1601-1650", "canvas"),
                    ("landscape", "Italian", "1501-1550", "wood")])
    test = _frame([("portrait", "Spanish", "1601-1650", "canvas"),
                   ("study", "Dutch", "1801-1850", "wall"),
                   ("landscape", "Italian", "1501-1550", "wood")])
    targets, unseen = encode_labels(test, fit_labels(train))
    assert unseen == {"type": 1, "school": 1, "timeframe": 1, "medium": 1}
    expected = np.array([[1, IGNORE_INDEX, 1, 0],
                         [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX],
                         [0, 1, 0, 1]])
    np.testing.assert_array_equal(targets, expected)
    assert targets.shape == (3, len(TASKS))
