"""Uploads and archives against hostile input: limits hold while streaming, nothing lands
outside the destination, and every refusal leaves nothing behind."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import itertools
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from manager.api import uploads
from manager.api.uploads import (
    CHUNK,
    extract_archive,
    receive_multipart,
    receive_raw,
    safe_filename,
)
from manager.errors import (
    BadRequest,
    InvalidInput,
    LastmileError,
    PayloadTooLarge,
    UnsupportedMedia,
)

MiB = 1024 * 1024
LIMIT = 256 * 1024
BOUNDARY = "lastmile-test-boundary"


# -- archives ---------------------------------------------------------------------------------


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, size, link, 0o644
    return info


def _tar(
    path: Path,
    members: list[tuple[str, bytes | None]],
    *,
    mode: Literal["w", "w:gz"] = "w:gz",
    extra: tuple[tarfile.TarInfo, ...] = (),
) -> Path:
    """``(name, data)``: data None is a folder; ``extra`` adds raw TarInfo members."""
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            if data is None:
                tar.addfile(_info(name, tarfile.DIRTYPE))
            else:
                tar.addfile(_info(name, size=len(data)), io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"\0" * info.size) if info.size else None)
    return path


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "dest"
    folder.mkdir()
    return folder


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Observes every byte the module writes to disk (a spy on ``open``; behaviour unchanged):
    one running count per file opened for writing."""
    sizes: list[int] = []

    class Counting(io.FileIO):
        index = 0

        def write(self, data: Any) -> int:
            sizes[self.index] += len(data)
            return super().write(data)

    def spy(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" not in mode:
            return open(file, mode, *args, **kwargs)
        sizes.append(0)
        handle = Counting(file, "w")
        handle.index = len(sizes) - 1
        return handle

    monkeypatch.setattr(uploads, "open", spy, raising=False)
    return sizes


def _refused(kind: type[LastmileError], archive: Path, dest: Path, **limits: int) -> str:
    limits = {"max_total_bytes": 10 * MiB, "max_members": 100, **limits}
    with pytest.raises(LastmileError) as caught:
        extract_archive(archive, dest, **limits)
    assert type(caught.value) is kind, caught.value
    assert list(dest.iterdir()) == [], "a refusal leaves the destination empty"
    assert str(dest.parent) not in str(caught.value), "no server paths in messages"
    return str(caught.value)


def test_a_good_tar_gz_extracts_nested_folders(tmp_path: Path, dest: Path) -> None:
    archive = _tar(
        tmp_path / "repo.tgz",
        [("./", None), ("./m", None), ("./m/config.pbtxt", b'name: "m"'), ("./m/1/a.onnx", b"x")],
    )
    assert extract_archive(archive, dest, max_total_bytes=MiB, max_members=4) == 10
    assert (dest / "m" / "config.pbtxt").read_bytes() == b'name: "m"'
    assert (dest / "m" / "1" / "a.onnx").read_bytes() == b"x"


def test_a_plain_tar_and_a_misnamed_archive_are_told_by_content(tmp_path: Path, dest: Path) -> None:
    archive = _tar(tmp_path / "repo.zip", [("m/1/model.onnx", b"abc")], mode="w")
    assert extract_archive(archive, dest, max_total_bytes=MiB, max_members=10) == 3
    assert (dest / "m" / "1" / "model.onnx").read_bytes() == b"abc"


def test_a_good_zip_extracts_nested_folders(tmp_path: Path, dest: Path) -> None:
    archive = _zip(
        tmp_path / "repo.tar.gz", [("m/", b""), ("m/config.pbtxt", b"cfg"), ("m/1/a", b"12")]
    )
    assert extract_archive(archive, dest, max_total_bytes=MiB, max_members=3) == 5
    assert (dest / "m" / "config.pbtxt").read_bytes() == b"cfg"
    assert (dest / "m" / "1" / "a").read_bytes() == b"12"


def test_a_tar_gz_bomb_stops_at_the_limit_having_written_no_more(
    tmp_path: Path, dest: Path, written: list[int]
) -> None:
    archive = _tar(tmp_path / "bomb.tgz", [("m/1/model.onnx", b"\0" * (20 * MiB))])
    assert archive.stat().st_size < 64 * 1024  # 20 MiB in a few KiB
    message = _refused(PayloadTooLarge, archive, dest, max_total_bytes=MiB)
    assert f"more than {MiB} bytes" in message and "LASTMILE_MAX_ARCHIVE_BYTES" in message
    assert "m/1/model.onnx" in message
    assert 0 < sum(written) <= MiB + CHUNK


def test_a_zip_bomb_stops_at_the_limit_having_written_no_more(
    tmp_path: Path, dest: Path, written: list[int]
) -> None:
    archive = _zip(tmp_path / "bomb.zip", [(f"m/{i}.bin", b"\0" * (4 * MiB)) for i in range(5)])
    assert archive.stat().st_size < 200 * 1024
    _refused(PayloadTooLarge, archive, dest, max_total_bytes=MiB)
    assert sum(written) <= MiB + CHUNK


def test_the_member_count_is_limited_in_a_tar(tmp_path: Path, dest: Path) -> None:
    archive = _tar(tmp_path / "many.tgz", [(f"m/{i}.txt", b"x") for i in range(11)])
    message = _refused(PayloadTooLarge, archive, dest, max_members=10)
    assert "more than 10" in message and "LASTMILE_MAX_ARCHIVE_MEMBERS" in message
    exactly = _tar(tmp_path / "ten.tgz", [(f"m/{i}.txt", b"x") for i in range(10)])
    assert extract_archive(exactly, dest, max_total_bytes=MiB, max_members=10) == 10


def test_the_member_count_of_a_zip_is_refused_before_anything_is_written(
    tmp_path: Path, dest: Path, written: list[int]
) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"m/{i}.txt", b"x") for i in range(11)])
    message = _refused(PayloadTooLarge, archive, dest, max_members=10)
    assert "more than 10 members (11)" in message and "LASTMILE_MAX_ARCHIVE_MEMBERS" in message
    assert written == []


