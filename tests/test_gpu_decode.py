"""The GPU's data path (`--decode device`) run on the CPU: libjpeg stands in for nvJPEG, everything else (what the
workers hand over, the seeded crops, the batched decode and crop, odd and corrupt files) is the same code."""

import json
import logging
import threading
import time

import pytest
import torch

from tests.support import odd_files
from tests.trainer_runs import run, train_command
from trainer import checkpoint, data, engine, gpu_decode, layout, loaders, schedule
from trainer.demo_data import make_demo_dataset

CPU = torch.device("cpu")


def _train_sets(root, size=48):
    folder = layout.check_layout(root, schedule.load("cpu-tiny"))["-sz/160:train"]
    return data.TrainImages(folder, size, 0.35, seed=3), gpu_decode.EncodedTrainImages(folder, size, 0.35, seed=3)


def test_the_device_path_crops_what_the_worker_path_crops(tiny_data):
    """Same (seed, epoch, index), same crop and flip: with the same decoder the pixels differ only by resampling
    (roi_align's area samples against resize's antialias filter), so a run moved between the two paths sees the
    same images, and a resumed one exactly the same."""
    on_workers, encoded = _train_sets(tiny_data)
    keys = [(index, epoch) for epoch in (0, 5) for index in (0, 7, 100, 333)]
    batch = gpu_decode.collate([encoded[key] for key in keys])
    images, labels = gpu_decode.decode_batch(batch, CPU)
    expected = [on_workers[key] for key in keys]
    assert images.dtype == torch.uint8 and images.shape == (len(keys), 3, 48, 48)
    assert labels.tolist() == [label for _, label in expected]
    for image, (want, _) in zip(images, expected):
        assert _mean_difference(image, want) < 2, "the same crop, resampled alike"
        assert _mean_difference(image.flip(-1), want) > 10, "flipped alike"
    assert torch.equal(gpu_decode.decode_batch(batch, CPU)[0], images), "decoded again: the same pixels"
    assert not torch.equal(images[1], images[5]), "another epoch draws another crop"


def test_an_image_already_of_the_output_size_is_kept_exactly():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    plans = [list(gpu_decode.CROPPED), [0, 0, 20, 30, 20, 30, 1], [5, 10, 10, 15, 20, 30, 0]]
    out = gpu_decode.resized_crops([image] * 3, plans, (20, 30))
    assert torch.equal(out[0], image) and torch.equal(out[1], image.flip(-1))
    enlarged = torch.nn.functional.interpolate(image[None, :, 5:15, 10:25].float(), (20, 30), mode="bilinear")
    inside = (slice(None), slice(1, -1), slice(1, -1))  # at its edges the crop's neighbours are sampled too
    assert _mean_difference(out[2][inside], enlarged[0][inside].round()) < 1, "enlarging is bilinear"


def _mean_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def test_workers_hand_over_file_bytes_and_a_plan_not_pixels(tiny_data):
    _, encoded = _train_sets(tiny_data)
    payload, label, plan, path = encoded[(0, 0)]
    assert payload.dim() == 1 and bytes(payload[:2].tolist()) == b"\xff\xd8", "a JPEG's own bytes"
    top, left, h, w, out_h, out_w, flip = plan
    assert (out_h, out_w) == (48, 48) and h > 0 and w > 0 and flip in (0, 1)
    batch = gpu_decode.collate([encoded[(i, 0)] for i in range(4)])
    assert batch.encoded.dim() == 1 and batch.lengths.tolist() == [len(encoded[(i, 0)][0]) for i in range(4)]


def test_validation_on_the_device_matches_the_workers_rect_crops(tiny_data, tmp_path):
    plan = schedule.load("cpu-tiny")
    folders = layout.check_layout(tiny_data, plan)
    settings = [loaders.LoaderSettings(0, 1, 0, 0, False, tmp_path / "cache", gpu_decode=on_device)
                for on_device in (False, True)]
    on_workers, on_device = (list(loaders.build_loaders(tiny_data, plan, folders, s)[2].val) for s in settings)
    assert len(on_device) == len(on_workers) > 0
    seen = 0
    for (want, want_labels), batch in zip(on_workers, on_device):
        images, labels = gpu_decode.decode_batch(batch, CPU)
        assert images.shape == want.shape and _mean_difference(images, want) < 2 and torch.equal(labels, want_labels)
        seen += len(labels)
    assert seen == len(folders["-sz/160:validation"].samples)


def test_odd_files_are_cropped_in_the_worker_and_corrupt_ones_substituted_with_a_warning(tmp_path, caplog):
    """Grayscale, CMYK, PNG-named-.JPEG never reach nvJPEG; a truncated JPEG's header fails in the worker, which
    names and substitutes it as the CPU path does; an image whose header reads goes to the decoder, garbage or not."""
    root = make_demo_dataset(tmp_path / "odd", classes=2, train_per_class=8, val_per_class=2)
    odd = odd_files(root)
    train = odd["truncated"].parent
    good = odd["plain"].read_bytes()
    (train / "garbled.JPEG").write_bytes(good[:600] + bytes(len(good) - 600))  # header intact, scan data zeroed
    folder = layout.check_layout(root, _full_size_schedule(tmp_path))[":train"]
    encoded = gpu_decode.EncodedTrainImages(folder, 32, 0.35, seed=0)
    names = [p for p, _ in folder.samples]
    samples = [encoded[(i, 0)] for i in range(len(names))]
    kinds = {names[i].rsplit("/", 1)[-1]: s[0].dim() for i, s in enumerate(samples)}
    assert kinds["grayscale.JPEG"] == kinds["cmyk.JPEG"] == kinds["png-named.JPEG"] == 3, "cropped in the worker"
    assert kinds["truncated.JPEG"] == 3 and kinds["garbled.JPEG"] == 1
    with caplog.at_level(logging.WARNING):
        images, labels = gpu_decode.decode_batch(gpu_decode.collate(samples), CPU)
    assert images.shape == (len(names), 3, 32, 32)
    assert f"skipping corrupt image {odd['truncated']}" in caplog.text


