"""The small real-photo ImageFolder tree that the loader tests share (made once per session)."""

from __future__ import annotations

import pytest

from adarem.data.photo_tree import make_photo_tree


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    """3 classes x (6 train, 5 val) JPEGs of 120-200 px. Read only."""
    return make_photo_tree(tmp_path_factory.mktemp("photos"), classes=3, train_per_class=6, val_per_class=5,
                           size_range=(120, 200))
