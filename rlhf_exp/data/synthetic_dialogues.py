"""Synthetic preference pairs shaped like Anthropic/hh-rlhf, for tests and offline trials.

    python -m rlhf_exp.data.synthetic_dialogues /tmp/hh.jsonl --n 2000 --seed 0
    python -m rlhf_exp.data.synthetic_dialogues /tmp/hh_snapshot --n 2000 --split train --shards 2

A row is `{"chosen": text, "rejected": text}` in HH's implicit-prompt layout: a dialogue of
1-4 human turns, "\\n\\nHuman: ...\\n\\nAssistant: ...", whose last assistant reply is the only
difference between chosen and rejected. A directory OUT gets parquet shards laid out like a
hub snapshot, `OUT/data/train-00000-of-00002.parquet`.

The shapes follow the real set, so tokenisation and truncation meet the same cases:
  - texts of median ~60 words and a long tail (p90 ~190), so many exceed 128 BPE tokens;
  - final replies of median ~20 words, drawn from one length distribution for both sides,
    so "the shorter reply wins" is a coin flip;
  - in ~30% of rows both replies open with the same word ("I ..."), so a character-level
    common prefix ends inside the reply, not at "\\n\\nAssistant:".
The preference signal is lexical and noisy: chosen replies tend to carry helpful or polite
sentences, rejected ones rude or refusing ones, but some pairs are swapped or share a style,
so a bag-of-words classifier scores about 0.8 on held-out pairs, not 1.0.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# --------------------------------------------------------------------------- vocabulary
# topic -> (things to ask about | ..., verbs that go with them | ...). Many topics, names and
# numbers give a BPE trained on these texts a varied vocabulary (~1,000 distinct words and
# numbers in 2,000 rows), not a handful.
_TOPICS = {
    "cooking": (
        "sourdough bread|a vegetable curry|pancakes|risotto|garlic|olive oil|a cast iron pan|"
        "brown rice|lentil soup|homemade pasta|a birthday cake|roast chicken",
        "cook|bake|season|prepare|store|reheat|marinate",
    ),
    "gardening": (
        "tomato plants|a lemon tree|compost|succulents|the lawn|tulip bulbs|raised beds|"
        "aphids|basil seedlings|a rose bush|clay soil|an orchid",
        "grow|water|prune|plant|fertilise|repot|protect",
    ),
    "travel": (
        "a trip to Portugal|train tickets|a passport|hostels|jet lag|Kyoto|a road trip|"
        "travel insurance|a layover in Dubai|camping gear|Iceland|a visa application",
        "plan|book|budget for|pack for|avoid|organise|renew",
    ),
    "programming": (
        "a Python script|recursion|unit tests|a memory leak|SQL joins|git branches|"
        "a REST API|regular expressions|Docker containers|a segmentation fault|JavaScript "
        "promises|type hints",
        "debug|learn|write|refactor|explain|deploy|optimise",
    ),
    "finance": (
        "a savings account|credit card debt|an index fund|income taxes|a mortgage|"
        "a pension plan|student loans|a monthly budget|cryptocurrency|an emergency fund",
        "pay off|invest in|compare|budget for|understand|calculate|reduce",
    ),
    "health": (
        "back pain|a cold|sleep|running shoes|vitamin D|stretching|migraines|allergies|"
        "blood pressure|a sprained ankle|hydration|posture",
        "treat|improve|avoid|manage|choose|prevent|monitor",
    ),
    "music": (
        "the guitar|jazz chords|a piano scale|vinyl records|a drum beat|the violin|"
        "sheet music|a home studio|the ukulele|harmonies|a choir audition",
        "play|practise|learn|record|tune|compose|memorise",
    ),
    "history": (
        "the Roman empire|the printing press|the Silk Road|the French revolution|"
        "the Ming dynasty|the Industrial Revolution|ancient Egypt|the Cold War|the Vikings",
        "explain|summarise|research|understand|compare|teach|describe",
    ),
    "pets": (
        "a new puppy|an old cat|a parrot|aquarium fish|a rabbit|dog food|a hamster cage|"
        "flea treatment|litter training|a nervous greyhound|a tortoise",
        "train|feed|groom|care for|calm|walk|adopt",
    ),
    "cars": (
        "a flat tyre|engine oil|winter tyres|a used hatchback|the brakes|a dead battery|"
        "an electric car|windscreen wipers|the clutch|a parking ticket",
        "fix|check|replace|buy|maintain|charge|inspect",
    ),
    "home": (
        "a leaky tap|mould in the bathroom|a squeaky door|wallpaper|a bookshelf|"
        "a blocked drain|the thermostat|kitchen tiles|a noisy fridge|curtains|the attic",
        "fix|clean|remove|install|paint|insulate|assemble",
    ),
    "work": (
        "a job interview|a difficult manager|a cover letter|a pay rise|a deadline|"
        "a promotion|remote meetings|a spreadsheet|a performance review|burnout",
        "prepare for|handle|write|ask for|negotiate|schedule|avoid",
    ),
    "science": (
        "black holes|photosynthesis|vaccines|climate models|volcanoes|the periodic table|"
        "quantum physics|genetics|tides|electricity",
        "explain|understand|study|measure|describe|demonstrate",
    ),
    "fitness": (
        "a marathon|push ups|a gym membership|yoga|cycling|weight training|a rowing machine|"
        "swimming laps|interval training|protein shakes",
        "start|improve|train for|schedule|track|recover from",
    ),
    "language": (
        "Spanish verbs|Japanese kanji|French pronunciation|German grammar|sign language|"
        "a vocabulary list|Italian idioms|Mandarin tones|essay writing",
        "learn|practise|memorise|improve|teach|translate",
    ),
    "parenting": (
        "a toddler tantrum|bedtime routines|homework|screen time|a picky eater|"
        "a teenage son|school lunches|pocket money|a birthday party",
        "handle|plan|limit|manage|organise|discuss",
    ),
    "games": (
        "chess openings|a board game night|video game controllers|crossword puzzles|"
        "poker odds|a jigsaw puzzle|Minecraft servers|sudoku",
        "play|win at|learn|set up|solve|organise",
    ),
    "crafts": (
        "knitting needles|a watercolour painting|pottery|a quilt|wood carving|"
        "origami|a sewing machine|candle making|embroidery",
        "start|finish|learn|practise|repair|design",
    ),
}
TOPICS: dict[str, tuple[list[str], list[str]]] = {
    name: (nouns.split("|"), verbs.split("|")) for name, (nouns, verbs) in _TOPICS.items()
}
PEOPLE = [
    "my sister", "my boss", "a friend", "my neighbour", "my son", "my partner", "a coworker",
    "my grandmother", "my landlord", "my teacher", "my roommate", "my uncle", "Priya", "Tomasz",
    "Aiko", "Gabriel", "Fatima", "Oliver", "Mei", "Kwame", "Lucia", "Dmitri", "Hannah",
]  # fmt: skip
TIMES = [
    "this weekend", "every morning", "before winter", "on a budget", "for the first time",
    "in {num} days", "after work", "during the holidays", "by next Friday", "in {num} weeks",
    "once a month", "late at night",
]  # fmt: skip
MANNERS = [
    "slowly", "carefully", "a little at a time", "with patience", "in small steps",
    "without rushing", "step by step", "gently", "thoroughly",
]  # fmt: skip
ADJECTIVES = [
    "tricky", "common", "cheap", "important", "confusing", "popular", "risky", "expensive",
    "frustrating", "rewarding", "overrated", "surprising", "complicated", "dangerous",
    "relaxing", "tedious", "unusual",
]  # fmt: skip
REASONS = [
    "I have never done it before",
    "my last attempt went badly",
    "a friend recommended it",
    "I read conflicting advice online",
    "it is for a school project",
    "I want to save some money",
    "I only have {num} dollars",
    "my doctor mentioned it",
    "we are moving house soon",
    "I saw a video about it",
]

HUMAN_FIRST = [
    "How do I {verb} {noun}?",
    "What is the best way to {verb} {noun} {time}?",
    "Can you explain how to {verb} {noun}?",
    "{Person} keeps asking me about {noun}. What should I say?",
    "Is it {adj} to {verb} {noun}?",
    "I need help with {noun}.",
    "Do you know anything about {noun}?",
    "I want to {verb} {noun} {time}. Where do I start?",
    "Why do people say {noun} is {adj}?",
]
HUMAN_FOLLOW = [
    "What about {noun}?",
    "Okay, and what should I do after that?",
    "Can you give me more detail on {noun}?",
    "That does not make sense to me.",
    "Would it work {time}?",
    "Why is {noun} so {adj}?",
    "Hmm, {person} told me the opposite.",
    "How long does it usually take?",
    "Is there a cheaper way?",
]
NEUTRAL = [  # informative but style-free: intermediate assistant turns and reply filler
    "Most people {verb} {noun} {time}.",
    "It depends on {noun} and how much time you have.",
    "{Noun} can be {adj} if you {verb} it {manner}.",
    "Many beginners find {noun} {adj} at first.",
    "The {adj} part is usually {noun}.",
    "You will need {noun} and a bit of patience.",
    "{Person} might also know something about {noun}.",
    "There are several ways to {verb} {noun}.",
    "Some guides say it takes about {num} minutes.",
    "In my experience {noun} is less {adj} than it sounds.",
    "A lot depends on the weather, the season and your schedule.",
    "People usually {verb} {noun} {manner}, then wait a day or two.",
]
FILLER = [  # human asides
    "I'm asking because {reason}.",
    "{Person} said it was easy.",
    "I tried once {time} and it did not go well.",
    "It has been bothering me for {num} days.",
]

# Reply sentences by style. The cue words (recommend, please, example / stupid, whatever,
# won't) are what a bag-of-words model can find; lengths are kept alike across styles.
STYLE = {
    "good": [
        "Here are a few steps: first {verb} {noun}, then check it again.",
        "I would recommend starting with {noun}, because it is reliable.",
        "For example, you could {verb} {noun} {time}.",
        "Thanks for asking, I hope this is helpful.",
        "Please let me know if you would like more details.",
        "One useful tip is to {verb} {noun} {manner}.",
        "It is a good idea to read about {noun} before you start.",
    ],
    "bad": [
        "I don't know and honestly I don't care much.",
        "That is a stupid question about {noun}.",
        "I won't help you {verb} {noun}, figure it out yourself.",
        "Why would anyone bother to {verb} {noun}?",
        "Just {verb} {noun} or don't, whatever you want.",
        "No, stop asking me about {noun}.",
        "Honestly, {noun} is boring and pointless.",
    ],
}
# Openers by style, keyed by their first word. Shared first words ("I", "Sure", "Well")
# start both replies alike; the rest make sure the two replies differ from the first word.
OPENERS = {
    "good": {
        "I": ["I can help with that.", "I think {noun} is a great thing to ask about."],
        "Sure": ["Sure, happy to help with {noun}.", "Sure, here is what I would suggest."],
        "Well": ["Well, a good place to begin is {noun}."],
        "Great": ["Great question about {noun}."],
        "Here": ["Here is a clear way to {verb} {noun}."],
        "Yes": ["Yes, you can {verb} {noun} at home."],
    },
    "bad": {
        "I": ["I can't help with that.", "I think {noun} is a waste of time."],
        "Sure": ["Sure, whatever you say.", "Sure, if you really have to."],
        "Well": ["Well, that is not my problem."],
        "No": ["No, I won't explain {noun}."],
        "Ugh": ["Ugh, {noun} again."],
        "Whatever": ["Whatever, just {verb} {noun}."],
    },
}
SHARED_FIRST = ["I", "I", "I", "Sure", "Well"]  # "I" dominates, as in the real replies

# Shape knobs, tuned so the statistics land near the real set's (see the module docstring).
TURN_WEIGHTS = (0.46, 0.24, 0.15, 0.15)  # 1, 2, 3, 4 human turns
HUMAN_WORDS = (6.0, 0.5)  # lognormal median (words) and sigma of a human turn
MIDDLE_WORDS = (24.0, 1.0)  # of an earlier assistant reply: the long tail of the dialogue
REPLY_WORDS = (15.0, 0.55)  # of the final replies, both sides alike
P_SAME_FIRST_WORD = 0.3
P_SWAPPED = 0.12  # label noise: chosen is the rude reply
P_SAME_STYLE = 0.14  # both replies in one style: nothing to tell them apart but chance
P_CUE = 0.55  # chance that a reply's later sentence is in its style rather than neutral


class _Writer:
    """Fills templates with one topic's words, drawing from one seeded `random.Random`."""

    def __init__(self, rng: random.Random, topic: str) -> None:
        self.rng = rng
        self.nouns, self.verbs = TOPICS[topic]

    def fill(self, template: str) -> str:
        rng = self.rng
        person = rng.choice(PEOPLE)
        noun = rng.choice(self.nouns)
        text = template.format(
            noun=noun,
            Noun=noun[0].upper() + noun[1:],
            verb=rng.choice(self.verbs),
            time=rng.choice(TIMES),
            manner=rng.choice(MANNERS),
            adj=rng.choice(ADJECTIVES),
            reason=rng.choice(REASONS),
            person=person,
            Person=person[0].upper() + person[1:],
            num="{num}",  # kept for the line below: times and reasons may hold it too
        )
        return text.replace("{num}", str(rng.randint(2, 150)))

    def budget(self, median_sigma: tuple[float, float]) -> int:
        median, sigma = median_sigma
        # capped at 8x the median: a long tail, without the odd 1000-word turn
        return max(3, round(min(self.rng.lognormvariate(0.0, sigma), 8.0) * median))

    def text(self, first: str, pool: list[str], words: int) -> str:
        """`first`, then sentences from `pool` until about `words` words."""
        out = [self.fill(first)]
        while sum(len(s.split()) for s in out) < words:
            out.append(self.fill(self.rng.choice(pool)))
        return " ".join(out)

    def reply(self, style: str, first_word: str, words: int) -> str:
        opener = self.rng.choice(OPENERS[style][first_word])
        out = [self.fill(opener)]
        while sum(len(s.split()) for s in out) < words:
            pool = STYLE[style] if self.rng.random() < P_CUE else NEUTRAL
            out.append(self.fill(self.rng.choice(pool)))
        return " ".join(out)


