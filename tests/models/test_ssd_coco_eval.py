"""faster-coco-eval (what the benchmark scores with) gives pycocotools' mAP on the same detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from models.ssd.coco_eval import ground_truth, mean_average_precision


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 150} for i in range(1, 21)]
    annotations, detections = [], []
    for image in images:
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 120), rng.uniform(0, 90)
            w, h = rng.uniform(10, 70), rng.uniform(10, 55)
            c = int(rng.integers(1, 4))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": c,
                                "bbox": [x, y, w, h], "iscrowd": int(rng.random() < 0.1)})
            for _ in range(2):  # jittered true positives, some with the wrong class
                jitter = rng.normal(0, 4, 4)
                detections.append([image["id"], x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3],
                                   rng.random(), c if rng.random() < 0.8 else int(rng.integers(1, 4))])
        for _ in range(rng.integers(0, 3)):  # false positives
            detections.append([image["id"], *rng.uniform(0, 100, 2), *rng.uniform(5, 50, 2), rng.random(),
                               int(rng.integers(1, 4))])
    categories = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}, np.asarray(detections)


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_equals_pycocotools(seed):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, detections = _case(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = ground_truth(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = evaluator.stats[0]
    assert 0.05 < expected < 0.95
    assert mean_average_precision(ground_truth(gt), detections) == pytest.approx(expected, abs=1e-6)


def test_no_detections_score_zero():
    gt, _ = _case()
    assert mean_average_precision(ground_truth(gt), np.zeros((0, 7))) == 0.0
