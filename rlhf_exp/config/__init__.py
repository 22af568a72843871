"""Typed config schemas (schema.py) and the OmegaConf resolvers the YAML uses.

`path_safe` turns a value into one path component: a sweep job's dir is named by its
overrides (`hydra.sweep.subdir`), and an override holding a path
(`+dataset.data_files.preference=/data/pairs.jsonl`) must not nest the job dir in folders
that the comparison report and TensorBoard would not see as one job.
"""

from omegaconf import OmegaConf


def path_safe(value: str) -> str:
    return str(value).replace("/", "_")


if not OmegaConf.has_resolver("path_safe"):
    OmegaConf.register_new_resolver("path_safe", path_safe)
