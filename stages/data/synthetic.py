"""A deterministic generator of Yelp-style reviews with 1-5 star labels (0-4, as in `yelp_review_full`).

`generate_reviews(n, seed, label_noise=0.08, length_scale=1.0)` returns (texts, labels); the same `seed` gives
the same reviews on every machine (everything is drawn from one `numpy.random.Generator`).
"""

from __future__ import annotations

import numpy as np

# Tone buckets, from furious (0) to delighted (4). Each aspect sentence picks one by its tone.
ADJECTIVES = [
    ["awful", "disgusting", "inedible", "a disaster", "horrendous", "appalling", "the worst I've had"],
    ["bland", "disappointing", "mediocre at best", "overpriced", "sloppy", "lukewarm", "forgettable"],
    ["okay", "decent", "fine", "average", "acceptable", "nothing special", "about what you'd expect"],
    ["good", "tasty", "solid", "really nice", "pleasant", "well done", "fresh"],
    ["amazing", "outstanding", "incredible", "perfect", "phenomenal", "out of this world", "superb"],
]
# A fair small benchmark, not a toy: negation and contrast get a bag of words only part of the way.
# Negated phrasings land in the middle: "not bad" is mildly positive, "not great" mildly negative.
NEGATED = {
    1: ["not great", "not as good as I hoped", "not worth it", "not what it used to be"],
    2: ["not bad, not great", "neither good nor bad", "not memorable either way"],
    3: ["not bad at all", "not disappointing", "not something I'd complain about"],
}
ASPECTS = {
    "food": ["the food", "my {dish}", "the {dish}", "our {dish}", "every dish we tried"],
    "service": ["the service", "our server", "the staff", "the host", "the bartender"],
    "ambience": ["the atmosphere", "the decor", "the music", "the patio", "the dining room"],
    "price": ["the prices", "the portion for the price", "the value", "the bill"],
    "wait": ["the wait", "the time to get seated", "the delivery time", "the line"],
    "cleanliness": ["the bathroom", "the tables", "the kitchen we could see", "the place overall"],
}
DISHES = [
    "burger",
    "pad thai",
    "ramen",
    "tacos",
    "pizza",
    "pho",
    "brisket",
    "sushi",
    "pasta",
    "salad",
    "burrito",
    "fried chicken",
    "curry",
    "dumplings",
    "steak",
    "pancakes",
    "gelato",
    "bibimbap",
    "falafel",
    "clam chowder",
    "shawarma",
    "lasagna",
    "poke bowl",
    "banh mi",
    "croissant",
]
PLACES = [
    "this place",
    "this spot",
    "the restaurant",
    "this diner",
    "this cafe",
    "the bistro",
    "this little joint",
    "the new location",
    "this bakery",
    "the taqueria",
    "this bar",
]
COMPANIONS = ["my wife", "my husband", "a friend", "coworkers", "my parents", "the kids", "a date", "myself"]
OCCASIONS = ["lunch", "dinner", "brunch", "a birthday", "a quick bite", "takeout", "happy hour", "date night"]
OPENERS = [
    "Came here for {occasion} with {companion}.",
    "Stopped by {place} for {occasion}.",
    "We finally tried {place} after hearing about it for months.",
    "Ordered {occasion} from {place} last week.",
    "Second visit to {place}, this time with {companion}.",
    "I had high hopes for {place}.",
    "Honestly I wasn't sure what to expect.",
]
SENTENCES = [
    "{Aspect} was {adj}.",
    "{Aspect} was {adj}, {hedge}.",
    "I thought {aspect} was {adj}.",
    "{Aspect}? {Adj}.",
    "As for {aspect}, {adj}.",
    "{companion_cap} said {aspect} was {adj}, and I agree.",
    "{Aspect} was {adj} if you ask me.",
]
HEDGES = ["to be honest", "I have to say", "for what it's worth", "no question", "surprisingly", "as usual"]
CONTRASTS = ["but", "although", "even though", "however", "then again,"]
VERDICTS = [
    ["Never again.", "Avoid.", "Zero stars if I could.", "I want my money back.", "Save yourself the trouble."],
    ["Probably won't be back.", "Two stars, being generous.", "Meh.", "Expected a lot more."],
    ["It's fine if you're in the area.", "Three stars.", "Might give it another shot.", "Not bad, not great."],
    ["Will be back.", "Recommended.", "Four stars, easily.", "Worth a visit."],
    ["Can't wait to come back!", "Five stars!", "Best in town.", "A new favorite.", "Go. Now."],
]
# Where each star level's tone sits on the 0-4 bucket scale.
STAR_TONE = np.array([0.2, 1.3, 2.0, 2.7, 3.8])
TONE_NOISE = 0.85  # wide enough that neighbouring stars share sentences


