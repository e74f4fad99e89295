"""RetinaNet's evaluation: COCO mAP scored in rank 0's background process gives the synchronous numbers, each
logged under the epoch it evaluated, while the next epoch trains."""

import subprocess

from conftest import REPO, read_events, read_metrics, train_command


def _run(data, run_dir, *overrides):
    r = subprocess.run(train_command("ssd", data, run_dir, "train.max_epochs=6", "run.target=0.99", "--seed", "11",
                                     "run.checkpoint_dir=", *overrides),
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]  # the target is out of reach: aborted
    return [m["eval"] for m in read_metrics(run_dir) if "eval" in m], read_events(run_dir / "mlperf_log.txt")


def test_background_scoring_gives_the_synchronous_maps(debug_data, tmp_path):
    data = debug_data("ssd")
    sync, _ = _run(data, tmp_path / "sync", "train.async_eval=false")
    background, events = _run(data, tmp_path / "async", "train.async_eval=true")
    assert len(sync) == 6 and sync == background and max(sync) > 0.05
    accuracy = [i for i, e in enumerate(events) if e["key"] == "eval_accuracy"]
    assert [events[i]["metadata"]["epoch_num"] for i in accuracy] == [1, 2, 3, 4, 5, 6]
    # each score is logged after the next epoch started training (the last one, awaited at the budget's end,
    # after its eval_stop): scoring was off the critical path
    starts = {e["metadata"]["first_epoch_num"]: i for i, e in enumerate(events) if e["key"] == "block_start"}
    stops = {e["metadata"]["epoch_num"]: i for i, e in enumerate(events) if e["key"] == "eval_stop"}
    for epoch, i in enumerate(accuracy, start=1):
        assert i > starts.get(epoch + 1, stops[epoch]) >= stops[epoch]
