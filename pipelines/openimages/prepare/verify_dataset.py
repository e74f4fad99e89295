"""Check a downloaded OpenImages tree before any run: every problem found, each naming its file, then exit 1;
or one line per split and exit 0.

    python -m pipelines.openimages.prepare.verify_dataset --root /data/open-images-v6-mlperf [--workers 16]

Per split: the json parses and is a COCO detection file (images with integer id, base-name file_name, positive
width/height, unique ids and names; annotations with a known image and category and 4 finite numbers of
positive size inside the image, to half a pixel: OpenImages' relative boxes times the size); the categories
are the 264 MLPerf classes (names and order) unless --any-classes; the image count is the subset's (1,170,301
train, 24,781 validation) unless --expect-train/--expect-validation say otherwise; every listed image exists,
decodes completely (PIL: a truncated file fails) to the json's size, and no other file sits in data/. Decoding
1.2 M JPEGs takes about an hour on 16 processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

from pipelines.openimages.format import SPLITS, image_path, labels_path
from pipelines.openimages.prepare.classes import MLPERF_CLASSES

EXPECTED_IMAGES = {"train": 1_170_301, "validation": 24_781}
BOX_SLACK = 0.5  # px beyond the image edge tolerated (float round-off of relative coordinates times the size)
MAX_LISTED = 20  # problems listed per kind and split; the rest are counted


def check_image(path: str, width: int, height: int) -> str | None:
    """None, or what is wrong with one JPEG: missing, not decodable to the end, or of another size."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decodes every scan: a truncated file raises here, not at open
            size = image.size
    except FileNotFoundError:
        return f"{path}: missing"
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for a broken file
        return f"{path}: does not decode ({type(error).__name__}: {error})"
    if size != (width, height):
        return f"{path}: decodes to {size[0]}x{size[1]}, the json says {width}x{height}"
    return None


def _check_json(coco, path: str, classes: tuple[str, ...] | None) -> tuple[list[str], list[dict] | None]:
    """(problems, the images that are well-formed enough to check on disk; None: not a COCO file at all)."""
    problems = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            return [f"{path}: no '{key}' list (not a COCO detection file)"], None
    names = [c.get("name") for c in coco["categories"]]
    if classes is not None and names != list(classes):
        missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        problems.append(f"{path}: categories are not the {len(classes)} MLPerf classes in order ({len(names)} "
                        f"given; missing {missing[:5]}, unexpected {extra[:5]})")
    category_ids = [c.get("id") for c in coco["categories"]]
    if len(set(category_ids)) != len(category_ids):
        problems.append(f"{path}: duplicate category ids")
    images, seen_ids, seen_names = [], set(), set()
    for im in coco["images"]:
        iid, name, w, h = im.get("id"), im.get("file_name"), im.get("width"), im.get("height")
        if not (isinstance(iid, int) and isinstance(name, str) and isinstance(w, int) and isinstance(h, int)
                and w > 0 and h > 0 and os.path.basename(name) == name):
            problems.append(f"{path}: image entry {im!r} malformed (needs int id, base-name file_name, positive "
                            f"int width/height)")
            continue
        if iid in seen_ids or name in seen_names:
            problems.append(f"{path}: image id {iid} or file {name} listed twice")
            continue
        seen_ids.add(iid)
        seen_names.add(name)
        images.append(im)
    size_of = {im["id"]: (im["width"], im["height"], im["file_name"]) for im in images}
    known_categories = set(category_ids)
    for ann in coco["annotations"]:
        where = f"{path}: annotation {ann.get('id')}"
        if ann.get("image_id") not in size_of:
            problems.append(f"{where} names unknown image {ann.get('image_id')}")
            continue
        if ann.get("category_id") not in known_categories:
            problems.append(f"{where} names unknown category {ann.get('category_id')}")
            continue
        w, h, name = size_of[ann["image_id"]]
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and all(math.isfinite(v) for v in box)):
            problems.append(f"{where} ({name}): bbox {box!r} is not 4 finite numbers")
            continue
        x, y, bw, bh = box
        if bw <= 0 or bh <= 0:
            problems.append(f"{where} ({name}): bbox {box} has no area")
        elif x < -BOX_SLACK or y < -BOX_SLACK or x + bw > w + BOX_SLACK or y + bh > h + BOX_SLACK:
            problems.append(f"{where} ({name}): bbox {box} outside the {w}x{h} image")
    return problems, images


def verify_split(root: str, split: str, *, expected_images: int | None, classes: tuple[str, ...] | None,
                 workers: int = 1) -> list[str]:
    path = labels_path(root, split)
    try:
        with open(path) as f:
            coco = json.load(f)
    except FileNotFoundError:
        return [f"{path}: missing"]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"{path}: not valid json ({error})"]
    if not isinstance(coco, dict):
        return [f"{path}: not a COCO detection file (top level is {type(coco).__name__})"]
    problems, images = _check_json(coco, path, classes)
    if images is None:
        return problems  # every file would look stray: the json is the one problem
    if expected_images is not None and len(coco.get("images", [])) != expected_images:
        problems.append(f"{path}: {len(coco.get('images', []))} images, the MLPerf subset has {expected_images}")
    data_dir = os.path.join(root, split, "data")
    listed = {im["file_name"] for im in images}
    on_disk = set(os.listdir(data_dir)) if os.path.isdir(data_dir) else set()
    problems += [f"{os.path.join(data_dir, name)}: not in {path}" for name in sorted(on_disk - listed)]
    jobs = [(image_path(root, split, im["file_name"]), im["width"], im["height"]) for im in images]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(check_image, *zip(*jobs), chunksize=256) if jobs else []
            problems += [r for r in results if r]
    else:
        problems += [r for r in (check_image(*job) for job in jobs) if r]
    return problems


def _summarise(problems: list[str]) -> list[str]:
    """At most MAX_LISTED lines per kind of problem, then a count of the rest."""
    kinds: dict[str, list[str]] = {}
    for p in problems:
        kinds.setdefault(re.sub(r"\d+", "N", p.split(": ", 1)[-1])[:40], []).append(p)
    lines = []
    for group in kinds.values():
        lines += group[:MAX_LISTED]
        if len(group) > MAX_LISTED:
            lines.append(f"... and {len(group) - MAX_LISTED} more like the above")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--expect-train", type=int, default=EXPECTED_IMAGES["train"])
    parser.add_argument("--expect-validation", type=int, default=EXPECTED_IMAGES["validation"])
    parser.add_argument("--any-classes", action="store_true", help="do not require the 264 MLPerf classes")
    args = parser.parse_args(argv)
    expected = {"train": args.expect_train, "validation": args.expect_validation}
    failed = False
    for split in SPLITS:
        problems = verify_split(args.root, split, expected_images=expected[split], workers=args.workers,
                                classes=None if args.any_classes else MLPERF_CLASSES)
        for line in _summarise(problems):
            print(line, file=sys.stderr)
        print(f"{split}: {'FAILED, ' + str(len(problems)) + ' problems' if problems else 'OK'}", flush=True)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
