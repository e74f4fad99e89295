"""COCO bbox mAP@[.5:.95] through faster-coco-eval (pycocotools' numbers; tests/models/test_ssd_coco_eval.py
checks the two agree on the same detections to 1e-6). Scored in rank 0's background process while training
continues, as NVIDIA does (`CocoScorer`, runtime/pending_eval.py), or synchronously (train.async_eval=false)."""

from __future__ import annotations

import copy

import numpy as np
import torch


def ground_truth(coco: dict) -> dict:
    """The json as the evaluator needs it: every annotation with an area and an iscrowd flag."""
    coco = copy.deepcopy(coco)
    for ann in coco["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    return coco


def to_coco_detections(image_ids: torch.Tensor, detections: list[dict], category_ids: list[int]) -> np.ndarray:
    """Rows [image_id, x, y, w, h, score, category_id] (loadRes's array form) for one batch."""
    rows = []
    for image_id, det in zip(image_ids.tolist(), detections):
        boxes = det["boxes"].float().cpu()
        if not len(boxes):
            continue
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1)
        cats = torch.as_tensor(category_ids, dtype=torch.float64)[det["labels"].cpu()]
        rows.append(torch.cat((torch.full((len(boxes), 1), float(image_id), dtype=torch.float64), xywh.double(),
                               det["scores"].double().cpu()[:, None], cats[:, None]), dim=1).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def mean_average_precision(gt, detections: np.ndarray) -> float:
    """`gt`: the ground-truth json (dict) or a faster_coco_eval COCO built from it (built once by the scorer)."""
    from faster_coco_eval import COCO, COCOeval_faster

    if len(detections) == 0:
        return 0.0
    coco_gt = COCO(gt) if isinstance(gt, dict) else gt
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(detections), "bbox", print_function=lambda *a: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


class CocoScorer:
    """Rank 0's background scorer: the ground truth is indexed once, in the worker, when it starts."""

    def __init__(self, gt: dict):
        from runtime.pending_eval import BackgroundScorer

        self._worker = BackgroundScorer(_load_ground_truth, (gt,))

    def start(self) -> None:
        self._worker.start()

    def submit(self, detections: np.ndarray):
        return self._worker.submit(_score, detections)

    def close(self) -> None:
        self._worker.close()


_WORKER_GT = None  # the scoring process's indexed ground truth


def _load_ground_truth(gt: dict) -> None:
    from faster_coco_eval import COCO

    global _WORKER_GT
    _WORKER_GT = COCO(gt)


def _score(detections: np.ndarray) -> float:
    return mean_average_precision(_WORKER_GT, detections)
