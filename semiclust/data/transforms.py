"""Batched augmentation on tensors: random resized crops, flips, colour, grayscale, blur, solarize, erasing.

Every image in a batch gets its own random parameters, but the work is done as a handful of tensor
ops on the whole batch (one `grid_sample` for all crops), on the training device. For the small
in-memory datasets this is far faster than per-image PIL transforms. All randomness comes from the
`generator` passed in, so a run is reproducible and its augmentation state can be checkpointed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semiclust.config.schema import ColorJitter, CropGroup, EvalView

LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def crop_boxes(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator, device: torch.device,
    image_aspect: float = 1.0,
) -> torch.Tensor:
    """Relative crop boxes (x0, y0, w, h) in [0, 1]: area ~ U(scale) of the image and log pixel
    aspect (width / height) ~ U(log ratio), for images of height / width = `image_aspect`.

    Boxes wider or taller than the image are clamped to it (torchvision retries instead; the
    difference is confined to extreme aspect ratios at large scales).
    """
    area = _uniform(n, scale[0], scale[1], generator, device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect * image_aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect / image_aspect).clamp(max=1.0)
    x0 = torch.rand(n, generator=generator, device=device) * (1 - w)
    y0 = torch.rand(n, generator=generator, device=device) * (1 - h)
    return torch.stack([x0, y0, w, h], dim=1)


def resized_crops(
    images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, mode: str
) -> torch.Tensor:
    """Crop each image to its box, mirror where `flips`, and resample to size x size in one call.

    The sampling grid is axis-aligned (scale + shift per image), so it is built by broadcasting
    rather than by `affine_grid`'s batched matrix product, which is slow on CPU for many small crops.
    """
    x0, y0, w, h = (v.view(-1, 1, 1) for v in boxes.unbind(1))
    steps = (torch.arange(size, device=images.device, dtype=images.dtype) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    sign = (1.0 - 2.0 * flips.to(images.dtype)).view(-1, 1, 1)
    grid_x = (w * sign) * steps.view(1, 1, size) + (2 * x0 + w - 1)
    grid_y = h * steps.view(1, size, 1) + (2 * y0 + h - 1)
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma as one channel (N x 1 x H x W); 1-channel images are their own luma."""
    if images.shape[1] == 1:
        return images
    red, green, blue = images.unbind(1)
    return (red * LUMA[0] + green * LUMA[1] + blue * LUMA[2]).unsqueeze(1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, keeping the channel count (a no-op on 1-channel images)."""
    return luma(images).expand_as(images)


def mean_luma(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean luma (N x 1 x 1 x 1), from per-channel means: no full-size temporary."""
    if images.shape[1] == 1:
        return images.mean(dim=(1, 2, 3), keepdim=True)
    channel_means = images.mean(dim=(2, 3))
    return (channel_means @ channel_means.new_tensor(LUMA)).view(-1, 1, 1, 1)


def rotate_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` (fraction of a full turn, per image) in YIQ space; RGB images only."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    to_rgb = torch.linalg.inv(to_yiq)
    angle = 2 * math.pi * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(images), 3, 3, dtype=images.dtype, device=images.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = to_rgb @ rotation @ to_yiq  # B x 3 x 3
    return torch.einsum("bij,bjhw->bihw", matrix, images)


@dataclass
class JitterParams:
    """Per-image colour factors (1 = unchanged for images not selected) and the batch's op order."""

    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: list[int]
    active: tuple[bool, bool, bool, bool]  # which of the four ops have a non-zero strength

    def select(self, rows: torch.Tensor) -> "JitterParams":
        return JitterParams(self.brightness[rows], self.contrast[rows], self.saturation[rows], self.hue[rows],
                            self.order, self.active)


def draw_jitter(n: int, jitter: ColorJitter, generator: torch.Generator, device: torch.device,
                host: torch.Generator | None = None) -> JitterParams:
    """Per-image factors from `generator` (on the device); the batch's op order, which decides what runs, from
    the CPU generator `host` (the same generator on a CPU), so that no draw is read back from a GPU."""
    selected = _bernoulli(n, jitter.p, generator, device).float()

    def factors(strength: float) -> torch.Tensor:
        drawn = _uniform(n, max(0.0, 1 - strength), 1 + strength, generator, device)
        return 1 + (drawn - 1) * selected

    brightness, contrast, saturation = factors(jitter.brightness), factors(jitter.contrast), factors(jitter.saturation)
    hue = _uniform(n, -jitter.hue, jitter.hue, generator, device) * selected
    host = host or generator
    order = torch.randperm(4, generator=host, device=host.device).tolist()
    active = (jitter.brightness > 0, jitter.contrast > 0, jitter.saturation > 0, jitter.hue > 0)
    return JitterParams(brightness, contrast, saturation, hue, order, active)


def color_jitter(images: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with per-image factors, in a random order per batch
    (torchvision's ColorJitter semantics; saturation and hue only act on RGB images).

    Works IN PLACE on `images` where it can (crops are fresh tensors): on a CPU, allocating a new
    full-size tensor per op cost as much as the arithmetic."""
    n = len(images)
    color = images.shape[1] == 3
    for op in (op for op in params.order if params.active[op]):
        if op == 0:
            images.mul_(params.brightness.view(n, 1, 1, 1)).clamp_(0, 1)
        elif op == 1:
            mean = mean_luma(images)
            images.sub_(mean).mul_(params.contrast.view(n, 1, 1, 1)).add_(mean).clamp_(0, 1)
        elif op == 2 and color:
            gray = luma(images)
            images.sub_(gray).mul_(params.saturation.view(n, 1, 1, 1)).add_(gray).clamp_(0, 1)
        elif op == 3 and color:
            images = rotate_hue(images, params.hue).clamp_(0, 1)
    return images


def on_chosen(images: torch.Tensor, chosen: torch.Tensor, op) -> torch.Tensor:
    """`op(part, rows)` applied to the chosen images only. On a CPU the others are skipped (blur and
    grayscale usually touch half a batch); on CUDA the op runs on all and a mask selects, avoiding a
    host synchronisation. Both give the same result."""
    return masked(images, chosen, op) if images.is_cuda else rows_only(images, chosen, op)


def masked(images: torch.Tensor, chosen: torch.Tensor, op) -> torch.Tensor:
    return torch.where(chosen.view(-1, 1, 1, 1), op(images, slice(None)), images)


def rows_only(images: torch.Tensor, chosen: torch.Tensor, op) -> torch.Tensor:
    rows = torch.nonzero(chosen).flatten()
    if len(rows):
        images[rows] = op(images[rows], rows)
    return images


def blur_radius(largest_sigma: float, height: int, width: int) -> int:
    """The kernel radius for sigmas up to `largest_sigma`: 3 sigma, at least 1, at most what reflection padding allows."""
    return max(1, min(int(math.ceil(3 * largest_sigma)), (min(height, width) - 1) // 2))


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, largest_sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (pixels); sigma 0 leaves an image unchanged.

    The kernel spans 3x the batch's largest sigma, read from `sigma`, or 3x `largest_sigma` when given (the top of
    the recipe's range: on a GPU, reading the drawn maximum back would stall the step; the wider kernel only adds
    the Gaussian's tail beyond 3 sigma of the smaller sigmas, under 0.3% of its weight)."""
    n, c, height, width = images.shape
    radius = blur_radius(float(sigma.max()) if largest_sigma is None else largest_sigma, height, width)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    safe = sigma.clamp(min=1e-6).view(n, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / safe) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(c, dim=0)  # (n*c) x k
    flat = images.reshape(1, n * c, height, width)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, height, width)


@dataclass
class CropParams:
    """Every random choice for a batch of crops; drawing is separate from applying so that all
    processes can draw the parameters of the global batch and each apply its own rows."""

    boxes: torch.Tensor | None  # None where the crops were cut elsewhere (loader workers)
    flips: torch.Tensor | None
    jitter: JitterParams | None
    gray: torch.Tensor | None
    blur_sigma: torch.Tensor | None
    solarize: torch.Tensor | None
    erase: torch.Tensor | None = None  # N x 4 relative boxes (x0, y0, w, h); zero width where nothing is erased

    def select(self, rows: torch.Tensor) -> "CropParams":
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return CropParams(pick(self.boxes), pick(self.flips), self.jitter.select(rows) if self.jitter else None,
                          pick(self.gray), pick(self.blur_sigma), pick(self.solarize), pick(self.erase))


class CropAugment:
    """Turns a batch of uint8 images into one group's crops, normalised with the dataset's mean/std."""

    def __init__(self, group: CropGroup, mean: tuple[float, ...], std: tuple[float, ...]):
        self.group = group
        self.mean, self.std = tuple(mean), tuple(std)

    def draw(self, n: int, generator: torch.Generator, device: torch.device, image_aspect: float = 1.0,
             host: torch.Generator | None = None) -> CropParams:
        g = self.group
        boxes = crop_boxes(n, g.scale, g.ratio, generator, device, image_aspect)
        flips = _bernoulli(n, g.flip, generator, device)
        return self.draw_photometric(n, generator, device, boxes, flips, host)

    def draw_photometric(self, n: int, generator: torch.Generator, device: torch.device,
                         boxes: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                         host: torch.Generator | None = None) -> CropParams:
        """The colour, grayscale, blur and solarize choices (for crops cut elsewhere, e.g. by loader workers);
        what decides control flow comes from the CPU generator `host` (see draw_jitter)."""
        g = self.group
        jitter = draw_jitter(n, g.color, generator, device, host) if g.color is not None and g.color.p > 0 else None
        gray = _bernoulli(n, g.grayscale, generator, device) if g.grayscale > 0 else None
        blur_sigma = None
        if g.blur.p > 0:
            chosen = _bernoulli(n, g.blur.p, generator, device)
            blur_sigma = _uniform(n, g.blur.sigma[0], g.blur.sigma[1], generator, device) * chosen
        solarize = _bernoulli(n, g.solarize, generator, device) if g.solarize > 0 else None
        erase = None
        if g.erase.p > 0:  # drawn last and only when on, so that recipes without it draw what they always drew
            chosen = _bernoulli(n, g.erase.p, generator, device)
            erase = crop_boxes(n, g.erase.scale, g.erase.ratio, generator, device) * chosen.view(-1, 1)
        return CropParams(boxes, flips, jitter, gray, blur_sigma, solarize, erase)

    def apply(self, images: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Crop, resize and flip uint8 `images`, then the photometric ops and normalisation."""
        x = resized_crops(images.float().div_(255), params.boxes, params.flips, self.group.size,
                          self.group.interpolation).clamp_(0, 1)
        return self.photometric(x, params)

    def photometric(self, x: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Colour jitter, grayscale, blur, solarize and normalisation of crops in [0, 1] (float)."""
        n = len(x)
        if params.jitter is not None:
            x = color_jitter(x, params.jitter)
        if params.gray is not None and x.shape[1] > 1:
            x = on_chosen(x, params.gray, lambda part, rows: grayscale(part))
        if params.blur_sigma is not None:
            sigma, largest = params.blur_sigma, None if x.device.type == "cpu" else self.group.blur.sigma[1]
            x = on_chosen(x, sigma > 0, lambda part, rows: gaussian_blur(part, sigma[rows], largest))
        if params.solarize is not None:
            x = torch.where(params.solarize.view(n, 1, 1, 1) & (x >= 0.5), 1 - x, x)
        x = normalize_(x, self.mean, self.std)
        return x if params.erase is None else erase_boxes(x, params.erase)

    def finish(self, crops: torch.Tensor, generator: torch.Generator, rows: torch.Tensor | None = None,
               total: int | None = None, host: torch.Generator | None = None) -> torch.Tensor:
        """Photometric ops on uint8 crops already cut to size; `rows`/`total`/`host` as in __call__."""
        params = self.draw_photometric(total or len(crops), generator, crops.device, host=host)
        return self.photometric(crops.float().div_(255), params if rows is None else params.select(rows))

    def __call__(self, images: torch.Tensor, generator: torch.Generator, rows: torch.Tensor | None = None,
                 total: int | None = None, host: torch.Generator | None = None) -> torch.Tensor:
        """Crops of `images`. With `rows`, the parameters are drawn for `total` images and the
        `rows` of them applied (a process's share of the global batch). `host`: the CPU generator of the draws
        that decide control flow (default `generator`)."""
        params = self.draw(total or len(images), generator, images.device, images.shape[-2] / images.shape[-1], host)
        return self.apply(images, params if rows is None else params.select(rows))


def erase_boxes(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Set each image's relative box (x0, y0, w, h) to 0, the dataset mean once normalised (torchvision's
    RandomErasing with value 0); a pixel is erased when its centre lies inside the box."""
    height, width = x.shape[-2:]
    x0, y0, w, h = (v.view(-1, 1, 1, 1) for v in boxes.unbind(1))
    cols = ((torch.arange(width, device=x.device, dtype=x.dtype) + 0.5) / width).view(1, 1, 1, width)
    rows = ((torch.arange(height, device=x.device, dtype=x.dtype) + 0.5) / height).view(1, 1, height, 1)
    inside = (cols >= x0) & (cols < x0 + w) & (rows >= y0) & (rows < y0 + h)
    return x.masked_fill_(inside, 0.0)


def normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, in place on `x` (float, N x C x H x W): the one normalisation of
    training crops, evaluation views and exported classifiers' inputs."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def center_view(images: torch.Tensor, view: EvalView) -> torch.Tensor:
    """The deterministic evaluation view of uint8 images (N x C x H x W): the short side resized to
    `view.resize` (default `view.size`), then the centre `view.size` square; float in [0, 1].

    The one evaluation view: in-memory splits, image files (cut by loader workers, see
    `data/loader.py`), `semiclust eval`, exported classifiers and `semiclust predict` all use it."""
    x = images.float().div(255)
    height, width = x.shape[-2:]
    short = view.resize or view.size
    scale = short / min(height, width)
    new_h, new_w = max(view.size, round(height * scale)), max(view.size, round(width * scale))
    if (new_h, new_w) != (height, width):
        antialias = view.interpolation != "nearest"
        x = F.interpolate(x, size=(new_h, new_w), mode=view.interpolation, antialias=antialias,
                          align_corners=False if antialias else None)
    top, left = (new_h - view.size) // 2, (new_w - view.size) // 2
    return x[..., top : top + view.size, left : left + view.size].clamp(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] back to uint8 (rounded): how loader workers hand evaluation views over,
    at a quarter of the float size."""
    return x.mul(255).round_().to(torch.uint8)
