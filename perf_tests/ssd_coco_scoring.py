"""Seconds to score COCO bbox mAP over the real validation size: faster-coco-eval (what the benchmark uses,
models/ssd/coco_eval.py) against pycocotools (the reference's), on the same synthetic ground truth and
detections, in the same run; both mAPs printed (they agree: tests/models/test_ssd_coco_eval.py).

Synthetic set: `--images` (24,781, the validation split) of 1024x768 with `--boxes` ground-truth boxes each
(OpenImages validation has about 7.4 on average) over `--classes` (264) categories, 10% iscrowd;
`--detections` per image (default 30; the model keeps up to 300, most of them low-score ones): jittered
copies of the true boxes, some with the wrong class, plus random false positives. Timed: building the
ground-truth index once (the benchmark's background scorer does that once per run) and, per eval, loadRes +
evaluate + accumulate + summarize, which is what each epoch's scoring costs.

    python perf_tests/ssd_coco_scoring.py [--detections 300]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402

from models.ssd.coco_eval import ground_truth  # noqa: E402


def synthetic(images: int, boxes: int, classes: int, detections: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    w, h = 1024, 768
    n = images * boxes
    image_ids = np.repeat(np.arange(1, images + 1), boxes)
    xy = rng.uniform(0, 0.7, (n, 2)) * (w, h)
    wh = rng.uniform(0.03, 0.3, (n, 2)) * (w, h)
    cats = rng.integers(1, classes + 1, n)
    crowd = rng.random(n) < 0.1
    annotations = [{"id": i + 1, "image_id": int(image_ids[i]), "category_id": int(cats[i]),
                    "bbox": [float(xy[i, 0]), float(xy[i, 1]), float(wh[i, 0]), float(wh[i, 1])],
                    "area": float(wh[i, 0] * wh[i, 1]), "iscrowd": int(crowd[i])} for i in range(n)]
    gt = {"images": [{"id": i, "file_name": f"{i:016x}.jpg", "width": w, "height": h} for i in range(1, images + 1)],
          "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in range(1, classes + 1)]}
    # per image: one jittered copy of each true box (20% with a wrong class), the rest random false positives
    true_rows = np.column_stack((image_ids, xy + rng.normal(0, 6, (n, 2)), wh * rng.uniform(0.85, 1.15, (n, 2)),
                                 rng.uniform(0.3, 1.0, n),
                                 np.where(rng.random(n) < 0.8, cats, rng.integers(1, classes + 1, n))))
    extra = max(detections - boxes, 0) * images
    false_rows = np.column_stack((np.repeat(np.arange(1, images + 1), max(detections - boxes, 0)),
                                  rng.uniform(0, 0.8, (extra, 2)) * (w, h), rng.uniform(0.02, 0.2, (extra, 2)) * (w, h),
                                  rng.uniform(0.05, 0.5, extra), rng.integers(1, classes + 1, extra)))
    return gt, np.concatenate((true_rows, false_rows)).astype(np.float64)


def faster(gt: dict, detections: np.ndarray) -> tuple[float, float, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    start = time.perf_counter()
    coco_gt = COCO(gt)
    indexed = time.perf_counter()
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(detections), "bbox", print_function=lambda *a: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return indexed - start, time.perf_counter() - indexed, float(evaluator.stats[0])


def pycocotools(gt: dict, detections: np.ndarray) -> tuple[float, float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # both print their progress and summary table
        start = time.perf_counter()
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        indexed = time.perf_counter()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return indexed - start, time.perf_counter() - indexed, float(evaluator.stats[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24_781)
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--classes", type=int, default=264)
    # pycocotools holds every detection as a Python dict: 100 per image took >12 GB, more than a 24 GB shared
    # build machine should give it
    parser.add_argument("--detections", type=int, default=30, help="per image (the model keeps up to 300)")
    parser.add_argument("--skip-pycocotools", action="store_true")
    args = parser.parse_args()
    gt, detections = synthetic(args.images, args.boxes, args.classes, args.detections)
    gt = ground_truth(gt)

    print(f"# ssd_coco_scoring  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"{cpu_name()}, {args.images} images, {len(gt['annotations'])} ground-truth boxes, {len(detections)} "
          f"detections ({args.detections} per image), {args.classes} classes")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    # peak memory of this process so far (so pycocotools' row includes faster-coco-eval's peak if that was higher)
    print("| evaluator | index ground truth s | score one eval s | mAP | peak RSS GB |")
    print("|---|---|---|---|---|")
    results = {}
    for name, evaluate in (("faster-coco-eval", faster), ("pycocotools", pycocotools)):
        if name == "pycocotools" and args.skip_pycocotools:
            continue
        index_s, score_s, value = results[name] = evaluate(gt, detections)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"| {name} | {index_s:.1f} | {score_s:.1f} | {value:.6f} | {peak_gb:.1f} |", flush=True)
    if len(results) == 2:
        print(f"\nscore one eval: pycocotools / faster-coco-eval = "
              f"{results['pycocotools'][1] / results['faster-coco-eval'][1]:.1f}x; "
              f"|mAP difference| = {abs(results['pycocotools'][2] - results['faster-coco-eval'][2]):.2e}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
