"""Writes the demo set shipped in the package: train.jsonl, test.jsonl, tokenizer.model and dialogues.jsonl.

    python lima_jax/data/demo/make_demo.py     # rewrites the four files beside this script

The conversations are generated here (no third-party text), templated but varied, and learnable by a
tiny model in minutes: arithmetic, capitals, unit conversions, spelling, counting, definitions, care
tips and a few multi-turn follow-ups. An answer is written in the question's own style ("3 + 4" -> "3 +
4 = 7."), so each question has one consistent answer to learn. The tokenizer is a 512-piece
sentencepiece BPE model with LLaMA's conventions, so the demo exercises the same code as LLaMA's.
dialogues.jsonl holds 10 three-turn chains in LIMA's multi-turn format for the README's dialogue demo.
Every output is deterministic: rerunning the script reproduces them byte for byte."""
from __future__ import annotations

import io
import json
import pathlib
import random

import sentencepiece as spm

HERE = pathlib.Path(__file__).resolve().parent
VOCAB_SIZE = 512

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Chile": "Santiago", "Australia": "Canberra", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna",
    "Greece": "Athens", "Turkey": "Ankara", "Russia": "Moscow", "Ireland": "Dublin", "Belgium": "Brussels",
    "the Netherlands": "Amsterdam", "Switzerland": "Bern", "Hungary": "Budapest", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "South Korea": "Seoul", "Indonesia": "Jakarta", "Iran": "Tehran",
    "Morocco": "Rabat", "Nigeria": "Abuja", "Cuba": "Havana", "Colombia": "Bogota",
}
CAPITAL_QUESTIONS = ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."]

# (unit, plural, target unit plural, factor)
UNITS = [
    ("meter", "meters", "centimeters", 100), ("kilometer", "kilometers", "meters", 1000),
    ("hour", "hours", "minutes", 60), ("minute", "minutes", "seconds", 60),
    ("kilogram", "kilograms", "grams", 1000), ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7), ("foot", "feet", "inches", 12), ("dozen", "dozen", "items", 12),
    ("year", "years", "months", 12),
]

WORDS = [
    "garden", "window", "planet", "river", "yellow", "simple", "friend", "school", "market", "pencil",
    "rabbit", "silver", "winter", "summer", "doctor", "bottle", "castle", "forest", "orange", "purple",
    "camera", "dragon", "button", "ladder", "mirror", "pocket", "rocket", "spider", "ticket", "turtle",
    "violin", "wizard", "anchor", "basket", "candle", "island", "jacket", "kitten", "lemon", "magnet",
    "needle", "parrot", "puzzle", "saddle", "tomato", "velvet", "walnut", "zipper", "bridge", "cloud",
    "stone", "apple", "music", "paper", "table", "horse", "ocean", "light", "train", "house",
]
BACKWARD_QUESTIONS = ['Spell "{w}" backwards.', "Write the word {w} in reverse.", 'What is "{w}" spelled backwards?']

# Short definitions, written for this demo.
DEFINITIONS = {
    "river": "a large natural stream of water that flows to the sea or a lake",
    "planet": "a large body in space that moves around a star",
    "island": "a piece of land with water all around it",
    "forest": "a large area of land covered with trees",
    "doctor": "a person whose job is to treat people who are ill",
    "bridge": "a structure built over a river or road so people can cross it",
    "clock": "a device that shows the time",
    "ladder": "a set of steps fixed between two long sides, used for climbing",
    "winter": "the coldest season of the year",
    "summer": "the warmest season of the year",
    "library": "a place where books are kept for people to read or borrow",
    "kitchen": "a room where food is prepared and cooked",
    "magnet": "an object that pulls iron toward it",
    "mirror": "a smooth surface that reflects an image",
    "candle": "a stick of wax with a string in the middle that gives light when it burns",
    "desert": "a dry area of land with very little rain",
    "volcano": "a mountain that can throw out hot melted rock",
    "triangle": "a shape with three straight sides",
    "square": "a shape with four equal sides and four right angles",
    "circle": "a round shape whose edge is the same distance from its center all the way around",
    "verb": "a word that describes an action or a state",
    "noun": "a word that names a person, place or thing",
    "breakfast": "the first meal of the day",
    "umbrella": "a folding cover that keeps the rain off you",
    "thermometer": "an instrument that measures temperature",
    "compass": "an instrument with a needle that points north",
    "harbor": "a sheltered area of water where ships can stay safely",
    "orchard": "a piece of land where fruit trees are grown",
    "glacier": "a very large mass of ice that moves slowly over land",
    "calendar": "a chart that shows the days, weeks and months of a year",
}
DEFINITION_QUESTIONS = ['What does "{w}" mean?', "Define the word {w}.", "What is a {w}?"]

