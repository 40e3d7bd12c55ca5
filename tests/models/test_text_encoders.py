"""The text-encoder registry and its deterministic random stand-in."""

import pytest
import torch

from harness.errors import HarnessError
from harness.models.text_encoders import TEXT_ENCODERS, RandomTextEncoder, build_text_encoder


def test_random_encoder_is_deterministic_and_masks_padding():
    a = build_text_encoder("random", {"dim": 8, "length": 6})
    b = build_text_encoder("random", {"dim": 8, "length": 6})
    states, mask = a.encode(["a photo of a dog", "a cat", "one two three four five six seven"])
    again, _ = b.encode(["a photo of a dog", "a cat", "one two three four five six seven"])
    assert states.shape == (3, 6, 8) and mask.dtype == torch.bool
    assert torch.equal(states, again)
    assert mask.sum(1).tolist() == [6, 3, 6]  # start token + words, cut at length
    assert (states[1, 3:] == 0).all() and (states[1, :3] != 0).any()
    assert not torch.equal(states[0], states[1])


def test_null_caption_is_the_empty_prompt_with_its_start_token():
    enc = RandomTextEncoder(dim=4, length=5, seed=3)
    states, mask = enc.null()
    assert states.shape == (5, 4) and mask.tolist() == [True, False, False, False, False]
    assert torch.equal(states, enc.encode([""])[0][0])


def test_seed_and_words_change_the_states():
    one, two = RandomTextEncoder(seed=0), RandomTextEncoder(seed=1)
    assert not torch.equal(one.encode(["red car"])[0], two.encode(["red car"])[0])
    assert not torch.equal(one.encode(["red car"])[0], one.encode(["blue car"])[0])


def test_unknown_encoder_and_bad_options_are_harness_errors():
    with pytest.raises(HarnessError, match="unknown text encoder 'nope'.*random"):
        build_text_encoder("nope")
    with pytest.raises(HarnessError, match="bad options"):
        build_text_encoder("random", {"width": 3})
    assert "random" in TEXT_ENCODERS
