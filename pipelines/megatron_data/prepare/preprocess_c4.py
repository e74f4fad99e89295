"""C4 json(.gz) shards -> Megatron indexed dataset (.bin uint16 + .idx), as the reference's preprocessing.

The reference (NeMo `preprocess_data_for_megatron.py --tokenizer-library sentencepiece --dataset-impl mmap`)
tokenises each document's "text" with the SentencePiece model `c4_en_301_5Mexp2_spm.model` and appends no
EOD token; one sequence per document. The training files merge C4 en/3.0.1 shards 768..1023 into two
files; the validation file is `c4-validation_24567exp.json` (24 567 documents).

    python -m pipelines.megatron_data.prepare.preprocess_c4 --spm c4_en_301_5Mexp2_spm.model \\
        --out /data/c4_en_6_c4_spm_text_document /raw/c4/en/c4-train.00{768..895}-of-01024.json.gz
    python -m pipelines.megatron_data.prepare.preprocess_c4 --spm ... \\
        --out /data/c4_en_7_c4_spm_text_document /raw/c4/en/c4-train.00{896..999}-of-01024.json.gz \\
        /raw/c4/en/c4-train.01{000..023}-of-01024.json.gz
    python -m pipelines.megatron_data.prepare.preprocess_c4 --spm ... \\
        --out /data/c4_en_validation_subset_c4_spm_text_document /raw/c4-validation_24567exp.json

Which shards go into en_6 and en_7 (above: the two halves of 768..1023) should be checked against the
reference's `gpt3_blend.sh`/README before use; the result must match `checksums/dataset_checksum.log`
(md5 of every .bin/.idx), which is the real test of this script. Needs `sentencepiece`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import sys

import numpy as np

from pipelines.megatron_data.indexed import write_indexed_dataset

_SPM = None


def _init(model_path: str) -> None:
    global _SPM
    import sentencepiece as spm

    _SPM = spm.SentencePieceProcessor(model_file=model_path)


def _encode(line: str) -> np.ndarray:
    text = json.loads(line)["text"]
    return np.asarray(_SPM.encode(text), dtype=np.uint16)


def _lines(paths):
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spm", required=True, help="SentencePiece model (c4_en_301_5Mexp2_spm.model)")
    p.add_argument("--out", required=True, help="output prefix; writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--workers", type=int, default=mp.cpu_count())
    p.add_argument("inputs", nargs="+", help="C4 .json or .json.gz files, one JSON document per line")
    args = p.parse_args(argv)
    with mp.Pool(args.workers, initializer=_init, initargs=(args.spm,)) as pool:
        # imap keeps document order (the index arrays are built over it) while workers tokenise ahead.
        docs = pool.imap(_encode, _lines(args.inputs), chunksize=256)
        write_indexed_dataset(args.out, docs, dtype=np.uint16)
    print(f"wrote {args.out}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
