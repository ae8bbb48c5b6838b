"""Reading a download as it was fetched: a folder, a zip or a tar archive; its md5; the folders in it."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import zipfile
import zlib
from typing import Dict, Iterator, List, Sequence, Tuple

from reid.errors import DatasetError
from reid.utils.data.images import IMAGE_EXTENSIONS
from reid.utils.osutils import PathLike, atomic_write

logger = logging.getLogger(__name__)

#: md5 of the official archives; a mismatch is only a warning.
OFFICIAL_MD5 = {
    "market1501": "65005ab7d12ec1c44de4eeafe813e68a",  # Market-1501-v15.09.15.zip
    "dukemtmc": "286aaef9ba5db58853d91b66a028923b",  # DukeMTMC-reID.zip / Duke.tar.gz
    "cuhk03": "728939e58ad9f0ff53e521857dd8fb43",  # cuhk03_release.zip
}


class Source:
    """Read-only view of a download: relative POSIX paths of its files and their bytes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def files(self) -> List[str]:
        raise NotImplementedError

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        """Yield ``(path, bytes)`` for ``paths`` in the order cheapest for the container."""
        raise NotImplementedError

    def extract(self, rel: str, dest: str) -> None:
        """Copy file ``rel`` to ``dest`` (atomically)."""
        raise NotImplementedError

    def size(self, rel: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DirSource(Source):
    def files(self) -> List[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.path)
            for name in sorted(filenames):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                out.append(rel.replace(os.sep, "/"))
        return out

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        for rel in paths:
            full = os.path.join(self.path, rel)
            try:
                with open(full, "rb") as f:
                    yield rel, f.read()
            except OSError as e:
                raise DatasetError(f"{full}: cannot read ({e.strerror or e})") from None

    def extract(self, rel: str, dest: str) -> None:
        with open(os.path.join(self.path, rel), "rb") as fin, atomic_write(dest) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    def size(self, rel: str) -> int:
        return os.path.getsize(os.path.join(self.path, rel))


class ZipSource(Source):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(f"{path}: not a readable zip archive ({e})") from None
        self.infos = {i.filename: i for i in self.zf.infolist() if not i.is_dir()}

    def files(self) -> List[str]:
        return sorted(self.infos)

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        for rel in paths:
            try:
                yield rel, self.zf.read(self.infos[rel])
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
                raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def extract(self, rel: str, dest: str) -> None:
        try:
            with self.zf.open(self.infos[rel]) as fin, atomic_write(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def size(self, rel: str) -> int:
        return self.infos[rel].file_size

    def close(self) -> None:
        self.zf.close()


class TarSource(Source):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self.tf = tarfile.open(path, "r:*")
            self.members = {(m.name[2:] if m.name.startswith("./") else m.name): m
                            for m in self.tf.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: not a readable tar archive ({e})") from None

    def files(self) -> List[str]:
        return sorted(self.members)

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        # Archive order: a compressed tar can only be read cheaply front to back.
        for rel in sorted(paths, key=lambda p: self.members[p].offset_data):
            try:
                f = self.tf.extractfile(self.members[rel])
                assert f is not None
                yield rel, f.read()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def extract(self, rel: str, dest: str) -> None:
        try:
            fin = self.tf.extractfile(self.members[rel])
            assert fin is not None
            with fin, atomic_write(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def size(self, rel: str) -> int:
        return self.members[rel].size

    def close(self) -> None:
        self.tf.close()


def open_source(src: str) -> Source:
    if os.path.isdir(src):
        return DirSource(src)
    if not os.path.isfile(src):
        raise DatasetError(f"{src}: not found (give the downloaded archive or its extracted folder)")
    if zipfile.is_zipfile(src):
        return ZipSource(src)
    if is_tar(src):
        return TarSource(src)
    raise DatasetError(f"{src}: neither a folder, a zip archive nor a tar archive")


def is_tar(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def file_md5(path: PathLike) -> str:
    """The md5 hex digest of a file's content."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def check_md5(src: str, dataset: str) -> None:
    if dataset not in OFFICIAL_MD5 or not os.path.isfile(src):
        return
    if not zipfile.is_zipfile(src) and not is_tar(src):
        return  # e.g. cuhk-03.mat given directly: the md5 is the archive's
    digest = file_md5(src)
    if digest != OFFICIAL_MD5[dataset]:
        logger.warning("%s: md5 %s differs from the official %s archive's %s; converting anyway",
                       src, digest, dataset, OFFICIAL_MD5[dataset])
    else:
        logger.info("%s: md5 matches the official archive", src)


def is_junk_path(rel: str) -> bool:
    parts = rel.split("/")
    return any(p == "__MACOSX" or p.startswith("._") for p in parts)


def find_inner_folder(files: Sequence[str], required: Sequence[str], src: str, what: str) -> str:
    """The shortest folder prefix ("" for the top) that holds all ``required`` subfolders.

    Raises:
        DatasetError: no such folder.
    """
    found: Dict[str, set] = {}
    for rel in files:
        if is_junk_path(rel):
            continue
        parts = rel.split("/")
        for i in range(len(parts) - 1):
            if parts[i] in required:
                found.setdefault("/".join(parts[:i]), set()).add(parts[i])
    roots = sorted((r for r, subs in found.items() if subs >= set(required)), key=lambda r: (r.count("/"), r))
    if not roots:
        names = ", ".join(required[:-1]) + " and " + required[-1]
        raise DatasetError(f"{src}: no folder with {names} subfolders found (is this the {what} download?)")
    return roots[0]


def images_in(files: Sequence[str], folder: str) -> List[str]:
    """Image files directly inside ``folder``, sorted by name."""
    prefix = folder + "/" if folder else ""
    out = []
    for rel in files:
        if not rel.startswith(prefix):
            continue
        name = rel[len(prefix):]
        if "/" in name or name.startswith("."):
            continue
        if name.lower().endswith(IMAGE_EXTENSIONS):
            out.append(rel)
    return sorted(out, key=lambda r: r.rsplit("/", 1)[-1])