def _styles(rng: random.Random) -> tuple[str, str]:
    """(chosen style, rejected style), with the label noise of the module docstring."""
    u = rng.random()
    if u < P_SWAPPED:
        return "bad", "good"
    if u < P_SWAPPED + P_SAME_STYLE:
        style = rng.choice(["good", "bad"])
        return style, style
    return "good", "bad"


def _first_words(rng: random.Random, chosen: str, rejected: str) -> tuple[str, str]:
    if rng.random() < P_SAME_FIRST_WORD:
        word = rng.choice(SHARED_FIRST)
        return word, word
    a = rng.choice(sorted(OPENERS[chosen]))
    b = rng.choice(sorted(w for w in OPENERS[rejected] if w != a))
    return a, b


def _row(rng: random.Random) -> dict[str, str]:
    w = _Writer(rng, rng.choice(sorted(TOPICS)))
    n_turns = rng.choices(range(1, 5), weights=TURN_WEIGHTS)[0]
    parts = []
    for turn in range(n_turns):
        first = rng.choice(HUMAN_FIRST if turn == 0 else HUMAN_FOLLOW)
        parts.append("\n\nHuman: " + w.text(first, FILLER, w.budget(HUMAN_WORDS)))
        if turn < n_turns - 1:
            middle = w.text(rng.choice(NEUTRAL), NEUTRAL, w.budget(MIDDLE_WORDS))
            parts.append("\n\nAssistant: " + middle)
    prefix = "".join(parts) + "\n\nAssistant: "
    chosen_style, rejected_style = _styles(rng)
    first_c, first_r = _first_words(rng, chosen_style, rejected_style)
    while True:  # equal replies are possible when both sides share a style; draw again
        chosen = w.reply(chosen_style, first_c, w.budget(REPLY_WORDS))
        rejected = w.reply(rejected_style, first_r, w.budget(REPLY_WORDS))
        if chosen != rejected:
            return {"chosen": prefix + chosen, "rejected": prefix + rejected}