# Short care tips, written for this demo: (thing, how to keep it well).
CARE = {
    "plant": "Water it when the soil feels dry, give it plenty of light, and keep it away from cold drafts",
    "cactus": "Give it lots of sun and water it only when the soil is completely dry",
    "cat": "Give it fresh food and water every day, a clean litter box, and time to play",
    "dog": "Feed it well, give it fresh water, walk it every day, and take it to a vet once a year",
    "goldfish": "Keep its tank clean, feed it a little once a day, and change some of the water every week",
    "rabbit": "Give it hay, fresh vegetables and water, and let it run around every day",
    "bird": "Keep its cage clean, give it seeds and fresh water, and talk to it often",
    "garden": "Water it in the morning, pull the weeds, and give the soil some compost",
    "bike": "Keep the chain oiled, pump up the tires, and store it out of the rain",
    "room": "Put things back where they belong and clean a little every day",
    "kitchen": "Wash the dishes after each meal and wipe the counters every day",
    "car": "Change the oil on time, check the tires, and wash it now and then",
}
CARE_QUESTIONS = ["How do I keep a {w} alive?", "How do I take care of a {w}?", "How should I look after a {w}?"]


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def arithmetic(rng: random.Random, n: int) -> list[list[str]]:
    # The whole one-digit addition table as a newcomer would ask it ("What is 3 plus 4?"), then n
    # random sums, differences and products of numbers up to 10 in any of the phrasings.
    out = [[f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."] for a in range(1, 10) for b in range(1, 10)]
    for _ in range(n):
        kind = rng.choice(["plus", "minus", "times"])
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        if kind == "minus" and b > a:
            a, b = b, a
        c = {"plus": a + b, "minus": a - b, "times": a * b}[kind]
        sym = {"plus": "+", "minus": "-", "times": "*"}[kind]
        if rng.random() < 1 / 3:  # the answer is written as the question is: in words or in symbols
            q, a_text = f"What is {a} {sym} {b}?", f"{a} {sym} {b} = {c}."
        else:
            q, a_text = rng.choice([f"What is {a} {kind} {b}?", f"Compute {a} {kind} {b}."]), f"{a} {kind} {b} is {c}."
        out.append([q, a_text])
    return out


def capitals(rng: random.Random) -> list[list[str]]:
    return [[q.format(c=c), f"The capital of {c} is {city}."]
            for c, city in CAPITALS.items() for q in rng.sample(CAPITAL_QUESTIONS, 2)]


def conversions(rng: random.Random, n: int) -> list[list[str]]:
    out = []
    for _ in range(n):
        unit, plural, target, factor = rng.choice(UNITS)
        k = rng.randint(1, 12)
        name = unit if k == 1 else plural
        q = rng.choice([f"How many {target} are in {k} {name}?", f"Convert {k} {name} to {target}."])
        out.append([q, f"{k} {name} is {k * factor} {target}."])
    return out


def backwards(rng: random.Random) -> list[list[str]]:
    return [[q.format(w=w), f'"{w}" backwards is "{w[::-1]}".'] for w in WORDS for q in rng.sample(BACKWARD_QUESTIONS, 2)]


def care(rng: random.Random) -> list[list[str]]:
    living = {"plant", "cactus", "cat", "dog", "goldfish", "rabbit", "bird", "garden"}
    out = []
    for w, tip in CARE.items():
        for q in CARE_QUESTIONS if w in living else CARE_QUESTIONS[1:]:
            out.append([q.format(w=w), f"{tip}."])
    return out


def counting(rng: random.Random, n: int) -> list[list[str]]:
    out = []
    for _ in range(n):
        k = rng.randint(1, 98)
        if rng.random() < 0.5:
            out.append([f"What number comes after {k}?", f"The number after {k} is {k + 1}."])
        else:
            out.append([f"What number comes before {k + 1}?", f"The number before {k + 1} is {k}."])
    return out


def definitions(rng: random.Random) -> list[list[str]]:
    out = []
    for w, d in DEFINITIONS.items():
        for q in rng.sample(DEFINITION_QUESTIONS, 2):
            out.append([q.format(w=w), f"{_article(w)} {w} is {d}." if q.startswith("What is") else f'"{w.capitalize()}" means {d}.'])
    return out


def multi_turn(rng: random.Random, n: int) -> list[list[str]]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            a, b, m = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 5)
            out.append([f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.",
                        f"Now multiply that by {m}.", f"{a + b} times {m} is {(a + b) * m}."])
        elif i % 3 == 1:
            (c1, k1), (c2, k2) = rng.sample(sorted(CAPITALS.items()), 2)
            out.append([f"What is the capital of {c1}?", f"The capital of {c1} is {k1}.",
                        f"And the capital of {c2}?", f"The capital of {c2} is {k2}."])
        else:
            w1, w2 = rng.sample(WORDS, 2)
            out.append([f'Spell "{w1}" backwards.', f'"{w1}" backwards is "{w1[::-1]}".',
                        f"Do the same for {w2}.", f'"{w2}" backwards is "{w2[::-1]}".',
                        "Thank you!", "You are welcome."])
    return out


def dialogue_chains(rng: random.Random) -> list[dict]:
    """Two chains of each kind, each three user turns long, every answer in the demo's own style."""
    out = []
    for i in range(2):
        a, b, m, k = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 5), rng.randint(1, 9)
        out.append(("arithmetic", [f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.",
                                   f"Now multiply that by {m}.", f"{a + b} times {m} is {(a + b) * m}.",
                                   f"Now subtract {k}.", f"{(a + b) * m} minus {k} is {(a + b) * m - k}."]))
        (c1, k1), (c2, k2), (c3, k3) = rng.sample(sorted(CAPITALS.items()), 3)
        out.append(("capitals", [f"What is the capital of {c1}?", f"The capital of {c1} is {k1}.",
                                 f"And the capital of {c2}?", f"The capital of {c2} is {k2}.",
                                 f"And of {c3}?", f"The capital of {c3} is {k3}."]))
        w1, w2, w3 = rng.sample(WORDS, 3)
        out.append(("backwards", [f'Spell "{w1}" backwards.', f'"{w1}" backwards is "{w1[::-1]}".',
                                  f"Do the same for {w2}.", f'"{w2}" backwards is "{w2[::-1]}".',
                                  f"And for {w3}.", f'"{w3}" backwards is "{w3[::-1]}".']))
        (_, plural, target, factor), n1, n2 = rng.choice(UNITS), rng.randint(2, 12), rng.randint(2, 12)
        out.append(("units", [f"How many {target} are in {n1} {plural}?", f"{n1} {plural} is {n1 * factor} {target}.",
                              f"And in {n2} {plural}?", f"{n2} {plural} is {n2 * factor} {target}.",
                              "Thank you!", "You are welcome."]))
        t1, t2 = rng.sample(sorted(CARE), 2)
        out.append(("care", [f"How do I take care of a {t1}?", f"{CARE[t1]}.", f"What about a {t2}?", f"{CARE[t2]}.",
                             "Thank you!", "You are welcome."]))
    return [{"id": f"{kind}-{i // 5 + 1}", "conversations": turns, "source": "demo/dialogue"}
            for i, (kind, turns) in enumerate(out)]


