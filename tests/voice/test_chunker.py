"""The TTS chunker on scripted delta streams: exact chunks, offsets, and when they come out."""

from __future__ import annotations

import random
import re
from itertools import pairwise

import pytest

from voice.chunker import Chunk, ChunkerConfig, SentenceChunker


def chunk_all(deltas: list[str], config: ChunkerConfig | None = None) -> list[Chunk]:
    chunker = SentenceChunker(config)
    out = [c for d in deltas for c in chunker.push(d)]
    return out + chunker.flush()


def texts(deltas: list[str], config: ChunkerConfig | None = None) -> list[str]:
    return [c.text for c in chunk_all(deltas, config)]


def splits(text: str) -> list[list[str]]:
    """The same text as one delta, char by char, in 3-char pieces, and in word-like tokens."""
    tokens = re.findall(r"\s*\S+|\s+", text)
    return [[text], list(text), [text[i : i + 3] for i in range(0, len(text), 3)], tokens]


def same_for_every_split(text: str, config: ChunkerConfig | None = None) -> list[str]:
    results = [texts(deltas, config) for deltas in splits(text)]
    assert all(r == results[0] for r in results), results
    return results[0]


# ---- when chunks come out ---------------------------------------------------------------------


def test_first_chunk_is_an_early_clause_then_whole_sentences():
    tokens = [
        "Well", ",", " I", " think", " the", " best", " option", ",", " given", " what",
        " you", " said", ",", " is", " the", " train", ".", " It", " is", " fast", ".",
    ]  # fmt: skip
    chunker = SentenceChunker()
    emitted = [(i, c.text) for i, tok in enumerate(tokens) for c in chunker.push(tok)]
    emitted += [(len(tokens), c.text) for c in chunker.flush()]
    assert emitted == [
        (8, "Well, I think the best option,"),  # "Well," is too short; the comma waits for " given"
        (17, "given what you said, is the train."),  # later chunks: sentences, not clauses
        (21, "It is fast."),  # the last one on flush
    ]


def test_a_short_first_sentence_is_its_own_chunk():
    assert same_for_every_split("Hi! How can I help you today?") == [
        "Hi!",
        "How can I help you today?",
    ]


def test_first_clause_needs_first_min_words():
    text = "Sure, I can help with that. First, open the app."
    assert same_for_every_split(text) == ["Sure, I can help with that.", "First, open the app."]
    small = ChunkerConfig(first_min_words=1)
    assert same_for_every_split(text, small) == [
        "Sure,",
        "I can help with that.",
        "First, open the app.",
    ]


def test_first_chunk_after_first_max_words_without_punctuation():
    text = "one two three four five six seven eight nine ten eleven twelve"
    assert same_for_every_split(text) == [
        "one two three four five six seven eight",
        "nine ten eleven twelve",
    ]


def test_word_cap_waits_for_the_word_to_end():
    chunker = SentenceChunker(ChunkerConfig(first_min_words=1, first_max_words=2))
    assert chunker.push("one tw") == []
    assert chunker.push("o") == []  # "two" might go on
    assert [c.text for c in chunker.push(" thr")] == ["one two"]


def test_dashes_and_ellipses_are_clause_boundaries():
    assert same_for_every_split(
        "Prices rose a thousand percent \u2014 a record. Then they fell."
    ) == [
        "Prices rose a thousand percent \u2014",
        "a record.",
        "Then they fell.",
    ]
    assert same_for_every_split("I'm not sure... maybe tomorrow. Let me check... Okay! Done.") == [
        "I'm not sure...",
        "maybe tomorrow.",
        "Let me check...",  # before a capital an ellipsis ends the sentence
        "Okay!",
        "Done.",
    ]
    assert same_for_every_split("It fell from 5-10 units - slowly - all year. Yes.") == [
        "It fell from 5-10 units -",  # a hyphen splits only with spaces around it
        "slowly - all year.",
        "Yes.",
    ]


def test_an_unspaced_em_dash_is_a_boundary_however_the_text_arrives():
    tiny = ChunkerConfig(first_min_words=1, first_max_words=2, clause_split_words=3, max_words=5)
    assert same_for_every_split("Hmm\u2026 let me think\u2014okay. The end.", tiny) == [
        "Hmm\u2026",
        "let me think\u2014",  # three words before the dash whether or not "okay" has arrived
        "okay.",
        "The end.",
    ]


def test_a_link_cut_by_the_word_cap_leaves_no_markup():
    config = ChunkerConfig(first_min_words=1, first_max_words=2)
    assert same_for_every_split("See [the docs](https://x.com/a) now.", config) == [
        "See the",
        "docs now.",
    ]


def test_long_sentences_split_at_a_clause_past_the_limit_then_at_max_words():
    config = ChunkerConfig(first_max_words=4, clause_split_words=6, max_words=10)
    text = (
        "Hello there. We went to the old market by the river, and then we walked home, "
        "slowly. Then one two three four five six seven eight nine ten"
    )
    assert same_for_every_split(text, config) == [
        "Hello there.",
        "We went to the old market by the river,",  # first clause boundary past 6 words
        "and then we walked home, slowly.",
        "Then one two three four five six seven eight nine",  # no punctuation: max_words
        "ten",
    ]


def test_flush_returns_a_trailing_fragment_and_starts_afresh():
    chunker = SentenceChunker()
    assert chunker.push("The answer is") == []
    assert chunker.flush() == [Chunk("The answer is", 0, 13)]
    assert chunker.flush() == []
    assert chunker.push("Hi! Again") == [Chunk("Hi!", 0, 3)]  # offsets and first chunk reset
    assert chunker.flush() == [Chunk("Again", 3, 9)]


