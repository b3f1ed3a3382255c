"""Datalist loading and the all-at-once validation that runs before training."""

from __future__ import annotations

import json
import shutil

import pytest

from medxgan_monai.data import DatalistError, load_datalist, validate_datalist


def test_paths_are_resolved_against_the_datalist_folder(tiny_demo):
    items = load_datalist(tiny_demo / "datalist.json", "training")
    assert all(item["image"].startswith(str(tiny_demo)) for item in items)
    assert validate_datalist(tiny_demo / "datalist.json") == {"training": 16, "validation": 8}
    assert validate_datalist(tiny_demo / "datalist_dicom.json", ["test"], require_mask=True) == {"test": 8}


def _broken_copy(tiny_demo, root, break_items):
    """Copy the demo set to ``root``, let ``break_items(root, training_items)`` damage it, save the datalist."""
    shutil.copytree(tiny_demo, root)
    datalist = json.loads((root / "datalist.json").read_text())
    break_items(root, datalist["training"])
    (root / "datalist.json").write_text(json.dumps(datalist))
    return datalist["training"]


def test_every_problem_is_listed_at_once(tiny_demo, tmp_path):
    def damage(root, training):
        (root / training[0]["image"]).unlink()
        (root / training[1]["image"]).write_bytes(b"\x00" * 10)
        training[2]["label"] = 2
        del training[3]["label"]
        training[4]["image"] = "images/nowhere.nii.gz"

    root = tmp_path / "broken"
    _broken_copy(tiny_demo, root, damage)
    with pytest.raises(DatalistError) as error:
        validate_datalist(root / "datalist.json")
    problems = error.value.problems
    assert len(problems) == 5, problems
    message = str(error.value)
    assert "label must be 0 or 1" in message and "missing 'label'" in message


def test_file_problems_are_all_reported(tiny_demo, tmp_path):
    def damage(root, training):
        (root / training[0]["image"]).unlink()
        (root / training[1]["image"]).write_bytes(b"\x00" * 10)
        (root / training[2]["mask"]).write_bytes(b"")
        training[3]["image"] = "images/nowhere.nii.gz"

    root = tmp_path / "files"
    training = _broken_copy(tiny_demo, root, damage)
    with pytest.raises(DatalistError) as error:
        validate_datalist(root / "datalist.json")
    problems = error.value.problems
    assert len(problems) == 4, problems
    assert any("does not exist" in p and training[0]["image"].split("/")[-1] in p for p in problems)
    assert any("cannot read as nifti" in p for p in problems)
    assert any("file is empty" in p for p in problems)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"validation": []}', "has no 'training' section"),
        ('{"training": [{"label": 1}], "validation": []}', "missing 'image'"),
    ],
)
def test_malformed_datalists(tmp_path, content, problem):
    path = tmp_path / "datalist.json"
    path.write_text(content)
    with pytest.raises(DatalistError, match=problem):
        validate_datalist(path)


def test_a_section_with_one_class_is_rejected(tiny_demo, tmp_path):
    datalist = json.loads((tiny_demo / "datalist.json").read_text())
    datalist["validation"] = [item for item in datalist["validation"] if item["label"] == 0]
    path = tiny_demo / "one_class.json"
    path.write_text(json.dumps(datalist))
    try:
        with pytest.raises(DatalistError, match="holds only label 0"):
            validate_datalist(path, check_readable=False)
    finally:
        path.unlink()
