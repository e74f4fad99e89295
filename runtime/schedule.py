"""Blocks of train steps between evaluations, with the MLPerf metadata of each block in its benchmark's unit.

The RCP checker reads `eval_accuracy.epoch_num` in one unit per benchmark; `block_start`/`block_stop` carry
the matching position. A benchmark says which steps end a block (where it evaluates); these functions turn
that into blocks, one way for every benchmark:

    epochs          ResNet (1-based epoch numbers; blocks end on epoch boundaries)
    samples         BERT, and the image/volume benchmarks that count samples
    tokens          GPT-3, Llama (epoch_num = tokens trained)
    epoch_fraction  DLRM (epoch_num = steps done / steps per epoch, 0.05, 0.10, ...)
"""

from __future__ import annotations

from dataclasses import dataclass

UNITS = ("epochs", "samples", "tokens", "epoch_fraction")


@dataclass
class Block:
    """Train steps between two evaluations, with the metadata each MLPerf event of the block carries."""

    steps: int
    start_metadata: dict
    stop_metadata: dict
    eval_metadata: dict


def every(interval: int, total: int, offset: int = 0) -> list[int]:
    """Ends at interval - offset, then every interval, and at `total` (a shorter last block if need be)."""
    if interval < 1 or not 0 <= offset < interval:
        raise ValueError(f"eval cadence: every {interval} from offset {offset} (want interval >= 1, "
                         f"0 <= offset < interval)")
    ends = list(range(interval - offset, total + 1, interval))
    if not ends or ends[-1] != total:
        ends.append(total)
    return ends


def blocks(end_steps: list[int], unit: str, *, global_batch_size: int, steps_per_epoch: int = 0,
           tokens_per_sample: int = 0, samples_count_on_evals: bool = False) -> list[Block]:
    """Blocks ending at the (strictly increasing, positive) steps in `end_steps`. `samples_count_on_evals`: the
    eval events (and so run_stop) carry samples_count beside epoch_num, where a benchmark's rules list it."""
    if unit not in UNITS:
        raise ValueError(f"eval unit {unit!r}: expected one of {UNITS}")
    if not end_steps or end_steps[0] < 1 or any(b <= a for a, b in zip(end_steps, end_steps[1:])):
        raise ValueError(f"block ends {end_steps[:8]}...: want strictly increasing steps >= 1")
    if unit in ("epochs", "epoch_fraction") and steps_per_epoch < 1:
        raise ValueError(f"{unit} blocks need steps_per_epoch >= 1")
    if unit == "tokens" and tokens_per_sample < 1:
        raise ValueError("token blocks need tokens_per_sample >= 1")
    out, first = [], 0
    for last in end_steps:
        block = _block(first, last, unit, global_batch_size, steps_per_epoch, tokens_per_sample)
        if samples_count_on_evals:
            block.eval_metadata["samples_count"] = last * global_batch_size
        out.append(block)
        first = last
    return out


def _block(first: int, last: int, unit: str, gbs: int, steps_per_epoch: int, tokens_per_sample: int) -> Block:
    steps = last - first
    if unit == "epochs":
        if first % steps_per_epoch or last % steps_per_epoch:
            raise ValueError(f"epoch blocks must end on epoch boundaries ({steps_per_epoch} steps): {first}..{last}")
        epoch = first // steps_per_epoch + 1
        count = steps // steps_per_epoch
        return Block(steps, {"first_epoch_num": epoch, "epoch_count": count}, {"first_epoch_num": epoch},
                     {"epoch_num": epoch + count - 1})
    if unit == "tokens":
        per_step = gbs * tokens_per_sample
        return Block(steps, {"first_epoch_num": first * per_step, "epoch_count": steps * per_step},
                     {"first_epoch_num": first * per_step}, {"epoch_num": last * per_step})
    at_end = {"epoch_num": last * gbs} if unit == "samples" else {"epoch_num": round(last / steps_per_epoch, 6)}
    return Block(steps, {"samples_count": first * gbs}, {"samples_count": last * gbs}, at_end)
