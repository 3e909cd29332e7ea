"""NVIDIA DALI loader for ImageFolder trees (``data.loader=dali``): JPEG decoding and augmentation
on the GPU (``device="mixed"``), or in DALI's CPU-only mode (``device_id=None``) without a GPU.

The sample order comes from the same plan as the torch loader (adarem/data/sampling.py): the same
global batches, the same exact validation sharding (every image once, no padding), the same
iterations per epoch, and mid-epoch resume that starts at the exact batch. Labels are the
torchvision ImageFolder mapping, since the file list is the torch loader's.

Reading. Files are read by a per-sample ``fn.external_source(parallel=True)`` callback in DALI's
Python worker processes (``data.num_workers`` of them; 0 reads in the training thread), not in
the training thread. The plan reaches the workers through a small shared table (a memory-mapped
file): each pass writes its sample indices there before its first batch is scheduled, and the
callback maps DALI's sample position (``SampleInfo.idx_in_epoch``) to the plan's index. So each
pipeline is built once and serves every epoch, resume and evaluation (a pass nested inside
another, BN recalibration in the middle of a training epoch, gets a second pipeline, also kept).
A pipeline that fails, or that is not kept, is shut down with its workers at once (close_pipeline),
not when the traceback that references it is collected; and workers fork with this process's
objects frozen for the garbage collector (loader.frozen_heap), so a worker never collects its copy
of a pipeline left in a reference cycle (Pipeline.__del__ in a forked worker crashed it). A worker
that dies (the out-of-memory killer), while its pipeline starts or after, fails the pass with a
DataError naming it, where DALI waited for good (adarem/data/dali_workers.py).

Augmentation. The random crop box (torchvision's RandomResizedCrop distribution) and the flip
are drawn in the callback from ``random.Random(sample_seed(seed, epoch, index))``, exactly as
the torch loader draws them (adarem/data/transforms.py), and DALI decodes that region
(``decoders.image_slice``): augmentation is a pure function of (seed, epoch, index), so a resumed
run, mid-epoch included, sees the same crops as an uninterrupted one, and a pipeline kept across
epochs has no random state to carry. The validation resize + centre crop uses torchvision's
integer geometry, also computed in the callback (from the JPEG header).

Image modes (tests/data/test_image_modes.py). Both loaders feed the same images, labels and order,
and pixels that agree within a grey level or two where nothing is resized (and a validation centre
crop within 1) but not bit for bit where a crop is downscaled (DALI's resampling is not PIL's: on
photos downscaled to 64 px, helper-93 measured a mean difference of 0.14 grey levels, 0.5 % of the
pixels more than 2 apart, single pixels up to 20); the tables never pool runs of the two loaders
(data.loader is part of a run's identity). For every image both read: alpha dropped, EXIF orientation ignored (pixels as stored, as in
torchvision's ImageFolder), the first frame of a multi-frame file, 16-bit greyscale scaled by
255/65535, palette, 1-bit and CMYK converted to RGB. The reader refuses, in one line naming the
file, what the two would read differently: 32-bit integer, float and LAB/HSV pixels (as the torch
loader refuses them, datasets.unsupported_image), a binary PGM/PPM whose maxval is not 255 or 65535
(a plain one whose maxval is between them) and a greyscale TIFF with alpha (which DALI's decoder
misreads). A file that PIL decodes and DALI's decoder does not is named once the decoder has failed
on its batch.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing.util
import os
import random
import signal
import tempfile
from typing import Callable, Iterator

import numpy as np
import torch

from adarem import faults
from adarem.config import DataConfig
from adarem.data.dali_workers import REMEDY, StartupWatch, WorkerWatch
from adarem.data.datasets import DataError, corrupt_image_error, unsupported_image
from adarem.data.loader import die_with_parent, frozen_heap
from adarem.data.sampling import sample_seed
from adarem.data.transforms import random_resized_crop_box, val_resize

# Pipelines (each with its Python workers) kept per loader: one for the passes over the data and
# one for a pass nested inside another. A deeper nesting gets a pipeline dropped after its pass.
MAX_KEPT = 2
_HEADER = 2  # schedule table: [number of sample slots of the pass, epoch, sample indices...]
_UNDECODABLE, _UNREADABLE = 0, 1
_REASONS = {_UNDECODABLE: "not a decodable image (truncated or corrupt)", _UNREADABLE: "could not be read"}


def looks_like_complete_jpeg(data: bytes | np.ndarray) -> bool:
    """Start-of-image and end-of-image markers present: the cheap test that almost every file of
    a JPEG dataset passes, and that catches a truncated JPEG before a decoder fails on it somewhere
    inside a batch."""
    head, tail = data[:2], data[-64:]  # some writers pad after the EOI marker
    if isinstance(data, np.ndarray):
        head, tail = head.tobytes(), tail.tobytes()
    return len(data) >= 4 and head == b"\xff\xd8" and b"\xff\xd9" in tail


def looks_like_complete_png(data: bytes) -> bool:
    """PNG signature first and the IEND chunk last: the cheap test for a PNG dataset's files (a
    truncated PNG has no IEND)."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND"


