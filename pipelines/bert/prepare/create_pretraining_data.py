"""Text -> TFRecords of masked-LM / next-sentence examples: the reference's create_pretraining_data.py.

    python -m pipelines.bert.prepare.create_pretraining_data --input-file part-00000-of-00500 \
        --output-file tfrecords/part-00000-of-00500 --vocab-file vocab.txt --do-lower-case \
        --max-seq-length 512 --max-predictions-per-seq 76 --masked-lm-prob 0.15 --random-seed 12345 \
        --dupe-factor 10

Input: one sentence per line, documents separated by blank lines (the clean-up scripts' output).
Tokenisation is WordPiece through the `tokenizers` library's BERT tokenizer (lower-casing, accent
stripping and punctuation splitting as the reference's BasicTokenizer; greedy longest-match-first
WordPiece with [UNK] for words over 100 characters or without a match).

The instance algorithm follows the reference, drawing from one `random.Random(seed)` in the same order,
so a given input, vocabulary and seed make the same examples:
  - documents are shuffled; for each of `dupe_factor` passes, every document is cut into chunks of
    sentences of about `max_seq_length - 3` tokens (a random shorter target with `short_seq_prob`);
  - segment A is the chunk's first 1..n-1 sentences; segment B is the rest of the chunk, or, with
    probability 0.5 (always for a one-sentence chunk), sentences from a random other document
    (next_sentence_label 1), the unused sentences of the chunk going back to the document;
  - the pair is trimmed to fit, one token at a time from the longer side's front or back at random;
  - masking: round(15% of the tokens), at most `max_predictions_per_seq`, at random non-special
    positions (whole words with --do-whole-word-mask); each becomes [MASK] with p 0.8, stays with p 0.1,
    becomes a random vocabulary word with p 0.1;
  - all instances are shuffled and written round-robin over the output files.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass

from pipelines.bert.format import encode_pretraining_example
from pipelines.tfrecord import TFRecordWriter

SPECIAL = ("[CLS]", "[SEP]")


@dataclass
class Instance:
    tokens: list[str]
    segment_ids: list[int]
    masked_positions: list[int]
    masked_labels: list[str]
    is_random_next: bool


class WordPiece:
    """The reference's FullTokenizer contract (tokenize, ids, vocabulary words) over `tokenizers`."""

    def __init__(self, vocab_file: str, do_lower_case: bool = True):
        from tokenizers import BertWordPieceTokenizer

        self.tokenizer = BertWordPieceTokenizer(vocab_file, lowercase=do_lower_case,
                                                strip_accents=do_lower_case, clean_text=True)
        with open(vocab_file, encoding="utf-8") as f:
            self.vocab_words = [line.rstrip("\n") for line in f if line.strip()]
        self.ids = {word: i for i, word in enumerate(self.vocab_words)}
        missing = [t for t in ("[CLS]", "[SEP]", "[MASK]", "[UNK]") if t not in self.ids]
        if missing:
            raise ValueError(f"{vocab_file}: vocabulary lacks {missing}")

    def tokenize_lines(self, lines: list[str]) -> list[list[str]]:
        return [e.tokens for e in self.tokenizer.encode_batch(lines, add_special_tokens=False)]

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self.ids[t] for t in tokens]


def read_documents(input_files: list[str], tokenizer: WordPiece) -> list[list[list[str]]]:
    """Documents as lists of tokenized sentences; empty documents dropped."""
    documents: list[list[str]] = [[]]
    for path in input_files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line:
                    documents[-1].append(line)
                elif documents[-1]:
                    documents.append([])
    flat = [s for d in documents for s in d]
    tokenized = iter(tokenizer.tokenize_lines(flat))
    out = []
    for doc in documents:
        sentences = [tokens for tokens in (next(tokenized) for _ in doc) if tokens]
        if sentences:
            out.append(sentences)
    return out


