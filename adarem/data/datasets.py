"""Index-addressed datasets whose samples are reproducible: (index, epoch) -> (image, label)."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from adarem.data.sampling import sample_seed


class DataError(RuntimeError):
    """A user-facing data problem (missing root, corrupt file...); the message says what to do."""


def corrupt_image_error(path, reason, evaluation: bool) -> DataError:
    """The refusal of an unreadable image, as both loaders word it: an evaluation image always
    (an error measured with a replaced one would be another set's), a training image under
    data.on_corrupt=error."""
    if evaluation:
        return DataError(f"corrupt image {path} in the evaluation set: {reason}; repair or remove it "
                         f"(data.on_corrupt=skip replaces training images only: an error measured with a "
                         f"replaced image would be another set's)")
    return DataError(f"corrupt image {path}: {reason}; remove it or set data.on_corrupt=skip to skip and count "
                     f"such files")


class TreeError(DataError):
    """A split that cannot be listed as it is: nothing in it can be counted (prepare_imagenet says so)."""


class RepeatedFolderError(TreeError):
    """A folder of a split reached twice through symbolic links (a cycle, or another class's folder)."""


def list_image_folder(split_dir: Path, seen: dict | None = None,
                      empty_classes_ok: bool = False) -> tuple[list[tuple[str, int]], list[str]]:
    """Samples and classes of an ImageFolder split, with torchvision's own class mapping. Links are
    followed, but a folder reached twice (a link back up, which torchvision's walk follows until
    the path is too long, or to another class's folder) is refused: its images would be samples
    twice, under two labels. ``seen``, shared by the calls for train/ and val/, also refuses a
    folder of one split that is a folder of the other (a val/ class linked to train/'s). A class
    folder without an image is refused, as torchvision's ImageFolder refuses it (its class would
    never be trained, or never evaluated, without a word), unless ``empty_classes_ok`` (the tree
    check of scripts/prepare_imagenet.py, which reports such folders itself)."""
    if not split_dir.is_dir():
        raise DataError(f"dataset split {split_dir} does not exist; expected an ImageFolder tree "
                        f"<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG")
    try:
        classes, class_to_idx = find_classes(str(split_dir))
    except FileNotFoundError as exc:
        raise DataError(f"no class folders in {split_dir}: {exc}") from exc
    samples = []
    empty = []  # class folders without an image
    seen = {} if seen is None else seen  # each folder read, (device, inode) -> path: links are followed
    for cls in classes:
        before = len(samples)
        walk = []
        for dirpath, dirs, files in os.walk(split_dir / cls, onerror=_unlistable, followlinks=True):
            st = os.stat(dirpath)  # (a filesystem without inode numbers reports 0: not compared)
            first = seen.setdefault((st.st_dev, st.st_ino), dirpath) if st.st_ino else dirpath
            if first != dirpath:  # a link back up (a cycle) or to another folder of the split
                raise RepeatedFolderError(
                    f"{first} and {dirpath} are the same folder (reached through a symbolic link): its images "
                    f"would be read twice (the second time as class {cls!r}); remove the link, or copy the images "
                    f"if they belong to both")
            walk.append((dirpath, dirs, files))
        for dirpath, _, files in sorted(walk):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), class_to_idx[cls]))
        if len(samples) == before:
            empty.append(cls)
    if not samples:
        raise DataError(f"dataset split {split_dir} holds no images ({len(classes)} empty class folders)")
    if empty and not empty_classes_ok:
        shown = ", ".join(repr(c) for c in empty[:5]) + (f" (+{len(empty) - 5} more)" if len(empty) > 5 else "")
        raise DataError(f"dataset split {split_dir}: {len(empty)} of its {len(classes)} class folders hold no "
                        f"images ({shown}); that class would never be {'evaluated' if split_dir.name == 'val' else 'seen'} "
                        f"there: copy its images in, or remove the folder from both splits")
    return samples, classes


def _unlistable(exc: OSError) -> None:
    """os.walk's onerror: a folder that cannot be listed (permissions) would otherwise be skipped
    without a word, and its images left out of the split."""
    raise TreeError(f"cannot list the folder {exc.filename} ({exc.strerror or exc}): its images would be left "
                    f"out; make it readable (or remove it)")


