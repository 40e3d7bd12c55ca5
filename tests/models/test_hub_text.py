"""Text encoders of MicroDiT (open-clip token states) and PixArt-Sigma (T5), on tiny random-weight models."""

import json

import pytest
import torch

from harness.errors import HarnessError
from harness.models.text_encoders import TEXT_ENCODERS, build_text_encoder

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

PROMPTS = ["a photo of a red cat", "two dogs and a bench", ""]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny open-clip CLIP written as a local open-clip folder (config + safetensors), like the DFN5B repo."""
    folder = tmp_path_factory.mktemp("openclip-dfn5b")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, model


def test_registered():
    assert {"openclip-dfn5b", "t5-pixart-sigma"} <= set(TEXT_ENCODERS)


@torch.no_grad()
def test_openclip_token_states_are_what_encode_text_pools(clip_folder):
    """The full sequence after ln_final: pooled at the end token and projected, it is open-clip's encode_text."""
    folder, model = clip_folder
    encoder = build_text_encoder("openclip-dfn5b", {"folder": str(folder)})
    states, mask = encoder.encode(PROMPTS)
    assert states.shape == (3, 77, 32) and mask.all()
    ids = open_clip.get_tokenizer(f"local-dir:{folder}")(PROMPTS)
    pooled = states[torch.arange(3), ids.argmax(dim=-1)] @ model.text_projection
    torch.testing.assert_close(pooled, model.eval().encode_text(ids), rtol=1e-5, atol=1e-5)
    null_states, null_mask = encoder.null()
    assert null_states.shape == (77, 32) and not null_states.any() and null_mask.all()  # zeros, as trained


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A tiny T5 encoder and a unigram T5 tokenizer in the layout of pixart_sigma_sdxlvae_T5_diffusers."""
    folder = tmp_path_factory.mktemp("t5-pixart-sigma")
    words = "a photo of red cat two dogs and bench".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in words]
    tokenizer = transformers.T5TokenizerFast(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    config = transformers.T5Config(vocab_size=len(vocab), d_model=16, d_kv=4, num_heads=2, num_layers=2, d_ff=32)
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(config)
    model.save_pretrained(str(folder / "text_encoder"))
    return folder, model, tokenizer


@torch.no_grad()
def test_t5_encodes_as_the_pixart_pipeline(t5_folder):
    folder, model, tokenizer = t5_folder
    encoder = build_text_encoder("t5-pixart-sigma", {"folder": str(folder), "max_length": 12})
    states, mask = encoder.encode(["A Photo of a red CAT ", "two dogs"])
    assert states.shape == (2, 12, 16) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [7, 3]  # words plus </s>; the rest is padding
    tokens = tokenizer(["a photo of a red cat", "two dogs"], padding="max_length", max_length=12,
                       return_tensors="pt")
    expected = model.eval()(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    torch.testing.assert_close(states, expected)
    null_states, null_mask = encoder.null()
    assert null_mask.sum() == 1  # the empty prompt is the end token alone
    torch.testing.assert_close(null_states, encoder.encode([""])[0][0])


def test_missing_weights_name_the_asset_and_the_fetch_command(tmp_path):
    with pytest.raises(HarnessError, match=r"t5-pixart-sigma.*harness assets --fetch t5-pixart-sigma"):
        build_text_encoder("t5-pixart-sigma", {}, root=tmp_path)
    with pytest.raises(HarnessError, match="bad options"):
        build_text_encoder("openclip-dfn5b", {"folder": str(tmp_path), "colour": 1}, root=tmp_path)
