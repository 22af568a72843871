"""The embedded default task: controlled-sentiment movie-review continuation, fully offline.

Modelled on the DPO paper's IMDb task (Rafailov et al. 2023, Sec. 6.1): a prompt is the
opening of a review, the policy writes the rest, and a sentiment scorer is the gold reward
(there a trained classifier, here VADER, see `rlhf_exp.rewards.gold`). Instead of downloading
IMDb, a seeded generator writes review-like text from template and phrase banks. Completions
mix positive, negative and neutral clauses, so an SFT policy starts near neutral sentiment and
alignment has room to move it up.

    python -m rlhf_exp.data.sentiment        # builds the default sizes, prints samples and stats

Held-out eval prompts come from a fixed slice of the prompt space (a stable hash of the
prompt text), so they can never appear in the training splits whatever the seed or sizes.
"""

from __future__ import annotations

import logging
import random
import re
import zlib
from collections.abc import Callable, Sequence
from functools import cache

from rlhf_exp.config.schema import DatasetSpec
from rlhf_exp.errors import ConfigError, UserError
from rlhf_exp.rewards.gold import vader_compound

log = logging.getLogger(__name__)

# 1 in _EVAL_BUCKETS prompts is reserved for evaluation: over a million of the ~10M prompts
# the templates can form, far more than any sensible n_eval_prompts.
_EVAL_BUCKETS = 8
_PROMPT_WORDS = (4, 15)
_COMPLETION_WORDS = (8, 25)
# A reference must be unambiguously positive to serve as the "preferred" text for BLEU.
_REFERENCE_MIN_GOLD = 0.5
_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[AEIOUaeiou])")

# ------------------------------------------------------------------------------ prompts
_TITLE_ADJ = (
    "Silent", "Crimson", "Hollow", "Last", "Distant", "Iron", "Golden", "Northern", "Paper",
    "Glass", "Hidden", "Quiet", "Endless", "Winter", "Midnight", "Velvet", "Burning", "Scarlet",
    "Copper", "Southern", "Seventh", "Electric", "Silver", "Wandering", "Sleeping", "Restless",
    "Faded", "Amber", "Neon", "Salt",
)  # fmt: skip
_TITLE_NOUN = (
    "Harbor", "Orchard", "Lighthouse", "Kingdom", "River", "Garden", "Signal", "Frontier", "Mirror",
    "Station", "Horizon", "Season", "Tide", "Compass", "Lantern", "Archive", "Canyon", "Empire",
    "Meridian", "Carousel", "Island", "Circuit", "Parade", "Valley", "Tower", "Letter", "Engine",
    "Ballad", "Country", "Highway",
)  # fmt: skip
_TITLE_PLACE = (
    "Lisbon", "Marrakesh", "Ohio", "Tokyo", "Winter", "Paris", "the Dunes", "the Desert",
)  # fmt: skip
_TITLE_PATTERNS = (
    "The {adj} {noun}", "{noun} of the {noun2}", "A {noun} in {place}", "{adj} {noun}",
)  # fmt: skip
_GENRES = (
    "thriller", "drama", "comedy", "romance", "western", "mystery", "documentary", "musical",
    "sci-fi film", "period piece", "animated feature", "crime drama", "road movie",
    "coming-of-age story", "heist movie", "biopic", "fantasy epic", "noir", "family film",
    "ghost story", "satire", "courtroom drama",
)  # fmt: skip
_PEOPLE = (
    "my sister", "a few friends", "my dad", "my roommate", "my partner", "the kids",
    "my book club", "two coworkers", "my grandmother", "an old friend", "my brother",
    "my neighbors", "my film class", "my cousin",
)  # fmt: skip
_TIMES = (
    "last night", "over the weekend", "on a rainy Sunday", "yesterday afternoon",
    "on opening night", "at a late screening", "on a long flight", "this morning",
    "after work", "during a festival", "on a quiet evening", "last Friday", "over the holidays",
)  # fmt: skip
_FIRST = (
    "Mara", "Tomas", "Ingrid", "Kofi", "Lena", "Ravi", "Sofia", "Emil", "Nadia", "Oskar", "Yuki",
    "Hugo", "Celia", "Bruno",
)  # fmt: skip
_LAST = (
    "Ellison", "Reyes", "Varga", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Castell", "Duarte",
    "Brandt", "Halloran",
)  # fmt: skip
_SUBJECTS = (
    "a lighthouse keeper", "two estranged sisters", "a retired detective", "a small-town band",
    "a missing painting", "a struggling restaurant", "a chess prodigy", "an aging boxer",
    "a family road trip", "an old hotel", "a night-shift nurse", "a traveling circus",
    "a fishing village", "a rookie pilot", "a wedding weekend", "a forgotten inventor",
)  # fmt: skip
_VENUES = ("the local cinema", "a drive-in", "an old arthouse theater", "the multiplex")

