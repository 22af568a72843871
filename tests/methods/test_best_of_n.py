"""Best-of-n: the selection on plain lists; the sampler inside the shared evaluation (same keys,
n=1 is the reference's own sample); end to end, n=1 scores exactly as the SFT policy, picking
by the gold reward raises it with n, eval/kl is the analytic value, and the CLI runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhf_exp.config.schema import EvalSpec
from rlhf_exp.errors import NonFiniteError
from rlhf_exp.evaluation import Sampler, evaluate_alignment
from rlhf_exp.methods.best_of_n import (
    BestOfN,
    analytic_kl,
    best_of_n_curve,
    best_of_n_weights,
    select_best,
)
from tests.conftest import run_cli

# The end-of-run keys every policy method reports (README, "The evaluation").
SIDE_KEYS = [
    "gold_reward",
    "gold_reward_std",
    "gold_reward_ci_low",
    "gold_reward_ci_high",
    "rm_reward",
    "bleu",
    "bleu_corpus",
    "length_mean",
    "eos_fraction",
    "distinct_1",
    "distinct_2",
    "greedy/gold_reward",
]
SHARED_KEYS = {f"eval/{k}" for k in SIDE_KEYS} | {f"eval/sft/{k}" for k in SIDE_KEYS}
SHARED_KEYS |= {"eval/kl", "eval/win_rate_gold", "eval/win_rate_rm", "eval/gold_reward_gain"}
SHARED_KEYS |= {"eval/greedy/win_rate_gold"}


def test_select_best_takes_each_groups_first_maximum():
    import torch

    #            prompt 0: 3 candidates | prompt 1: a tie between its first two
    scores = [0.1, 0.9, 0.5, -1.0, -1.0, -2.0]
    assert select_best(scores, 3) == [1, 3]
    assert select_best(torch.tensor(scores).tolist(), 2) == [1, 2, 4]
    assert select_best(scores, 1) == list(range(6))  # n=1: nothing to choose
    assert select_best([float("-inf"), float("inf")], 2) == [1]
    with pytest.raises(ValueError, match="groups of n=4"):
        select_best(scores, 4)
    with pytest.raises(NonFiniteError, match="NaN"):
        select_best([0.0, float("nan")], 2)


def test_analytic_kl_is_zero_at_one_and_grows_like_log_n():
    assert analytic_kl(1) == 0.0
    assert analytic_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    kls = [analytic_kl(n) for n in (1, 2, 4, 16, 64, 256)]
    assert kls == sorted(kls) and kls[-1] < math.log(256)


def _brute_force(select: list[float], value: list[float], n: int) -> float:
    """Mean over every n-subset of the value of its highest-`select` member (ties: mean)."""
    import itertools
    import statistics

    picks = []
    for subset in itertools.combinations(range(len(select)), n):
        top = max(select[i] for i in subset)
        picks.append(statistics.fmean(value[i] for i in subset if select[i] == top))
    return statistics.fmean(picks)


def test_unbiased_curve_matches_brute_force_subset_enumeration():
    import numpy as np

    rng = np.random.default_rng(0)
    N = 8
    distinct = rng.normal(size=(2, N))  # a reward model's scores: no ties
    tied = rng.integers(0, 3, size=(2, N)).astype(float)  # a coarse reward: many ties
    gold = rng.normal(size=(2, N))
    for select in (distinct, tied):
        curve = best_of_n_curve(select, gold, range(1, N + 1))  # (prompts, n)
        for p in range(2):
            for n in range(1, N + 1):
                expected = _brute_force(select[p].tolist(), gold[p].tolist(), n)
                assert curve[p, n - 1] == pytest.approx(expected, abs=1e-12), (p, n)
    own = best_of_n_curve(distinct, distinct, [1, N])  # the proxy's own curve
    assert own[:, 0] == pytest.approx(distinct.mean(1)) and own[:, 1] == pytest.approx(
        distinct.max(1)
    )
    weights = best_of_n_weights(256, [1, 2, 16, 256])  # large N: log-gamma, no overflow
    assert weights.sum(1) == pytest.approx(1.0) and weights[-1, -1] == 1.0
    with pytest.raises(NonFiniteError):
        best_of_n_curve([[0.0, float("nan")]], [[0.0, 1.0]], [1])


@pytest.mark.parametrize(
    ("overrides", "key", "valid"),
    [
        (["method.n=0"], "method.n", ">= 1"),
        (["method.n=64", "method.curve_max_n=32"], "method.n", "<= method.curve_max_n=32"),
        (["method.curve_max_n=0"], "method.curve_max_n", ">= 1"),
        (["method.reward=nope"], "method.reward", "choose one of model, gold"),
        (
            ["dataset=files", "+dataset.data_files.preference=p.jsonl", "method.reward=gold"],
            "method.reward",
            "no gold_reward",
        ),
    ],
)
def test_bad_knobs_fail_before_anything_loads(compose_cfg, overrides, key, valid):
    from rlhf_exp.config.schema import validate
    from rlhf_exp.errors import ConfigError

    with pytest.raises(ConfigError, match=valid) as err:
        validate(compose_cfg("method=best_of_n", *overrides))
    assert err.value.key == key


def _prompts():
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": ["the film", "the film number 2", "it was", "the film number 7 was"],
            "reference": [" was fine.", " was fine and then it ended.", " fine.", " fine."],
        }
    )


def _length(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(len(c)) for c in completions]


def test_sampler_keeps_the_best_candidate_deterministically(tiny_lm):
    import torch

    model, tok = tiny_lm
    spec = EvalSpec(max_new_tokens=8, batch_size=5)  # 3 prompts x 4: batches cut groups
    prompts = list(_prompts()["prompt"])[:3]
    calls = []

    def score(p: list[str], c: list[str]) -> list[float]:
        calls.append(len(c))
        return _length(p, c)

    bon = BestOfN(model, tok, spec, n=4, score=score)
    torch.manual_seed(0)
    chosen = bon.sample(prompts, greedy=False)
    assert calls == [12]  # all candidates scored in one call
    torch.manual_seed(0)
    candidates = bon.base.sample([p for p in prompts for _ in range(4)], greedy=False)
    for i, text in enumerate(chosen.texts):
        group = candidates.texts[4 * i : 4 * i + 4]
        assert len(text) == max(map(len, group)) and text == max(group, key=len)
    torch.manual_seed(0)
    assert bon.sample(prompts, greedy=False).texts == chosen.texts  # same seed, same picks
    assert chosen.response_ids.shape[0] == chosen.ended.shape[0] == 3
    rows = [candidates.texts.index(t) for t in chosen.texts]  # the picked rows, kept whole
    assert chosen.response_ids.tolist() == candidates.response_ids[rows].tolist()


def test_sampler_reports_the_shared_keys_and_is_the_reference_at_n_one(tiny_lm):
    model, tok = tiny_lm
    spec = EvalSpec(max_new_tokens=8)
    kwargs = {"seed": 0, "gold_reward": "vader_sentiment", "reference": model}
    plain, _ = evaluate_alignment(model, tok, _prompts(), spec, rm_scorer=_length, **kwargs)
    one, table = evaluate_alignment(
        BestOfN(model, tok, spec, 1, _length), tok, _prompts(), spec, rm_scorer=_length, **kwargs
    )
    # the same keys as a trained policy's evaluation, but the measured k3: its KL is stated
    assert set(one) == set(plain) - {"eval/kl_k3"}
    for key in (k for k in one if k.startswith("eval/sft/")):
        assert one[key.replace("/sft/", "/")] == one[key], key
    assert one["eval/kl"] == 0.0 and one["eval/win_rate_gold"] == 0.5
    assert one["eval/win_rate_rm"] == 0.5 and "| prompt |" in table
    four, _ = evaluate_alignment(
        BestOfN(model, tok, spec, 4, _length), tok, _prompts(), spec, rm_scorer=_length, **kwargs
    )
    assert four["eval/kl"] == analytic_kl(4)
    assert four["eval/rm_reward"] >= four["eval/sft/rm_reward"]  # picked by that very score
    assert four["eval/sft/gold_reward"] == one["eval/sft/gold_reward"]  # the reference's seed


def test_a_sampler_without_a_model_must_state_its_kl(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="needs its `kl`"):
        evaluate_alignment(
            Sampler(), tok, _prompts(), EvalSpec(), seed=0, gold_reward=None, reference=model
        )


@pytest.mark.slow
def test_n_one_scores_exactly_as_the_sft_policy(run_method):
    metrics, run_dir, _, _ = run_method("method=best_of_n", "method.n=1")
    assert metrics["method"] == "best_of_n" and metrics["knob"] == "n=1"
    sft_keys = [k for k in metrics if k.startswith("eval/sft/")]
    assert len(sft_keys) >= len(SIDE_KEYS)
    for key in sft_keys:
        assert metrics[key.replace("/sft/", "/")] == metrics[key], key
    assert metrics["eval/win_rate_gold"] == 0.5 and metrics["eval/win_rate_rm"] == 0.5
    assert metrics["eval/greedy/win_rate_gold"] == 0.5 and metrics["eval/gold_reward_gain"] == 0
    assert metrics["eval/kl"] == metrics["eval/kl_analytic"] == 0.0
    assert "| prompt |" in (run_dir / "samples.md").read_text()
    assert not (run_dir / "model").exists()  # best-of-n writes no model


@pytest.mark.slow
def test_gold_selection_raises_the_gold_reward_with_n(run_method):
    picks = {}
    for n in (1, 16):
        metrics, run_dir, _, _ = run_method(
            "method=best_of_n", f"method.n={n}", "method.reward=gold"
        )
        picks[n] = metrics
    one, many = picks[1], picks[16]
    # Measured (seed 0, 32 prompts, debug=fast SFT): gold 0.162 at n=1, 0.840 at n=16
    # (95% CI 0.80-0.87), win rate 0.89; the margins asserted are far below that.
    assert many["eval/gold_reward"] > one["eval/gold_reward"] + 0.2
    assert many["eval/win_rate_gold"] > 0.7
    assert many["eval/sft/gold_reward"] == one["eval/sft/gold_reward"]  # same reference sample
    assert many["eval/kl"] == many["eval/kl_analytic"] == pytest.approx(math.log(16) - 15 / 16)
    assert many["knob"] == "n=16" and many["eval/selected_by"] == "vader_sentiment"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved) >= SHARED_KEYS, sorted(SHARED_KEYS - set(saved))
    assert saved["eval/gold_reward"] == pytest.approx(many["eval/gold_reward"])


@pytest.mark.slow
def test_reward_model_selection_raises_the_reward_model_score(run_method):
    metrics, _, _, _ = run_method("method=best_of_n", "method.n=8")
    assert metrics["eval/selected_by"] == "model"
    assert metrics["eval/rm_reward"] > metrics["eval/sft/rm_reward"]
    assert metrics["eval/win_rate_rm"] > 0.7


@pytest.mark.slow
def test_cli_runs_best_of_n(tmp_path: Path, shared_cache: Path):
    result = run_cli(
        "method=best_of_n",
        "debug=fast",
        "method.n=4",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",  # the SFT policy and RM of the other tests
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best_of_n finished" in result.stdout + result.stderr
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["method"] == "best_of_n" and saved["knob"] == "n=4"
    assert set(saved) >= SHARED_KEYS and saved["eval/kl"] == pytest.approx(analytic_kl(4))


@pytest.mark.slow
def test_curve_reports_gold_and_proxy_for_every_n_from_one_sample_set(run_method):
    metrics, run_dir, _, cache = run_method(
        "method=best_of_n", "method.n=4", "method.curve_max_n=8", "eval.num_prompts=4"
    )
    assert metrics["curve/n"] == list(range(1, 9)) and metrics["eval/samples_generated"] == 32
    assert metrics["curve/kl"] == [analytic_kl(n) for n in range(1, 9)]
    for key in ("curve/gold", "curve/proxy", "curve/rm", "curve/gold_se"):
        assert len(metrics[key]) == 8, key
    proxy = metrics["curve/proxy"]  # picked by the reward model: its expected max only rises
    assert all(b >= a - 1e-9 for a, b in zip(proxy, proxy[1:], strict=False))
    assert proxy == metrics["curve/rm"]
    assert metrics["eval/gold_reward"] == metrics["curve/gold"][3]  # read off the curve at n
    assert metrics["eval/sft/gold_reward"] == metrics["curve/gold"][0]
    assert metrics["eval/kl"] == analytic_kl(4)
    assert 0 <= metrics["upstream/reward/eval/accuracy"] <= 1  # which RM picked, how good
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["curve/gold"] == metrics["curve/gold"]

    # the samples are cached: the same curve from the gold reward draws no new ones (entries
    # of other N may come from other tests sharing the cache)
    def entries() -> list[Path]:
        keys = (cache.root / "bon_samples").glob("*/key.json")
        return [k for k in keys if json.loads(k.read_text())["n"] == 8]

    assert len(entries()) == 1
    gold, _, _, _ = run_method(
        "method=best_of_n",
        "method.curve_max_n=8",
        "method.n=8",
        "eval.num_prompts=4",
        "method.reward=gold",
    )
    assert gold["curve/proxy"] == gold["curve/gold"]  # picked by the gold reward itself
    assert gold["curve/gold"][0] == pytest.approx(metrics["curve/gold"][0])  # same samples
    assert gold["curve/gold"][-1] >= metrics["curve/gold"][-1]  # the oracle picks best
    assert len(entries()) == 1
