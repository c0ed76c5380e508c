"""The copy share: one definition (training.ml.copying), checked on texts whose answer is known."""

import pytest

from training.ml.copying import COPY_SPAN_WORDS, copied_words, copy_share, source_spans, words

ABSTRACT = ("We study deep reinforcement learning for robot control under partial observability and show "
            "that recurrent policies trained with curriculum learning transfer to real hardware.")


def test_a_copied_sentence_counts_every_word_of_it():
    profile = "Domain: robotics. We study deep reinforcement learning for robot control under partial observability."
    copied, total = copied_words(profile, source_spans([ABSTRACT]))
    # "we study deep reinforcement learning for robot control under partial observability": 11 words copied.
    assert (copied, total) == (11, 13)
    assert copy_share(profile, [ABSTRACT]) == pytest.approx(11 / 13)


def test_runs_shorter_than_the_span_are_not_copying():
    seven = " ".join(words(ABSTRACT)[:COPY_SPAN_WORDS - 1])
    assert copy_share(f"Domain: AI. {seven}. Competencies: planning", [ABSTRACT]) == 0
    eight = " ".join(words(ABSTRACT)[:COPY_SPAN_WORDS])
    assert copy_share(eight, [ABSTRACT]) == 1


def test_case_punctuation_and_line_breaks_do_not_hide_a_copy():
    profile = "WE STUDY deep-reinforcement learning,\nfor robot control; under partial observability"
    assert copy_share(profile, [ABSTRACT]) == 1


def test_a_span_is_never_joined_across_two_abstracts():
    first, second = "one two three four", "five six seven eight"
    assert copy_share("one two three four five six seven eight", [first, second]) == 0
    assert copy_share("one two three four five six seven eight", [f"{first} {second}"]) == 1


def test_a_profile_without_words_has_no_share():
    assert copy_share("  -- ", [ABSTRACT]) is None
    assert copy_share("Domain: physics", []) == 0
