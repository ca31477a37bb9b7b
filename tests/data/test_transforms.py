import torch
import torch.nn.functional as F

from semiclust.data.transforms import CropAugment, center_view, crop_boxes, gaussian_blur, grayscale, resized_crops
from semiclust.config.schema import CropGroup, EvalView


def images(n=4, c=3, size=8, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_full_box_without_flip_is_the_identity():
    x = images()
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(4, 1)
    out = resized_crops(x, boxes, torch.zeros(4, dtype=torch.bool), 8, "bilinear")
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_flip_mirrors_and_half_box_selects_the_quadrant():
    x = images()
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(4, 1)
    flipped = resized_crops(x, full, torch.ones(4, dtype=torch.bool), 8, "bilinear")
    torch.testing.assert_close(flipped, x.flip(-1), rtol=1e-5, atol=1e-5)
    quadrant = torch.tensor([[0.5, 0.0, 0.5, 0.5]]).repeat(4, 1)  # top-right quarter, no resampling needed
    out = resized_crops(x, quadrant, torch.zeros(4, dtype=torch.bool), 4, "bilinear")
    torch.testing.assert_close(out, x[..., :4, 4:], rtol=1e-5, atol=1e-5)


def test_crop_boxes_respect_scale_and_stay_inside():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(2000, (0.2, 0.5), (3 / 4, 4 / 3), g, torch.device("cpu"))
    x0, y0, w, h = boxes.unbind(1)
    area = w * h
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.5 + 1e-6
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all()
    assert (w / h).min() >= 0.75 - 1e-4 and (w / h).max() <= 4 / 3 + 1e-4


def test_grayscale_and_blur():
    x = images()
    gray = grayscale(x)
    torch.testing.assert_close(gray[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.equal(gray[:, 0], gray[:, 2])
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(4)), x)  # sigma 0: unchanged
    blurred = gaussian_blur(x, torch.full((4,), 1.0))
    assert blurred.var() < x.var()
    constant = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, torch.full((2,), 1.5)), constant)


def test_augment_is_seeded_normalised_and_shaped():
    group = CropGroup(count=1, size=6, scale=(0.3, 1.0), color={"p": 1.0}, grayscale=0.5,
                      blur={"p": 0.5}, solarize=0.2)
    augment = CropAugment(group, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    raw = (images(n=16) * 255).to(torch.uint8)
    a = augment(raw, torch.Generator().manual_seed(1))
    b = augment(raw, torch.Generator().manual_seed(1))
    c = augment(raw, torch.Generator().manual_seed(2))
    assert a.shape == (16, 3, 6, 6) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= (0 - 0.5) / 0.25 - 1e-5 and a.max() <= (1 - 0.5) / 0.25 + 1e-5


def test_solarize_inverts_bright_pixels_only():
    group = CropGroup(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, solarize=1.0)
    augment = CropAugment(group, mean=(0.0,), std=(1.0,))
    raw = torch.tensor([0, 64, 192, 255], dtype=torch.uint8).view(1, 1, 2, 2).repeat(1, 1, 4, 4)
    out = augment(raw, torch.Generator().manual_seed(0))
    x = raw.float() / 255
    torch.testing.assert_close(out, torch.where(x >= 0.5, 1 - x, x), rtol=1e-5, atol=1e-5)


def test_center_view_resizes_then_crops():
    raw = (images(n=2, size=10) * 255).to(torch.uint8)
    out = center_view(raw, EvalView(size=8, resize=10))
    torch.testing.assert_close(out, raw[..., 1:9, 1:9].float() / 255)
    up = center_view(raw, EvalView(size=20))
    expected = F.interpolate(raw.float() / 255, size=(20, 20), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(up, expected.clamp(0, 1))


def test_crop_aspect_is_in_pixels_for_non_square_images():
    g = torch.Generator().manual_seed(0)
    height, width = 40, 80
    boxes = crop_boxes(2000, (0.1, 0.3), (3 / 4, 4 / 3), g, torch.device("cpu"), image_aspect=height / width)
    pixel_aspect = (boxes[:, 2] * width) / (boxes[:, 3] * height)
    assert pixel_aspect.min() >= 0.75 - 1e-4 and pixel_aspect.max() <= 4 / 3 + 1e-4
    area = boxes[:, 2] * boxes[:, 3]
    assert area.min() >= 0.1 - 1e-6 and area.max() <= 0.3 + 1e-6


def test_the_cuda_and_cpu_ways_of_touching_only_chosen_images_agree():
    from semiclust.data.transforms import gaussian_blur, masked, rows_only

    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 12, 12, generator=g)
    sigma = torch.tensor([0.0, 1.2, 0.0, 0.7, 2.0, 0.0])
    chosen = sigma > 0
    blur = lambda part, rows: gaussian_blur(part, sigma[rows])  # noqa: E731
    gray = lambda part, rows: grayscale(part)  # noqa: E731
    for op in (blur, gray):
        a, b = masked(images.clone(), chosen, op), rows_only(images.clone(), chosen, op)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert torch.equal(a[~chosen], images[~chosen])  # the others untouched


def test_erasing_sets_one_rectangle_per_chosen_image_to_the_mean_and_leaves_the_draws_of_recipes_without_it():
    """Erase p=1: each crop's erased pixels (value = the mean, 0 once normalised) form one rectangle whose area is
    within the range (up to a pixel's rounding per side); p=0 draws nothing extra, so older recipes are unchanged."""
    group = CropGroup(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0,
                      erase={"p": 1.0, "scale": (0.1, 0.3), "ratio": (0.5, 2.0)})
    augment = CropAugment(group, mean=(0.25,), std=(0.5,))
    raw = torch.full((64, 1, 20, 20), 255, dtype=torch.uint8)  # white: 1.5 once normalised, never 0 by chance
    out = augment(raw, torch.Generator().manual_seed(3))
    for crop in out[:, 0]:
        rows, cols = torch.nonzero(crop == 0, as_tuple=True)
        assert len(rows) > 0 and torch.all(crop[crop != 0] == 1.5)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert len(rows) == height * width  # one full rectangle
        assert (0.1 ** 0.5 * 16 - 1) ** 2 <= height * width <= (0.3 ** 0.5 * 16 + 1) ** 2 * 2
    plain = CropGroup(size=16, color={"p": 1.0}, solarize=0.3)
    with_off = plain.model_copy(update={"erase": plain.erase.model_copy(update={"p": 0.0})})
    generators = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = CropAugment(plain, (0.5,), (0.5,))(raw, generators[0])
    b = CropAugment(with_off, (0.5,), (0.5,))(raw, generators[1])
    assert torch.equal(a, b) and torch.equal(generators[0].get_state(), generators[1].get_state())


def test_erasing_half_the_crops_chooses_about_half():
    group = CropGroup(size=8, scale=(1.0, 1.0), flip=0.0, erase={"p": 0.5, "scale": (0.2, 0.2)})
    out = CropAugment(group, (0.0,), (1.0,))(torch.full((400, 1, 8, 8), 200, dtype=torch.uint8),
                                           torch.Generator().manual_seed(0))
    erased = (out == 0).flatten(1).any(dim=1).float().mean()
    assert 0.4 < float(erased) < 0.6
