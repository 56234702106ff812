"""Request bodies and archives, handled so that no client can exhaust memory or disk.

Bodies are streamed to disk and refused the moment they pass the limit (a declared
Content-Length over it is refused before reading). Multipart forms are parsed while they stream
with python-multipart's push parser: ``request.form()`` would spool the whole body first.
Archives are extracted member by member with the bytes actually written counted against a
limit (a gzip bomb stops at the limit whatever its headers claim) and a member count; links,
devices, absolute names and ``..`` are refused outright, not skipped. Every refusal is a
``manager.errors`` class naming what, where and the setting to raise (never a server path),
and whatever was written before it is removed.
"""

from __future__ import annotations

import gzip
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from manager.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMedia

CHUNK = 1024 * 1024
BODY_HINT = "raise LASTMILE_MAX_UPLOAD_BYTES on the server"
PACK_HINT = "pack the folder again with relative paths: tar -C DIR -czf repo.tar.gz ."
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=?-][0-9A-Za-z'()+_,./:=? -]{0,69}")  # RFC 2046
_TAR_META = 1024 * 1024  # the largest pax / GNU long-name header tarfile may hold in memory
_META_TYPES: tuple[bytes, ...] = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_META_TYPES += (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zlib.error, struct.error, EOFError, OSError)
_UNREADABLE = (NotImplementedError, RecursionError, ValueError)  # zip methods, header chains


def safe_filename(name: str, default: str = "upload") -> str:
    """The basename of a client's file name in ``[A-Za-z0-9._-]``: ≤100 chars, no leading dot."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(name.replace("\\", "/")).name)
    return base.lstrip(".")[:100] or default


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the request body of {int(declared)} bytes exceeds the limit of {limit} bytes",
            hint=BODY_HINT,
        )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes", hint=BODY_HINT)


async def receive_raw(request: Request, dest: Path, *, limit: int) -> int:
    """Stream the body into ``dest``, never holding more than one chunk; returns its size."""
    _check_declared(request, limit)
    size = 0
    try:
        with open(dest, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                out.write(chunk)
        if size == 0:
            raise InvalidInput("the upload is empty", hint="send the file as the request body")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return size


@dataclass
class UploadedFile:
    path: Path
    filename: str
    size: int
    content_type: str


@dataclass
class MultipartUpload:
    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)


class _FormSink:
    """python-multipart's callbacks: file parts go to disk, text parts (bounded) to memory.
    Header count and size per part are bounded by the parser itself (>= 0.0.27)."""

    def __init__(self, dest: Path, file_fields: tuple[str, ...], max_field: int, max_parts: int):
        self.dest, self.file_fields = dest, file_fields
        self.max_field, self.max_parts = max_field, max_parts
        self.result, self.parts = MultipartUpload(), 0
        self.file: IO[bytes] | None = None
        self.header, self.headers = [b"", b""], dict[str, str]()
        self.name, self.text, self.size = "", b"", 0

    def callbacks(self) -> Any:
        names = ["part_begin", "part_data", "part_end", "header_field", "header_value"]
        names += ["header_end", "headers_finished"]
        return {f"on_{name}": getattr(self, f"on_{name}") for name in names}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise PayloadTooLarge(
                f"the form has more than {self.max_parts} parts", hint="send fewer form fields"
            )
        self.headers, self.name, self.text, self.size = {}, "", b"", 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header[0] += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header[1] += data[start:end]

    def on_header_end(self) -> None:
        name, value = (part.decode("latin-1").strip() for part in self.header)
        self.headers[name.lower()] = value
        self.header = [b"", b""]

    def on_headers_finished(self) -> None:
        kind, raw = parse_options_header(self.headers.get("content-disposition", ""))
        options = {key.lower(): value for key, value in raw.items()}
        if kind != b"form-data" or not options.get(b"name"):
            raise BadRequest(
                f"form part {self.parts} has no 'Content-Disposition: form-data; name=...'",
                hint="let the HTTP client build the form",
            )
        self.name = name = options[b"name"].decode("utf-8", "replace")[:100]
        filename = options.get(b"filename")
        if name not in self.file_fields:
            if filename is not None:
                where = " or ".join(repr(f) for f in self.file_fields) or "no part of this form"
                raise InvalidInput(f"form part {name!r} is a file", hint=f"files go in {where}")
            return
        if filename is None:
            raise InvalidInput(f"form part {name!r} must be a file", hint="send it with a filename")
        if name in self.result.files:
            raise InvalidInput(f"form part {name!r} is given twice", hint="send one file per part")
        clean = safe_filename(filename.decode("utf-8", "replace"))
        path = self.dest / f".part-{self.parts}-{clean}"  # distinct: one per part number
        media = self.headers.get("content-type", "")[:200] or "application/octet-stream"
        self.result.files[name] = UploadedFile(path, clean, 0, media)
        self.file = open(path, "wb")  # noqa: SIM115 (closed in on_part_end or close)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.file is not None:
            self.file.write(data[start:end])
        elif self.size > self.max_field:
            raise PayloadTooLarge(
                f"form field {self.name!r} is larger than {self.max_field} bytes",
                hint="send large values as a file part",
            )
        else:
            self.text += data[start:end]

    def on_part_end(self) -> None:
        if self.file is not None:
            self.close()
            self.result.files[self.name].size = self.size
            return
        try:
            value = self.text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"form field {self.name!r} is not UTF-8 text") from exc
        self.result.fields.setdefault(self.name, []).append(value)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


async def receive_multipart(
    request: Request,
    dest_dir: Path,
    *,
    limit: int,
    file_fields: tuple[str, ...] = ("file", "sample"),
    max_field_bytes: int = 64 * 1024,
    max_parts: int = 32,
) -> MultipartUpload:
    """Parse a ``multipart/form-data`` body while it streams: file parts into ``dest_dir``
    under distinct names (``filename`` is the client's, sanitised), text parts into
    ``fields``. Only ``file_fields`` may carry files, each at most once."""
    kind, raw = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise UnsupportedMedia(
            f"the body is {kind.decode('latin-1')[:100] or 'untyped'}, not multipart/form-data",
            hint="send the form as multipart/form-data",
        )
    boundary = {key.lower(): value for key, value in raw.items()}.get(b"boundary", b"")
    if not _BOUNDARY.fullmatch(boundary.decode("latin-1")) or boundary.endswith(b" "):
        raise BadRequest(
            "the multipart Content-Type has no valid boundary (1-70 characters, RFC 2046)",
            hint="let the HTTP client set the Content-Type of a form",
        )
    _check_declared(request, limit)
    sink = _FormSink(dest_dir, file_fields, max_field_bytes, max_parts)
    parser = MultipartParser(boundary, sink.callbacks())
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise BadRequest(
                    f"the multipart body is malformed: {str(exc)[:200]}",
                    hint="let the HTTP client build the form",
                ) from exc
        parser.finalize()
        if parser.state != MultipartState.END or sink.parts == 0:
            raise BadRequest(
                "the multipart body has no parts or ends before its closing boundary",
                hint="send the whole form (was the upload interrupted?)",
            )
    except BaseException:
        sink.close()
        for uploaded in sink.result.files.values():
            uploaded.path.unlink(missing_ok=True)
        raise
    return sink.result


# -- archives --------------------------------------------------------------------------------


def _refuse(name: str, what: str, hint: str | None = None) -> InvalidInput:
    return InvalidInput(f"archive member {name!r} {what}", hint=hint)


def _target(dest: Path, name: str) -> Path:
    """Where a member goes, refusing any name that could land outside ``dest``."""
    if "\\" in name or "\0" in name or re.match(r"[A-Za-z]:", name):
        raise _refuse(name, "has a Windows-style path or a NUL", PACK_HINT)
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise _refuse(name, "points outside the folder (absolute or '..')", PACK_HINT)
    return dest.joinpath(*path.parts)


def _member_kind(name: str, is_link: bool, is_plain: bool) -> None:
    if is_link:
        raise _refuse(name, "is a link", "archive plain files and folders only")
    if not is_plain:
        raise _refuse(name, "is not a file or a folder", "archive plain files and folders only")


class _Budget:
    """The bytes actually written, refused before the chunk that would pass the limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.written = limit, 0

    def mkdir(self, target: Path, name: str) -> None:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise _refuse(name, "clashes with another member") from exc

    def copy(self, source: IO[bytes], target: Path, name: str) -> None:
        self.mkdir(target.parent, name)
        try:
            out = open(target, "wb")  # noqa: SIM115
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise _refuse(name, "clashes with another member") from exc
        with out:
            while chunk := source.read(CHUNK):
                if self.written + len(chunk) > self.limit:
                    raise PayloadTooLarge(
                        f"the archive extracts to more than {self.limit} bytes "
                        f"(stopped in member {name!r})",
                        hint="raise LASTMILE_MAX_ARCHIVE_BYTES on the server",
                    )
                out.write(chunk)
                self.written += len(chunk)


def _too_many(max_members: int, detail: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the archive has more than {max_members} members{detail}",
        hint="raise LASTMILE_MAX_ARCHIVE_MEMBERS on the server",
    )


class _SafeTarInfo(tarfile.TarInfo):
    """Refuses pax / long-name headers that tarfile would otherwise read whole into memory."""

    def _proc_member(self, tar: tarfile.TarFile) -> Any:
        if self.type in _META_TYPES and self.size > _TAR_META:
            raise InvalidInput(
                f"a tar header block of {self.size} bytes is over {_TAR_META}",
                hint="archive plain files with short paths and no extended attributes",
            )
        return super()._proc_member(tar)  # type: ignore[misc]


def _extract_tar(fileobj: Any, dest: Path, budget: _Budget, max_members: int) -> None:
    """Stream mode: members are read in order, one at a time, and counted as they come."""
    with tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_SafeTarInfo) as tar:
        for count, member in enumerate(tar, start=1):
            if count > max_members:
                raise _too_many(max_members)
            name, target = member.name, _target(dest, member.name)
            _member_kind(name, member.issym() or member.islnk(), member.isfile() or member.isdir())
            try:
                tarfile.data_filter(member, str(dest))
            except tarfile.FilterError as exc:
                raise _refuse(name, f"is refused ({type(exc).__name__})", PACK_HINT) from exc
            if member.isdir():
                budget.mkdir(target, name)
                continue
            source = tar.extractfile(member)
            if source is None:
                raise _refuse(name, "cannot be read")
            with source:
                budget.copy(source, target, name)


def _check_zip_directory(archive: Path, max_members: int) -> None:
    """``ZipFile()`` turns the whole central directory into objects: a zip of millions of
    tiny entries is refused from its end record first (count and size; zip64 included)."""
    end_record = getattr(zipfile, "_EndRecData", None)  # private, stable since Python 2
    with open(archive, "rb") as fh:
        end = end_record(fh) if end_record is not None else None
    if end and end[4] > max_members:
        raise _too_many(max_members, f" ({end[4]})")
    if end and end[5] > max_members * 1024 + 65536:  # entries are 46 bytes + name + extras
        raise _too_many(max_members, f" (a central directory of {end[5]} bytes)")


def _extract_zip(archive: Path, dest: Path, budget: _Budget, max_members: int) -> None:
    _check_zip_directory(archive, max_members)
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()  # the central directory: counted before anything is written
        if len(members) > max_members:
            raise _too_many(max_members, f" ({len(members)})")
        for info in members:
            name, target = info.filename, _target(dest, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)
            _member_kind(name, kind == stat.S_IFLNK, kind in (0, stat.S_IFREG, stat.S_IFDIR))
            if info.flag_bits & 0x1:
                raise _refuse(name, "is encrypted", "zip it without a password")
            if info.is_dir():
                budget.mkdir(target, name)
                continue
            with zf.open(info) as source:
                budget.copy(source, target, name)


def extract_archive(archive: Path, dest: Path, *, max_total_bytes: int, max_members: int) -> int:
    """Extract a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` (told by content, not by name)
    into the existing empty folder ``dest``; returns the bytes written. On refusal ``dest`` is
    emptied again (the folder stays). Blocking CPU and disk work: async callers run it off the
    event loop with ``run_in_threadpool``."""
    budget = _Budget(max_total_bytes)
    with open(archive, "rb") as fh:
        head = fh.read(6)
    try:
        if head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, budget, max_members)
        elif head.startswith(b"\x1f\x8b"):
            with gzip.open(archive, "rb") as raw:
                _extract_tar(raw, dest, budget, max_members)
        elif not head.startswith((b"BZh", b"\xfd7zXZ")) and _is_tar(archive):
            with open(archive, "rb") as plain:
                _extract_tar(plain, dest, budget, max_members)
        else:
            raise UnsupportedMedia(
                "the upload is not a .tar.gz, .tar or .zip archive",
                hint="lastmile repo import DIR packs a folder for you",
            )
    except BaseException as exc:
        _empty(dest)
        server_side = isinstance(exc, OSError) and exc.errno is not None  # e.g. a full disk
        if server_side or not isinstance(exc, (*_CORRUPT, *_UNREADABLE)):
            raise
        what = "cannot be read" if isinstance(exc, _UNREADABLE) else "is corrupt or truncated"
        text = "" if getattr(exc, "filename", None) else str(exc)[:200]  # no server paths
        raise InvalidInput(
            f"the archive {what}: {text or type(exc).__name__}", hint=PACK_HINT
        ) from exc
    return budget.written


def _is_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except (OSError, EOFError, tarfile.TarError):
        return False


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