def generate_reviews(
    n: int, seed: int, label_noise: float = 0.08, length_scale: float = 1.0
) -> tuple[list[str], list[int]]:
    """Return `n` reviews and their labels (0-4 for 1-5 stars).

    `label_noise` is the fraction of labels moved to a neighbouring star; `length_scale` multiplies
    the number of sentences per review (1.0 gives short reviews, about 3.5 Yelp-like ones).
    """
    rng = np.random.default_rng(seed)
    stars = rng.integers(0, 5, size=n)
    texts = [_review(int(star), rng, length_scale) for star in stars]
    labels = stars.copy()
    noisy = rng.random(n) < label_noise  # moved to a neighbouring star, as real raters do
    shift = np.where(rng.random(n) < 0.5, -1, 1)
    labels[noisy] = np.clip(labels[noisy] + shift[noisy], 0, 4)
    return texts, [int(label) for label in labels]


def _review(star: int, rng: np.random.Generator, length_scale: float) -> str:
    parts = []
    if rng.random() < 0.6:
        parts.append(_fill(_pick(rng, OPENERS), rng))
    # Several aspects per review, each at the star's tone plus noise; lengths from one line to long rants.
    n_aspects = max(1, int(round(rng.gamma(2.0, 1.3) * length_scale)))
    tones = STAR_TONE[star] + rng.normal(0.0, TONE_NOISE, size=n_aspects)
    i = 0
    while i < n_aspects:
        if i + 1 < n_aspects and rng.random() < 0.25:
            parts.append(_contrast(tones[i], tones[i + 1], rng))
            i += 2
        else:
            parts.append(_aspect_sentence(tones[i], rng))
            i += 1
    if rng.random() < 0.55:
        verdict_tone = int(np.clip(round(STAR_TONE[star] + rng.normal(0.0, 0.5)), 0, 4))
        parts.append(_pick(rng, VERDICTS[verdict_tone]))
    return " ".join(parts)


def _aspect_sentence(tone: float, rng: np.random.Generator) -> str:
    template = _pick(rng, SENTENCES)
    return _fill(template, rng, aspect=_aspect(rng), adj=_adjective(tone, rng))


def _contrast(first: float, second: float, rng: np.random.Generator) -> str:
    a = f"{_aspect(rng)} was {_adjective(first, rng)}"
    b = f"{_aspect(rng)} was {_adjective(second, rng)}"
    return f"{a[0].upper()}{a[1:]}, {_pick(rng, CONTRASTS)} {b}."


def _adjective(tone: float, rng: np.random.Generator) -> str:
    bucket = int(np.clip(round(tone), 0, 4))
    if bucket in NEGATED and rng.random() < 0.3:
        return _pick(rng, NEGATED[bucket])
    return _pick(rng, ADJECTIVES[bucket])


def _aspect(rng: np.random.Generator) -> str:
    kind = _pick(rng, list(ASPECTS))
    return _pick(rng, ASPECTS[kind]).replace("{dish}", _pick(rng, DISHES))


def _fill(template: str, rng: np.random.Generator, **values: str) -> str:
    values.setdefault("aspect", "")
    values.setdefault("adj", "")
    companion = _pick(rng, COMPANIONS)
    text = template.format(
        aspect=values["aspect"],
        Aspect=values["aspect"][:1].upper() + values["aspect"][1:],
        adj=values["adj"],
        Adj=values["adj"][:1].upper() + values["adj"][1:],
        hedge=_pick(rng, HEDGES),
        place=_pick(rng, PLACES),
        occasion=_pick(rng, OCCASIONS),
        companion=companion,
        companion_cap=companion[:1].upper() + companion[1:],
    )
    return text


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]
