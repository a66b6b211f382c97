"""Each option's rule has one owner, worded in the library's terms; the command lines say the same with their flag."""

from __future__ import annotations

import argparse
import math
import re

import pytest

from topv_edge.cli import FLAGS, in_flag_terms, keep_arg, layer_arg, overview_weight_arg, threads_arg
from topv_edge.errors import ChatError, OptionError
from topv_edge.options import (MAX_THREADS, TopVOptions, check_layer, check_overview_weight, check_threads,
                               default_threads)
from topv_edge.pruning import check_keep, keep_count


@pytest.mark.parametrize("keep, kept", [(0.25, 0.25), (1.0, 1.0), (1, 1), (144, 144)])
def test_keep_is_a_ratio_when_a_float_and_a_count_when_an_int(keep, kept):
    assert check_keep(keep) == kept and type(check_keep(keep)) is type(kept)


@pytest.mark.parametrize("keep, words", [(0, "count must be at least 1"), (-3, "count must be at least 1"),
                                         (0.0, "ratio must be in (0, 1]"), (1.5, "ratio must be in (0, 1]"),
                                         (math.nan, "ratio must be in (0, 1]")])
def test_keep_out_of_range_is_refused_in_the_librarys_words(keep, words):
    with pytest.raises(OptionError, match="^" + re.escape("keep " + words)) as e:
        check_keep(keep)
    assert e.value.name == "keep" and "--" not in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, ChatError)  # select() callers and chat callers


@pytest.mark.parametrize("keep", [True, "0.5", None])
def test_keep_of_another_type_is_a_type_error(keep):
    with pytest.raises(TypeError, match="keep"):
        check_keep(keep)


def test_keep_count_adds_only_the_token_count_rule():
    assert keep_count(576, 0.25) == 144 and keep_count(10, 10) == 10
    with pytest.raises(OptionError, match="between 1 and 10"):
        keep_count(10, 11)


def test_layer_rule_knows_the_depth_once_the_model_does():
    assert check_layer(0) == 0 and check_layer(30) == 30
    assert check_layer(2, n_layer=4) == 2
    with pytest.raises(OptionError, match=r"^layer must be 0\.\.2 for this model \(4 layers"):
        check_layer(3, n_layer=4)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(OptionError, match="^layer must be a whole number >= 0"):
            check_layer(bad)


def test_overview_weight_and_threads():
    assert check_overview_weight(math.inf) == math.inf and check_overview_weight(2) == 2.0
    for bad in (0, -1, math.nan, True):
        with pytest.raises(OptionError, match="^overview_weight must be a number > 0"):
            check_overview_weight(bad)
    assert check_threads(None) == default_threads() and check_threads(3) == 3
    for bad in (0, MAX_THREADS + 1, 2.0, True):
        with pytest.raises(OptionError, match=f"^threads must be a whole number from 1 to {MAX_THREADS}"):
            check_threads(bad)


def test_topv_options_validate_every_rule_and_the_pass_parameters():
    TopVOptions(keep=16, layer=2, method="topv", params={"gamma": 1.0}).validate(n_layer=4)
    cases = [(dict(keep=2.0), "keep"), (dict(layer=-1), "layer"), (dict(overview_weight=0), "overview_weight"),
             (dict(method="fastv"), "method"), (dict(params={"gama": 1.0}), "params"), (dict(params={"eps": -1.0}), "params")]
    for kwargs, name in cases:
        with pytest.raises(OptionError) as e:
            TopVOptions(**kwargs).validate()
        assert e.value.name == name, (kwargs, e.value)
    with pytest.raises(OptionError, match="^layer must be 0..2"):
        TopVOptions(layer=3).validate(n_layer=4)
    TopVOptions(enabled=False, layer=3).validate(n_layer=4)  # pruning off: the layer is not used


def test_the_command_line_says_the_same_with_its_flag():
    e = OptionError("keep", "ratio must be in (0, 1], got 1.5")
    assert in_flag_terms(e) == "--keep ratio must be in (0, 1], got 1.5"
    assert in_flag_terms(OptionError("n_ctx", "is too small")) == "--ctx is too small"
    assert in_flag_terms(ChatError("image not found: x.png")) == "image not found: x.png"
    assert set(FLAGS) >= {"keep", "layer", "method", "overview_weight", "threads", "n_ctx", "params"}


@pytest.mark.parametrize("arg, text, value", [(keep_arg, "25%", 0.25), (keep_arg, "144", 144), (keep_arg, "1.0", 1.0),
                                              (layer_arg, "2", 2), (threads_arg, "4", 4),
                                              (overview_weight_arg, "inf", math.inf)])
def test_flag_types_parse_then_apply_the_librarys_rule(arg, text, value):
    assert arg(text) == value and type(arg(text)) is type(value)


@pytest.mark.parametrize("arg, text, words", [(keep_arg, "150%", "ratio must be in (0, 1]"),
                                              (keep_arg, "0", "count must be at least 1"),
                                              (keep_arg, "a lot", "not a ratio (0.25)"),
                                              (layer_arg, "-1", "must be a whole number >= 0"),
                                              (threads_arg, "0", "must be a whole number from 1 to"),
                                              (overview_weight_arg, "0", "must be a number > 0")])
def test_flag_types_refuse_with_the_librarys_words(arg, text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
        arg(text)
