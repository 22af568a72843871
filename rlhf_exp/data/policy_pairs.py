"""Preference labels and where they come from: the label budget, and policy-sampled pairs.

Two knobs of the dataset group decide what every preference learner sees, so that the reward
model (behind PPO, RLOO, GRPO, online DPO and best-of-n) and the direct methods (DPO, KTO)
learn from the same labels:

- `dataset.n_labels`: the number of training preference pairs (labels) any method may use;
  null: every pair. The first `n_labels` pairs in the split's order, the same rows for every
  method, so a sweep compares methods at one matched budget (the report states it).
- `dataset.pairs`:
  - `generator`: the dataset's own pairs (the embedded task's template continuations, or the
    user's files): off-policy for the SFT policy.
  - `policy`: the DPO paper's protocol (Rafailov et al. 2023, Sec. 6.1, IMDb): for each training
    prompt the SFT policy samples two completions and the gold reward labels them. With
    `dataset.label_noise=bt` the label is drawn from the Bradley-Terry model of the gold scores,
    P(a preferred to b) = sigmoid((gold(a) - gold(b)) / label_temperature), so labels are noisy
    the way human labels are and a reward model cannot be near-perfect; `none` takes the higher
    gold score. Pairs whose gold scores are equal are skipped (no preference to learn), and
    prompts are drawn until `n_labels` labelled pairs exist. The held-out pairs come from the
    held-out pair prompts, labelled without noise, so held-out accuracy measures agreement with
    the gold ranking.

Policy pairs are an artifact (`data/policy_pairs`) keyed by the SFT policy's stage key, the
prompts' source, the sampling settings and the labelling rule: built once, shared by every run
of a sweep. Prompts are the training pairs' prompts, which never include the held-out
evaluation prompts (the embedded task reserves a slice of its prompt space for those).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_exp.errors import UserError

log = logging.getLogger(__name__)

PAIRS_KIND = "data/policy_pairs"
# Dataset knobs that decide preference labels only: a stage that reads no labels (SFT on
# demonstrations, the tiny base) keeps its cache key when they change.
LABEL_FIELDS = ("pairs", "n_labels", "label_noise", "label_temperature", "pair_max_new_tokens")
# Prompts sampled per batch of generation.
BATCH = 64

Scorer = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class Labelling:
    """How two sampled completions become a preference: noise rule, its temperature, seed."""

    noise: str  # "none" | "bt"
    temperature: float
    seed: int

    def label(self, gold_a: float, gold_b: float, rng: random.Random) -> bool | None:
        """True: a is chosen; False: b is; None: a gold tie (no preference)."""
        if gold_a == gold_b:
            return None
        if self.noise == "none":
            return gold_a > gold_b
        z = (gold_a - gold_b) / self.temperature
        p_a = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        return rng.random() < p_a


def label_pairs(
    prompts: Sequence[str],
    first: Sequence[str],
    second: Sequence[str],
    gold: Scorer,
    labelling: Labelling,
) -> list[dict[str, Any]]:
    """Preference rows from two completions per prompt, labelled by `gold` (ties skipped)."""
    rng = random.Random(labelling.seed)
    a_scores = gold(list(prompts), list(first))
    b_scores = gold(list(prompts), list(second))
    rows = []
    for prompt, a, b, ga, gb in zip(prompts, first, second, a_scores, b_scores, strict=True):
        a_wins = labelling.label(ga, gb, rng)
        if a_wins is None:
            continue
        chosen, rejected = (a, b) if a_wins else (b, a)
        g_chosen, g_rejected = (ga, gb) if a_wins else (gb, ga)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "gold_chosen": g_chosen,
                "gold_rejected": g_rejected,
            }
        )
    return rows


def sample_pairs(
    sample: Callable[[list[str]], tuple[list[str], list[str]]],
    prompts: Sequence[str],
    gold: Scorer,
    labelling: Labelling,
    wanted: int | None,
) -> tuple[list[dict[str, Any]], int]:
    """Labelled pairs for `prompts` in order until `wanted` exist (None: every prompt).

    `sample(batch)` returns two completions per prompt. Returns (rows, prompts used)."""
    rows: list[dict[str, Any]] = []
    used = 0
    for start in range(0, len(prompts), BATCH):
        if wanted is not None and len(rows) >= wanted:
            break
        batch = list(prompts[start : start + BATCH])
        first, second = sample(batch)
        # one RNG stream per batch, so a longer run draws the same labels for the same prompts
        batch_labelling = Labelling(labelling.noise, labelling.temperature, labelling.seed + start)
        rows.extend(label_pairs(batch, first, second, gold, batch_labelling))
        used += len(batch)
    if wanted is not None:
        rows = rows[:wanted]
    return rows, used


def model_sampler(
    model: Any, tokenizer: Any, max_new_tokens: int, seed: int
) -> Callable[[list[str]], tuple[list[str], list[str]]]:
    """Two completions per prompt from `model` at temperature 1, seeded per call order."""
    import torch

    from rlhf_exp.generation import generate, max_positions

    calls = 0

    def sample(batch: list[str]) -> tuple[list[str], list[str]]:
        nonlocal calls
        torch.manual_seed(seed * 1_000_003 + calls)
        calls += 1
        rollout = generate(
            model,
            tokenizer,
            batch * 2,
            max_new_tokens=max_new_tokens,
            batch_size=2 * BATCH,
            max_prompt_length=max_positions(model) - max_new_tokens,  # keeps the prompt's end
        )
        texts = rollout.texts
        return texts[: len(batch)], texts[len(batch) :]

    return sample


def build_policy_pairs(
    out: Path,
    policy_dir: Path,
    model_spec: Any,
    train_prompts: Sequence[str],
    test_prompts: Sequence[str],
    gold: Scorer,
    *,
    n_labels: int | None,
    labelling: Labelling,
    max_new_tokens: int,
) -> None:
    """Write `train.jsonl` and `test.jsonl` (prompt, chosen, rejected, gold scores) and
    `summary.json` into `out`."""
    from rlhf_exp.context import preserved_rng
    from rlhf_exp.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(policy_dir), model_spec)
    model = load_causal_lm(str(policy_dir), model_spec, tokenizer=tokenizer).eval()
    with preserved_rng():  # the run's own random stream does not depend on this cache miss
        sample = model_sampler(model, tokenizer, max_new_tokens, labelling.seed)
        train, used = sample_pairs(sample, train_prompts, gold, labelling, n_labels)
        exact = Labelling("none", labelling.temperature, labelling.seed)
        test, _ = sample_pairs(sample, test_prompts, gold, exact, None)
    if n_labels is not None and len(train) < n_labels:
        raise UserError(
            f"dataset.n_labels={n_labels}: only {len(train)} policy-sampled pairs could be "
            f"labelled from {len(train_prompts)} training prompts (gold ties are skipped); "
            "lower dataset.n_labels or raise dataset.n_pairs"
        )
    if not test:
        raise UserError("dataset.pairs=policy: no held-out pair could be labelled (all ties)")
    agree = sum(r["gold_chosen"] > r["gold_rejected"] for r in train) / max(len(train), 1)
    summary = {
        "train_pairs": len(train),
        "test_pairs": len(test),
        "prompts_sampled": used,
        "label_agreement_with_gold": agree,  # 1.0 without noise; lower with bt
        "label_noise": labelling.noise,
        "label_temperature": labelling.temperature,
    }
    for name, rows in (("train", train), ("test", test)):
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info(
        "policy pairs: %d train (from %d prompts, %.1f%% agree with the gold ranking), %d test",
        len(train),
        used,
        100 * agree,
        len(test),
    )


def read_pairs(entry: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(train, test) `datasets.Dataset`s of prompt/chosen/rejected and the summary."""
    from datasets import Dataset

    def load(name: str) -> Any:
        rows = [json.loads(line) for line in (entry / f"{name}.jsonl").read_text().splitlines()]
        return Dataset.from_list(
            [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
        )

    return load("train"), load("test"), json.loads((entry / "summary.json").read_text())


def unique_prompts(rows: Any) -> list[str]:
    return list(dict.fromkeys(rows["prompt"])) if rows is not None else []


def with_labels(task: Any, ctx: Any) -> Any:
    """`task` with the preference labels this run may use: policy-sampled pairs when
    `dataset.pairs=policy`, the first `dataset.n_labels` training pairs, and the label
    statistics in the run's data report (`data/labels/*` in its metrics).

    SFT and `method=eval` read no labels and get `task` as loaded."""
    import dataclasses

    run, spec = ctx.run, ctx.run.dataset
    if run.method.name in ("sft", "eval"):
        return task
    report: dict[str, float] = {"policy_pairs": float(spec.pairs == "policy")}
    if spec.pairs == "policy":
        train, test, summary = _policy_pairs(task, ctx)
        task = dataclasses.replace(task, pref_train=train, pref_test=test)
        report["agreement_with_gold"] = summary["label_agreement_with_gold"]
    if task.pref_train is None:
        return task
    if spec.n_labels is not None:
        if spec.n_labels > len(task.pref_train):
            raise UserError(
                f"dataset.n_labels={spec.n_labels} exceeds the {len(task.pref_train)} training "
                f"pairs of dataset {spec.name!r}; choose at most {len(task.pref_train)} or null"
            )
        task = dataclasses.replace(task, pref_train=task.pref_train.select(range(spec.n_labels)))
    report["budget"] = float(len(task.pref_train))
    # labels this method learned from: directly (reward, DPO, KTO read the pairs), through the
    # learned reward model (reward=model), or none (a gold or programmatic reward)
    reward = getattr(run.method, "reward", None)
    report["used"] = report["budget"] if reward in (None, "model") else 0.0
    ctx.data_report["labels"] = report
    return task


def _policy_pairs(task: Any, ctx: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The cached policy-pairs entry for this run's SFT policy and labelling settings."""
    from dataclasses import asdict

    from rlhf_exp.rewards import get_reward

    run, spec = ctx.run, ctx.run.dataset
    if spec.gold_reward is None:
        raise UserError(
            "dataset.pairs=policy needs a gold reward to label the samples "
            f"(dataset.gold_reward is null for dataset {spec.name!r}); use pairs=generator"
        )
    if task.pref_train is None or task.pref_test is None:
        raise UserError(
            f"dataset.pairs=policy samples pairs for the prompts of the preference split; "
            f"dataset {spec.name!r} has none"
        )
    policy = Path(ctx.upstream("sft")).resolve()
    data = {k: v for k, v in asdict(spec).items() if k not in ("num_proc", "group_by_length")}
    key = {"sft": str(policy), "dataset": data, "version": 1}
    labelling = Labelling(spec.label_noise, spec.label_temperature, spec.seed)
    train_prompts, test_prompts = unique_prompts(task.pref_train), unique_prompts(task.pref_test)

    def build(out: Path) -> None:
        build_policy_pairs(
            out,
            policy,
            run.model,
            train_prompts,
            test_prompts,
            get_reward(spec.gold_reward, "dataset.gold_reward"),
            n_labels=spec.n_labels,
            labelling=labelling,
            max_new_tokens=spec.pair_max_new_tokens,
        )

    return read_pairs(ctx.cache.get_or_build(PAIRS_KIND, key, build))
