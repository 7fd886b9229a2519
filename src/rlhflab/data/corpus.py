"""Synthetic movie reviews for the offline demo: a small seeded grammar, no downloads.

Every review is built from sentence templates filled with words drawn by ``random.Random(seed)``, so one seed
always gives the same corpus. The sentiment words are all in the VADER lexicon (``vaderSentiment``), the judge of
the demo's RL stage, so a model trained on this corpus knows words VADER scores and RL can move it towards
them. Positive and negative reviews are equally likely and mixed reviews contrast both, so the supervised model
writes mixed sentiment and RL has room to improve it.

``EVAL_OPENINGS`` are held out: no review starts with one and no RL training prompt equals one or is a prefix of
one, yet every word in them occurs inside reviews, so the model can continue them.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

SENTIMENTS = ("positive", "negative", "mixed", "neutral")
SENTIMENT_WEIGHTS = (0.3, 0.3, 0.25, 0.15)  # positive == negative: the corpus as a whole is balanced

# Held-out evaluation openings: several negative ones (the RL stage must turn them around), neutral and positive.
EVAL_OPENINGS: tuple[str, ...] = (
    # negative
    "I really hated this film because",
    "This is the worst",
    "The movie was",
    "Honestly, the acting was",
    "I was so bored by",
    "The plot made no sense and",
    "What a waste of",
    # neutral
    "The story follows",
    "I saw this film with my",
    "The ending of this movie",
    "The music in this film",
    "Before watching it, I thought",
    "The director of this film",
    "The first half of the film",
    # positive
    "I loved the way",
    "The best part of the film was",
    "The cast is",
    "What I liked most was",
    "I laughed out loud when",
    "The lead actress was",
)


@dataclass(frozen=True)
class Review:
    """One synthetic review: its text and the sentiment its generator aimed for (one of ``SENTIMENTS``)."""

    text: str
    sentiment: str


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary. Neutral slots (titles, names, roles, places, genres) avoid every word VADER scores; sentiment slots
# use only words VADER scores (positive ones >= +1.3, negative ones <= -1.1).


def _split(items: str) -> tuple[str, ...]:
    """``"a b | c"`` -> ``("a b", "c")``: long word lists stay compact and readable under ``ruff format``."""
    return tuple(item.strip() for item in items.split("|"))


_TITLE_ADJ = _split(
    "Silent | Last | Northern | Hidden | Long | Red | Second | Quiet | Distant | Golden | Winter | Summer | Iron | "
    "Glass | Paper | Velvet | Seventh | Electric | Midnight | Blue"
)
_TITLE_NOUN = _split(
    "Harbor | Road | River | House | Garden | Station | City | Mountain | Letter | Island | Bridge | Window | "
    "Signal | Frontier | Orchard | Lantern | Tide | Valley | Compass | Hotel"
)
_FIRST = _split(
    "Anna | Maria | Laura | Emma | Clara | Nina | Sofia | Julia | David | Tom | Paul | Daniel | Marco | Peter | "
    "Lucas | Oscar"
)
_LAST = _split(
    "Keller | Reyes | Novak | Brennan | Moreau | Lindqvist | Okafor | Tanaka | Russo | Hale | Carter | Weiss | "
    "Duval | Moreno"
)
_GENRES = _split(
    "drama | western | mystery | musical | documentary | science fiction film | family film | period piece | "
    "road movie | animated film | fantasy film | spy film | courtroom drama | sports drama | heist film"
)
_ROLES = _split(
    "a retired detective | a young teacher | an old fisherman | a ship captain | a small-town doctor | "
    "a famous singer | a jazz pianist | a country lawyer | a night nurse | a train conductor | a college student | "
    "a quiet librarian | an architect | a taxi driver | a chess player"
)
_ACTIONS = _split(
    "moves to a new city | returns home after many years | travels across the country | starts a new job | "
    "inherits an old house | opens a small restaurant | joins a touring band | takes a long journey by train | "
    "spends a summer on an island | tries to write a book | searches for an old letter | goes back to school | "
    "buys a farm | learns to sail"
)
_PLACES = _split(
    "a small coastal town | a quiet village | Paris in the sixties | New York | a space station | the desert | "
    "a boarding school | Rome | a mountain village | Berlin in winter | a fishing town in Norway | Tokyo | "
    "a farm in Texas | London in the fifties"
)
_RELATIVES = _split("sister | brother | parents | wife | husband | father | mother | roommate | cousin | grandmother")
_WHEN = _split(
    "last night | last weekend | on a long flight | at a small cinema | on a Sunday afternoon | at home | yesterday"
)
_DURATIONS = _split("two hours | ninety minutes | an hour and a half | two and a half hours")
_MADE = _split("shot | written | handled | put together | edited")

# The parts of a film a sentence can judge; a phrase ending in a single "s" is plural ("the costumes were").
_ASPECTS = _split(
    "the acting | the plot | the story | the music | the soundtrack | the score | the direction | "
    "the cinematography | the camera work | the dialogue | the script | the pacing | the ending | the final act | "
    "the opening scene | the lead actor | the lead actress | the other actors | the characters | "
    "the visual effects | the editing | the costumes | the set design | the action scenes | the first half | "
    "the second half | the main character | the director | the cast"
)
_ASPECT_SUFFIXES = (" in this film", " in this movie", " of this movie", " of the film")

_POS_ADJ = _split(
    "good | great | excellent | wonderful | brilliant | superb | fantastic | amazing | beautiful | lovely | "
    "charming | delightful | enjoyable | clever | impressive | outstanding | perfect | strong | stunning | gorgeous | "
    "engaging | entertaining | thrilling | exciting | fresh | smart | sweet | inspiring | satisfying | elegant | "
    "powerful | pleasant | nice | terrific | funny"
)
_NEG_ADJ = _split(
    "bad | terrible | awful | horrible | boring | dull | weak | poor | disappointing | stupid | dumb | ugly | "
    "painful | lazy | annoying | miserable | lame | ridiculous | pathetic | unpleasant | frustrating | irritating | "
    "embarrassing | messy | tired | fake | lousy | idiotic | dreadful | horrendous | insulting | nasty | incompetent"
)
_POS_VERB = _split("loved | enjoyed | liked | admired")
_NEG_VERB = _split("hated | disliked | did not enjoy | did not like")
_POS_FEELING = _split("happy | glad | pleased | delighted")
_NEG_FEELING = _split("bored | tired | disappointed | angry | sad")
_INTENSIFIERS = ("",) * 8 + tuple(
    w + " " for w in _split("really | very | quite | so | incredibly | extremely | absolutely | rather")
)
_WASTED = _split("time | two hours | an evening | money")

# ---------------------------------------------------------------------------------------------------------------
# Sentence templates. Slots: {s}/{s2} aspects with agreeing {be}/{be2}; {pos}/{pos2}/{neg}/{neg2} adjectives;
# {int} an intensifier; {pv}/{nv} verbs; {title} {genre} {genres} {name} {name2} {role} {action} {place} {when}
# {rel} {film} {dur} {made} {pf} {nf} {wasted}.

_OPEN_POS = (
    "I watched {title} {when} and I {pv} it.",
    "What a {pos} film.",
    "{title} is a {int}{pos} {genre}.",
    "I went into {title} with few expectations and came out {pf}.",
    "This {film} {be1} {int}{pos}.",
    "From the very first scene, {s} {be} {pos}.",
    "If you enjoy {genres}, you will love {title}.",
    "{title} might be the best {genre} of the year.",
    "My {rel} picked {title}, and I am so glad we watched it.",
)
_OPEN_NEG = (
    "I watched {title} {when} and I {nv} it.",
    "What a {neg} film.",
    "{title} is a {int}{neg} {genre}.",
    "I went into {title} with high expectations and came out {nf}.",
    "This {film} {be1} {int}{neg}.",
    "From the very first scene, {s} {be} {neg}.",
    "Even if you enjoy {genres}, stay away from {title}.",
    "{title} might be the worst {genre} of the year.",
    "My {rel} picked {title}, and I was {nf} the whole time.",
)
_OPEN_NEUTRAL = (
    "{title} is a {genre} set in {place}.",
    "I finally saw {title} {when}.",
    "{title} tells the story of {role} who {action}.",
    "{title} is the new {genre} from {name}.",
    "After months of waiting, I finally saw {title}.",
    "So I saw {title} with my {rel} {when}.",
    "{name} stars in {title}, a {genre} set in {place}.",
)
_POSITIVE = (
    "{s} {be} {int}{pos}.",
    "{s} {be} {pos} and {pos2}.",
    "I {pv} {s}.",
    "I {pv} {s}, especially {s2}.",
    "{name} gives a {pos} performance as {role}.",
    "It is one of the best {genres} I have seen in years.",
    "This is the best {genre} I have seen in a long time.",
    "I would recommend it to anyone who enjoys a good {genre}.",
    "{s} made me smile.",
    "Every scene looks {pos}.",
    "The whole cast is {int}{pos}.",
    "I laughed out loud more than once.",
    "I laughed out loud when {name} showed up as {role}.",
    "{s} {be} {pos}, and {s2} {be2} even better.",
    "There is a {pos} moment near the end that I will remember for a long time.",
    "I {pv} this {film} because {s} {be} {int}{pos}.",
    "What I liked most was {s}.",
    "The best part of the film was {s}.",
    "I loved the way {s} {be} {made}.",
    "The movie was {int}{pos}.",
    "By the end I was {pf} I had watched it.",
    "{name} did a {pos} job with {s}.",
    "I was {int}impressed by {s}.",
)
_NEGATIVE = (
    "{s} {be} {int}{neg}.",
    "{s} {be} {neg} and {neg2}.",
    "I {nv} {s}.",
    "{name} gives a {neg} performance as {role}.",
    "It is one of the worst {genres} I have seen in years.",
    "This is the worst {genre} I have seen in a long time.",
    "I would not recommend it to anyone.",
    "{s} made no sense at all.",
    "The plot made no sense and {s} {be} {neg}.",
    "I was {int}bored by {s}.",
    "By the end I was {nf}.",
    "What a waste of {wasted}.",
    "{s} {be} {neg}, and {s2} {be2} even worse.",
    "I {nv} this {film} because {s} {be} {int}{neg}.",
    "What I liked least was {s}.",
    "The worst part of the film was {s}.",
    "I hated the way {s} {be} {made}.",
    "The movie was {int}{neg}.",
    "{name} did a {neg} job with {s}.",
    "I was {int}disappointed by {s}.",
    "I wanted to leave the cinema halfway through.",
    "I wanted to leave the cinema when the second half started.",
)
_MIXED = (
    "{s} {be} {pos}, but {s2} {be2} {neg}.",
    "{s} {be} {neg}, but {s2} {be2} {pos}.",
    "Although {s} {be} {pos}, {s2} {be2} {neg}.",
    "Although {s} {be} {neg}, {s2} {be2} {pos}.",
    "I {pv} {s}, but I {nv} {s2}.",
    "I {nv} {s}, but I {pv} {s2}.",
    "Before watching it, I thought it would be {neg}, but it was {pos}.",
    "Before watching it, I thought it would be {pos}, but it was {neg}.",
    "The best part of the film was {s}, and the worst part was {s2}.",
)
_NEUTRAL = (
    "{title} is a {genre} set in {place}.",
    "The story follows {role} who {action}.",
    "It runs a little over {dur}.",
    "I saw this film with my {rel} {when}.",
    "I saw it with my {rel}.",
    "{name} is cast as {role}.",
    "The film was directed by {name}.",
    "Most of it was shot in {place}.",
    "It is based on a book by {name}.",
    "The second half takes place in {place}.",
    "It is the third film by {name}.",
    "The music is by {name}.",
    "{name} and {name2} star in it.",
)
_CLOSE = {
    "positive": (
        "Highly recommended.",
        "Go and see it.",
        "I will watch it again.",
        "Nine out of ten.",
        "Overall, the movie was {pos}.",
        "A {int}{pos} film.",
    ),
    "negative": (
        "Skip this one.",
        "Not worth your time.",
        "I will not watch it again.",
        "Two out of ten.",
        "Overall, the movie was {neg}.",
        "A {int}{neg} film.",
    ),
    "mixed": (
        "Overall, it is a mixed bag.",
        "It has good moments and bad moments.",
        "Worth seeing once, but do not expect too much.",
        "Five out of ten.",
        "Not great, not terrible.",
        "Some parts are {pos} and some are {neg}.",
    ),
    "neutral": (
        "Make of it what you will.",
        "I am still thinking about it.",
        "See it and decide for yourself.",
        "Six out of ten.",
        "It is the sort of film people talk about.",
    ),
}
_BODY_PREFIXES = ("Honestly, ", "Also, ", "Overall, ", "In the end, ", "On the whole, ")
_LOWER_AFTER_PREFIX = ("The ", "This ", "It ", "What ", "Every ", "There ", "Although ", "Before ", "By ")
_AN = re.compile(r"\b([Aa]) (?=[aeiou])")
_N_SENTENCES = ((1, 2, 3, 4), (0.1, 0.3, 0.35, 0.25))
MIN_WORDS, MAX_WORDS = 15, 70


def _plural(noun_phrase: str) -> str:
    return noun_phrase[:-1] + "ies" if noun_phrase.endswith("y") else noun_phrase + "s"


class _Writer:
    """Fills templates with words drawn from one ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def aspect(self) -> tuple[str, bool]:
        phrase = self.rng.choice(_ASPECTS)
        plural = phrase.endswith("s") and not phrase.endswith("ss")
        if self.rng.random() < 0.15:
            phrase += self.rng.choice(_ASPECT_SUFFIXES)
        return phrase, plural

    def fill(self, template: str) -> str:
        r = self.rng
        (s, s_plural), (s2, s2_plural) = self.aspect(), self.aspect()
        while s2.split(" of ")[0].split(" in ")[0] == s.split(" of ")[0].split(" in ")[0]:
            s2, s2_plural = self.aspect()
        past = r.random() < 0.6
        be = {(True, False): "was", (True, True): "were", (False, False): "is", (False, True): "are"}
        pos, pos2 = r.sample(_POS_ADJ, 2)
        neg, neg2 = r.sample(_NEG_ADJ, 2)
        genre = r.choice(_GENRES)
        title = f"The {r.choice(_TITLE_ADJ)} {r.choice(_TITLE_NOUN)}"
        if r.random() < 0.25:
            title = title[len("The ") :]
        name, name2 = (f"{r.choice(_FIRST)} {r.choice(_LAST)}" for _ in range(2))
        text = template.format(
            s=s,
            s2=s2,
            be=be[past, s_plural],
            be2=be[past, s2_plural],
            be1=be[past, False],
            pos=pos,
            pos2=pos2,
            neg=neg,
            neg2=neg2,
            int=r.choice(_INTENSIFIERS),
            pv=r.choice(_POS_VERB),
            nv=r.choice(_NEG_VERB),
            pf=r.choice(_POS_FEELING),
            nf=r.choice(_NEG_FEELING),
            title=title,
            genre=genre,
            genres=_plural(genre),
            name=name,
            name2=name2,
            role=r.choice(_ROLES),
            action=r.choice(_ACTIONS),
            place=r.choice(_PLACES),
            when=r.choice(_WHEN),
            rel=r.choice(_RELATIVES),
            film=r.choice(("film", "movie")),
            dur=r.choice(_DURATIONS),
            made=r.choice(_MADE),
            wasted=r.choice(_WASTED),
        )
        text = _AN.sub(r"\1n ", text)  # "a extremely" -> "an extremely"
        return text[0].upper() + text[1:]

    def body(self, template: str) -> str:
        """A sentence after the opening: sometimes led by a discourse word ("Honestly, the plot was ...")."""
        text = self.fill(template)
        if self.rng.random() < 0.2:
            if text.startswith(_LOWER_AFTER_PREFIX):
                text = text[0].lower() + text[1:]
            text = self.rng.choice(_BODY_PREFIXES) + text
        return text

    def review(self, sentiment: str) -> str:
        r = self.rng
        n = r.choices(*_N_SENTENCES)[0]
        polar = {"positive": (_OPEN_POS, _POSITIVE), "negative": (_OPEN_NEG, _NEGATIVE)}
        if sentiment in polar:
            openings, body = polar[sentiment]
            opening = openings if n == 1 or r.random() < 0.7 else _OPEN_NEUTRAL
            pools = [body] * 4 + [_NEUTRAL]
        elif sentiment == "mixed":
            opening = _MIXED if n == 1 else r.choice((_OPEN_NEUTRAL, _OPEN_NEUTRAL, _OPEN_POS, _OPEN_NEG))
            pools = [_MIXED, _MIXED, _POSITIVE, _NEGATIVE, _NEUTRAL]
        else:
            opening, pools = _OPEN_NEUTRAL, [_NEUTRAL]
        sentences = [self.fill(r.choice(opening))]
        # A positive / negative review with a neutral opening says what it thinks in the next sentence; a mixed
        # one has at least one contrast sentence.
        must = {"positive": _POSITIVE, "negative": _NEGATIVE}.get(sentiment) if opening is _OPEN_NEUTRAL else None
        must_at = 1 if must else -1
        if sentiment == "mixed" and n > 1:
            must, must_at = _MIXED, r.randrange(1, n)
        for i in range(1, n):
            if i == must_at:
                sentences.append(self.body(r.choice(must)))
            elif i == n - 1 and n >= 3 and r.random() < 0.4:
                sentences.append(self.fill(r.choice(_CLOSE[sentiment])))
            else:
                sentences.append(self.body(r.choice(r.choice(pools))))
        return " ".join(sentences)


