"""The eval set: the first N examples of the eval TFRecords, as the reference's pick_eval_samples.py.

    python -m pipelines.bert.prepare.pick_eval_samples --input-files eval_tfrecords/part-00000-of-00001 \
        --output-file eval_10k --num-examples-to-pick 10000

Each record is decoded and checked (fixed feature lengths) before it is copied, so a damaged eval
shard fails here, naming the file, rather than at the first evaluation of a timed run.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.bert.format import (
    EVAL_SAMPLES,
    MAX_PREDICTIONS_PER_SEQ,
    MAX_SEQ_LENGTH,
    BertFormatError,
    decode_pretraining_example,
)
from pipelines.tfrecord import ExampleError, TFRecordWriter, iter_records


def pick_eval_samples(input_files: list[str], output_file: str, count: int = EVAL_SAMPLES,
                      max_seq_length: int = MAX_SEQ_LENGTH, max_predictions: int = MAX_PREDICTIONS_PER_SEQ) -> int:
    picked = 0
    with TFRecordWriter(output_file) as writer:
        for path in input_files:
            for index, payload in enumerate(iter_records(path)):
                if picked == count:
                    break
                try:
                    decode_pretraining_example(payload, max_seq_length, max_predictions)
                except ExampleError as e:
                    raise BertFormatError(f"{path}: record {index}: {e}") from None
                writer.write(payload)
                picked += 1
        if picked < count:
            raise BertFormatError(f"{', '.join(input_files)}: only {picked} examples, {count} wanted")
    return picked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bert.prepare.pick_eval_samples", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-files", required=True, help="comma-separated eval TFRecords")
    p.add_argument("--output-file", required=True)
    p.add_argument("--num-examples-to-pick", type=int, default=EVAL_SAMPLES)
    p.add_argument("--max-seq-length", type=int, default=MAX_SEQ_LENGTH)
    p.add_argument("--max-predictions-per-seq", type=int, default=MAX_PREDICTIONS_PER_SEQ)
    a = p.parse_args(argv)
    n = pick_eval_samples(a.input_files.split(","), a.output_file, a.num_examples_to_pick, a.max_seq_length,
                          a.max_predictions_per_seq)
    print(f"wrote {n} examples to {a.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
