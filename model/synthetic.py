"""A synthetic language pair, generated deterministically from a seed, whose translation needs several skills.

Source: English-like sentences from a small grammar,

    S  -> NP_subj [that V_intr | that V_tr NP] V_tr NP_obj [P NP]
    NP -> Det Adj* N

Target: a made-up language with its own lexicon (pseudo-words drawn from the seed) and

- SOV order with the verb last and postpositions: ``NP_subj [REL [NP] V] NP_obj [NP P] V_tr``;
- adjectives after the noun, agreeing with the noun's gender and number;
- determiners marked for definiteness, gender, number and case (nominative, accusative, locative);
- verbs agreeing with the subject's gender and number, which sits at the other end of the sentence, and the
  main verb marking its object's gender too.

So a model must reorder (verb to the end, adjectives after nouns), look up a lexicon, and carry agreement across
the sentence: jobs that different attention heads can specialise in (positional, syntactic, rare-word heads of
Voita et al. 2019).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NOUNS = (
    "dog cat bird horse farmer teacher doctor student girl boy king queen friend baker pilot singer driver "
    "painter sailor soldier house car tree river book table chair garden road bridge boat window door apple "
    "letter song picture lamp flower hill lake village castle forest ship market cup"
).split()
ADJECTIVES = "big small red green old young happy tall quiet bright dark cold warm heavy fast slow new clever".split()
# (third person singular, plural, past)
TRANSITIVE = [
    ("sees", "see", "saw"), ("likes", "like", "liked"), ("finds", "find", "found"), ("takes", "take", "took"),
    ("builds", "build", "built"), ("paints", "paint", "painted"), ("follows", "follow", "followed"),
    ("carries", "carry", "carried"), ("watches", "watch", "watched"), ("helps", "help", "helped"),
    ("visits", "visit", "visited"), ("buys", "buy", "bought"), ("sells", "sell", "sold"),
    ("draws", "draw", "drew"), ("loves", "love", "loved"), ("leaves", "leave", "left"),
]
INTRANSITIVE = [
    ("sleeps", "sleep", "slept"), ("runs", "run", "ran"), ("sings", "sing", "sang"), ("waits", "wait", "waited"),
    ("smiles", "smile", "smiled"), ("laughs", "laugh", "laughed"), ("works", "work", "worked"),
    ("falls", "fall", "fell"), ("swims", "swim", "swam"), ("dances", "dance", "danced"),
]
PREPOSITIONS = "in near under behind on with".split()

GENDERS = 3
CASES = ("nom", "acc", "loc")
_ONSETS = "b d f g k l m n p r s t v z".split() + ["sh", "tr", "kr", "pl"]
_VOWELS = "a e i o u".split()


def _pseudo_word(rng: random.Random, syllables: int, taken: set[str]) -> str:
    while True:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if word not in taken:
            taken.add(word)
            return word


@dataclass(frozen=True)
class Lexicon:
    noun: dict[str, tuple[str, int]]  # English noun -> (target stem, gender)
    adjective: dict[str, str]
    verb: dict[str, str]  # English lemma (plural form) -> target stem
    preposition: dict[str, str]
    determiner: dict[tuple[bool, int, int, str], str]  # (definite, gender, plural, case) -> word
    relative: dict[int, str]  # gender of the antecedent -> relative pronoun
    adj_suffix: dict[tuple[int, int], str]  # (gender, plural) -> suffix
    verb_suffix: dict[tuple[int, int, bool], str]  # (gender, plural, past) -> suffix
    object_marker: dict[int, str]  # gender of the main verb's object -> infix before the subject suffix
    plural_suffix: str


def make_lexicon(seed: int) -> Lexicon:
    rng = random.Random(f"lexicon-{seed}")
    taken: set[str] = set()
    noun = {n: (_pseudo_word(rng, rng.choice((2, 3)), taken), rng.randrange(GENDERS)) for n in NOUNS}
    adjective = {a: _pseudo_word(rng, 2, taken) for a in ADJECTIVES}
    verb = {v[1]: _pseudo_word(rng, rng.choice((2, 3)), taken) for v in TRANSITIVE + INTRANSITIVE}
    preposition = {p: _pseudo_word(rng, 1, taken) for p in PREPOSITIONS}
    determiner = {
        (definite, gender, plural, case): _pseudo_word(rng, 1, taken)
        for definite in (True, False) for gender in range(GENDERS) for plural in (0, 1) for case in CASES
    }
    relative = {gender: _pseudo_word(rng, 1, taken) for gender in range(GENDERS)}
    vowels = ["a", "o", "i"]
    adj_suffix = {(g, p): vowels[g] + ("s" if p else "") for g in range(GENDERS) for p in (0, 1)}
    verb_suffix = {
        (g, p, past): ("ti" if past else "") + ["ar", "or", "ir"][g] + ("um" if p else "")
        for g in range(GENDERS) for p in (0, 1) for past in (False, True)
    }
    object_marker = {0: "", 1: "k", 2: "sh"}
    return Lexicon(noun, adjective, verb, preposition, determiner, relative, adj_suffix, verb_suffix, object_marker,
                   "en")


def _sentence(words: list[str]) -> str:
    """Capitalised, with the full stop attached: plain text as sacrebleu expects it."""
    text = " ".join(words) + "."
    return text[0].upper() + text[1:]


class SentencePairGenerator:
    """Draws (source, target) sentence pairs; the same seed always gives the same sequence of pairs."""

    def __init__(self, seed: int, max_modifiers: int = 2, relative_clause_prob: float = 0.3) -> None:
        self.lex = make_lexicon(seed)
        self.rng = random.Random(f"sentences-{seed}")
        self.max_modifiers = max_modifiers
        self.relative_clause_prob = relative_clause_prob

    def _noun_phrase(self, case: str) -> tuple[list[str], list[str], int, int]:
        """(source words, target words, gender, plural) of one noun phrase in ``case``."""
        rng, lex = self.rng, self.lex
        noun = rng.choice(NOUNS)
        stem, gender = lex.noun[noun]
        plural = rng.randrange(2)
        definite = rng.random() < 0.6
        adjs = rng.sample(ADJECTIVES, rng.randint(0, self.max_modifiers))
        src_det = "the" if definite else ("some" if plural else "a")
        src = [src_det, *adjs, noun + ("s" if plural else "")]
        tgt = [lex.determiner[(definite, gender, plural, case)], stem + (lex.plural_suffix if plural else "")]
        tgt += [lex.adjective[a] + lex.adj_suffix[(gender, plural)] for a in adjs]
        return src, tgt, gender, plural

    def pair(self) -> tuple[str, str]:
        rng, lex = self.rng, self.lex
        past = rng.random() < 0.4
        subj_src, subj_tgt, gender, plural = self._noun_phrase("nom")
        src, tgt = list(subj_src), list(subj_tgt)
        if rng.random() < self.relative_clause_prob:
            # a relative clause on the subject: intransitive, or transitive with an object of its own
            v = rng.choice(INTRANSITIVE + TRANSITIVE)
            src += ["that", v[2] if past else v[plural]]
            tgt.append(lex.relative[gender])
            if v in TRANSITIVE:
                rel_src, rel_tgt, _, _ = self._noun_phrase("acc")
                src += rel_src
                tgt += rel_tgt
            tgt.append(lex.verb[v[1]] + lex.verb_suffix[(gender, plural, past)])
        verb = rng.choice(TRANSITIVE)
        obj_src, obj_tgt, obj_gender, _ = self._noun_phrase("acc")
        src += [verb[2] if past else verb[plural], *obj_src]
        tgt += obj_tgt
        if rng.random() < 0.4:
            prep = rng.choice(PREPOSITIONS)
            pp_src, pp_tgt, _, _ = self._noun_phrase("loc")
            src += [prep, *pp_src]
            tgt += [*pp_tgt, lex.preposition[prep]]
        tgt.append(lex.verb[verb[1]] + lex.object_marker[obj_gender] + lex.verb_suffix[(gender, plural, past)])
        return _sentence(src), _sentence(tgt)


def generate_splits(
    seed: int, sizes: dict[str, int], max_modifiers: int = 2, relative_clause_prob: float = 0.3
) -> dict[str, tuple[list[str], list[str]]]:
    """Disjoint splits of distinct source sentences, e.g. ``sizes={"train": 1000, "valid": 100}``.

    Held-out splits are drawn first so that their sentences never appear in training.
    """
    gen = SentencePairGenerator(seed, max_modifiers, relative_clause_prob)
    seen: set[str] = set()
    order = sorted(sizes, key=lambda name: name == "train")  # held-out splits first
    out: dict[str, tuple[list[str], list[str]]] = {}
    for name in order:
        src_lines, tgt_lines = [], []
        attempts = 0
        while len(src_lines) < sizes[name]:
            attempts += 1
            if attempts > 50 * sizes[name] + 1000:
                raise ValueError(f"cannot draw {sizes[name]} distinct sentences for split {name!r}; lower its size")
            s, t = gen.pair()
            if s in seen:
                continue
            seen.add(s)
            src_lines.append(s)
            tgt_lines.append(t)
        out[name] = (src_lines, tgt_lines)
    return {name: out[name] for name in sizes}
