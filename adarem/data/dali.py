"""NVIDIA DALI loader for ImageFolder trees (``data.loader=dali``): JPEG decoding and augmentation
on the GPU (``device="mixed"``), or in DALI's CPU-only mode (``device_id=None``) without a GPU.

The sample order comes from the same plan as the torch loader (adarem/data/sampling.py), fed to
DALI through ``fn.external_source``: the same global batches, the same exact validation sharding
(every image once, no padding), the same iterations per epoch, and mid-epoch resume that starts
at the exact batch. Labels are the torchvision ImageFolder mapping, since the file list is the
torch loader's. Limit, stated honestly: DALI draws crops and flips from its own RNG, seeded per
(seed, epoch, rank), so after a mid-epoch resume the order of samples is exact but their random
crops differ from those of an uninterrupted run (the torch loader is exact in both).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from adarem.config import DataConfig
from adarem.data import sampling
from adarem.data.datasets import DataError
from adarem.data.transforms import val_resize


def looks_like_complete_jpeg(data: np.ndarray) -> bool:
    """Start-of-image and end-of-image markers present: catches truncated and non-JPEG files
    cheaply, before a decoder fails on them somewhere inside a batch."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = data[-64:]  # some writers pad after the EOI marker
    return bool(np.any((tail[:-1] == 0xFF) & (tail[1:] == 0xD9)))


class DaliLoader:
    def __init__(self, cfg: DataConfig, samples: list[tuple[str, int]], plan: Callable[[int, int], list[list[int]]],
                 num_batches: int, num_samples: int, max_batch: int, train: bool, device: torch.device,
                 seed: int, rank: int, channels_last: bool = False, half: bool = False):
        self.cfg, self.samples, self.plan = cfg, samples, plan
        self.num_batches, self.num_samples, self.max_batch = num_batches, num_samples, max_batch
        self.train, self.device, self.seed, self.rank = train, device, seed, rank
        # NHWC output is handed to torch as an NCHW view with channels_last strides: no copy
        self.channels_last, self.half = channels_last, half
        self.corrupt_count = 0
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return self.num_batches

    # -- reading (in the external source callback) ----------------------------------------
    def _read(self, index: int) -> np.ndarray | None:
        path = self.samples[index][0]
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            data, reason = None, str(exc)
        else:
            reason = "not a complete JPEG (truncated or another format)"
        if data is not None and looks_like_complete_jpeg(data):
            return data
        if self.cfg.on_corrupt == "error":
            raise DataError(f"corrupt image {path}: {reason}; remove it or set data.on_corrupt=skip to skip and count such files")
        self._bad.add(index)
        self.corrupt_count += 1
        return None

    def _val_geometry(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Torch's Resize(shorter side) + CenterCrop geometry, in integers, for one image: DALI's
        own rounding of the resized size and crop anchor differs by a pixel from torchvision's."""
        from PIL import Image

        with Image.open(path) as img:
            w, h = img.size
        short = val_resize(self.cfg)
        if w <= h:
            new_w, new_h = short, int(short * h / w)
        else:
            new_h, new_w = short, int(short * w / h)
        size = self.cfg.image_size
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        return np.array([new_h, new_w], dtype=np.float32), np.array([top, left], dtype=np.int32)

    def _batch_source(self, batches: list[list[int]]) -> Iterator:
        n = len(self.samples)
        exact_val = not self.train and self.cfg.random_resized_crop
        for batch in batches:
            jpegs, labels, sizes, anchors = [], [], [], []
            for i in batch:
                data, j = None, i
                for _ in range(n):  # replace an unreadable sample by the next readable one
                    if j not in self._bad:
                        data = self._read(j)
                        if data is not None:
                            break
                    j = (j + 1) % n
                if data is None:
                    raise DataError("every image of the dataset is unreadable")
                jpegs.append(data)
                labels.append(np.array([self.samples[j][1]], dtype=np.int64))
                if exact_val:
                    size, anchor = self._val_geometry(self.samples[j][0])
                    sizes.append(size)
                    anchors.append(anchor)
            if exact_val:
                yield jpegs, labels, sizes, anchors
            else:
                yield jpegs, labels

    # -- the pipeline -------------------------------------------------------------------------
    def _pipeline(self, source, seed: int):
        from nvidia.dali import fn, pipeline_def, types

        cfg = self.cfg
        gpu = self.device.type == "cuda"
        gray = cfg.in_chans == 1
        mean = [255.0 * m for m in cfg.mean]  # DALI normalises in pixel units
        std = [255.0 * s for s in cfg.std]
        decoder_args = dict(device="mixed" if gpu else "cpu", output_type=types.GRAY if gray else types.RGB)
        if gpu:  # GPU-only knobs of the mixed decoder
            decoder_args.update(hw_decoder_load=cfg.dali_hw_decoder_load,
                                device_memory_padding=cfg.dali_device_memory_padding,
                                host_memory_padding=cfg.dali_host_memory_padding)
        size = cfg.image_size

        @pipeline_def(batch_size=self.max_batch, num_threads=cfg.dali_threads,
                      device_id=self.device.index if gpu else None, seed=seed,
                      prefetch_queue_depth=cfg.dali_prefetch, exec_dynamic=True)
        def pipe():
            exact_val = not self.train and cfg.random_resized_crop
            if exact_val:
                jpegs, labels, sizes, anchors = fn.external_source(
                    source=source, num_outputs=4, batch=True,
                    dtype=[types.UINT8, types.INT64, types.FLOAT, types.INT32])
            else:
                jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                                   dtype=[types.UINT8, types.INT64])
            crop = (size, size)
            if self.train and cfg.random_resized_crop:
                images = fn.decoders.image_random_crop(jpegs, random_area=[0.08, 1.0],
                                                       random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10,
                                                       **decoder_args)
                images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            elif self.train or not cfg.random_resized_crop:
                images = fn.decoders.image(jpegs, **decoder_args)
                images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            else:  # validation: shorter side to val_resize, centre crop, with torchvision's integers
                images = fn.decoders.image(jpegs, **decoder_args)
                images = fn.resize(images, size=sizes, antialias=True)
                images = fn.slice(images, start=anchors, shape=[size, size], axis_names="HW")
                crop = None
            mirror = fn.random.coin_flip(probability=0.5) if self.train and cfg.hflip else 0
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT16 if self.half else types.FLOAT, crop=crop,
                                              mean=mean, std=std, mirror=mirror,
                                              output_layout="HWC" if self.channels_last else "CHW")
            if gpu:
                labels = labels.gpu()
            return images, labels

        p = pipe()
        p.build()
        return p

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.plan(epoch, start_batch)
        if not batches:
            return
        seed = sampling.sample_seed(self.seed, epoch, self.rank) % (2 ** 31 - 1)
        pipe = self._pipeline(self._batch_source(batches), seed)
        try:
            while True:
                try:
                    images, labels = pipe.run()
                except StopIteration:
                    break
                except RuntimeError as exc:
                    raise DataError(f"DALI failed on a batch ({_dali_reason(exc)}); if a file is corrupt in a way the "
                                    f"marker check missed, find it with "
                                    f"scripts/prepare_imagenet.py") from None
                x = to_torch(images, self.device)
                if self.channels_last:
                    x = x.permute(0, 3, 1, 2)
                yield x, to_torch(labels, self.device).reshape(-1)
        finally:
            del pipe