def test_a_zip_that_under_declares_its_entries_is_refused_by_directory_size(
    tmp_path: Path, dest: Path, written: list[int]
) -> None:
    archive = _zip(tmp_path / "lying.zip", [(f"m/{i}.txt", b"") for i in range(2000)])
    data = bytearray(archive.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    data[end + 8 : end + 12] = (1).to_bytes(2, "little") * 2  # "1 entry" on this disk, in all
    archive.write_bytes(bytes(data))
    assert "central directory of" in _refused(PayloadTooLarge, archive, dest, max_members=10)
    assert written == []


@pytest.mark.parametrize(
    "bad",
    [
        _info("../evil.txt", size=1),
        _info("/etc/evil.txt", size=1),
        _info("m/../../evil.txt", size=1),
        _info("m/link", tarfile.SYMTYPE, link="/etc/passwd"),
        _info("m/inside", tarfile.SYMTYPE, link="config.pbtxt"),
        _info("m/hard", tarfile.LNKTYPE, link="m/config.pbtxt"),
        _info("m/fifo", tarfile.FIFOTYPE),
        _info("m/tty", tarfile.CHRTYPE),
        _info("m\\..\\..\\evil.txt", size=1),
    ],
    ids=lambda info: f"{info.name}-{info.type.decode()}",
)
def test_tar_traversal_links_and_devices_are_refused_not_skipped(
    tmp_path: Path, dest: Path, bad: tarfile.TarInfo
) -> None:
    archive = _tar(tmp_path / "bad.tgz", [("m/config.pbtxt", b"cfg")], extra=(bad,))
    message = _refused(InvalidInput, archive, dest)
    assert repr(bad.name) in message
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    "name", ["../evil.txt", "/etc/evil.txt", "m/../../evil.txt", "..\\evil.txt", "C:/evil.txt"]
)
def test_zip_traversal_names_are_refused(tmp_path: Path, dest: Path, name: str) -> None:
    info = zipfile.ZipInfo("placeholder")
    info.filename = name  # ZipInfo() would normalise the name; an attacker's zip does not
    archive = _zip(tmp_path / "bad.zip", [("m/config.pbtxt", b"cfg"), (info, b"x")])
    assert repr(name) in _refused(InvalidInput, archive, dest)
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_and_encrypted_members_are_refused(tmp_path: Path, dest: Path) -> None:
    link = zipfile.ZipInfo("m/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(tmp_path / "link.zip", [("m/a", b"x"), (link, b"/etc/passwd")])
    assert "is a link" in _refused(InvalidInput, archive, dest)
    archive = _zip(tmp_path / "secret.zip", [("m/secret", b"x")])
    data = bytearray(archive.read_bytes())  # zipfile cannot encrypt: set the flag by hand
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(signature) + offset] |= 0x1
    archive.write_bytes(bytes(data))
    assert "encrypted" in _refused(InvalidInput, archive, dest)