def hh_like_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` HH-shaped rows `{"chosen", "rejected"}`; the same `seed` gives the same rows."""
    rng = random.Random(seed)
    return [_row(rng) for _ in range(n)]


# UltraFeedback's length profile (single-turn, long): one instruction of median ~70 words with
# a long tail, answers of median ~180 words on both sides, so with a 512-token budget many
# pairs are cut and with 1,024 few are.
UF_PROMPT_WORDS = (70.0, 0.9)
UF_REPLY_WORDS = (180.0, 0.6)


def _ultrafeedback_row(rng: random.Random) -> dict[str, str]:
    w = _Writer(rng, rng.choice(sorted(TOPICS)))
    prompt = w.text(rng.choice(HUMAN_FIRST), FILLER, w.budget(UF_PROMPT_WORDS))
    chosen_style, rejected_style = _styles(rng)
    first_c, first_r = _first_words(rng, chosen_style, rejected_style)
    while True:
        chosen = w.reply(chosen_style, first_c, w.budget(UF_REPLY_WORDS))
        rejected = w.reply(rejected_style, first_r, w.budget(UF_REPLY_WORDS))
        if chosen != rejected:
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def ultrafeedback_like_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` explicit rows `{"prompt", "chosen", "rejected"}` with UltraFeedback's lengths (long
    prompts and long answers) and this module's noisy lexical signal."""
    rng = random.Random(seed)
    return [_ultrafeedback_row(rng) for _ in range(n)]


# --------------------------------------------------------------------------------- files
def write_jsonl(rows: list[dict[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_parquet_shards(
    rows: list[dict[str, str]], out_dir: Path, split: str = "train", shards: int = 2
) -> list[Path]:
    """`rows` as `out_dir/data/{split}-0000i-of-0000n.parquet`, the hub's parquet layout."""
    import pyarrow as pa  # here: the generator itself needs no arrow
    import pyarrow.parquet as pq

    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // shards)  # ceil: the last shard takes the remainder
    paths = []
    for i in range(shards):
        path = out_dir / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[i * size : (i + 1) * size]), path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a .jsonl file, or a directory for parquet shards")
    parser.add_argument("--n", type=int, default=2000, help="rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="shard name prefix (directory OUT)")
    parser.add_argument("--shards", type=int, default=2, help="parquet shards (directory OUT)")
    args = parser.parse_args(argv)
    rows = hh_like_rows(args.n, args.seed)
    if args.out.suffix.lower() in (".jsonl", ".json"):
        written = [write_jsonl(rows, args.out)]
    else:
        written = write_parquet_shards(rows, args.out, args.split, args.shards)
    print(f"wrote {len(rows)} rows to {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
