"""The shared multi-host scenario: the same datasets and config in workers and reference."""

from __future__ import annotations

from jaxembed.data import DatasetSpec, PipelineConfig

from data_helpers.synthetic import make_records

STEPS = 4


class RecordingList(list):
    """A record list that notes which indices were read, to prove disjoint shares."""

    def __init__(self, items, reads: set[int]) -> None:
        super().__init__(items)
        self._reads = reads

    def __getitem__(self, index):
        self._reads.add(int(index))
        return super().__getitem__(index)


def make_specs(record_reads: bool = False) -> tuple[list[DatasetSpec], list[set[int]]]:
    # Mostly short passages with a few long ones, so the two processes' own shares often
    # need different padding buckets.
    short = make_records(80, name="a", seed=11, negatives=(2, 4), passage_words=(1, 6))
    long = make_records(80, name="a", seed=13, negatives=(2, 4), passage_words=(40, 60))
    raw = [
        [lg if i % 7 == 0 else sh for i, (sh, lg) in enumerate(zip(short, long, strict=True))],
        make_records(60, name="b", seed=12, negatives=(2, 4), instruction="", passage_words=(1, 6)),
    ]
    reads: list[set[int]] = [set() for _ in raw]
    records = (
        [RecordingList(r, s) for r, s in zip(raw, reads, strict=True)] if record_reads else raw
    )
    specs = [DatasetSpec("a", records[0], weight=2.0), DatasetSpec("b", records[1], weight=1.0)]
    return specs, reads


def make_config() -> PipelineConfig:
    return PipelineConfig(
        global_batch_size=16,
        num_negatives=2,
        query_max_length=32,
        passage_max_length=64,
        query_buckets=(8, 16, 24, 32),
        passage_buckets=(8, 16, 32, 64),
        seed=5,
        prefetch=2,
    )
