"""The refs pickles are read without ever running code from them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from stamp.data import DataError, UnsafePickleError, load_plain_pickle, load_refer


class _Exploit:
    """Unpickling this with the standard unpickler would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_data_loads(tmp_path: Path) -> None:
    data = [
        {
            "ref_id": 1,
            "sentences": [{"sent": "a dog", "tokens": ["a", "dog"]}],
            "x": 1.5,
            "y": None,
            "z": (1, 2),
        }
    ]
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"refs{protocol}.p"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_plain_pickle(path) == data


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0}, _Exploit(marker)], protocol=protocol))
    with pytest.raises(
        UnsafePickleError, match=r"refusing to unpickle .*refs\(unc\)\.p: it references \S*system"
    ):
        load_plain_pickle(path)
    assert not marker.exists()


def test_class_instances_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.p"
    path.write_bytes(pickle.dumps([Path("x")]))
    with pytest.raises(UnsafePickleError, match="pathlib"):
        load_plain_pickle(path)
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # protocol-0 call of builtins.eval
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_plain_pickle(path)


def test_refer_loader_refuses_malicious_refs(coco_root: Path) -> None:
    marker = coco_root / "pwned"
    (coco_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_Exploit(marker)]))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_refer(coco_root, "refcoco", "val")
    assert not marker.exists()


def test_missing_pickle(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pickle file not found: .*missing.p"):
        load_plain_pickle(tmp_path / "missing.p")
