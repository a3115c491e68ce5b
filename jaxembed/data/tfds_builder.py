"""Training records to an ArrayRecord TFDS dataset, read back by random access (no TensorFlow)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from jaxembed.data.records import Passage, TrainingRecord

DATASET_NAME = "jaxembed_training_records"
_SPLIT = "train"


def _passage_feature() -> tfds.features.Sequence:
    return tfds.features.Sequence(
        {"id": tfds.features.Text(), "text": tfds.features.Text(), "title": tfds.features.Text()}
    )


class JaxembedTrainingRecords(tfds.core.GeneratorBasedBuilder):
    """One TFDS dataset per source dataset; `records` is only needed to build, not to read."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "query, instruction, dataset, positives, negatives."}

    # TFDS's default looks this up through `importlib_resources`, which it does not install
    # on Python >= 3.9 (tfds 4.9.10), failing for any builder defined inside a package.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, records: Iterable[TrainingRecord] | None = None, **kwargs: Any) -> None:
        self._records = records
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Retrieval training records: a query, its positives and hard negatives.",
            # Keep the source order: the pipeline does its own (seed, epoch) shuffle, and a
            # stable order lets a record's index name it.
            disable_shuffling=True,
            features=tfds.features.FeaturesDict(
                {
                    "query": tfds.features.Text(),
                    "instruction": tfds.features.Text(),
                    "dataset": tfds.features.Text(),
                    "positives": _passage_feature(),
                    "negatives": _passage_feature(),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        if self._records is None:
            raise ValueError("building needs records=...; reading a built dataset does not")
        return {_SPLIT: self._generate_examples()}

    def _generate_examples(self) -> Iterable[tuple[int, dict[str, Any]]]:
        assert self._records is not None
        for index, record in enumerate(self._records):
            yield index, _encode(record)


def _encode(record: TrainingRecord) -> dict[str, Any]:
    def passages(ps: Sequence[Passage]) -> dict[str, list[str]]:
        return {
            "id": [p.id for p in ps],
            "text": [p.text for p in ps],
            "title": [p.title for p in ps],
        }

    return {
        "query": record.query,
        "instruction": record.instruction,
        "dataset": record.dataset,
        "positives": passages(record.positives),
        "negatives": passages(record.negatives),
    }


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _decode(example: dict[str, Any]) -> TrainingRecord:
    def passages(d: dict[str, Any]) -> tuple[Passage, ...]:
        return tuple(
            Passage(_text(i), _text(t), _text(h))
            for i, t, h in zip(d["id"], d["text"], d["title"], strict=True)
        )

    return TrainingRecord(
        query=_text(example["query"]),
        positives=passages(example["positives"]),
        negatives=passages(example["negatives"]),
        instruction=_text(example["instruction"]),
        dataset=_text(example["dataset"]),
    )


class TfdsRecordSource(Sequence[TrainingRecord]):
    """Random access to a built dataset as `TrainingRecord`s (what the pipeline consumes)."""

    def __init__(self, data_dir: str | Path) -> None:
        self._source = tfds.data_source(DATASET_NAME, data_dir=str(data_dir), split=_SPLIT)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> TrainingRecord:  # type: ignore[override]
        return _decode(self._source[int(index)])

    def get_many(self, indices: Sequence[int]) -> list[TrainingRecord]:
        """Batched read: one ArrayRecord lookup for many indices."""
        return [_decode(e) for e in self._source.__getitems__([int(i) for i in indices])]


def build_tfds_dataset(records: Iterable[TrainingRecord], data_dir: str | Path) -> Path:
    """Write `records` as an ArrayRecord TFDS dataset under `data_dir`; returns its directory.

    An already built dataset at the same place is reused, as TFDS does.
    """
    builder = JaxembedTrainingRecords(
        records=records, data_dir=str(data_dir), file_format="array_record"
    )
    builder.download_and_prepare()
    return Path(builder.data_dir)


def open_tfds_records(data_dir: str | Path) -> TfdsRecordSource:
    """Open a dataset built by `build_tfds_dataset` with `tfds.data_source` (random access)."""
    return TfdsRecordSource(data_dir)
