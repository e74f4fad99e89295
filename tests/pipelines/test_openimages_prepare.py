"""OpenImages preparation: verify_dataset passes the synthetic tree and names every planted fault of a broken
one; the download script's class list and iscrowd rewrite (fiftyone itself cannot run here)."""

from __future__ import annotations

import json
import os

import pytest

from pipelines.openimages.format import image_path, labels_path
from pipelines.openimages.prepare.classes import MLPERF_CLASSES
from pipelines.openimages.prepare.download_openimages import set_iscrowd_from_group_of
from pipelines.openimages.prepare.verify_dataset import main, verify_split
from pipelines.openimages.synthetic import write_synthetic_openimages

COUNTS = {"train": 12, "validation": 5}


def _tree(root) -> str:
    write_synthetic_openimages(str(root), classes=3, train_images=COUNTS["train"], val_images=COUNTS["validation"],
                               min_side=40, max_side=60, max_objects=2, seed=1)
    return str(root)


def _args(root):
    return ["--root", root, "--workers", "1", "--expect-train", str(COUNTS["train"]), "--expect-validation",
            str(COUNTS["validation"]), "--any-classes"]


def test_the_synthetic_tree_passes(tmp_path, capsys):
    root = _tree(tmp_path)
    assert main(_args(root)) == 0
    assert capsys.readouterr().out.splitlines() == ["train: OK", "validation: OK"]


def test_the_real_counts_and_classes_are_required(tmp_path, capsys):
    root = _tree(tmp_path)
    assert main(["--root", root, "--workers", "2"]) == 1  # the defaults: 1,170,301 / 24,781 and 264 classes
    err = capsys.readouterr().err
    assert f"{COUNTS['train']} images, the MLPerf subset has 1170301" in err
    assert f"{COUNTS['validation']} images, the MLPerf subset has 24781" in err
    assert "categories are not the 264 MLPerf classes" in err


def test_every_planted_fault_is_named(tmp_path):
    root = _tree(tmp_path)
    path = labels_path(root, "train")
    with open(path) as f:
        coco = json.load(f)
    images = coco["images"]
    # a truncated JPEG, a missing one, one not of its declared size, a stray file
    truncated = image_path(root, "train", images[0]["file_name"])
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    os.remove(image_path(root, "train", images[1]["file_name"]))
    images[2]["width"] += 3
    open(image_path(root, "train", "stray.jpg"), "wb").close()
    # a box outside its image, one without area, unknown image, unknown category, a malformed bbox
    w, h = images[3]["width"], images[3]["height"]
    coco["annotations"] += [
        {"id": 900, "image_id": images[3]["id"], "category_id": 100, "bbox": [w - 5, 0, 10, 10]},
        {"id": 901, "image_id": images[3]["id"], "category_id": 100, "bbox": [0, 0, 0, 10]},
        {"id": 902, "image_id": 12345, "category_id": 100, "bbox": [0, 0, 5, 5]},
        {"id": 903, "image_id": images[3]["id"], "category_id": 7, "bbox": [0, 0, 5, 5]},
        {"id": 904, "image_id": images[3]["id"], "category_id": 100, "bbox": [0, 0, "5", 5]}]
    with open(path, "w") as f:
        json.dump(coco, f)
    problems = verify_split(root, "train", expected_images=COUNTS["train"], classes=None, workers=2)
    expected = [f"{truncated}: does not decode",
                f"{image_path(root, 'train', images[1]['file_name'])}: missing",
                f"decodes to {w_h(images[2], -3)}, the json says {w_h(images[2], 0)}",
                f"{image_path(root, 'train', 'stray.jpg')}: not in {path}",
                f"annotation 900 ({images[3]['file_name']}): bbox [{w - 5}, 0, 10, 10] outside the {w}x{h} image",
                "annotation 901", "has no area",
                "annotation 902 names unknown image 12345", "annotation 903 names unknown category 7",
                "annotation 904", "is not 4 finite numbers"]
    text = "\n".join(problems)
    for fragment in expected:
        assert fragment in text, (fragment, text)
    assert len(problems) == 9  # nothing else: the synthetic tree's own entries pass


def w_h(image, dw):
    return f"{image['width'] + dw}x{image['height']}"


@pytest.mark.parametrize("content, message", [("{not json", "not valid json"), ("[]", "top level is list"),
                                               ('{"images": []}', "no 'annotations' list")])
def test_a_broken_json_is_named(tmp_path, content, message):
    root = _tree(tmp_path)
    with open(labels_path(root, "validation"), "w") as f:
        f.write(content)
    problems = verify_split(root, "validation", expected_images=None, classes=None)
    assert len(problems) == 1 and labels_path(root, "validation") in problems[0] and message in problems[0]


def test_the_mlperf_class_list():
    assert len(MLPERF_CLASSES) == 264 == len(set(MLPERF_CLASSES))
    assert list(MLPERF_CLASSES) == sorted(MLPERF_CLASSES)  # the reference's list is alphabetical
    assert {"Airplane", "Human face", "Kitchen & dining room table", "Zucchini"} <= set(MLPERF_CLASSES)


def test_iscrowd_comes_from_is_group_of(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"annotations": [{"id": 1, "IsGroupOf": True}, {"id": 2, "IsGroupOf": False}]}))
    set_iscrowd_from_group_of(str(path))
    assert [a["iscrowd"] for a in json.loads(path.read_text())["annotations"]] == [1, 0]
    path.write_text(json.dumps({"annotations": [{"id": 3}]}))
    with pytest.raises(ValueError, match="annotation 3 has no IsGroupOf"):
        set_iscrowd_from_group_of(str(path))