def to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        dtype = {"FLOAT": torch.float32, "FLOAT16": torch.float16, "INT64": torch.int64}[dense.dtype.name]
        out = torch.empty(dense.shape(), dtype=dtype, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tensor_list.as_tensor()))


def build_dali_loaders(cfg: DataConfig, train_samples, val_samples, global_batch: int, rank: int,
                       world: int, seed: int, device: torch.device, channels_last: bool = False,
                       half: bool = False) -> tuple[DaliLoader, DaliLoader]:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise DataError("data.loader=dali needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
                        "(or use data.loader=torch)") from None
    per_rank = global_batch // world
    n_train, n_val = len(train_samples), len(val_samples)  # sizes checked by build_data
    steps = n_train // global_batch

    def train_plan(epoch, start):
        return sampling.train_batches(n_train, global_batch, rank, world, seed, epoch, start)

    val_plan = sampling.val_batches(n_val, per_rank, rank, world)
    out = dict(channels_last=channels_last, half=half)
    train = DaliLoader(cfg, train_samples, train_plan, steps, steps * global_batch, per_rank, True, device, seed,
                       rank, **out)
    val = DaliLoader(cfg, val_samples, lambda epoch, start: val_plan[start:], len(val_plan), n_val, per_rank,
                     False, device, seed, rank, **out)
    return train, val


def _dali_reason(exc: Exception) -> str:
    """The informative line of a DALI error (its first lines are generic banners)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "rror" in line and "Critical error in pipeline" not in line]
    return (useful or lines or [type(exc).__name__])[0][:300]