# A prompt either ends where a full clause follows ("... and") or on the subject of the
# review ("The director's new thriller"), which a predicate continues ("is superb.").
_CLAUSE_PROMPTS = (
    "I watched {title} {time} and",
    "I saw {title} {time} with {person} and",
    "After seeing {title} with {person}, I have to say",
    "We rented {title} {time}, and honestly",
    "{Person} dragged me to {title}, and",
    "So I finally caught {title} at {venue}, and",
    "I went into {title} knowing nothing about it, and",
    "Having read a lot about {title}, I think",
    "I streamed this {genre} {time} and",
    "Watching {title} for the second time, I felt",
    "{title} opened {time}, and",
    "I caught the new {genre} from {director} {time}, and",
)
_SUBJECT_PROMPTS = (
    "The director's new {genre}",
    "Honestly, this new {genre}",
    "{title}",  # alone it is too short for some titles; the word-count filter drops those
    "{title}, the new {genre} from {director},",
    "This {genre} about {subject}",
    "The latest {genre} from {director}",
    "{title}, which I saw {time},",
    "Honestly, {title}",
    "As a longtime fan of the genre, I found that {title}",
    "Everyone told me that {title}",
    "{director}'s {genre} about {subject}",
)

# ------------------------------------------------------------------------ continuations
# Adjectives are mostly words VADER scores with the intended sign, so the gold reward agrees
# with a human reading; a few unscored ones ("gripping", "tedious") add realistic noise.
_POS = (
    "superb", "brilliant", "gorgeous", "moving", "delightful", "wonderful", "charming", "gripping",
    "beautiful", "stunning", "clever", "hilarious", "heartfelt", "excellent", "thrilling", "lovely",
    "fantastic", "fresh", "elegant", "powerful", "memorable", "funny", "smart", "vibrant",
    "satisfying", "magnificent", "terrific", "marvelous", "captivating", "joyful", "sweet",
    "exciting", "amazing", "impressive", "glorious", "lively", "engaging",
)  # fmt: skip
_NEG = (
    "dull", "boring", "tedious", "awkward", "awful", "terrible", "pathetic", "bland", "forgettable",
    "messy", "painful", "stupid", "lazy", "weak", "ugly", "annoying", "useless", "disappointing",
    "dreadful", "irritating", "confusing", "obnoxious", "incompetent", "unimpressive", "exhausting",
    "miserable", "horrible", "lame", "dumb", "poor", "ridiculous", "dreary", "sluggish",
    "embarrassing", "trite", "worthless",
)  # fmt: skip
_NEU = (
    "long", "slow", "quiet", "unusual", "old-fashioned", "talky", "straightforward", "busy",
    "conventional", "understated", "loud", "deliberate", "familiar", "dense", "minimalist",
    "low-key", "episodic", "restrained", "measured", "subdued", "plain", "simple", "modest",
    "steady", "dark",
)  # fmt: skip
_NOUNS = (
    "acting", "script", "score", "cinematography", "pacing", "dialogue", "ending",
    "lead performance", "soundtrack", "plot", "direction", "editing", "third act",
    "opening scene", "final twist", "set design", "camera work", "humor", "climax",
    "screenplay", "costume design", "sound design", "story", "premise", "casting",
    "lighting", "chemistry between the leads", "subplot", "middle section", "voice work",
)  # fmt: skip
# No "truly"/"pretty"/"surprisingly": VADER scores them as positive words, not intensifiers.
_INTENS = (
    "really", "incredibly", "remarkably", "genuinely", "quite", "rather", "somewhat", "utterly",
    "absolutely", "fairly", "extremely", "deeply", "thoroughly", "very",
)  # fmt: skip
_LEADS = (
    "the lead", "the young star", "the rest of the cast", "the whole ensemble", "the newcomer",
)  # fmt: skip
_PLACES = ("a coastal town", "Lisbon", "the desert", "an old mansion", "a snowy city", "Ohio")

