"""A plain (ASCII) PGM/PPM whose maxval is above 255 (and not 65535): DALI's decoder reads its values
as if the maxval were 65535 (almost black), where PIL, and so the torch loader, scales them to the
maxval. The DALI loader refuses it in one line naming the file, as it refuses such binary ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adarem.cli import one_line
from tests.data.test_image_modes import GREY, H, W, _tree, _val


def _plain(magic: bytes, maxval: int):
    values = (GREY.astype(np.uint32) * maxval + 127) // 255
    if magic == b"P3":
        values = np.repeat(values[..., None], 3, axis=-1)
    return lambda p: p.write_bytes(magic + b"\n%d %d\n%d\n" % (W, H, maxval)
                                   + " ".join(map(str, values.reshape(-1))).encode() + b"\n")


@pytest.mark.parametrize("magic", [b"P2", b"P3"])
@pytest.mark.parametrize("maxval", [1023, 4095])
def test_a_plain_pnm_of_a_maxval_dali_does_not_scale_is_refused(tmp_path, magic, maxval):
    """Before: DALI read this ramp as mean 1.5 grey levels (maxval 1023) or 7.5 (4095) against 127
    under the torch loader, without an error."""
    name = "0.pgm" if magic == b"P2" else "0.ppm"
    root = _tree(tmp_path / "t", _plain(magic, maxval), name)
    png = _tree(tmp_path / "e", lambda p: Image.fromarray(GREY).save(p), "0.png")
    assert float((_val(root) - _val(png)).abs().max()) <= 2  # the torch loader: PIL scales it
    pytest.importorskip("nvidia.dali")
    from adarem.data import DataError

    with pytest.raises(DataError) as err:
        _val(root, "dali")
    message = one_line(err.value)
    assert "\n" not in message and str(root / "val" / "a" / name) in message, message
    assert f"plain PGM/PPM of maxval {maxval}" in message and "data.loader=torch" in message


@pytest.mark.parametrize("maxval", [15, 255, 65535])
def test_a_plain_pnm_dali_scales_is_read_as_under_torch(tmp_path, maxval):
    pytest.importorskip("nvidia.dali")
    root = _tree(tmp_path, _plain(b"P2", maxval), "0.pgm")
    assert float((_val(root, "dali") - _val(root)).abs().max()) <= 2
