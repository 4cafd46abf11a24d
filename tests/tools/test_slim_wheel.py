"""tools/slim_wheel.py: only the other architectures' payloads become zeros; everything else stays byte for byte."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zipfile
from pathlib import Path

import pytest
from checkout_tools import tool

LIB = "pkg/capi/libkernels.so"
RECORD = "pkg-1.0.dist-info/RECORD"


@pytest.fixture(scope="module")
def slim():
    return tool("slim_wheel")


def entry(arch: int, payload: bytes, kind: int = 2) -> bytes:
    header = bytearray(64)
    struct.pack_into("<HHIQ", header, 0, kind, 0x101, len(header), len(payload))
    struct.pack_into("<I", header, 28, arch)
    return bytes(header) + payload


def container(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def elf_with_fatbin(fatbin: bytes, text: bytes) -> bytes:
    """A little-endian ELF64 with sections .text, .nv_fatbin and the section-name table (enough for the parser)."""
    names = b"\0.text\0.nv_fatbin\0.shstrtab\0"
    body = text + fatbin + names
    shoff = 64 + len(body)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 4, 3)

    def section(name: int, offset: int, size: int) -> bytes:
        s = bytearray(64)
        struct.pack_into("<I", s, 0, name)
        struct.pack_into("<QQ", s, 0x18, offset, size)
        return bytes(s)

    sections = (
        bytes(64)
        + section(1, 64, len(text))
        + section(7, 64 + len(text), len(fatbin))
        + section(18, 64 + len(text) + len(fatbin), len(names))
    )
    return bytes(header) + body + sections


@pytest.fixture
def parts():
    sm80, sm90, ptx90 = os.urandom(1000), os.urandom(700), os.urandom(300)
    # two containers with alignment padding between them, as nvcc lays them out
    fatbin = container(entry(80, sm80), entry(90, sm90)) + bytes(8) + container(entry(90, ptx90, kind=1))
    return {"sm80": sm80, "sm90": sm90, "ptx90": ptx90, "elf": elf_with_fatbin(fatbin, os.urandom(256))}


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.fixture
def wheel(tmp_path, parts) -> Path:
    path = tmp_path / "pkg-1.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    other = b"print('hello')\n"
    record = f"{LIB},{record_hash(parts['elf'])},{len(parts['elf'])}\npkg/__init__.py,x,1\n{RECORD},,\n"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo(LIB)
        info.external_attr = 0o100755 << 16
        z.writestr(info, parts["elf"])
        z.writestr("pkg/__init__.py", other)
        z.writestr(RECORD, record)
    return path


def test_entries_are_found_with_their_archs(slim, parts):
    section = slim.fatbin_section(parts["elf"])
    entries = slim.fatbin_entries(parts["elf"], section)
    assert [(e.arch, e.kind, e.payload_size) for e in entries] == [(80, 2, 1000), (90, 2, 700), (90, 1, 300)]
    assert parts["elf"][entries[1].payload_offset : entries[1].payload_offset + 700] == parts["sm90"]


def test_only_other_archs_are_blanked(slim, parts):
    blob = bytearray(parts["elf"])
    zeroed, archs = slim.blank_other_archs(blob, {90})
    assert (zeroed, archs) == (1000, {80, 90})
    assert len(blob) == len(parts["elf"])
    at = parts["elf"].index(parts["sm80"])
    assert blob[at : at + 1000] == bytes(1000)
    # everything but the sm_80 payload is unchanged, headers included
    assert blob[:at] == parts["elf"][:at] and blob[at + 1000 :] == parts["elf"][at + 1000 :]


def test_a_library_without_the_kept_arch_is_refused(slim, parts):
    with pytest.raises(slim.SlimError, match=r"no device code for sm_\[100\].*sm_\[80, 90\]"):
        slim.blank_other_archs(bytearray(parts["elf"]), {100})


def test_slim_wheel_rewrites_the_library_and_its_record(slim, wheel, parts, tmp_path, capsys):
    out = tmp_path / "slim"
    assert slim.main([str(wheel), "--keep-sm", "90", "--out", str(out)]) == 0
    assert "sm_[80, 90] found, 0.0 MB of other archs blanked" in capsys.readouterr().out
    with zipfile.ZipFile(out / wheel.name) as z:
        assert z.testzip() is None
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
        lib = z.read(LIB)
        assert (z.getinfo(LIB).external_attr >> 16) & 0o777 == 0o755
        assert z.read("pkg/__init__.py") == b"print('hello')\n"
        record = z.read(RECORD).decode().splitlines()
    assert parts["sm80"] not in lib and parts["sm90"] in lib and parts["ptx90"] in lib
    assert record[0] == f"{LIB},{record_hash(lib)},{len(lib)}"
    assert record[1:] == ["pkg/__init__.py,x,1", f"{RECORD},,"]


def test_a_wheel_without_device_code_is_refused(slim, tmp_path, capsys):
    path = tmp_path / "plain-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("plain/__init__.py", "")
        z.writestr("plain-1.0.dist-info/RECORD", "")
    assert slim.main([str(path), "--keep-sm", "90", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "holds no library with CUDA device code" in err
    assert not (tmp_path / "o" / path.name).exists()
