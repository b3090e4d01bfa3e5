"""Threshold mode reproduces the authors' own LTMP code (tests/golden/README.md says how the vectors were made)."""

import numpy as np
import torch


def kept_counts(decisions):
    return torch.stack([d.n_out for d in decisions], dim=1).round().long().numpy()


def test_each_image_alone_matches_the_authors(golden_model, golden_expected):
    images = torch.from_numpy(golden_expected["images"])
    with torch.no_grad():
        for i in range(len(images)):
            out = golden_model.forward_ltmp(images[i : i + 1])
            diff = np.abs(out.logits.numpy() - golden_expected["logits"][i : i + 1]).max()
            assert diff <= 1e-4, f"image {i}: max |logit diff| {diff}"
            np.testing.assert_array_equal(kept_counts(out.decisions)[0], golden_expected["kept_tokens"][i])


def test_six_images_as_one_batch_match_the_authors(golden_model, golden_expected):
    images = torch.from_numpy(golden_expected["images"])
    with torch.no_grad():
        out = golden_model.forward_ltmp(images)
    assert np.abs(out.logits.numpy() - golden_expected["logits"]).max() <= 1e-4
    np.testing.assert_array_equal(kept_counts(out.decisions), golden_expected["kept_tokens"])
    # The batch really is ragged: padding was exercised.
    assert len(set(golden_expected["kept_tokens"][:, -1].tolist())) > 1
