"""From run directories to an MLPerf Training submission, and time-to-train before any run.

    python -m runtime.submission package --org ORG --system SYSTEM --division closed RUN_DIR... --out DIR
    python -m runtime.submission check DIR/ORG [--division open]
    python -m runtime.submission predict resnet --gbs 3200 --throughput 57280 [--eval-seconds 6 --eval-every 5124668]
    python -m runtime.submission predict resnet --run RUN_DIR       (a short run of the real flavour)
    python -m runtime.submission predict gpt3 --plan PLAN.txt        (models.gpt3.plan's output with --step-time)
    python -m runtime.submission nvidia                              (the predictor against NVIDIA's v4.0 times)

`package` writes the MLCommons tree (results, systems json, implementations at the runs' git revision), a plot of
the runs' eval curves beside it, and runs mlperf-logging's package checker, RCP checker and result summarizer on it
(ruleset 4.0.0). runs.py reads and cross-checks the run directories, layout.py writes the tree, system_desc.py the
system description, checkers.py runs the MLCommons tools, rcp.py reads the reference convergence points through
mlperf-logging's RCP checker, predict.py turns them into minutes, plot.py draws the curves.
"""

RULESET = "4.0.0"
USAGE = "training"
