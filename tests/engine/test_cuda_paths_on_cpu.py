"""The code paths written for CUDA, run on CPU tensors (this machine has no GPU).

Three pieces exist only so that a GPU step never waits on a read-back: the device-side note of non-finite losses
(engine/finite.py), the host generator of the scalar draws that decide control flow (data/batches.py, transforms.py,
mixup.py) and JPEG decoding with crops cut on the device (data/device_decode.py). Each is checked here against an
independent calculation or against the CPU path it stands in for, so a change that breaks the GPU path fails on CPU.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F2

from semiclust.data.datasets import build_dataset
from semiclust.data.decode import decode_rgb, grey_uint8
from semiclust.data.device_decode import (DeviceJob, JpegFile, crop_windows, cut_windows, decode_all, fill_on_device,
                                          plain_jpeg)
from semiclust.data.loader import TrainFiles, cut_crops
from semiclust.data.mixup import mix_pair
from semiclust.data.streams import labeled_stream, unlabeled_stream
from semiclust.data.transforms import crop_boxes, draw_jitter, gaussian_blur, grayscale, masked, rows_only
from semiclust.engine import dist
from semiclust.engine.finite import NONE, FiniteWatch
from semiclust.errors import SemiclustError
from semiclust.config.schema import ColorJitter, CropGroup
from tests.data.files import save
from tests.helpers import TINY_RECIPE, make_recipe, poison_loss_at

CPU = torch.device("cpu")
GROUPS = [CropGroup(count=2, size=16, scale=(0.3, 1.0), flip=0.5),  # mostly downscaling (antialias vs averaging)
          CropGroup(count=3, size=8, scale=(0.05, 0.4), flip=0.5),
          CropGroup(count=2, size=24, scale=(0.05, 0.2), flip=0.5)]  # upscaling: bilinear on both paths
# Device crops (roi_align: bilinear samples averaged per output pixel) against the CPU path's antialiased
# resized_crop of the same window, on smooth images: over 40 seeds x 2 sizes x the groups above the worst mean
# absolute difference measured was 0.007 and the worst single pixel 0.043 (0..1 scale); the bounds leave ~2-3x
# margin. A wrong window, a swapped flip or an edge blended with padding (25% darker edge rows) exceeds them.
MEAN_BOUND, MAX_BOUND = 0.02, 0.1


def smooth(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth, asymmetric RGB content (sums of tilted sine waves): H x W x 3 uint8."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * xs + rng.uniform(0.5, 1.5) * ys)
                                   + rng.uniform(0, 6)) for _ in range(3)]
    return (np.stack(channels, -1) * 255).round().astype(np.uint8)


def write_jpeg(path, pixels: np.ndarray, mode: str = "RGB", **options):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, quality=95, **options)
    return path


def as_bytes(path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


@pytest.fixture()
def files(tmp_path):
    """Plain JPEGs (60 x 45 and 40 x 50, width x height, one grayscale) and the files the device must refuse."""
    from PIL import Image

    out = {"a": write_jpeg(tmp_path / "a.jpg", smooth(45, 60, 0)),
           "b": write_jpeg(tmp_path / "b.jpg", smooth(50, 40, 1)),
           "c": write_jpeg(tmp_path / "c.jpg", smooth(45, 60, 2)),
           "gray": write_jpeg(tmp_path / "gray.jpg", smooth(50, 40, 3), mode="L"),
           "png": save(tmp_path / "p.png", smooth(45, 60, 4)),
           "cmyk": write_jpeg(tmp_path / "cmyk.jpg", smooth(45, 60, 5), mode="CMYK")}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: the CPU path applies it, the device decoder would not
    out["rotated"] = write_jpeg(tmp_path / "rotated.jpg", smooth(45, 60, 6), exif=exif.tobytes())
    out["garbage"] = tmp_path / "garbage.jpg"
    out["garbage"].write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)  # a JPEG marker, then nothing PIL can parse
    good = out["a"].read_bytes()
    out["truncated"] = tmp_path / "truncated.jpg"
    out["truncated"].write_bytes(good[: len(good) // 2])  # the header is intact, the scan data is cut off
    return out


# ---------------------------------------------------------------- non-finite losses noticed on the device

@pytest.mark.parametrize("losses, expected", [
    ([0.5] * 10, None),
    ([0.5] * 5 + [math.inf] + [0.5] * 4, 5),
    ([0.5] * 3 + [math.nan, 0.5, -math.inf] + [0.5] * 4, 3),
    ([math.nan] * 10, 0),
    ([0.5] * 9 + [1e38 * 10], 9),  # overflows float32 to inf
])
def test_finite_watch_reports_the_earliest_bad_step_noted_in_order(losses, expected):
    """note() over steps 0..9 then first(): the earliest step whose loss is not finite (by math.isfinite), or None."""
    watch = FiniteWatch(CPU)
    for step, value in enumerate(losses):
        watch.note(torch.tensor(value, dtype=torch.float32, requires_grad=True) * 1.0, step)
    with np.errstate(over="ignore"):
        independent = next((s for s, v in enumerate(losses) if not math.isfinite(float(np.float32(v)))), None)
    assert independent == expected
    assert watch.first() == expected
    assert watch.first() == expected  # reading does not consume or change the note


def test_finite_watch_keeps_the_earliest_step_noted_out_of_order_in_a_device_tensor():
    """A later bad step noted first does not hide an earlier one; first_bad stays the same long 0-d tensor on the
    watch's device (note() works in place on it, never through a Python number)."""
    watch = FiniteWatch(CPU)
    holder = watch.first_bad
    assert holder.dtype == torch.long and holder.shape == () and holder.device == CPU and int(holder) == NONE
    for step, value in [(7, math.nan), (9, 1.0), (2, math.inf), (4, math.nan), (1, 0.25), (3, -math.inf)]:
        watch.note(torch.tensor(value), step)
        assert watch.first_bad is holder and holder.device == CPU and holder.dtype == torch.long
    assert watch.first() == 2
    watch.note(torch.tensor([1.0, math.nan]).sum(), 0)  # a reduced loss, as the methods return
    assert watch.first() == 0


