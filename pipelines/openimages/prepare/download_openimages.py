"""Download the MLPerf OpenImages subset with fiftyone and write it in the layout format.py reads (the
reference's scripts/download_openimages_mlperf.sh + fiftyone_openimages.py, same choices):

    python -m pipelines.openimages.prepare.download_openimages --dataset-dir /data/open-images-v6-mlperf
    python -m pipelines.openimages.prepare.verify_dataset --root /data/open-images-v6-mlperf

Class handling, as the reference: fiftyone's open-images-v6 zoo dataset is asked for the `detections` of the
264 MLPERF_CLASSES only, so it downloads just the images holding at least one of them (1,170,301 train,
24,781 validation) and only those classes' boxes; the COCO export is given the same class list, which fixes
`categories` (264 entries, in that order) and drops any other label. OpenImages' IsGroupOf becomes COCO's
`iscrowd` (kept in training, as the reference keeps it). About 352 GB; fiftyone resumes a partial download
when rerun with the same arguments. Needs `pip install fiftyone` (not a dependency of this repository: it is
used once, outside the training image).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.openimages.format import LABELS_FILE, SPLITS, labels_path
from pipelines.openimages.prepare.classes import MLPERF_CLASSES
from runtime.atomic_write import atomic_open


def download(dataset_dir: str, splits: tuple[str, ...]):
    import fiftyone.zoo as zoo

    return zoo.load_zoo_dataset("open-images-v6", splits=list(splits), label_types=["detections"],
                                classes=list(MLPERF_CLASSES), dataset_name="open-images-mlperf",
                                dataset_dir=dataset_dir)


def export_split(dataset, dataset_dir: str, split: str) -> str:
    """The split's COCO json at <dataset_dir>/<split>/labels/openimages-mlperf.json, iscrowd from IsGroupOf."""
    import fiftyone as fo

    path = labels_path(dataset_dir, split)
    # labels only (no export_dir): the JPEGs stay where the zoo put them, <dataset_dir>/<split>/data/<id>.jpg,
    # and file_name is that base name (verify_dataset.py checks both)
    dataset.match_tags(split).export(labels_path=path, dataset_type=fo.types.COCODetectionDataset,
                                     label_field="detections", classes=list(MLPERF_CLASSES))
    set_iscrowd_from_group_of(path)
    return path


def set_iscrowd_from_group_of(path: str) -> None:
    """fiftyone exports OpenImages' IsGroupOf as an annotation attribute; COCO's evaluator and our reader read
    `iscrowd`. An annotation without IsGroupOf is an error: the export did not come from open-images-v6."""
    with open(path) as f:
        coco = json.load(f)
    for annotation in coco["annotations"]:
        if "IsGroupOf" not in annotation:
            raise ValueError(f"{path}: annotation {annotation.get('id')} has no IsGroupOf attribute")
        annotation["iscrowd"] = int(bool(annotation["IsGroupOf"]))
    with atomic_open(path, "w") as f:
        json.dump(coco, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", required=True, help="root of the layout (both splits go under it)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    args = parser.parse_args(argv)
    dataset = download(args.dataset_dir, tuple(args.splits))
    for split in args.splits:
        print(f"{export_split(dataset, args.dataset_dir, split)}: written ({LABELS_FILE})", flush=True)
    print(f"next: python -m pipelines.openimages.prepare.verify_dataset --root {args.dataset_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