# Full clauses per polarity ("clause" prompts and every clause after a connector).
_CLAUSES = {
    "pos": (
        "the {noun} was {intens} {pos}", "the {noun} is {pos}", "I loved the {noun}",
        "the {noun} is not bad at all", "the cast is {intens} {pos}",
        "it is a {pos}, {pos2} film", "I would happily watch it again",
        "the {noun} kept me hooked from start to finish", "{lead} gives a {pos} performance",
        "every scene feels {pos}", "the {noun} made me laugh out loud",
        "I enjoyed every minute of it", "the {noun} deserves real praise",
        "it left me smiling", "the {noun} looks {pos} and feels {pos2}",
    ),
    "neg": (
        "the {noun} was {intens} {neg}", "the {noun} is {neg}", "I hated the {noun}",
        "it is hardly worth the ticket", "the {noun} is not good at all",
        "I was bored for most of it", "{lead} gives a {neg} performance",
        "it drags on far too long", "I wanted my money back", "the {noun} feels {neg} and lazy",
        "the {noun} made no sense at all", "it is a {neg}, {neg2} mess",
        "I almost walked out in frustration", "the {noun} ruins whatever promise it had",
        "the {noun} is a total failure", "it is a complete waste of time",
    ),
    "neu": (
        "the {noun} was about what I expected", "it runs a little over two hours",
        "the {noun} is {neu}", "it was shot in {place}", "the {noun} reminded me of older films",
        "I saw it at {venue}", "the story takes place in {place}", "the {noun} is {intens} {neu}",
        "most of it happens at night", "I had read the book beforehand",
        "the {noun} is mostly {neu}", "{lead} has a {neu} role",
        "the {noun} changes halfway through", "it follows {subject}",
    ),
}  # fmt: skip
# Predicates per polarity (the first segment after a "subject" prompt).
_PREDICATES = {
    "pos": (
        "is {intens} {pos}", "is a {pos}, {pos2} film", "kept me hooked from start to finish",
        "deserves every bit of praise it gets", "is not bad at all", "looks {pos} and feels {pos2}",
        "made me laugh out loud", "is one of the most {pos} films of the year",
        "has a {pos} {noun}", "left me smiling",
    ),
    "neg": (
        "is {intens} {neg}", "is a {neg}, {neg2} mess", "drags on far too long",
        "is hardly worth the ticket", "is a complete waste of time", "is not good at all",
        "feels {neg} from the first scene", "left me bored and annoyed", "has a {neg} {noun}",
        "is one of the most {neg} films of the year",
    ),
    "neu": (
        "runs a little over two hours", "is mostly {neu}", "was shot in {place}",
        "takes place in {place}", "opens with a long {neu} scene", "is based on a book",
        "follows {subject}", "is about what I expected", "has a {neu} {noun}",
        "is the kind of film you watch once",
    ),
}  # fmt: skip
_CONNECTORS = (", and ", ", but ", ", although ", ", while ", ". ", "; ", ", and frankly ")
# Each completion has an overall mood that biases its clauses' polarity: the spread this
# gives (clearly good, clearly bad, mixed, flat reviews) is what makes preference pairs with a
# real margin common. Weights are tuned so the mean VADER score of completions is ~0.
_MOODS = {  # mood: (weight, P(pos), P(neg), P(neu)) per clause
    "pos": (0.27, 0.75, 0.05, 0.20),
    "neg": (0.33, 0.05, 0.75, 0.20),
    # VADER weighs praise words more than complaints, so "mixed" leans on complaints.
    "mixed": (0.25, 0.35, 0.45, 0.20),
    "flat": (0.15, 0.10, 0.10, 0.80),
    "glowing": (0.0, 1.0, 0.0, 0.0),  # eval references only, never sampled
}
_MOOD_NAMES = list(_MOODS)
_MOOD_WEIGHTS = [weight for weight, *_ in _MOODS.values()]


def _title(rng: random.Random) -> str:
    pattern = rng.choice(_TITLE_PATTERNS)
    return pattern.format(
        adj=rng.choice(_TITLE_ADJ),
        noun=rng.choice(_TITLE_NOUN),
        noun2=rng.choice(_TITLE_NOUN),
        place=rng.choice(_TITLE_PLACE),
    )


_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "title": _title,
    "time": lambda rng: rng.choice(_TIMES),
    "person": lambda rng: rng.choice(_PEOPLE),
    "Person": lambda rng: rng.choice(_PEOPLE).capitalize(),
    "venue": lambda rng: rng.choice(_VENUES),
    "genre": lambda rng: rng.choice(_GENRES),
    "director": lambda rng: f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
    "subject": lambda rng: rng.choice(_SUBJECTS),
    "noun": lambda rng: rng.choice(_NOUNS),
    "intens": lambda rng: rng.choice(_INTENS),
    "lead": lambda rng: rng.choice(_LEADS),
    "place": lambda rng: rng.choice(_PLACES),
    "pos": lambda rng: rng.choice(_POS),
    "pos2": lambda rng: rng.choice(_POS),
    "neg": lambda rng: rng.choice(_NEG),
    "neg2": lambda rng: rng.choice(_NEG),
    "neu": lambda rng: rng.choice(_NEU),
}