def test_all_reduce_max_is_the_identity_for_one_process_without_a_process_group():
    """first() all-reduces over processes; with no process group (a single process) that must be a no-op."""
    assert not dist.is_distributed()
    value = torch.tensor(-5, dtype=torch.long)
    assert dist.all_reduce_max(value) is value and int(value) == -5


def test_the_device_watch_stops_a_run_with_the_per_step_checks_message(tmp_path, monkeypatch):
    """With the CUDA-only FiniteWatch forced on a CPU run, a NaN loss at step 2 ends the run (at the end of the log
    window, after step 3) naming step 2 and the same checkpoint and advice as the per-step check, which stops at once
    (the loss parts may differ: they are those of the window's last step)."""
    from semiclust.engine import trainer

    poison_loss_at(monkeypatch, 2)
    raw = copy.deepcopy(TINY_RECIPE)
    raw["checkpoint"] = {"every_epochs": 0, "every_steps": 2}  # step_000000002.pt, written before the bad step
    assert raw["runtime"]["log_every_steps"] == 2
    with pytest.raises(SemiclustError) as per_step:
        trainer.train(make_recipe(raw), tmp_path / "per_step")
    original, watches = trainer.build_run, []

    def with_watch(recipe, files, device, resume):
        run = original(recipe, files, device, resume)
        assert run.finite_watch is None  # on a CPU the watch is not chosen ...
        run.finite_watch = FiniteWatch(device)  # ... so force it, as build_run does on CUDA
        watches.append(run.finite_watch)
        return run

    monkeypatch.setattr(trainer, "build_run", with_watch)
    with pytest.raises(SemiclustError) as watched:
        trainer.train(make_recipe(raw), tmp_path / "watched")
    assert len(watches) == 1 and watches[0].first() == 2
    expected, got = str(per_step.value), str(watched.value)
    assert watched.value.exit_code == per_step.value.exit_code == 1
    head = "the loss became non-finite at step 2 ("
    assert expected.startswith(head) and got.startswith(head)
    assert "step_000000002.pt" in got and "step_000000004.pt" not in got
    # the same prose after the loss parts, with the run directory's name swapped
    assert got.split("). ", 1)[1] == expected.split("). ", 1)[1].replace("per_step", "watched")


