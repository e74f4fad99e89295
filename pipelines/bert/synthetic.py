"""A small, learnable Wikipedia stand-in, put through the real preparation: text -> TFRecords -> store.

    python -m pipelines.bert.synthetic --out /tmp/bert_data        (or: python -m runtime.synthesize bert)

The text has the reference's layout (one sentence per line, blank line between documents, shards
`part-XXXXX-of-NNNNN` plus `eval.txt`) and a vocabulary file; create_pretraining_data.py, then
pick_eval_samples.py and the store converter turn it into exactly what a real dataset directory holds:

    vocab.txt  text/  part-00000-of-0000N ... eval_10k (TFRecords)  store/train/  store/eval/

What makes it learnable: each document has a topic, a set of `words_per_topic` made-up words in a
cycle, and a stride; a sentence walks the cycle with that stride from a random start, except that 85%
of the words are the topic's head word and 3% random ones. A model that has worked out the topic from
the sequence's bag of words predicts about 80% of the masked words (a context-blind one, 1/24 of
that), so masked-LM accuracy climbs past 0.72, the real target, which the compliance checker insists
on, within about a hundred steps; the neighbours would carry it further. Some words carry a plural
"##s" piece, so WordPiece splits them. Next-sentence prediction is learnable too: a random "next"
segment usually changes topic. Documents are short, so most sequences are far below max_seq_length
and packing matters, as on Wikipedia.
"""

from __future__ import annotations

import argparse
import os
import random

from pipelines.bert.format import EVAL_FILE, shard_name
from pipelines.bert.prepare.convert import convert_split
from pipelines.bert.prepare.create_pretraining_data import WordPiece, create_instances, write_instances
from pipelines.bert.prepare.pick_eval_samples import pick_eval_samples

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "##s"]
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
# Most words of a sentence are its topic's head word: guessing it from the bag of words in the sequence
# (what attention gives a barely trained model) answers about 80% of the masked words, where a model
# blind to context (unigram) gets 1/num_topics of that. The rest needs the neighbours (the cycle).
HEAD_WORD_PROBABILITY = 0.85
NOISE_PROBABILITY = 0.03  # random words
PLURAL_PROBABILITY = 0.05  # "word" + "##s" in WordPiece


def lexicon(num_words: int) -> list[str]:
    """Distinct made-up words of three syllables, deterministic."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words = []
    for k in range(num_words):
        a, rest = divmod(k * 7919 % len(syllables) ** 3, len(syllables) ** 2)
        b, c = divmod(rest, len(syllables))
        words.append(syllables[a] + syllables[b] + syllables[c])
    if len(set(words)) != num_words:
        raise ValueError(f"lexicon of {num_words} words has duplicates")
    return words


def write_vocab(path: str, num_topics: int, words_per_topic: int, vocab_size: int) -> list[str]:
    """The vocabulary file, padded with [unusedN] to exactly vocab_size entries (the model's size)."""
    words = SPECIAL_TOKENS + lexicon(num_topics * words_per_topic)
    if len(words) > vocab_size:
        raise ValueError(f"{len(words)} vocabulary words do not fit vocab_size {vocab_size}")
    words += [f"[unused{i}]" for i in range(vocab_size - len(words))]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(w + "\n" for w in words)
    return words


def document(rng: random.Random, words: list[str], num_topics: int, words_per_topic: int) -> list[str]:
    topic = rng.randrange(num_topics)
    cycle = words[topic * words_per_topic:(topic + 1) * words_per_topic]
    stride = 1 + 2 * (topic % 3)  # odd, so it walks the whole (even-sized) cycle
    sentences = []
    for _ in range(rng.randint(2, 7)):
        start = rng.randrange(words_per_topic)
        sentence = []
        for i in range(rng.randint(4, 12)):
            word = cycle[(start + i * stride) % words_per_topic]
            draw = rng.random()
            if draw < HEAD_WORD_PROBABILITY:
                word = cycle[0]
            elif draw < HEAD_WORD_PROBABILITY + NOISE_PROBABILITY:
                word = rng.choice(words)
            sentence.append(word + ("s" if rng.random() < PLURAL_PROBABILITY else ""))
        sentences.append(" ".join(sentence))
    return sentences


def write_text(path: str, rng: random.Random, num_documents: int, words: list[str], num_topics: int,
               words_per_topic: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(num_documents):
            f.write("\n".join(document(rng, words, num_topics, words_per_topic)) + "\n\n")


def write_synthetic_bert(out_dir: str, *, num_shards: int = 4, documents_per_shard: int = 600,
                         eval_documents: int = 400, eval_samples: int = 512, num_topics: int = 24,
                         words_per_topic: int = 8, vocab_size: int = 256, max_seq_length: int = 128,
                         max_predictions: int = 20, dupe_factor: int = 2, seed: int = 1234,
                         masking_seed: int = 12345) -> dict[str, int]:
    """Writes the whole dataset directory; returns the sequence counts of the train and eval stores."""
    text_dir = os.path.join(out_dir, "text")
    os.makedirs(text_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.txt")
    write_vocab(vocab_file, num_topics, words_per_topic, vocab_size)
    lex = lexicon(num_topics * words_per_topic)
    rng = random.Random(seed)
    for i in range(num_shards):
        write_text(os.path.join(text_dir, shard_name(i, num_shards)), rng, documents_per_shard, lex, num_topics,
                   words_per_topic)
    write_text(os.path.join(text_dir, "eval.txt"), rng, eval_documents, lex, num_topics, words_per_topic)

    tokenizer = WordPiece(vocab_file, do_lower_case=True)
    common = dict(max_seq_length=max_seq_length, dupe_factor=dupe_factor, short_seq_prob=0.1, masked_lm_prob=0.15,
                  max_predictions=max_predictions, seed=masking_seed)
    shards = []
    for i in range(num_shards):  # one create_pretraining_data call per text shard, as the reference
        name = shard_name(i, num_shards)
        instances = create_instances([os.path.join(text_dir, name)], tokenizer, **common)
        write_instances(instances, tokenizer, [os.path.join(out_dir, name)], max_seq_length, max_predictions)
        shards.append(os.path.join(out_dir, name))
    eval_tfrecord = os.path.join(text_dir, "eval_all.tfrecord")
    instances = create_instances([os.path.join(text_dir, "eval.txt")], tokenizer, **common)
    write_instances(instances, tokenizer, [eval_tfrecord], max_seq_length, max_predictions)
    pick_eval_samples([eval_tfrecord], os.path.join(out_dir, EVAL_FILE), eval_samples, max_seq_length,
                      max_predictions)
    os.remove(eval_tfrecord)
    store = os.path.join(out_dir, "store")
    kwargs = dict(max_seq_length=max_seq_length, max_predictions=max_predictions, resume=False)
    return {"train": convert_split(shards, os.path.join(store, "train"), **kwargs),
            "eval": convert_split([os.path.join(out_dir, EVAL_FILE)], os.path.join(store, "eval"), **kwargs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bert.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    counts = write_synthetic_bert(a.out, seed=a.seed)
    print(f"wrote {counts['train']} training and {counts['eval']} eval sequences to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