@cache
def _slots_of(template: str) -> tuple[str, ...]:
    # Sorted names keep the draw order (and so the text) independent of dict ordering.
    return tuple(sorted(name for name in _SLOTS if "{" + name + "}" in template))


def _fill(template: str, rng: random.Random) -> str:
    """Fill only the slots a template uses, so unused banks cost no RNG draws or time."""
    return template.format_map({name: _SLOTS[name](rng) for name in _slots_of(template)})


def _fix_articles(text: str) -> str:
    # "has a {neu} {noun}", "A {noun} in {place}" and friends need "an" before a vowel.
    return _A_BEFORE_VOWEL.sub(r"\1n ", text)


def is_eval_prompt(prompt: str) -> bool:
    """Whether `prompt` belongs to the held-out slice (stable across runs, unlike `hash`)."""
    return zlib.crc32(prompt.encode()) % _EVAL_BUCKETS == 0


def _prompt(rng: random.Random, held_out: bool) -> tuple[str, bool]:
    """A prompt from the eval slice (`held_out`) or the training slice, and whether it takes a
    predicate (True) or a clause (False)."""
    while True:  # terminates: both slices hold thousands of prompts of valid length
        subject = rng.random() < 0.5
        text = _fix_articles(
            _fill(rng.choice(_SUBJECT_PROMPTS if subject else _CLAUSE_PROMPTS), rng)
        )
        lo, hi = _PROMPT_WORDS
        if lo <= len(text.split()) <= hi and is_eval_prompt(text) == held_out:
            return text, subject


def _polarity(rng: random.Random, mood: str) -> str:
    _, p_pos, p_neg, _ = _MOODS[mood]
    u = rng.random()
    return "pos" if u < p_pos else "neg" if u < p_pos + p_neg else "neu"


def _completion(rng: random.Random, subject: bool, mood: str | None = None) -> str:
    """A continuation of 8-25 words starting with a space and ending with a period."""
    if mood is None:
        mood = rng.choices(_MOOD_NAMES, weights=_MOOD_WEIGHTS)[0]
    lo, hi = _COMPLETION_WORDS
    while True:  # terminates: one or two clauses almost always land in range
        bank = _PREDICATES if subject else _CLAUSES
        text = _fill(rng.choice(bank[_polarity(rng, mood)]), rng)
        n_clauses = rng.choices((1, 2, 3), weights=(0.25, 0.5, 0.25))[0]
        for i in range(1, 10):
            if i >= n_clauses and len(text.split()) >= lo:
                break
            connector = rng.choice(_CONNECTORS)
            clause = _fill(rng.choice(_CLAUSES[_polarity(rng, mood)]), rng)
            if connector == ". ":
                clause = clause[0].upper() + clause[1:]
            text += connector + clause
        if lo <= len(text.split()) <= hi:
            return " " + _fix_articles(text) + "."