# ---------------------------------------------------------------- the host generator of control-flow draws

def test_on_a_cpu_the_host_generator_is_the_augmentation_generator_and_a_separate_one_is_checkpointed(tmp_path):
    """CPU runs draw control flow from the one augmentation generator (bit-identical to before) and checkpoints hold
    no extra entry; a separate host generator (as on CUDA) is saved as augment_host_rng and restored exactly."""
    from semiclust.engine.run_dir import RunFiles
    from semiclust.engine.setup import build_run
    from semiclust.engine.state import process_state, restore_run, run_checkpoint

    run = build_run(make_recipe(), RunFiles(tmp_path), CPU, resume=False)
    batches = run.batches
    assert batches.host_generator is batches.generator and batches.generator.device == CPU
    assert "augment_host_rng" not in run_checkpoint(run, 0, 0, [None]).as_dict()

    batches.host_generator = torch.Generator().manual_seed(12345)  # what BatchMaker makes on CUDA
    torch.rand(3, generator=batches.host_generator)
    state = run_checkpoint(run, 0, 0, [process_state(run.method, CPU)])
    assert torch.equal(state.augment_host_rng, batches.host_generator.get_state())
    assert not torch.equal(state.augment_host_rng, state.augment_rng)
    host_next = torch.rand(4, generator=batches.host_generator)
    device_next = torch.rand(4, generator=batches.generator)
    torch.rand(10, generator=batches.host_generator)  # both have moved on; restore the checkpoint
    restore_run(state, run)
    assert torch.equal(torch.rand(4, generator=batches.host_generator), host_next)
    assert torch.equal(torch.rand(4, generator=batches.generator), device_next)



def test_resume_gives_the_host_generator_its_state_on_the_cpu_whatever_device_the_checkpoint_was_loaded_on(tmp_path):
    """A resumed CUDA run loads its checkpoint onto the GPU (map_location=run.device), so augment_host_rng arrives
    as a CUDA tensor, which a CPU generator refuses ("RNG state must be a torch.ByteTensor"): restore_run must move
    it to the CPU, as it does the other generators' states. Stand-in: a state that is only a tensor after .cpu()."""
    from semiclust.engine.run_dir import RunFiles
    from semiclust.engine.setup import build_run
    from semiclust.engine.state import process_state, restore_run, run_checkpoint

    class LoadedOnTheGpu:
        def __init__(self, tensor: torch.Tensor):
            self.tensor = tensor

        def cpu(self) -> torch.Tensor:
            return self.tensor

    class HostGenerator:  # records what it is given; a real CPU generator refuses anything but a CPU byte tensor
        def __init__(self):
            self.given = None

        def get_state(self) -> torch.Tensor:
            return torch.Generator().manual_seed(7).get_state()

        def set_state(self, state) -> None:
            assert isinstance(state, torch.Tensor) and state.device == CPU, f"set_state got {type(state).__name__}"
            self.given = state

    run = build_run(make_recipe(), RunFiles(tmp_path), CPU, resume=False)
    run.batches.host_generator = HostGenerator()
    state = run_checkpoint(run, 0, 0, [process_state(run.method, CPU)])
    saved = state.augment_host_rng
    state.augment_host_rng = LoadedOnTheGpu(saved)
    restore_run(state, run)
    assert torch.equal(run.batches.host_generator.given, saved)

