import torch
import torch.nn.functional as F

from semiclust.data.mixup import mix_extend


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 1, 8, 8, generator=g), F.one_hot(torch.arange(6) % 3, 3).float()


def test_extend_doubles_rows_and_keeps_the_originals():
    x, y = batch()
    images, targets = mix_extend(x, y, 0.5, 1.0, torch.Generator().manual_seed(0))
    assert images.shape[0] == 12 and targets.shape == (12, 3)
    assert torch.equal(images[:6], x) and torch.equal(targets[:6], y)
    torch.testing.assert_close(targets.sum(1), torch.ones(12))


def test_mixup_targets_match_the_pixel_mixture():
    x, y = batch()
    images, targets = mix_extend(x, y, mixup_prob=1.0, alpha=1.0, generator=torch.Generator().manual_seed(3))
    # recover lambda from the pixels and check the targets use the same one
    diff = (x - x.flip(0)).flatten()
    lam_pixels = float(((images[6:] - x.flip(0)).flatten() @ diff) / (diff @ diff))
    torch.testing.assert_close(images[6:], lam_pixels * x + (1 - lam_pixels) * x.flip(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(targets[6:], lam_pixels * y + (1 - lam_pixels) * y.flip(0), rtol=1e-4, atol=1e-5)
    assert 0.0 < lam_pixels < 1.0


def test_cutmix_lambda_is_the_kept_area():
    x, y = torch.zeros(4, 1, 8, 8), F.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    x[3] = 1.0  # the partner of image 0 is image 3 (reversed order)
    images, targets = mix_extend(x, y, mixup_prob=0.0, alpha=1.0, generator=torch.Generator().manual_seed(5))
    pasted = float(images[4].mean())  # fraction of image 0's pixels replaced by image 3's
    torch.testing.assert_close(targets[4], torch.tensor([1 - pasted, 0, 0, pasted]))