def _full_size_schedule(tmp_path):
    path = tmp_path / "full-size.toml"
    path.write_text('arch = "resnet10"\n[[data]]\nep = 0\nsz = 32\nbs = 32\n[[lr]]\nep = [0, 1]\nlr = 0.05\n')
    return schedule.load(str(path))


@pytest.mark.slow
def test_a_run_decoding_on_the_device_trains_says_so_and_resumes_exactly(tiny_data, tmp_path):
    """Two epochs straight, against one epoch then a resume for the second: the same crops in the same order
    (the decode thread hands batches over in the loader's order), so the same weights."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    options = ("--decode", "device", "--workers", "1")
    result = run(train_command(tiny_data, straight, "--epochs", "2", *options))
    assert result.returncode == 0, result.stderr[-3000:]
    start = json.loads((straight / "metrics.jsonl").read_text().splitlines()[0])
    assert (start["config"]["decode"], start["config"]["decoder"]) == ("device", "libjpeg")
    assert json.loads((straight / "summary.json").read_text())["epochs"][0]["top5"] > 0
    for epochs in ("1", "2"):
        result = run(train_command(tiny_data, resumed, "--epochs", epochs, *options, "--auto-resume"))
        assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {resumed / 'checkpoints'} at epoch 1" in result.stdout
    weights, reference = (checkpoint.CheckpointState.load(str(logdir / "checkpoints")).model
                          for logdir in (resumed, straight))
    for name, tensor in weights.items():
        assert torch.allclose(tensor.float(), reference[name].float(), atol=1e-4), name

def test_a_thread_decodes_the_batches_ahead_and_hands_them_over_in_order(tiny_data, tmp_path):
    """The training loop gets the batches the inline decode gives, in the loader's order, while a thread of their
    own decodes the next ones (nvJPEG's decode waits for the GPU's queue: inline it would wait for the step)."""
    plan = schedule.load("cpu-tiny")
    folders = layout.check_layout(tiny_data, plan)
    settings = loaders.LoaderSettings(0, 1, 0, 0, False, tmp_path / "cache", gpu_decode=True)
    val = loaders.build_loaders(tiny_data, plan, folders, settings)[0].val
    inline = [gpu_decode.decode_batch(batch, CPU) for batch in val]
    threads = []

    def decode(batch):
        threads.append(threading.current_thread().name)
        return gpu_decode.decode_batch(batch, CPU)

    batches = iter(engine.DeviceBatches(val, decode, CPU))
    handed = [next(batches)]
    assert _until(lambda: len(threads) > engine.DeviceBatches.AHEAD + 1), "the next ones wait, decoded, in order"
    handed += list(batches)
    assert len(handed) == len(inline) > engine.DeviceBatches.AHEAD + 1
    for (images, labels), (want, want_labels) in zip(handed, inline):
        assert torch.equal(images, want) and torch.equal(labels, want_labels)
    assert set(threads) == {"decode-ahead"}


def _encoded(count: int) -> list[gpu_decode.EncodedBatch]:
    return [gpu_decode.EncodedBatch(torch.empty(0, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), [],
                                    torch.tensor([i]), torch.zeros(1, 7, dtype=torch.long), [f"{i}.JPEG"])
            for i in range(count)]


def _until(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_thread_decodes_while_the_loop_trains_and_stops_with_the_loop():
    prepared = []

    def prepare(batch):
        prepared.append(batch.labels.item())
        return batch.labels, batch.labels

    batches = iter(engine.DeviceBatches(_encoded(20), prepare, CPU))
    assert next(batches)[1].item() == 0
    ahead = engine.DeviceBatches.AHEAD
    assert _until(lambda: len(prepared) >= 1 + ahead), "decoded ahead while the loop holds the first batch"
    batches.close()  # validation stops after its fixed steps
    assert not any(t.name == "decode-ahead" for t in threading.enumerate())
    assert len(prepared) <= 2 + ahead, "bounded: at most AHEAD waiting and one in hand"


def test_a_decode_error_reaches_the_training_loop_after_the_batches_before_it():
    def prepare(batch):
        if batch.labels.item() == 2:
            raise RuntimeError("nvJPEG failed on 2.JPEG")
        return batch.labels, batch.labels

    handed = []
    with pytest.raises(RuntimeError, match="nvJPEG failed on 2.JPEG"):
        for images, labels in engine.DeviceBatches(_encoded(5), prepare, CPU):
            handed.append(labels.item())
    assert handed == [0, 1]