def test_a_boundary_at_the_end_of_the_text_so_far_waits_for_the_next_delta():
    chunker = SentenceChunker()
    assert chunker.push("It costs 3.") == []  # "3.5" or the end of a sentence?
    assert chunker.push("5 dollars, ok") == [Chunk("It costs 3.5 dollars,", 0, 21)]
    assert chunker.push("ay. Mr.") == [Chunk("okay.", 21, 27)]
    assert chunker.push(" Smith") == []
    assert chunker.flush() == [Chunk("Mr. Smith", 27, 37)]


# ---- where sentences end ----------------------------------------------------------------------


def test_abbreviations_initials_and_decimals_do_not_end_sentences():
    text = (
        "Dr. Smith measured 3.5 kg twice. Mr. J. R. Tolkien agreed, e.g. on Tuesday. "
        "It was 5 p.m. and late. The U.S. team won. The bill was approx. ten dollars. "
        "Visit example.com today. Version 2.0 is out."
    )
    assert same_for_every_split(text) == [
        "Dr. Smith measured 3.5 kg twice.",
        "Mr. J. R. Tolkien agreed, e.g. on Tuesday.",
        "It was 5 p.m. and late.",
        "The U.S. team won.",
        "The bill was approx. ten dollars.",
        "Visit example.com today.",
        "Version 2.0 is out.",
    ]


def test_a_lower_case_word_after_a_full_stop_continues_the_sentence():
    assert same_for_every_split("Yes. We stock apples, pears etc. and more. Ask us!") == [
        "Yes.",
        "We stock apples, pears etc. and more.",
        "Ask us!",
    ]
    assert same_for_every_split("Yes. We stock apples, pears, etc. Ask us!") == [
        "Yes.",
        "We stock apples, pears, etc.",
        "Ask us!",
    ]


def test_quotes_and_brackets_stay_with_their_sentence():
    assert same_for_every_split('He said "stop." Then (quietly.) she left?! Yes.') == [
        'He said "stop."',
        "Then (quietly.) she left?!",  # lower case after "quietly.)": one sentence
        "Yes.",
    ]


# ---- what the TTS is given --------------------------------------------------------------------


def test_markdown_is_stripped():
    text = (
        "## Steps\n\n1. Preheat the **oven** to 200 degrees.\n2. Mix `flour` and _water_.\n"
        "- Bake it\n* Serve it\n> Enjoy!\n```python\nprint(1)\n```\n"
        "That's ~~not~~ all. snake_case stays."
    )
    assert same_for_every_split(text) == [
        "Steps",
        "1. Preheat the oven to 200 degrees.",
        "2. Mix flour and water.",
        "Bake it",
        "Serve it",
        "Enjoy!",
        "print(1)",
        "That's not all. snake_case stays.",  # lower case after the stop: not split
    ]


def test_urls_read_as_their_host_or_are_dropped():
    text = "See [the docs](https://x.com/a) or https://www.example.com/path?q=1. Then call us."
    assert same_for_every_split(text) == ["See the docs or example.com.", "Then call us."]
    dropped = ChunkerConfig(urls="drop")
    assert same_for_every_split(text, dropped) == ["See the docs or.", "Then call us."]


def test_never_emits_an_empty_chunk():
    text = "**\n\n---\n\n```\n...\n\n   \n!\n\nOk.\n\n"
    for deltas in splits(text):  # the stretches with no words are cut off and dropped
        assert chunk_all(deltas) == [Chunk("Ok.", 24, 28)]
    assert chunk_all(["   ", "\n", "**"]) == []
    assert chunk_all(["\u2014 ", "yes"]) == [Chunk("yes", 1, 5)]


# ---- offsets and words ------------------------------------------------------------------------

PLAIN = (
    "Sure, I can help you plan the trip. The train leaves at 9.30 a.m. from platform 4, "
    "and it takes about three hours... depending on the weather. Dr. Jones recommends it! "
    "Would you like me to book two seats, one by the window and one on the aisle, for Friday?"
)


@pytest.mark.parametrize("deltas", splits(PLAIN))
def test_plain_text_keeps_every_word_in_order_and_offsets_tile_the_text(deltas):
    chunks = chunk_all(deltas)
    assert " ".join(c.text for c in chunks).split() == PLAIN.split()
    assert chunks[0].source_start == 0
    assert all(a.source_end == b.source_start for a, b in pairwise(chunks))
    assert chunks[-1].source_end == len(PLAIN)
    for c in chunks:  # each chunk is cut from exactly the raw text it covers
        assert PLAIN[c.source_start : c.source_end].strip() == c.text


@pytest.mark.parametrize(
    "config",
    [
        ChunkerConfig(),
        ChunkerConfig(first_min_words=1, first_max_words=2, clause_split_words=3, max_words=5),
    ],
)
def test_chunks_do_not_depend_on_how_the_text_is_split(config):
    text = (
        PLAIN
        + "\n\n## Notes\n- **Bring** ID\u2014and `cash`.\n- See https://rail.example.org/x. Ok?"
    )
    expected = texts([text], config)
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, len(text) // 3)))
        deltas = [text[a:b] for a, b in pairwise([0, *cuts, len(text)])]
        assert texts(deltas, config) == expected


def test_offsets_count_the_markup_that_was_removed():
    raw = "**Hello** there. [Click](http://a.b/c) here now."
    chunks = chunk_all(list(raw))
    assert chunks == [Chunk("Hello there.", 0, 16), Chunk("Click here now.", 16, len(raw))]
    assert raw[: chunks[0].source_end] == "**Hello** there."


# ---- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_min_words": 0},
        {"first_min_words": 5, "first_max_words": 4},
        {"clause_split_words": 0},
        {"clause_split_words": 50, "max_words": 40},
        {"urls": "spell"},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="chunker"):
        ChunkerConfig(**kwargs)
