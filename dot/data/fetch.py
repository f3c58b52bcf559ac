"""Download the DoT data files from da03/implicit_chain_of_thought, verified by sha256.

The three training files are Git LFS objects: the raw-file address of the repository serves a
133-byte pointer instead of the data, so they are fetched from the LFS media address and a
pointer is rejected with a clear message. Files are written atomically (temporary file, then
rename) and skipped when a verified copy is already there.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

COMMIT = "51027999b2780c53adc9cb92bd36a96dab84560c"
RAW = f"https://raw.githubusercontent.com/da03/implicit_chain_of_thought/{COMMIT}/"
LFS = f"https://media.githubusercontent.com/media/da03/implicit_chain_of_thought/{COMMIT}/"
LFS_POINTER = b"version https://git-lfs.github.com/spec"


@dataclass(frozen=True)
class Upstream:
    split: str
    path: str  # inside the repository
    size: int
    sha256: str
    lfs: bool = False

    def url(self, mirror: str | None) -> str:
        if mirror:
            return mirror.rstrip("/") + "/" + self.path
        return (LFS if self.lfs else RAW) + self.path


FILES: dict[str, list[Upstream]] = {
    "4by4": [
        Upstream("train", "data/4_by_4_mult/train.txt", 106656000,
                 "9857d1bba98bafb54da6977d98255656c8bddaa96dae69a4fe67a14eafdeb9fe", lfs=True),
        Upstream("valid", "data/4_by_4_mult/valid.txt", 132000,
                 "27c2ca51e9368367b43b4a99eb6148f8dc904531f7ead074d3a97056f788058c"),
        Upstream("test", "data/4_by_4_mult/test_bigbench.txt", 132000,
                 "7aeb64139bc14b869e72016d8873ae68c1114093b7b78ba4e33966beb699d786"),
    ],
    "5by5": [
        Upstream("train", "data/5_by_5_mult/train.txt", 158368000,
                 "e41642536746292598fb5fa53bf8ebb01358a161a6ba78892d0579ccc1489253", lfs=True),
        Upstream("valid", "data/5_by_5_mult/valid.txt", 196000,
                 "d3b95bdf0f74863a88bc777fee3fe23854e6ad458b8e7b847b65dac25e59182c"),
        Upstream("test", "data/5_by_5_mult/test_bigbench.txt", 196000,
                 "b4ea09fc6c925ab3ca46f1e56f0c1bbf858264ef1b0589564b220c7c015fa665"),
    ],
    "gsm8k": [
        Upstream("train", "data/gsm8k/train.txt", 87580525,
                 "6f9a20bc1476ca65eee9bc5117c2d0582b1f1733d5148ffc0ff29cad2a9e9c6b", lfs=True),
        Upstream("valid", "data/gsm8k/valid.txt", 143419,
                 "04f9bddfe8ac4846571b1e2b612b289c95770b5012fdb34cc36a597b041afb87"),
        Upstream("test", "data/gsm8k/test.txt", 388019,
                 "e464efa2713fbcf423bdbfb482c543a6a086188c3d97c294b1d19a70c2a515e8"),
    ],
}


class DownloadError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(spec: Upstream, dest: Path, mirror: str | None = None, progress: bool = True) -> Path:
    """Fetch one file to `dest`, verify it, and move it into place; returns `dest`."""
    if dest.is_file() and dest.stat().st_size == spec.size and sha256_of(dest) == spec.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = spec.url(mirror)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out, \
                tqdm(total=spec.size, unit="B", unit_scale=True, desc=dest.name,
                     disable=not progress) as bar:
            first = True
            for block in iter(lambda: response.read(1 << 16), b""):
                if first and block.startswith(LFS_POINTER):
                    raise DownloadError(
                        f"{url} served a Git LFS pointer, not the data; use the LFS media "
                        "address (the default) or a mirror that holds the real file")
                first = False
                digest.update(block)
                size += len(block)
                out.write(block)
                bar.update(len(block))
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise DownloadError(f"{url}: got {size} bytes with sha256 {digest.hexdigest()}, "
                                f"expected {spec.size} bytes with sha256 {spec.sha256}; the "
                                "source or mirror has a different file, nothing was written")
        os.replace(tmp, dest)
    except OSError as err:
        raise DownloadError(f"could not download {url}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(task: str, root: Path, splits: tuple[str, ...] = ("train", "valid", "test"),
          mirror: str | None = None, progress: bool = True) -> list[Path]:
    """Download the chosen splits of `task` to `root/<task>/<split>.txt`."""
    if task not in FILES:
        raise ValueError(f"no upstream files for task {task!r}; choose one of {sorted(FILES)}")
    return [download(spec, root / task / f"{spec.split}.txt", mirror, progress)
            for spec in FILES[task] if spec.split in splits]