def _following(index: int, n: int) -> Iterable[int]:
    """The positions after ``index`` in a set of ``n``, wrapping round: where a replacement for an
    unreadable sample is looked for."""
    return ((index + a) % n for a in range(1, n))


class ReproducibleDataset(Dataset):
    """Base: ``__getitem__((index, epoch))`` seeds the augmentation from (seed, epoch, index).

    Items are ``(image, label, corrupt)``: with ``on_corrupt='skip'`` an unreadable training sample
    is replaced by the next readable one of the same set (a holdout split's training part never
    borrows a holdout image) and flagged, so that the loader can count it. An evaluation set
    (``evaluation=True``) never replaces: an error measured with a substituted image would be the
    error of another set, so an unreadable evaluation image always stops the run.
    """

    def __init__(self, transform: Callable, seed: int, on_corrupt: str, evaluation: bool = False):
        self.transform = transform
        self.seed = seed
        self.on_corrupt = on_corrupt  # an evaluation set never replaces, whatever it says (item)
        self.evaluation = evaluation
        self.cache: dict | None = None

    def cache_samples(self) -> None:
        """Keep each finished sample in memory (``data.cache_samples``), if the transform draws
        nothing at random: the item is then the same for every epoch and seed. A replaced corrupt
        sample is not kept, so it is counted again in every epoch, as without the cache."""
        if getattr(self.transform, "deterministic", False):
            self.cache = {}

    def load(self, index: int):  # -> (PIL image or uint8 tensor, label)
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"sample {index}"

    def __getitem__(self, key):
        index, epoch = key
        return self.item(index, epoch, _following(index, len(self)))

    def item(self, index: int, epoch: int, replacements: Iterable[int]):
        """Sample ``index`` as epoch ``epoch`` sees it; under ``on_corrupt='skip'`` an unreadable one
        is replaced by the first readable sample of ``replacements`` (its augmentation still drawn
        from ``index``'s seed)."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        corrupt = False
        for i in itertools.chain([index], replacements):
            try:
                image, label = self.load(i)
                break
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                if self.evaluation or self.on_corrupt == "error":
                    raise corrupt_image_error(self.describe(i), exc, self.evaluation) from None
                corrupt = True
        else:
            raise DataError("every image of the dataset is unreadable")
        x = self.transform(image, random.Random(sample_seed(self.seed, epoch, index)))
        if self.cache is not None and not corrupt:
            self.cache[index] = (x, label, corrupt)
        return x, label, corrupt


class ImageFolderDataset(ReproducibleDataset):
    def __init__(self, samples: list[tuple[str, int]], transform, seed: int, on_corrupt: str, mode: str,
                 evaluation: bool = False):
        super().__init__(transform, seed, on_corrupt, evaluation)
        self.samples = samples
        self.mode = mode  # PIL mode: "L" or "RGB"

    def __len__(self):
        return len(self.samples)

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def load(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img.load()  # decode now, so a truncated file fails here and not later
                refusal = unsupported_image(img, path)
                if refusal is not None:  # not a corrupt file: never replaced
                    raise refusal
                return to_mode(img, self.mode), label
        except Image.DecompressionBombError as exc:  # an image, not a corrupt file: never replaced
            raise DataError(f"image {path} is too large for PIL ({exc}); downscale it (it is resized to "
                            f"data.image_size anyway) or remove it") from None


# Formats whose PIL mode "I" images hold 16-bit values (0-65535): a 16-bit PGM/PPM (any maxval
# above 255, rescaled by PIL to 0-65535) and, under older Pillow versions, a 16-bit greyscale PNG.
SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")
UNSIGNED_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # not I;16S, I;16BS (signed, older Pillow)


def unsupported_image(img: Image.Image, path) -> DataError | None:
    """The refusal of an image whose pixels the two loaders would not read alike (both refuse it,
    the DALI loader in its reader): 32-bit float (PIL mode "F") or 32-bit / signed integer pixels
    (mode "I" of a TIFF) have no 0-255 range a loader could know (PIL's convert clips them at 255,
    DALI's decoder refuses "I" and scales "F" from 0-1), and PIL converts LAB/HSV to RGB otherwise
    than DALI. Older Pillow versions can open a signed 16-bit TIFF as mode "I;16S" (Pillow 13:
    "I"), refused alike. None for every other image."""
    mode, fmt = img.mode, img.format
    sixteen = mode in UNSIGNED_16_BIT_MODES or (mode == "I" and fmt in SIXTEEN_BIT_I_FORMATS)
    if mode.startswith("F") or (mode.startswith("I") and not sixteen):
        kind = "32-bit floating-point" if mode.startswith("F") else "32-bit or signed integer"
        return DataError(f"image {path} has {kind} pixels (PIL mode {mode}, {fmt}), whose range the loaders cannot "
                         f"know (PIL's convert clips them at 255, DALI's decoder "
                         f"{'scales 0-1 to 0-255' if mode.startswith('F') else 'cannot read them'}); save it as an "
                         f"8-bit or "
                         f"unsigned 16-bit PNG scaled as its values mean (ImageMagick: magick IN -auto-level -depth 8 "
                         f"OUT.png), or remove it")
    if mode in ("LAB", "HSV"):
        return DataError(f"image {path} is in the {mode} colour space (PIL mode {mode}, {fmt}), which PIL and DALI "
                         f"convert to RGB differently; save it as RGB (ImageMagick: magick IN -colorspace sRGB "
                         f"OUT.png), or remove it")
    return None


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` as an 8-bit "L" or "RGB" image. A 16-bit greyscale image (PIL mode "I;16", a 16-bit
    PNG or TIFF; mode "I" from a 16-bit PGM, or from a 16-bit PNG under older Pillow versions) is
    scaled to 8 bits first, as DALI's decoder does: PIL's own convert clips its values at 255,
    which makes almost every pixel white."""
    if img.mode in UNSIGNED_16_BIT_MODES or (img.mode == "I" and img.format in SIXTEEN_BIT_I_FORMATS):
        wide = np.asarray(img).astype(np.uint32)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    return img.convert(mode)


class TensorImageDataset(ReproducibleDataset):
    """In-memory uint8 images [N, C, H, W] (Fashion-MNIST). ``channels=3`` gives a 1-channel image
    as 3 equal channels, as PIL's convert("RGB") gives a greyscale image in an ImageFolder tree."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform, seed: int, channels: int | None = None):
        super().__init__(transform, seed, on_corrupt="error")
        self.images, self.labels = images, labels
        self.channels = channels or images.shape[1]
        if self.channels != images.shape[1] and images.shape[1] != 1:
            raise DataError(f"images of {images.shape[1]} channels cannot be read as {self.channels}; "
                            f"set data.in_chans={images.shape[1]}")

    def __len__(self):
        return len(self.labels)

    def load(self, index: int):
        image = self.images[index]
        if image.shape[0] != self.channels:
            image = image.expand(self.channels, -1, -1)
        return image, int(self.labels[index])


class Subset(ReproducibleDataset):
    """Samples ``indices`` of ``base``; augmentation stays seeded by the base dataset's index."""

    def __init__(self, base: ReproducibleDataset, indices: list[int]):
        self.base, self.indices = base, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        index, epoch = key
        # replacements come from this subset only
        return self.base.item(self.indices[index], epoch,
                              (self.indices[i] for i in _following(index, len(self.indices))))


def holdout_split(train: ReproducibleDataset, train_with_val_transform: ReproducibleDataset,
                  fraction: float) -> tuple[Subset, Subset]:
    """A fixed split of the training set (same for every seed and optimizer): (train, holdout)."""
    keep, held = holdout_indices(len(train), fraction)
    return Subset(train, keep), Subset(train_with_val_transform, held)


def holdout_indices(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """The indices of ``holdout_split``: (trained on, held out), each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(12345)).tolist()
    k = max(1, int(round(fraction * n)))
    return sorted(perm[k:]), sorted(perm[:k])