JITTER = ColorJitter(p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)


def test_draw_jitter_takes_its_op_order_from_the_host_generator_only():
    """Factors come from the device generator, the op order from `host`: same seeds give the same draws, another
    host seed changes only the order, and host = the generator itself equals the old one-generator draw."""
    def draw(seed: int, host_seed: int | None):
        host = None if host_seed is None else torch.Generator().manual_seed(host_seed)
        return draw_jitter(6, JITTER, torch.Generator().manual_seed(seed), CPU, host)

    first, again = draw(0, 100), draw(0, 100)
    assert first.order == again.order and torch.equal(first.brightness, again.brightness)
    assert first.order == torch.randperm(4, generator=torch.Generator().manual_seed(100)).tolist()  # independent
    orders = {tuple(draw(0, s).order) for s in range(100, 110)}
    assert len(orders) > 1  # another host seed, another order ...
    for s in range(100, 110):
        other = draw(0, s)
        for name in ("brightness", "contrast", "saturation", "hue"):  # ... and the same factors
            assert torch.equal(getattr(other, name), getattr(first, name))
    one = torch.Generator().manual_seed(0)
    shared = draw_jitter(6, JITTER, one, CPU, one)
    old = draw(0, None)
    assert shared.order == old.order and torch.equal(shared.hue, old.hue)
    assert draw(1, 100).order == first.order and not torch.equal(draw(1, 100).brightness, first.brightness)


def test_mix_pair_draws_from_the_given_host_generator():
    """Mixup / CutMix with a host generator: reproducible per seed, different for another seed, and equal to an
    independent computation from the same generator's draws (lambda = the first uniform when alpha = 1)."""
    images = torch.rand(4, 3, 10, 12, generator=torch.Generator().manual_seed(1))
    partner = images.flip(0)

    def mixed(seed: int, prob: float):
        return mix_pair(images, partner, prob, 1.0, torch.Generator().manual_seed(seed))

    for prob in (1.0, 0.0, 0.5):
        (a, lam_a), (b, lam_b) = mixed(3, prob), mixed(3, prob)
        assert lam_a == lam_b and torch.equal(a, b)
        assert any(mixed(s, prob)[1] != lam_a for s in range(4, 8))
    reference = torch.Generator().manual_seed(3)
    lam = float(torch.rand((), generator=reference))
    out, got = mixed(3, 1.0)
    assert got == lam
    torch.testing.assert_close(out, lam * images + (1 - lam) * partner)
    cut, cut_lam = mixed(3, 0.0)  # CutMix: the box from the next draws, lambda corrected to its area
    reference = torch.Generator().manual_seed(3)
    lam = float(torch.rand((), generator=reference))
    torch.rand((), generator=reference)  # the Mixup/CutMix switch
    side = math.sqrt(1 - lam)
    cy, cx = int(torch.randint(10, (), generator=reference)), int(torch.randint(12, (), generator=reference))
    h, w = int(10 * side), int(12 * side)
    top, bottom, left, right = max(cy - h // 2, 0), min(cy + h // 2, 10), max(cx - w // 2, 0), min(cx + w // 2, 12)
    expected = images.clone()
    expected[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    assert torch.equal(cut, expected)
    assert cut_lam == pytest.approx(1 - (bottom - top) * (right - left) / 120)


def test_gaussian_blur_with_largest_sigma_given_equals_the_blur_that_reads_it():
    """The GPU path passes the recipe's top sigma instead of reading sigma.max() back: with largest_sigma = the
    drawn maximum the result is identical; with a larger one it differs only by the Gaussian's tail beyond 3 sigma,
    and sigma-0 images stay unchanged either way."""
    images = torch.rand(5, 3, 20, 18, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.0, 0.3, 1.1, 0.7, 0.0])
    reads = gaussian_blur(images, sigma)
    assert torch.equal(gaussian_blur(images, sigma, float(sigma.max())), reads)
    wider = gaussian_blur(images, sigma, 2.0)  # the top of blur.sigma, a wider kernel than the batch needs
    assert 0 < (wider - reads).abs().max() < 0.01  # the tail beyond 3 sigma holds < 0.3% of the weight per pass
    assert torch.equal(wider[[0, 4]], images[[0, 4]]) and torch.equal(reads[[0, 4]], images[[0, 4]])
    assert (reads[1:4] - images[1:4]).abs().max() > 0.05  # and the others really are blurred


def test_the_masked_cuda_branch_of_on_chosen_equals_the_cpu_row_selection():
    """On CUDA, blur and grayscale run on every image and a mask selects (no nonzero() read-back); on a CPU only the
    chosen rows are computed. Both give the same images."""
    images = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.0, 0.8, 0.0, 1.5, 0.4, 0.0])
    chosen = sigma > 0
    blur = lambda part, rows: gaussian_blur(part, sigma[rows], 2.0)
    torch.testing.assert_close(masked(images.clone(), chosen, blur), rows_only(images.clone(), chosen, blur),
                               atol=1e-6, rtol=0)
    gray = lambda part, rows: grayscale(part)
    torch.testing.assert_close(masked(images.clone(), chosen, gray), rows_only(images.clone(), chosen, gray),
                               atol=1e-6, rtol=0)
    assert not torch.equal(masked(images.clone(), chosen, gray), images)


