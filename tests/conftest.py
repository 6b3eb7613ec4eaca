import shutil
from pathlib import Path

import pytest

from alexnet.data.store import prepare

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; the test is skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def photo_folder(root: Path, train: int, val: int) -> Path:
    """`root` filled with the first 4 classes of imagenette-mini, `train` and `val` photos of each, in
    ImageNet's layout (the test is skipped where ../shared/data is absent)."""
    shared = SHARED_DATA / "imagenette-mini"
    if not shared.is_dir():
        pytest.skip("../shared/data is not present")
    for split, count in (("train", train), ("val", val)):
        for wnid in sorted(p.name for p in (shared / split).iterdir())[:4]:
            (root / split / wnid).mkdir(parents=True)
            for f in sorted((shared / split / wnid).iterdir())[:count]:
                shutil.copy(f, root / split / wnid / f.name)
    return root


def photo_store(tmp_path_factory: pytest.TempPathFactory, train: int, val: int) -> Path:
    """A store made by `prepare` of photo_folder's photos."""
    root = photo_folder(tmp_path_factory.mktemp("photos"), train, val)
    return prepare(root, tmp_path_factory.mktemp("store") / "store", workers=2, progress=False).path