def _sft_rows(rng: random.Random, n: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        prompt, subject = _prompt(rng, held_out=False)
        rows.append({"prompt": prompt, "completion": _completion(rng, subject)})
    return rows


def _preference_rows(rng: random.Random, n: int, margin: float) -> list[dict[str, str]]:
    """Two independent continuations per prompt, ordered by gold score; near-ties dropped.

    Candidates are scored in chunks so each call to the scorer is one batched pass; the chunk
    is sized to the pairs still missing, so roughly n / acceptance-rate pairs are scored.
    """
    rows: list[dict[str, str]] = []
    max_candidates, tried = 4 * n + 1000, 0  # bounded: a huge margin can starve acceptance
    while len(rows) < n and tried < max_candidates:
        chunk = min(max_candidates - tried, int((n - len(rows)) * 1.3) + 16)
        tried += chunk
        cands = []
        for _ in range(chunk):
            prompt, subject = _prompt(rng, held_out=False)
            cands.append((prompt, _completion(rng, subject), _completion(rng, subject)))
        scores = vader_compound([c for _, a, b in cands for c in (a, b)])
        for i, (prompt, a, b) in enumerate(cands):
            sa, sb = scores[2 * i], scores[2 * i + 1]
            if a == b or abs(sa - sb) < margin:
                continue
            chosen, rejected = (a, b) if sa > sb else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
            if len(rows) == n:
                break
        if not rows and tried >= 1000:  # none of the first thousand: the margin is out of reach
            break
    if len(rows) < 2:  # not even one to train on and one to hold out
        raise ConfigError(
            "dataset.min_gold_margin",
            margin,
            f"{len(rows)} of {tried} candidate pairs have gold scores that far apart "
            f"(dataset.n_pairs={n} asked for); lower it (the default is 0.1)",
        )
    if len(rows) < n:
        log.warning(
            "only %d of %d preference pairs reach min_gold_margin=%s after %d candidates",
            len(rows),
            n,
            margin,
            tried,
        )
    return rows


def _eval_rows(rng: random.Random, n: int) -> list[dict[str, str]]:
    """Distinct held-out prompts, each with a clearly positive reference continuation."""
    prompts: dict[str, bool] = {}
    for _ in range(50 * n):
        if len(prompts) == n:
            break
        prompt, subject = _prompt(rng, held_out=True)
        prompts.setdefault(prompt, subject)
    if len(prompts) < n:
        raise UserError(
            f"dataset.n_eval_prompts={n} exceeds the {len(prompts)} distinct held-out prompts "
            "the embedded generator found; use fewer"
        )
    refs = {p: "" for p in prompts}
    # ~94% of glowing completions pass on the first draw; redraw only the ones that did not.
    while missing := [p for p, r in refs.items() if not r]:
        cands = [_completion(rng, prompts[p], mood="glowing") for p in missing]
        for p, c, s in zip(missing, cands, vader_compound(cands), strict=True):
            if s >= _REFERENCE_MIN_GOLD:
                refs[p] = c
    return [{"prompt": p, "reference": r} for p, r in refs.items()]


def generate_sentiment_task(spec: DatasetSpec) -> dict[str, list[dict[str, str]]]:
    """Rows of the embedded task, deterministic for spec.seed and the sizes.

    Returns {"sft": [{"prompt", "completion"}] * spec.n_sft,
             "preference": [{"prompt", "chosen", "rejected"}] (up to spec.n_pairs; near-ties
             dropped),
             "eval_prompts": [{"prompt", "reference"}] * spec.n_eval_prompts}
    """

    # One RNG stream per split: changing n_sft leaves the pairs and eval prompts unchanged.
    # String seeds hash through SHA-512, so streams are stable across processes and platforms.
    def rng(split: str) -> random.Random:
        return random.Random(f"sentiment/{split}/{spec.seed}")

    return {
        "sft": _sft_rows(rng("sft"), spec.n_sft),
        "preference": _preference_rows(rng("preference"), spec.n_pairs, spec.min_gold_margin),
        "eval_prompts": _eval_rows(rng("eval_prompts"), spec.n_eval_prompts),
    }


def corpus_texts(rows: dict[str, list[dict[str, str]]]) -> list[str]:
    """Every prompt+completion text in the rows (used to train the tiny tokenizer)."""
    texts = []
    for split_rows in rows.values():
        for row in split_rows:
            for key in ("completion", "chosen", "rejected", "reference"):
                if key in row:
                    texts.append(row["prompt"] + row[key])
    return texts


def _summary(rows: dict[str, list[dict[str, str]]]) -> dict[str, float | int]:
    """Size and sentiment statistics of a built task, printed by the CLI below."""

    def mean(xs: Sequence[float]) -> float:
        return sum(xs) / max(len(xs), 1)

    pref = rows["preference"]
    completions = [r["completion"] for r in rows["sft"]]
    words = {w.strip(".,;").lower() for t in corpus_texts(rows) for w in t.split()}
    return {
        "gold/sft": mean(vader_compound(completions)),
        "gold/chosen": mean(vader_compound([r["chosen"] for r in pref])),
        "gold/rejected": mean(vader_compound([r["rejected"] for r in pref])),
        "gold/reference": mean(vader_compound([r["reference"] for r in rows["eval_prompts"]])),
        "n_sft": len(rows["sft"]),
        "n_pairs": len(pref),
        "n_eval": len(rows["eval_prompts"]),
        "distinct_prompts": len({r["prompt"] for split in rows.values() for r in split}),
        "distinct_words": len(words),
    }


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    task = generate_sentiment_task(DatasetSpec())
    elapsed = time.perf_counter() - start
    for split, split_rows in task.items():
        print(f"--- {split}")
        for row in split_rows[:3]:
            print(row)
    print(f"built in {elapsed:.2f}s")
    for key, value in _summary(task).items():
        print(f"{key:>18}: {value:.3f}" if isinstance(value, float) else f"{key:>18}: {value}")