# ---------------------------------------------------------------- JPEG decoding and crops on the device

def test_plain_jpeg_keeps_plain_jpegs_and_sends_everything_else_to_the_cpu_path(files):
    """RGB and grayscale JPEGs become JpegFiles (header size, the file's bytes); a PNG, a CMYK or EXIF-rotated JPEG,
    an unparsable .jpg and an image over max_pixels return None. A truncated JPEG's header is fine: it is a job,
    and decoding it fails later (decode_all), where the CPU path takes over."""
    for name, (height, width) in {"a": (45, 60), "b": (50, 40), "gray": (50, 40), "truncated": (45, 60)}.items():
        jpeg = plain_jpeg(files[name], None)
        assert isinstance(jpeg, JpegFile) and (jpeg.height, jpeg.width) == (height, width)
        assert jpeg.data.dtype == torch.uint8 and jpeg.data.numpy().tobytes() == files[name].read_bytes()
    for name in ("png", "cmyk", "rotated", "garbage"):
        assert plain_jpeg(files[name], None) is None, name
    assert plain_jpeg(files["a"], 45 * 60) is not None and plain_jpeg(files["a"], 45 * 60 - 1) is None


@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
def test_decode_all_on_cpu_matches_decode_jpeg_and_the_cpu_path_with_none_for_bad_bytes(files):
    """decode_all on CPU tensors: None exactly where the bytes do not decode, the others equal to torchvision's
    decode_jpeg one by one and to the CPU path's decode_rgb (the same libjpeg), as 3 x H x W uint8."""
    from torchvision.io import ImageReadMode, decode_jpeg

    names = ["a", "garbage", "b", "truncated", "gray", "png"]
    decoded = decode_all([as_bytes(files[n]) for n in names], CPU)
    assert [d is None for d in decoded] == [False, True, False, True, False, True]
    for name, image in zip(names, decoded):
        if image is not None:
            assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.device == CPU
            assert torch.equal(image, decode_jpeg(as_bytes(files[name]), mode=ImageReadMode.RGB))
            assert torch.equal(image, decode_rgb(files[name]))
    good = ("a", "gray", "b", "c")
    whole = decode_all([as_bytes(files[n]) for n in good], CPU)  # every file decodes: the one-call batch path
    assert len(whole) == 4 and all(torch.equal(x, decode_rgb(files[n])) for x, n in zip(whole, good))