def pil_decodes(raw: bytes, path: str | None = None) -> bool:
    """PIL decodes the whole file, as the torch loader would: the test for the files that fail the
    marker test but are images (ImageNet's PNG named .JPEG, a JPEG with more trailing bytes, the
    other formats list_image_folder accepts); DALI's decoder reads these formats too. A truncated
    file fails here as it fails in the torch loader. With ``path``, an image that the torch loader
    refuses (datasets.unsupported_image: 32-bit, float, LAB pixels; these are TIFFs, so they come
    here) is refused here too, in the same words, and one that DALI would misread (dali_misreads)
    is refused (DataError)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            refusal = None if path is None else (unsupported_image(img, path) or dali_misreads(img, path))
        if refusal is not None:
            raise refusal
        return True
    except Image.DecompressionBombError:  # larger than PIL's limit: an image all the same
        return True
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def dali_misreads(img, path: str) -> DataError | None:
    """The refusal of an image that PIL reads right and DALI's decoder wrong, without an error: a
    greyscale TIFF with alpha (DALI 2.4 reads it as RGB made of the grey, the alpha and the next
    pixel's grey). None for every other image."""
    if img.format == "TIFF" and img.mode in ("LA", "La"):
        return DataError(f"image {path} is a greyscale TIFF with alpha, which DALI's decoder misreads (as RGB: the "
                         f"grey, the alpha and the next pixel's grey); use data.loader=torch, or save it as PNG "
                         f"(python -c \"from PIL import Image; Image.open('IN').save('OUT.png')\")")
    return None


def pnm_maxval(raw: bytes, kinds: bytes = b"2356") -> int | None:
    """The maxval of a PGM/PPM header of one of ``kinds`` (the digit after "P": 2/3 plain (ASCII),
    5/6 binary); None for any other file (or a header that does not parse, left to the decoders)."""
    if raw[:1] != b"P" or len(raw) < 2 or raw[1] not in kinds:
        return None
    tokens, i, n = [], 2, min(len(raw), 4096)
    while len(tokens) < 3 and i < n:
        c = raw[i:i + 1]
        if c == b"#":  # a comment runs to the end of its line
            while i < n and raw[i:i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < n and raw[j:j + 1].isdigit():
                j += 1
            if j == i:
                return None
            tokens.append(int(raw[i:j]))
            i = j
    return tokens[2] if len(tokens) == 3 else None


def read_image(path: str) -> tuple[np.ndarray | None, int]:
    """(encoded bytes, -1) for a file that decodes; (None, reason code) otherwise. A binary PGM/PPM
    whose maxval is neither 255 nor 65535, or a plain (ASCII) one whose maxval is between them, is
    refused (DataError): DALI's decoder reads its values as if the maxval were one of these (a
    maxval of 15 or 1023 gives an almost black image), where PIL, and so the torch loader, scales
    them to the maxval."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None, _UNREADABLE
    if looks_like_complete_jpeg(raw) or looks_like_complete_png(raw) or pil_decodes(raw, path):
        maxval = pnm_maxval(raw)
        # binary (P5/P6): DALI scales neither a maxval under 255 nor one between 255 and 65535; plain
        # (P2/P3): it scales one up to 255, and reads any above as if it were 65535 (a maxval of 1000:
        # mean 1.5 grey levels where PIL gives 127.5)
        plain = raw[1:2] in (b"2", b"3")
        if maxval is not None and maxval != 65535 and (maxval > 255 if plain else maxval != 255):
            raise DataError(f"image {path} is a {'plain' if plain else 'binary'} PGM/PPM of maxval {maxval}, which "
                            f"DALI's decoder does not "
                            f"scale (it reads the values as if the maxval were 255 or 65535: too dark); use "
                            f"data.loader=torch (PIL scales it), or save it as PNG, which PIL scales (python -c "
                            f"\"from PIL import Image; im = Image.open('IN'); (im.convert('I;16') if im.mode == 'I' "
                            f"else im).save('OUT.png')\")")
        return np.frombuffer(raw, dtype=np.uint8), -1
    return None, _UNDECODABLE


# start-of-frame markers (baseline, extended, progressive, lossless...; not DHT C4, JPG C8, DAC CC)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: np.ndarray) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header, as PIL reports them (no EXIF rotation); PIL
    itself (five times slower) when the header is unusual."""
    raw = data[:65536].tobytes()  # the frame header precedes the image data
    i, n = 2, len(raw)
    while i + 9 <= n and raw[i] == 0xFF:
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _SOF:
            height, width = (raw[i + 5] << 8) | raw[i + 6], (raw[i + 7] << 8) | raw[i + 8]
            if height and width:
                return height, width
            break
        else:
            i += 2 + ((raw[i + 2] << 8) | raw[i + 3])
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:  # the header only: no decoding
        return img.size[1], img.size[0]


_STARTING_WORKERS = False  # True while a pipeline starts its Python workers (forked children see it)
_FORKED = 0  # processes forked by the pipeline starting now: a forked worker's number (ADAREM_FAULT=dali_start@K)
_STARTUP: StartupWatch | None = None  # the watch of the pipeline starting now


def _count_fork() -> None:
    global _FORKED
    _FORKED += _STARTING_WORKERS


def _forked() -> None:  # in this process, right after a fork: the child cannot have been reaped yet
    if _STARTING_WORKERS and _STARTUP is not None:
        _STARTUP.add_new_children()


os.register_at_fork(before=_count_fork, after_in_parent=_forked)


def val_geometry(height: int, width: int, short: int, size: int) -> tuple[int, int, int, int]:
    """Torch's Resize(shorter side) + CenterCrop geometry, in integers, for one image: (resized
    height, resized width, crop top, crop left). DALI's own rounding of the resized size and
    crop anchor differs by a pixel from torchvision's."""
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_h, new_w = short, int(short * width / height)
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


# A sample's record, one int64 array next to its bytes (each array a source returns costs a
# per-sample transfer, so fewer arrays read faster): label, the replaced unreadable file and why
# (-1, -1 if none), four geometry numbers (train crop: top, left, height, width; val crop:
# resized height, resized width, top, left) and the flip.
LABEL, BAD, REASON, GEOMETRY, FLIP, RECORD = 0, 1, 2, slice(3, 7), 7, 8


def _leave_ctrl_c_to_the_parent() -> None:
    """In a DALI worker: ignore SIGINT, as torch's DataLoader workers do. A terminal's Ctrl-C reaches
    the whole foreground group; each worker printed a KeyboardInterrupt traceback and its death was
    reported as a possible out-of-memory kill (helper-93: 50-147 lines where one was promised). The
    training process handles it, and its pipeline's shutdown (or its death: die_with_parent) ends
    the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SampleReader:
    """The external source callback: ``SampleInfo`` -> (one sample's encoded bytes, its record:
    label, replaced file, geometry and flip, see RECORD above).

    Runs in DALI's Python workers (forked, or spawned when CUDA is initialised: it must pickle),
    so it holds no state that the main process changes except the schedule table, a shared file
    mapped read-only. An unreadable file is replaced by the next readable one whatever
    ``data.on_corrupt`` says (the decoder must get an image); the main process raises or counts.
    """

    def __init__(self, samples: list[tuple[str, int]], schedule_path: str, capacity: int, mode: str,
                 seed: int, image_size: int, val_short: int, hflip: bool):
        self.paths = [p for p, _ in samples]
        self.labels = np.array([c for _, c in samples], dtype=np.int64)
        self.schedule_path, self.capacity = schedule_path, capacity
        self.mode = mode  # "train_crop", "train_resize", "val_crop" or "val_resize"
        self.seed, self.image_size, self.val_short, self.hflip = seed, image_size, val_short, hflip
        self._table = None
        self._reads = 0  # samples read by this worker process (ADAREM_FAULT=dali_train_read@N)
        self._fault_point = f"dali_{mode[:mode.index('_')]}_read"
        self._parent = os.getpid()
        multiprocessing.util.register_after_fork(self, SampleReader._after_fork)

    def _after_fork(self) -> None:  # in every child forked by multiprocessing while this object lives
        if _STARTING_WORKERS:  # ... but only DALI's workers are forked while a pipeline starts them
            _leave_ctrl_c_to_the_parent()
            die_with_parent(self._parent)
            faults.maybe_crash("dali_start", _FORKED)

    def __getstate__(self):  # pickled for spawned workers
        state = dict(self.__dict__)
        state["_table"] = None
        return state

    def __setstate__(self, state):  # in a spawned worker
        self.__dict__.update(state)
        _leave_ctrl_c_to_the_parent()
        die_with_parent(self._parent)

    def _schedule(self) -> np.ndarray:
        if self._table is None:  # opened in the process that calls it
            self._table = np.memmap(self.schedule_path, dtype=np.int64, mode="r", shape=(_HEADER + self.capacity,))
        return self._table

    def __call__(self, info):
        self._reads += 1
        faults.maybe_crash(self._fault_point, self._reads)
        table = self._schedule()
        k = info.idx_in_epoch
        if k >= min(int(table[0]), self.capacity):
            raise StopIteration  # the pass's end (or a pass left early)
        index = int(table[_HEADER + k])
        n = len(self.paths)
        if not 0 <= index < n:  # a stale task reading a table being rewritten: its result is dropped
            raise StopIteration
        record = np.full(RECORD, -1, dtype=np.int64)
        data, j = None, index
        for _ in range(n):  # replace an unreadable sample by the next readable one
            data, reason = read_image(self.paths[j])
            if data is not None:
                break
            if record[BAD] < 0:
                record[BAD], record[REASON] = j, reason
            j = (j + 1) % n
        if data is None:
            raise DataError("every image of the dataset is unreadable")
        record[LABEL], record[FLIP] = self.labels[j], 0
        if self.mode == "val_resize":
            return data, record
        height, width = jpeg_size(data)
        if self.mode == "val_crop":
            record[GEOMETRY] = val_geometry(height, width, self.val_short, self.image_size)
            return data, record
        # the torch loader's draws, in its order: crop box (if any), then the flip
        rng = random.Random(sample_seed(self.seed, int(table[1]), index))
        if self.mode == "train_crop":
            record[GEOMETRY] = random_resized_crop_box(height, width, rng)
        record[FLIP] = self.hflip and rng.random() < 0.5
        return data, record


class _Feed:
    """One built pipeline of a loader and the schedule table its source reads."""

    def __init__(self, loader: "DaliLoader"):
        capacity = loader.num_batches * loader.max_batch
        # An unlinked file (nothing to clean up, even after a kill), which DALI's workers open
        # through this process's /proc entry, whether they are forked or spawned.
        self.file = tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.file.truncate(8 * (_HEADER + capacity))
        self.table = np.memmap(self.file, dtype=np.int64, mode="r+", shape=(_HEADER + capacity,))
        reader = SampleReader(loader.samples, f"/proc/{os.getpid()}/fd/{self.file.fileno()}", capacity,
                              loader.mode, loader.seed, loader.cfg.image_size, val_resize(loader.cfg), loader.cfg.hflip)
        self.max_batch = loader.max_batch
        global _STARTING_WORKERS, _FORKED, _STARTUP
        _STARTING_WORKERS, _FORKED = True, 0
        # the workers fork in the build: none collects this process's garbage (frozen_heap), and one
        # that dies before the build returns does not hang it (StartupWatch)
        _STARTUP = startup = StartupWatch()
        try:
            with frozen_heap(), startup:
                self.pipe = loader._pipeline(reader)
        except Exception as exc:
            if startup.death is not None:
                raise DataError(startup.death) from None
            if "Workers initialization failed" in str(exc):  # DALI: a worker ended before it was ready
                raise DataError(f"a DALI worker process ended while its pipeline was starting (DALI: {exc}): killed, "
                                f"or failed with an error printed above; {REMEDY}") from None
            raise
        finally:
            _STARTING_WORKERS, _STARTUP = False, None
        self.left_early = False
        # a worker that dies (the out-of-memory killer) ends the pass with a DataError instead of
        # hanging it (adarem/data/dali_workers.py)
        pool = getattr(self.pipe, "_py_pool", None)
        try:
            # (DALI's processes: a private attribute, only for the exit code of a reaped worker)
            processes = {p.pid: p for p in getattr(getattr(pool, "pool", None), "_processes", [])}
            self.watch = WorkerWatch(pool.pids(), processes=processes) if pool is not None else None
        except BaseException:
            self.close()
            raise

    def guard(self):
        """Around each call into the pipeline: a dead worker raises DataError (WorkerWatch.guard)."""
        return self.watch.guard() if self.watch is not None else contextlib.nullcontext()

    @property
    def death(self) -> str | None:
        return self.watch.death if self.watch is not None else None

    def close(self) -> None:
        """Shut the pipeline and its Python workers down now (close_pipeline); after a worker's
        death the survivors are killed first, which DALI's close would otherwise wait for."""
        if getattr(self, "watch", None) is not None:
            self.watch.stop()
        close_pipeline(self.pipe)

    def run_out(self) -> None:
        """Finish a pass left early: a DALI pipeline restarts only at the end of an epoch. What is
        still decoded is what was already scheduled (about two prefetch queues of batches)."""
        self.table[0] = 0
        with self.guard():
            while True:
                try:
                    self.pipe.run()
                except StopIteration:
                    break
            self.pipe.reset()
        self.left_early = False

    def start(self, epoch: int, batches: list[list[int]]) -> None:
        # every batch padded to max_batch (per-sample sources fill whole batches): the loader trims
        flat = [i for b in batches for i in b + b[-1:] * (self.max_batch - len(b))]
        self.table[_HEADER:_HEADER + len(flat)] = flat
        self.table[1] = epoch
        self.table[0] = len(flat)  # written last: the workers get the pass's tasks after this

    def leave_early(self) -> None:
        self.table[0] = 0  # the workers stop reading this pass's samples
        self.left_early = True


class DaliLoader:
    def __init__(self, cfg: DataConfig, samples: list[tuple[str, int]], plan: Callable[[int, int], list[list[int]]],
                 num_batches: int, num_samples: int, max_batch: int, train: bool, device: torch.device,
                 seed: int, rank: int, channels_last: bool = False, half: bool = False):
        self.cfg, self.samples, self.plan = cfg, samples, plan
        self.num_batches, self.num_samples, self.max_batch = num_batches, num_samples, max_batch
        self.train, self.device, self.seed, self.rank = train, device, seed, rank
        # NHWC output is handed to torch as an NCHW view with channels_last strides: no copy
        self.channels_last, self.half = channels_last, half
        crop = "crop" if cfg.random_resized_crop else "resize"
        self.mode = f"{'train' if train else 'val'}_{crop}"
        self.corrupt_count = 0
        self._idle: list[_Feed] = []
        self._kept = 0

    def __len__(self) -> int:
        return self.num_batches

    # -- the pipeline -------------------------------------------------------------------------
    def _pipeline(self, reader: SampleReader):
        from nvidia.dali import fn, pipeline_def, types

        cfg = self.cfg
        gpu = self.device.type == "cuda"
        gray = cfg.in_chans == 1
        mean = [255.0 * m for m in cfg.mean]  # DALI normalises in pixel units
        std = [255.0 * s for s in cfg.std]
        # adjust_orientation=False: pixels as stored, like PIL in the torch loader (and the crop
        # geometry computed from the header's size)
        decoder_args = dict(device="mixed" if gpu else "cpu", output_type=types.GRAY if gray else types.RGB,
                            adjust_orientation=False)
        if gpu:  # GPU-only knobs of the mixed decoder
            decoder_args.update(hw_decoder_load=cfg.dali_hw_decoder_load,
                                device_memory_padding=cfg.dali_device_memory_padding,
                                host_memory_padding=cfg.dali_host_memory_padding)
        size = cfg.image_size
        mode = self.mode
        # Workers are forked, unless CUDA is initialised in this process (a forked CUDA context is
        # unusable): then spawned, which costs an interpreter start per worker, once per pipeline.
        start = "spawn" if gpu or torch.cuda.is_initialized() else "fork"
        parallel = cfg.num_workers > 0  # 0: the callback runs in this thread (DALI needs >= 1 worker)

        @pipeline_def(batch_size=self.max_batch, num_threads=cfg.dali_threads,
                      device_id=self.device.index if gpu else None, seed=self.seed % (2 ** 31 - 1),  # no random ops
                      prefetch_queue_depth=cfg.dali_prefetch, exec_dynamic=True,
                      py_num_workers=max(1, cfg.num_workers), py_start_method=start)
        def pipe():
            jpegs, record = fn.external_source(source=reader, num_outputs=2, batch=False, parallel=parallel,
                                               prefetch_queue_depth=cfg.dali_prefetch if parallel else None)
            labels, bad = record[LABEL:LABEL + 1], record[BAD:REASON + 1]
            geometry = fn.cast(record[GEOMETRY], dtype=types.INT32) if mode.endswith("crop") else None
            crop, mirror = (size, size), 0
            if mode == "train_crop":
                images = fn.decoders.image_slice(jpegs, start=geometry[0:2], shape=geometry[2:4], axis_names="HW",
                                                 **decoder_args)
                images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            elif mode in ("train_resize", "val_resize"):
                images = fn.decoders.image(jpegs, **decoder_args)
                images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            else:  # validation: shorter side to val_resize, centre crop, with torchvision's integers
                images = fn.decoders.image(jpegs, **decoder_args)
                images = fn.resize(images, size=fn.cast(geometry[0:2], dtype=types.FLOAT), antialias=True)
                images = fn.slice(images, start=geometry[2:4], shape=[size, size], axis_names="HW")
                crop = None
            if self.train:
                mirror = fn.cast(record[FLIP], dtype=types.INT32)
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT16 if self.half else types.FLOAT, crop=crop,
                                              mean=mean, std=std, mirror=mirror,
                                              output_layout="HWC" if self.channels_last else "CHW")
            if gpu:
                labels = labels.gpu()
            return images, labels, bad

        p = pipe()
        try:
            p.build()
        except BaseException:
            close_pipeline(p)  # what started of it, now (the traceback keeps it)
            raise
        return p

    def _feed(self) -> tuple[_Feed, bool]:
        while self._idle:
            feed = self._idle.pop()
            if feed.death is not None:  # a worker of this idle pipeline died (killed) since its last pass
                self._kept -= 1
                feed.close()
                raise DataError(feed.death)
            if not feed.left_early:
                return feed, True
            try:
                feed.run_out()
                return feed, True
            except Exception:  # noqa: BLE001 - the left pass's batches failed: a new pipeline instead
                self._kept -= 1
                feed.close()
        keep = self._kept < MAX_KEPT
        self._kept += keep
        try:
            return _Feed(self), keep
        except BaseException:
            self._kept -= keep
            raise

    def close(self) -> None:
        """Shut the idle pipelines and their workers down now."""
        for feed in self._idle:
            feed.close()
        self._kept -= len(self._idle)
        self._idle.clear()

    def _check_replaced(self, bad: np.ndarray) -> None:
        replaced = bad[bad[:, 0] >= 0]
        if not len(replaced):
            return
        if self.cfg.on_corrupt == "error" or not self.train:  # an evaluation set never replaces
            path = self.samples[int(replaced[0, 0])][0]
            reason = _REASONS.get(int(replaced[0, 1]), "unreadable")
            try:
                np.fromfile(path, dtype=np.uint8)
            except OSError as exc:
                reason = str(exc)
            raise corrupt_image_error(path, reason, evaluation=not self.train)
        self.corrupt_count += len(replaced)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.plan(epoch, start_batch)
        if not batches:
            return
        feed, kept = self._feed()
        reusable = False
        try:
            feed.start(epoch, batches)
            for k, batch in enumerate(batches):
                try:
                    with feed.guard():
                        images, labels, bad = _run(feed.pipe)
                except DataError as exc:
                    self._name_undecodable(batches[k:k + 1 + self.cfg.dali_prefetch], exc)
                    raise
                if images is None:
                    raise DataError(f"the DALI pipeline ended after {k} of {len(batches)} batches")
                n = len(batch)  # a short last validation batch was padded
                self._check_replaced(np.array(bad.as_tensor())[:n])
                x = to_torch(images, self.device)[:n]
                if self.channels_last:
                    x = x.permute(0, 3, 1, 2)
                yield x, to_torch(labels, self.device).reshape(-1)[:n]
            with feed.guard():
                if _run(feed.pipe)[0] is not None:
                    raise DataError(f"the DALI pipeline gave more than the plan's {len(batches)} batches")
                feed.pipe.reset()
            reusable = True
        except GeneratorExit:  # the consumer stopped early
            feed.leave_early()
            reusable = True
            raise
        finally:
            if kept and reusable:
                self._idle.append(feed)
            else:
                # failed (or a nested pass's pipeline, not kept): shut down now with its workers, not
                # when the traceback that references this frame is collected (close_pipeline)
                self._kept -= kept
                feed.close()

    def _name_undecodable(self, batches: list[list[int]], exc: DataError) -> None:
        """After DALI's decoder failed: the first file of the failing batch (or of those prefetched
        with it) that PIL cannot decode either, named in the error. A file that passes the reader's
        cheap test (markers present, corrupt inside) reaches the decoder, and data.on_corrupt=skip
        cannot replace it there. If PIL decodes them all, the first that DALI's CPU decoder fails on
        alone (a file that PIL reads and DALI does not: a 1-bit TIFF without a BitsPerSample tag,
        as PIL writes it), also named."""
        if not isinstance(exc, DaliBatchError):
            return
        paths = list(dict.fromkeys(self.samples[i][0] for batch in batches for i in batch))
        for path in paths:
            try:
                with open(path, "rb") as f:
                    ok = pil_decodes(f.read())
            except OSError:
                ok = False
            if not ok:
                raise DataError(f"corrupt image {path}: PIL cannot decode it either (DALI failed on a batch "
                                f"({exc.reason})); remove or repair it (data.on_corrupt=skip replaces only files "
                                f"the reader finds truncated)") from None
        found = first_dali_undecodable(paths, gray=self.cfg.in_chans == 1)
        if found is not None:
            path, reason = found
            raise DataError(f"image {path} decodes in PIL but not in DALI's decoder ({reason}); save it as PNG "
                            f"(python -c \"from PIL import Image; Image.open('IN').save('OUT.png')\") or use "
                            f"data.loader=torch") from None


def first_dali_undecodable(paths: list[str], gray: bool) -> tuple[str, str] | None:
    """(path, DALI's reason) of the first file of ``paths`` that DALI's CPU decoder fails on, decoded
    one at a time; None if it decodes them all (about a millisecond each)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True)
    def one_file():
        data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(data, device="cpu", output_type=types.GRAY if gray else types.RGB,
                                 adjust_orientation=False)

    pipe = one_file()
    try:
        pipe.build()
        for path in paths:
            try:
                pipe.feed_input("data", [np.fromfile(path, dtype=np.uint8)])
                pipe.run()
            except OSError:
                continue  # unreadable now: not what failed the decoder
            except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError
                return path, _dali_reason(exc)
        return None
    finally:
        close_pipeline(pipe)


def close_pipeline(pipe) -> None:
    """Shut a DALI pipeline down now: its executor (the backend's Shutdown(), which DALI calls from
    Pipeline.__del__), then its pool of Python workers (ended and joined), in DALI's own teardown
    order (the pool outlives the backend, which reads its shared memory). Without this a failed
    pipeline referenced by a traceback kept its workers until a garbage collection; DALI 2.4 has no
    public close. Calling it again does nothing."""
    shutdown = getattr(pipe, "_shutdown", None)
    try:
        if shutdown is not None:
            shutdown()
    finally:
        pool = getattr(pipe, "_py_pool", None)
        if pool is not None:
            pool.close()


class DaliBatchError(DataError):
    """DALI failed on a batch for a reason of its own (its decoder, say): ``reason`` is DALI's line."""

    def __init__(self, reason: str):
        super().__init__(f"DALI failed on a batch ({reason}); if a file decodes in PIL but not in DALI, the same run "
                         f"with data.loader=torch names any file PIL cannot decode")
        self.reason = reason


def _run(pipe):
    """One batch's outputs, or (None, None, None) at the end of the pass."""
    try:
        return pipe.run()
    except StopIteration:
        return None, None, None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError, or Exception from a worker
        # a DataError raised by the callback in a worker arrives as its traceback's text
        for line in reversed(str(exc).splitlines()):
            if line.startswith(f"{DataError.__module__}.DataError: "):
                raise DataError(line.split(": ", 1)[1]) from None
        raise DaliBatchError(_dali_reason(exc)) from None


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
    from adarem.data import sampling

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
    if "encountered:" in lines[:-1]:  # "Error in CPU operator `...`, which was used ... encountered: <the cause>"
        cause = lines[lines.index("encountered:") + 1].rstrip(" :")
        operator = next((line.rstrip(",") for line in lines if line.startswith("Error in ")), "")
        return f"{operator}: {cause}"[:300] if operator else cause[:300]
    useful = [line for line in lines if "rror" in line and "Critical error in pipeline" not in line]
    return (useful or lines or [type(exc).__name__])[0][:300]
