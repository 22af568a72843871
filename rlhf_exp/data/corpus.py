"""The text a tiny base's tokenizer learns from: the dataset's own, so its tokens fit it.

A BPE trained on movie reviews splits dialogue text into many more tokens than one trained on
dialogues (and a 512-token budget then holds far less of it). The embedded task keeps its
generator's corpus; a user's files or hub data give their own rows' text.

    python -c "from pathlib import Path; from rlhf_exp.config.schema import DatasetSpec; \
from rlhf_exp.data.corpus import corpus_texts; \
print(len(corpus_texts(DatasetSpec(), Path('/tmp/c'))))"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf_exp.config.schema import DatasetSpec

# Rows read per split: enough text for a 2-8k vocabulary, and seconds rather than minutes
# of BPE training on a large hub set.
MAX_ROWS_PER_SPLIT = 20_000
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion", "text", "messages", "reference")


def _strings(value: Any) -> Iterator[str]:
    """Strings of a cell: a string, or the contents of a list of {role, content} messages."""
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, list):
        for message in value:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                yield message["content"]


def corpus_texts(spec: DatasetSpec, cache_dir: Path) -> list[str]:
    """Texts of the dataset `spec` names, in a fixed order (same data, same tokenizer)."""
    if spec.source == "embedded":
        from rlhf_exp.data.sentiment import corpus_texts as embedded_texts
        from rlhf_exp.data.sentiment import generate_sentiment_task

        # Today's behaviour for the embedded task: the tokenizer learns its default corpus
        # whatever the run's sizes, so every embedded run shares one tiny base.
        return list(embedded_texts(generate_sentiment_task(DatasetSpec())))
    from rlhf_exp.data.loading import load_raw

    texts: list[str] = []
    for _, ds in sorted(load_raw(spec, cache_dir).items()):
        renamed = {spec.columns.get(c, c): c for c in ds.column_names}
        columns = [renamed[c] for c in TEXT_COLUMNS if c in renamed]
        for row in ds.select(range(min(len(ds), MAX_ROWS_PER_SPLIT))).select_columns(columns):
            for column in columns:
                texts.extend(_strings(row[column]))
    return texts