def test_crop_windows_are_the_windows_and_flips_the_cpu_path_cuts():
    """crop_windows draws what crop_boxes and the flip draw give, rounded inside the image, and cut_crops (the CPU
    path) is exactly resized_crop of those windows, mirrored where flipped, from the same generator state."""
    image = torch.from_numpy(smooth(45, 60, 7)).permute(2, 0, 1).contiguous()
    for seed in range(6):
        for group in GROUPS:
            windows, flips = crop_windows(45, 60, group, torch.Generator().manual_seed(seed))
            reference = torch.Generator().manual_seed(seed)
            boxes = crop_boxes(group.count, group.scale, group.ratio, reference, CPU, 45 / 60)
            assert flips == (torch.rand(group.count, generator=reference) < group.flip).tolist()
            for (top, left, h, w), (x0, y0, bw, bh) in zip(windows, boxes.tolist()):
                assert 0 <= top and top + h <= 45 and 0 <= left and left + w <= 60 and h >= 1 and w >= 1
                assert abs(w - bw * 60) <= 0.5 and abs(h - bh * 45) <= 0.5 and abs(left - x0 * 60) <= 1
            cpu = cut_crops(image, group, torch.Generator().manual_seed(seed))
            for crop, (top, left, h, w), flip in zip(cpu, windows, flips):
                cut = F2.resized_crop(image, top, left, h, w, [group.size, group.size], antialias=True)
                assert torch.equal(crop, cut.flip(-1) if flip else cut)


def test_device_crops_of_a_mixed_size_batch_match_the_cpu_crops_and_flip_the_same_way():
    """cut_windows on CPU tensors, images of different sizes in one call (padded to one size) against cut_crops of
    the same seeds: same shapes, bounded resampling difference, and each crop nearer the CPU crop than its mirror."""
    images = [torch.from_numpy(smooth(h, w, s)).permute(2, 0, 1).contiguous()
              for s, (h, w) in enumerate([(45, 60), (50, 40), (30, 52)])]
    flipped = 0
    for seed in range(5):
        for group in GROUPS:
            drawn = [crop_windows(im.shape[1], im.shape[2], group, torch.Generator().manual_seed(seed * 10 + i))
                     for i, im in enumerate(images)]
            device = cut_windows(images, [w for w, _ in drawn], [f for _, f in drawn], group.size)
            cpu = torch.cat([cut_crops(im, group, torch.Generator().manual_seed(seed * 10 + i))
                             for i, im in enumerate(images)])
            assert device.shape == cpu.shape == (3 * group.count, 3, group.size, group.size)
            assert device.dtype == torch.uint8
            diff = (device.float() - cpu.float()).abs() / 255
            assert diff.mean() < MEAN_BOUND and diff.max() < MAX_BOUND
            for d, c in zip(device.float(), cpu.float()):
                mirror = (d - c.flip(-1)).abs().mean()
                if mirror > 8:  # the crop is far from symmetric: the flip direction is decided
                    assert (d - c).abs().mean() < mirror / 4
            flipped += sum(f for _, flips in drawn for f in flips)
    assert flipped > 10  # the flips were exercised


def test_device_crops_touching_a_smaller_images_edge_do_not_blend_with_the_padding():
    """Crops of constant images are constant, also at the bottom and right edges of the smaller images of a batch
    (roi_align's bilinear samples reach half a pixel past a window's last pixel centre)."""
    images = [torch.full((3, 45, 60), 200, dtype=torch.uint8), torch.full((3, 50, 40), 100, dtype=torch.uint8)]
    windows = [[(37, 50, 8, 10), (0, 0, 45, 60)], [(42, 30, 8, 10), (20, 0, 30, 40)]]  # touching the far edges
    flips = [[False, True], [True, False]]
    for size in (4, 16, 24):
        crops = cut_windows(images, windows, flips, size)
        assert (crops[:2] == 200).all() and (crops[2:] == 100).all(), size