def _trim_pair(a: list[str], b: list[str], max_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def mask_tokens(tokens: list[str], masked_lm_prob: float, max_predictions: int, vocab_words: list[str],
                rng: random.Random, whole_word: bool = False) -> tuple[list[str], list[int], list[str]]:
    """(tokens after masking, masked positions in order, original tokens there)."""
    candidates: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token in SPECIAL:
            continue
        if whole_word and candidates and token.startswith("##"):
            candidates[-1].append(i)
        else:
            candidates.append([i])
    rng.shuffle(candidates)
    output = list(tokens)
    target = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    chosen: list[int] = []
    for group in candidates:
        if len(chosen) >= target:
            break
        if len(chosen) + len(group) > target:
            continue
        for index in group:
            if rng.random() < 0.8:
                replacement = "[MASK]"
            elif rng.random() < 0.5:
                replacement = tokens[index]
            else:
                replacement = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            output[index] = replacement
            chosen.append(index)
    chosen.sort()
    return output, chosen, [tokens[i] for i in chosen]


def instances_from_document(documents, index: int, max_seq_length: int, short_seq_prob: float,
                            masked_lm_prob: float, max_predictions: int, vocab_words: list[str],
                            rng: random.Random, whole_word: bool = False) -> list[Instance]:
    document = documents[index]
    max_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    instances, chunk, chunk_tokens, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        chunk_tokens += len(document[i])
        if i == len(document) - 1 or chunk_tokens >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
            tokens_b: list[str] = []
            is_random_next = len(chunk) == 1 or rng.random() < 0.5
            if is_random_next:
                for _ in range(10):
                    other = rng.randint(0, len(documents) - 1)
                    if other != index:
                        break
                other_doc = documents[other]
                for sentence in other_doc[rng.randint(0, len(other_doc) - 1):]:
                    tokens_b.extend(sentence)
                    if len(tokens_b) >= target - len(tokens_a):
                        break
                i -= len(chunk) - a_end  # the chunk's unused sentences start the next one
            else:
                tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
            _trim_pair(tokens_a, tokens_b, max_tokens, rng)
            if not tokens_a or not tokens_b:
                raise ValueError(f"document {index}: empty segment after trimming")
            tokens = ["[CLS]", *tokens_a, "[SEP]", *tokens_b, "[SEP]"]
            segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            tokens, positions, labels = mask_tokens(tokens, masked_lm_prob, max_predictions, vocab_words, rng,
                                                    whole_word)
            instances.append(Instance(tokens, segment_ids, positions, labels, is_random_next))
            chunk, chunk_tokens = [], 0
        i += 1
    return instances


def create_instances(input_files: list[str], tokenizer: WordPiece, *, max_seq_length: int, dupe_factor: int,
                     short_seq_prob: float, masked_lm_prob: float, max_predictions: int, seed: int,
                     whole_word: bool = False) -> list[Instance]:
    rng = random.Random(seed)
    documents = read_documents(input_files, tokenizer)
    rng.shuffle(documents)
    instances = []
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            instances.extend(instances_from_document(documents, index, max_seq_length, short_seq_prob,
                                                     masked_lm_prob, max_predictions, tokenizer.vocab_words,
                                                     rng, whole_word))
    rng.shuffle(instances)
    return instances


def encode_instance(instance: Instance, tokenizer: WordPiece, max_seq_length: int, max_predictions: int) -> bytes:
    ids = tokenizer.convert_tokens_to_ids(instance.tokens)
    pad = max_seq_length - len(ids)
    count = len(instance.masked_positions)
    extra = max_predictions - count
    return encode_pretraining_example(
        ids + [0] * pad, [1] * len(ids) + [0] * pad, instance.segment_ids + [0] * pad,
        instance.masked_positions + [0] * extra, tokenizer.convert_tokens_to_ids(instance.masked_labels) + [0] * extra,
        [1.0] * count + [0.0] * extra, int(instance.is_random_next))


def write_instances(instances: list[Instance], tokenizer: WordPiece, output_files: list[str], max_seq_length: int,
                    max_predictions: int) -> list[int]:
    """Round-robin over output_files; returns the records written to each."""
    writers = [TFRecordWriter(path) for path in output_files]
    try:
        for i, instance in enumerate(instances):
            writers[i % len(writers)].write(encode_instance(instance, tokenizer, max_seq_length, max_predictions))
    finally:
        for w in writers:
            w.close()
    return [w.num_records for w in writers]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bert.prepare.create_pretraining_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-file", required=True, help="comma-separated text files")
    p.add_argument("--output-file", required=True, help="comma-separated TFRecord files (round-robin)")
    p.add_argument("--vocab-file", required=True)
    p.add_argument("--do-lower-case", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--do-whole-word-mask", action="store_true")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--max-predictions-per-seq", type=int, default=76)
    p.add_argument("--random-seed", type=int, default=12345)
    p.add_argument("--dupe-factor", type=int, default=10)
    p.add_argument("--masked-lm-prob", type=float, default=0.15)
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    a = p.parse_args(argv)
    tokenizer = WordPiece(a.vocab_file, a.do_lower_case)
    instances = create_instances(a.input_file.split(","), tokenizer, max_seq_length=a.max_seq_length,
                                 dupe_factor=a.dupe_factor, short_seq_prob=a.short_seq_prob,
                                 masked_lm_prob=a.masked_lm_prob, max_predictions=a.max_predictions_per_seq,
                                 seed=a.random_seed, whole_word=a.do_whole_word_mask)
    counts = write_instances(instances, tokenizer, a.output_file.split(","), a.max_seq_length,
                             a.max_predictions_per_seq)
    print(f"wrote {sum(counts)} instances to {len(counts)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
