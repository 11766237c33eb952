"""`invoke bench --only WORD`: the stages whose title has the word, in any case; a word no
title has stops the run before anything starts, instead of writing an empty report."""

from __future__ import annotations

import pytest

from shopstream_bench.run import BENCHMARKS, NoSuchBenchmark, selected


def titles(only: list[str] | None) -> list[str]:
    return [title for title, _, _ in selected(only)]


def test_a_word_selects_the_stages_whose_title_has_it_in_any_case():
    assert titles(["api"]) == titles(["API"]) == [t for t, _, _ in BENCHMARKS if t.startswith("API:")]
    assert titles(["Footprint"]) == [t for t, _, _ in BENCHMARKS if t.startswith("footprint:")]
    assert len(titles(["batch"])) == 2


def test_several_words_select_each_stage_once_in_the_run_order():
    chosen = titles(["batch", "aggregation", "streaming"])
    assert chosen == [t for t, _, _ in BENCHMARKS if t.startswith(("batch:", "streaming:"))]


def test_without_words_every_stage_runs():
    assert titles(None) == titles([]) == [t for t, _, _ in BENCHMARKS]


def test_a_word_no_title_has_is_an_error_naming_it():
    with pytest.raises(NoSuchBenchmark, match="'apii'"):
        selected(["api", "apii"])