def _job(row: int, path, groups, seed: int) -> DeviceJob:
    jpeg = plain_jpeg(path, None)
    drawn = [crop_windows(jpeg.height, jpeg.width, g, torch.Generator().manual_seed(seed)) for g in groups]
    return DeviceJob(row, row, jpeg, [w for w, _ in drawn], [f for _, f in drawn])


def test_fill_on_device_writes_copy_major_rows_and_asks_the_cpu_path_only_for_what_fails(files):
    """Rows j of a 3-image batch: the decodable jobs' crops land at k * rows + j (equal to cut_windows of that
    image), the truncated JPEG's rows hold the fallback's crops, and rows without a job are untouched."""
    groups = GROUPS[:2]
    rows = 4
    crops = [torch.full((g.count * rows, 3, g.size, g.size), 7, dtype=torch.uint8) for g in groups]
    jobs = [_job(0, files["a"], groups, 0), _job(1, files["truncated"], groups, 1), _job(3, files["b"], groups, 3)]
    asked = []

    def fallback(job):
        asked.append(job.row)
        return [torch.full((g.count, 3, g.size, g.size), 42, dtype=torch.uint8) for g in groups]

    filled = fill_on_device(crops, jobs, groups, rows, fallback)
    assert asked == [1]
    for g, (group, out) in enumerate(zip(groups, filled)):
        for job, name in ((jobs[0], "a"), (jobs[2], "b")):
            alone = cut_windows([decode_rgb(files[name])], [job.windows[g]], [job.flips[g]], group.size)
            for k in range(group.count):
                assert torch.equal(out[k * rows + job.row], alone[k])
        for k in range(group.count):
            assert (out[k * rows + 1] == 42).all() and (out[k * rows + 2] == 7).all()


def test_fill_on_device_gives_a_grey_split_the_luma_of_the_decoded_jpegs(files):
    """One-channel crop tensors (data.options.channels: 1): each device-decoded JPEG is cut from its grey version,
    the luma the CPU path takes of the same RGB decode, colour and grayscale JPEGs alike."""
    groups = GROUPS[:2]
    rows = 2
    crops = [torch.zeros((g.count * rows, 1, g.size, g.size), dtype=torch.uint8) for g in groups]
    jobs = [_job(0, files["a"], groups, 0), _job(1, files["gray"], groups, 1)]
    filled = fill_on_device(crops, jobs, groups, rows, lambda job: pytest.fail("both decode on the device"))
    for g, (group, out) in enumerate(zip(groups, filled)):
        for job, name in ((jobs[0], "a"), (jobs[1], "gray")):
            alone = cut_windows([grey_uint8(decode_rgb(files[name]))], [job.windows[g]], [job.flips[g]], group.size)
            assert alone.shape[1] == 1
            for k in range(group.count):
                assert torch.equal(out[k * rows + job.row], alone[k])


