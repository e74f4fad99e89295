"""BERT-large phase 2 on Wikipedia (MLPerf log name `bert`): masked-LM accuracy 0.720, evaluated in samples."""

from models.bert.benchmark import BertBenchmark, write_synthetic_data
from models.bert.config import FLAVOURS
from runtime.benchmark import BenchmarkSpec, Parity

SPEC = BenchmarkSpec(name="bert", flavours=FLAVOURS, benchmark=BertBenchmark,
                     write_synthetic_data=write_synthetic_data, metric="mlm_accuracy", higher_is_better=True,
                     eval_unit="samples", train_samples_at_stop=True, init_checkpoint=True,
                     parity=Parity(one_process=("train.grad_accum=2",),
                                   deterministic=("model.hidden_dropout=0", "model.attention_dropout=0")))