def test_corrupt_archives_are_refused_with_a_clear_message(tmp_path: Path, dest: Path) -> None:
    good = _tar(tmp_path / "good.tgz", [(f"m/{i}.bin", bytes(range(256)) * 400) for i in range(4)])
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "corrupt or truncated" in _refused(InvalidInput, truncated, dest)
    not_a_tar = tmp_path / "not-a-tar.gz"
    not_a_tar.write_bytes(gzip.compress(b"not a tar"))
    assert "corrupt or truncated" in _refused(InvalidInput, not_a_tar, dest)
    zipped = _zip(tmp_path / "good.zip", [("m/a.bin", bytes(range(256)) * 400)])
    data = bytearray(zipped.read_bytes())
    data[60:80] = b"\xff" * 20  # inside the compressed data
    (tmp_path / "flipped.zip").write_bytes(bytes(data))
    _refused(InvalidInput, tmp_path / "flipped.zip", dest)
    (tmp_path / "cut.zip").write_bytes(bytes(data[: len(data) // 2]))
    _refused(InvalidInput, tmp_path / "cut.zip", dest)


def test_other_formats_are_unsupported_media(tmp_path: Path, dest: Path) -> None:
    text = tmp_path / "notes.tgz"
    text.write_bytes(b"just some text, not an archive")
    assert ".tar.gz, .tar or .zip" in _refused(UnsupportedMedia, text, dest)
    raw = _tar(tmp_path / "x.tar", [("m/a", b"x")], mode="w").read_bytes()
    (tmp_path / "x.tar.bz2").write_bytes(bz2.compress(raw))
    _refused(UnsupportedMedia, tmp_path / "x.tar.bz2", dest)


def test_an_oversized_tar_header_is_refused_before_it_is_read(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "pax.tgz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = _info("m/a", size=1)
        info.pax_headers = {"comment": "x" * (2 * MiB)}
        tar.addfile(info, io.BytesIO(b"x"))
    assert "tar header block" in _refused(InvalidInput, archive, dest)


def test_members_that_clash_are_refused(tmp_path: Path, dest: Path) -> None:
    archive = _tar(tmp_path / "clash.tgz", [("m", b"a file"), ("m/a", b"x")])
    assert "clashes" in _refused(InvalidInput, archive, dest)


# -- request bodies ---------------------------------------------------------------------------


def _problem(exc: LastmileError) -> JSONResponse:
    body = {"type": type(exc).__name__, "detail": exc.message, "hint": exc.hint}
    return JSONResponse(body, status_code=exc.status_code)


def _harness(folder: Path, **options: Any) -> TestClient:
    """A minimal app calling the functions under test; it reports results or errors."""

    async def raw(request: Request) -> JSONResponse:
        try:
            return JSONResponse({"size": await receive_raw(request, folder / "body", limit=LIMIT)})
        except LastmileError as exc:
            return _problem(exc)

    async def form(request: Request) -> JSONResponse:
        try:
            result = await receive_multipart(request, folder, limit=LIMIT, **options)
        except LastmileError as exc:
            return _problem(exc)
        files = {
            name: {
                "filename": f.filename,
                "size": f.size,
                "content_type": f.content_type,
                "data": f.path.read_bytes().decode(),
                "stored_as": f.path.name,
                "in_folder": f.path.parent == folder,
            }
            for name, f in result.files.items()
        }
        return JSONResponse({"files": files, "fields": result.fields})

    routes = [Route("/raw", raw, methods=["POST"]), Route("/form", form, methods=["POST"])]
    return TestClient(Starlette(routes=routes))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "uploads"
    path.mkdir()
    return path


def _body(*parts: tuple[str, str | None, bytes], boundary: str = BOUNDARY) -> bytes:
    """``(name, filename, data)`` parts as a multipart/form-data body."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data"
FORM = {"content-type": f"{MULTIPART}; boundary={BOUNDARY}"}
BIT = ("n", None, b"1")
NO_DISPOSITION = f"--{BOUNDARY}\r\nX-A: b\r\n\r\nv\r\n--{BOUNDARY}--\r\n".encode()


def _chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_raw_body_is_streamed_to_disk(folder: Path) -> None:
    r = _harness(folder).post("/raw", content=b"model bytes")
    assert r.json() == {"size": 11}
    assert (folder / "body").read_bytes() == b"model bytes"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_raw_body_over_the_limit_is_413_and_removed(folder: Path, declared: bool) -> None:
    data = b"x" * (LIMIT + 1)
    r = _harness(folder).post("/raw", content=data if declared else _chunks(data))
    assert r.status_code == 413, r.text
    assert f"{LIMIT} bytes" in r.json()["detail"]
    assert "LASTMILE_MAX_UPLOAD_BYTES" in r.json()["hint"]
    assert list(folder.iterdir()) == []


def test_an_empty_raw_body_is_refused(folder: Path) -> None:
    r = _harness(folder).post("/raw", content=b"")
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert list(folder.iterdir()) == []


def _drive(call: Any, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[Any, int]:
    """Call ``call(request)`` on a request whose body arrives one ASGI message per chunk;
    returns the result (or the error raised) and how many chunks were pulled."""
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": raw_headers}

    async def run() -> Any:
        try:
            return await call(Request(scope, receive))
        except LastmileError as exc:
            return exc

    return asyncio.run(run()), pulled


def test_bodies_are_refused_as_soon_as_they_pass_the_limit(folder: Path) -> None:
    endless = iter(lambda: b"x" * 64 * 1024, None)
    result, pulled = _drive(lambda r: receive_raw(r, folder / "body", limit=LIMIT), {}, endless)
    assert isinstance(result, PayloadTooLarge) and pulled == LIMIT // (64 * 1024) + 1
    head = _body(("file", "m.onnx", b""))[: -len(f"\r\n--{BOUNDARY}--\r\n")]
    form = itertools.chain([head], iter(lambda: b"y" * 64 * 1024, None))
    result, pulled = _drive(lambda r: receive_multipart(r, folder, limit=LIMIT), FORM, form)
    assert isinstance(result, PayloadTooLarge) and pulled <= LIMIT // (64 * 1024) + 2
    assert list(folder.iterdir()) == [], "the partly written file part is removed"


def test_a_good_form_keeps_files_samples_and_repeated_fields(folder: Path) -> None:
    r = _harness(folder).post(
        "/form",
        files=[
            ("file", ("model.onnx", b"onnx bytes", "application/octet-stream")),
            ("sample", ("rows.npz", b"npz", "application/x-npz")),
        ],
        data={"inputs": ["x:FP32:1,4", "y:INT64:1"], "note": "hello"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fields"] == {"inputs": ["x:FP32:1,4", "y:INT64:1"], "note": ["hello"]}
    model, sample = body["files"]["file"], body["files"]["sample"]
    assert (model["filename"], model["size"], model["data"]) == ("model.onnx", 10, "onnx bytes")
    assert (sample["filename"], sample["content_type"]) == ("rows.npz", "application/x-npz")
    assert model["stored_as"] != sample["stored_as"] and model["in_folder"]


@pytest.mark.parametrize(
    ("given", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\model v2.onnx", "model_v2.onnx"),
        ("...", "upload"),
        (".bashrc", "bashrc"),
        ("ü" * 300 + ".onnx", "_" * 100),
        ("", "upload"),
    ],
)
def test_client_file_names_are_sanitised(folder: Path, given: str, clean: str) -> None:
    assert safe_filename(given) == clean
    r = _harness(folder).post("/form", content=_body(("file", given, b"x")), headers=FORM)
    assert r.json()["files"]["file"]["filename"] == clean


def test_a_filename_with_traversal_is_stored_inside_the_folder(folder: Path) -> None:
    body = _body(("file", "../../etc/passwd", b"x"))
    r = _harness(folder).post("/form", content=body, headers=FORM)
    assert r.json()["files"]["file"]["filename"] == "passwd"
    assert r.json()["files"]["file"]["in_folder"]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_form_over_the_limit_is_413_and_leaves_the_folder_empty(
    folder: Path, declared: bool
) -> None:
    data = _body(("note", None, b"n"), ("file", "m.onnx", b"x" * LIMIT))
    r = _harness(folder).post("/form", content=data if declared else _chunks(data), headers=FORM)
    assert r.status_code == 413, r.text
    assert "LASTMILE_MAX_UPLOAD_BYTES" in r.json()["hint"]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("parts", "status", "needle"),
    [
        ([("note", None, b"x" * 1025)], 413, "'note' is larger than 1024 bytes"),
        ([("n", None, b"1")] * 5, 413, "more than 4 parts"),
        ([("weights", "w.bin", b"x")], 422, "'weights' is a file"),
        ([("file", None, b"not a file")], 422, "'file' must be a file"),
        ([("file", "a.onnx", b"1"), ("file", "b.onnx", b"2")], 422, "given twice"),
        ([("note", None, b"\xff\xfe")], 422, "not UTF-8"),
    ],
    ids=[
        "field-too-large",
        "too-many-parts",
        "file-under-unknown-name",
        "text-under-file-name",
        "file-twice",
        "not-utf8",
    ],
)
def test_bad_parts_are_refused_and_leave_nothing(
    folder: Path, parts: list[tuple[str, str | None, bytes]], status: int, needle: str
) -> None:
    client = _harness(folder, max_field_bytes=1024, max_parts=4)
    r = client.post("/form", content=_body(("file", "m.onnx", b"model"), *parts), headers=FORM)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("content_type", "body", "status", "kind"),
    [
        (MULTIPART, _body(BIT), 400, BadRequest),
        (f"{MULTIPART}; boundary=", _body(BIT), 400, BadRequest),
        (f"{MULTIPART}; boundary={'b' * 71}", _body(BIT, boundary="b" * 71), 400, BadRequest),
        (FORM["content-type"], b"this is not a multipart body at all", 400, BadRequest),
        (FORM["content-type"], _body(BIT)[:-10], 400, BadRequest),
        (FORM["content-type"], NO_DISPOSITION, 400, BadRequest),
        ("application/json", b'{"a": 1}', 415, UnsupportedMedia),
        ("", b"raw", 415, UnsupportedMedia),
    ],
    ids=[
        "no-boundary",
        "empty-boundary",
        "long-boundary",
        "garbage",
        "truncated",
        "no-disposition",
        "json",
        "untyped",
    ],
)
def test_malformed_forms_and_other_media_are_refused(
    folder: Path, content_type: str, body: bytes, status: int, kind: type[LastmileError]
) -> None:
    r = _harness(folder).post("/form", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    assert r.json()["type"] == kind.__name__ and r.json()["hint"]
    assert list(folder.iterdir()) == []