@pytest.fixture()
def jpeg_folder(tmp_path):
    """An image folder of 12 JPEGs in two sizes and a PNG, a truncated JPEG and an unparsable .jpg among them."""
    for c, name in enumerate(("cat", "dog")):
        for i in range(6):
            height, width = ((45, 60), (50, 40))[i % 2]
            write_jpeg(tmp_path / "train" / name / f"{name}{i}.jpg", smooth(height, width, 100 * c + i))
        save(tmp_path / "train" / name / f"{name}_png.png", smooth(45, 60, 200 + c))
    good = (tmp_path / "train" / "cat" / "cat0.jpg").read_bytes()
    (tmp_path / "train" / "cat" / "cat_trunc.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "train" / "dog" / "dog_garbage.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    return build_dataset("imagefolder", {"root": str(tmp_path), "eval_dir": None})


def _on_device(files: TrainFiles, dataset, raws, jobs, stream, position, groups, labels=None):
    """BatchMaker._on_device (the trainer's glue: fill_on_device with the CPU path as fallback, labels of the
    substitutes, corrupt files counted) on a CPU, for a BatchMaker reduced to what it reads."""
    from types import SimpleNamespace

    from semiclust.data.batches import BatchMaker

    reported = []
    owner = SimpleNamespace(files=files, device=CPU, dataset=dataset, corrupt_images=0, on_corrupt=reported.extend)
    filled = BatchMaker._on_device(owner, raws, jobs, stream, position, groups, labels)
    return filled, reported, owner.corrupt_images


def test_loader_items_decoded_on_the_device_match_the_cpu_path_for_the_same_seed(jpeg_folder):
    """TrainFiles with decode_on_device on a CPU, finished by BatchMaker._on_device, against TrainFiles decoding
    everything in the worker: same shapes and labels (the substitute's for the JPEG whose data is truncated, found
    only on the "device"), CPU-path rows bit-identical, device rows within the resampling bounds, flipped alike."""
    split = jpeg_folder.train
    n = len(split)
    name = {i: split.path(i).name for i in range(n)}
    jobs_expected = {i for i in range(n) if name[i].endswith(".jpg") and name[i] != "dog_garbage.jpg"}
    truncated = next(i for i in range(n) if name[i] == "cat_trunc.jpg")
    assert n == 16 and len(jobs_expected) == 13
    unlabeled, labeled = unlabeled_stream(n, n, 0), labeled_stream(torch.arange(n), n, 0)
    view = GROUPS[0].model_copy(update={"count": 1})

    def train_files(on_device: bool) -> TrainFiles:
        return TrainFiles(split, unlabeled, labeled, GROUPS, view, 0, 0, 1, decode_on_device=on_device)

    cpu_files, device_files = train_files(False), train_files(True)
    for position in (0, 1):
        cpu, dev = cpu_files[position], device_files[position]
        assert not cpu["unlabeled_jobs"] and not cpu["labeled_jobs"] and cpu["error"] is None is dev["error"]
        assert [c.path for c in cpu["corrupt"]].count(str(split.path(truncated))) == 2  # read for both streams
        assert str(split.path(truncated)) not in [c.path for c in dev["corrupt"]]  # the worker did not decode it
        for stream, groups, key in ((unlabeled, GROUPS, "unlabeled"), (labeled, [view], "labeled")):
            order = stream.indices(position).tolist()
            jobs = dev[f"{key}_jobs"]
            assert sorted(job.row for job in jobs) == [j for j, i in enumerate(order) if i in jobs_expected]
            assert all(job.index == order[job.row] for job in jobs)
            raws = dev["unlabeled"] if key == "unlabeled" else [dev["labeled"]]
            labels = None if key == "unlabeled" else dev["labels"].clone()
            filled, reported, counted = _on_device(device_files, jpeg_folder, [t.clone() for t in raws], jobs,
                                                   stream, position, groups, labels)
            assert [c.path for c in reported] == [str(split.path(truncated))] and counted == 1
            if labels is not None:
                row = order.index(truncated)
                assert dev["labels"][row] == split.labels[truncated]  # the worker's label, before the fallback
                assert torch.equal(labels, cpu["labels"])  # after it, the substitute's label, as the CPU path gives
            wants = cpu["unlabeled"] if key == "unlabeled" else [cpu["labeled"]]
            device_rows = {job.row for job in jobs} - {order.index(truncated)}
            for group, want, got in zip(groups, wants, filled):
                assert got.shape == want.shape and got.dtype == want.dtype
                for k in range(group.count):
                    for j in range(n):
                        a, b = got[k * n + j].float(), want[k * n + j].float()
                        if j not in device_rows:  # decoded and cut on the CPU path by both (substitutes too)
                            assert torch.equal(a, b)
                            continue
                        diff = (a - b).abs() / 255
                        assert diff.mean() < MEAN_BOUND and diff.max() < MAX_BOUND
                        mirror = (a - b.flip(-1)).abs().mean()
                        if mirror > 8:
                            assert (a - b).abs().mean() < mirror / 4