def generate_reviews(n: int = 6000, seed: int = 0) -> list[Review]:
    """``n`` distinct reviews of 15–70 words, deterministic for ``seed``.

    The stream is sequential: ``generate_reviews(n, s)`` is a prefix of ``generate_reviews(n + k, s)``, so the last
    ``k`` of a longer call are held-out reviews disjoint from the first ``n``. No review starts with an
    ``EVAL_OPENINGS`` entry.
    """
    rng = random.Random(seed)
    writer = _Writer(rng)
    seen: set[str] = set()
    reviews: list[Review] = []
    for _ in range(50 * n + 100):
        if len(reviews) == n:
            break
        sentiment = rng.choices(SENTIMENTS, SENTIMENT_WEIGHTS)[0]
        text = writer.review(sentiment)
        if text in seen or text.startswith(EVAL_OPENINGS) or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        seen.add(text)
        reviews.append(Review(text, sentiment))
    if len(reviews) < n:
        raise ValueError(f"the review grammar produced only {len(reviews)} distinct reviews, asked for {n}")
    return reviews


def _clashes_with_eval(prompt: str) -> bool:
    return any(prompt.startswith(o) or o.startswith(prompt) for o in EVAL_OPENINGS)


def training_prompts(
    reviews: Sequence[Review], seed: int = 0, n: int = 1024, min_words: int = 2, max_words: int = 6
) -> list[str]:
    """Up to ``n`` distinct RL training prompts: the first ``min_words``–``max_words`` words of reviews.

    A prompt never equals an evaluation opening, is never a prefix of one and never starts with one, so the
    evaluation openings stay unseen by RL. Deterministic for ``(reviews, seed)``.
    """
    rng = random.Random(seed)
    order = list(range(len(reviews)))
    rng.shuffle(order)
    prompts: dict[str, None] = {}  # insertion-ordered set
    for i in order:
        if len(prompts) == n:
            break
        words = reviews[i].text.split()
        k = rng.randint(min_words, max_words)
        if len(words) <= k:
            continue
        prompt = " ".join(words[:k])
        if not _clashes_with_eval(prompt):
            prompts[prompt] = None
    out = list(prompts)
    assert not set(out) & set(EVAL_OPENINGS), "training prompts overlap the held-out evaluation openings"
    return out


def save_reviews(path: str | Path, reviews: Sequence[Review], split: str | None = None) -> None:
    """Write ``reviews`` as JSONL, one ``{"text", "sentiment"[, "split"]}`` object per line."""
    with open(path, "w", encoding="utf-8") as f:
        for review in reviews:
            row = asdict(review) | ({"split": split} if split else {})
            f.write(json.dumps(row) + "\n")


def load_reviews(path: str | Path) -> list[Review]:
    """Read a JSONL file written by ``save_reviews`` (extra keys such as ``split`` are ignored)."""
    with open(path, encoding="utf-8") as f:
        return [Review(row["text"], row["sentiment"]) for row in map(json.loads, filter(str.strip, f))]
