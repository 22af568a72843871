"""Typed config schemas (schema.py) and the OmegaConf resolvers the YAML uses.

`path_safe` turns a value into one path component: a sweep job's dir is named by its
overrides (`hydra.sweep.subdir`), and an override holding a path
(`+dataset.data_files.preference=/data/pairs.jsonl`) must not nest the job dir in folders
that the comparison report and TensorBoard would not see as one job.

`sweep_jobs` is how many jobs a local sweep runs at once on this machine
(`hydra/launcher=local_parallel`, rlhf_exp.hardware.sweep_jobs).
"""

from omegaconf import OmegaConf


def path_safe(value: str) -> str:
    return str(value).replace("/", "_")


if not OmegaConf.has_resolver("path_safe"):
    OmegaConf.register_new_resolver("path_safe", path_safe)


def sweep_jobs() -> int:
    from rlhf_exp.hardware import local_sweep_jobs  # imports torch: only when a sweep asks

    return local_sweep_jobs()


if not OmegaConf.has_resolver("sweep_jobs"):
    OmegaConf.register_new_resolver("sweep_jobs", sweep_jobs)
