"""CLIP score with a tiny random-weight open-clip model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.metrics.clip_score import build_clip_scorer



def test_clip_score_is_100_cosine_clipped_at_zero():
    torch.manual_seed(0)
    scorer = build_clip_scorer(random_weights=True, batch_size=3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 40, 48, 3), dtype=np.uint8)
    prompts = [f"a photo of {w}" for w in ["a cat", "a dog", "two cups", "a red car", "", "a tree", "a bus"]]
    scores = scorer(images, prompts)
    with torch.no_grad():
        pixels = torch.stack([scorer.transform(Image.fromarray(im)) for im in images])
        text = scorer.model.encode_text(scorer.tokenizer(prompts))
        cos = F.cosine_similarity(scorer.model.encode_image(pixels), text)
    np.testing.assert_allclose(scores, (100 * cos).clamp(min=0).numpy(), rtol=1e-4, atol=1e-4)
    negative = (cos < 0).numpy()
    assert negative.any() and (scores[negative] == 0).all() and (scores[~negative] > 0).all()  # clipping exercised
    # a prompt's score does not depend on the batch it is in
    np.testing.assert_allclose(scorer(images[3:5], prompts[3:5]), scores[3:5], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="7 images but 2 prompts"):
        scorer(images, prompts[:2])
    # negative cosines are clipped: flip the text embedding's sign through the projection
    scorer.model.text_projection.data.neg_()
    flipped = scorer(images, prompts)
    np.testing.assert_allclose(flipped, (-100 * cos).clamp(min=0).numpy(), rtol=1e-4, atol=1e-4)
    assert ((scores == 0) | (flipped == 0)).all() and (scores + flipped > 0).any()