def conversations(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    groups = {
        "demo/arithmetic": arithmetic(rng, 320), "demo/capitals": capitals(rng),
        "demo/units": conversions(rng, 160), "demo/backwards": backwards(rng),
        "demo/counting": counting(rng, 120), "demo/definitions": definitions(rng),
        "demo/care": care(rng), "demo/multi_turn": multi_turn(rng, 45),
    }
    seen: set[str] = set()
    records = []
    for source, convs in groups.items():
        for turns in convs:
            if turns[0] not in seen:  # one answer per question: no contradictory duplicates
                seen.add(turns[0])
                records.append({"conversations": turns, "source": source})
    rng.shuffle(records)
    return records


def train_tokenizer(records: list[dict]) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for r in records for t in r["conversations"]]),
        model_writer=model, vocab_size=VOCAB_SIZE, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        byte_fallback=True, split_digits=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, num_threads=1, shuffle_input_sentence=False, minloglevel=2,
    )
    return model.getvalue()


TEST_PROMPTS = 30


def main() -> None:
    records = conversations()
    # The last conversations become test prompts (their answers dropped, as in LIMA's test.jsonl),
    # so the demo can be generated from and judged end to end; the tokenizer still sees them all.
    train, test = records[:-TEST_PROMPTS], records[-TEST_PROMPTS:]
    with open(HERE / "train.jsonl", "w", encoding="utf-8") as f:
        for r in train:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(HERE / "test.jsonl", "w", encoding="utf-8") as f:
        for r in test:
            f.write(json.dumps({"conversations": r["conversations"][:1], "source": r["source"]}, ensure_ascii=False) + "\n")
    (HERE / "tokenizer.model").write_bytes(train_tokenizer(records))
    with open(HERE / "dialogues.jsonl", "w", encoding="utf-8") as f:  # its own seed: the files above stay as they were
        for r in dialogue_chains(random.Random(1)):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    turns = sum(len(r["conversations"]) for r in records)
    print(f"wrote {len(records)} conversations ({turns} turns) and a {VOCAB_SIZE}-piece tokenizer to {HERE}")


if __name__ == "__main__":
    main()
