"""Hostile input: every bad file fails with a reason or is skipped with one, the run completes,
and nothing already stored changes.

The corpus is generated here: zero-byte and truncated files of every supported type,
wrong extensions, a decompression-bomb PNG, a PDF with 3000 pages and one with a
huge page, a FIFO, a sparse file over the size limit, symlink loops, an unreadable
file, and unusual names (unicode, newlines, non-UTF-8 bytes, 60 nested directories).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from pipelines.engine import Engine

GOOD_TEXTS = {
    "word_processors.md": "pdf/groundtruth/docling__multi_page.docling.md",
    "crazy_ones.txt": "pdf/groundtruth/pypdf__crazyones.txt",
}
GOOD_QUERIES = ["early word processors and typewriters", "the crazy ones who see things differently",
                "a photo of people", "magnetic tape storage"]


# ---- generators -------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 15_000) -> None:
    """A real decompression bomb: a ``side`` x ``side`` greyscale PNG of zeros, a few hundred KB on disk."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    parts = [comp.compress(row * 500) for _ in range(side // 500)]
    parts.append(comp.compress(row * (side % 500)) + comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
    path.write_bytes(data + _png_chunk(b"IEND", b""))


def image_bytes(fmt: str) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 240), (30, 90, 200))
    ImageDraw.Draw(img).ellipse((60, 40, 260, 200), fill=(240, 200, 20))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def many_pages_pdf(path: Path, pages: int) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(72, 72)
    with open(path, "wb") as fh:
        writer.write(fh)


def huge_page_pdf(path: Path) -> None:
    """One 14400 x 14400 pt page (the PDF maximum) scaled by UserUnit 50: 200 m a side."""
    from pypdf import PdfWriter
    from pypdf.generic import FloatObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(14_400, 14_400)
    page[NameObject("/UserUnit")] = FloatObject(50)
    with open(path, "wb") as fh:
        writer.write(fh)


def mp3_bytes(wav: Path) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(str(wav)) as src, av.open(buf, "w", format="mp3") as dst:
        stream = dst.add_stream("libmp3lame", rate=16_000)
        for frame in src.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return buf.getvalue()


def truncated(data: bytes, keep: float) -> bytes:
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    return data[:n]


def build_hostile(root: Path, eval_dir: Path) -> dict[str, str]:
    """Write the must-fail corpus; returns {relative path: what it is}."""
    root.mkdir(parents=True)
    made: dict[str, str] = {}

    def put(name: str, data: bytes, what: str) -> None:
        (root / name).write_bytes(data)
        made[name] = what

    for ext in ("jpg", "png", "gif", "webp", "tif", "bmp", "pdf", "wav", "flac", "mp3", "mp4", "webm", "txt", "html"):
        put(f"empty.{ext}", b"", "zero bytes")
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")):
        put(f"truncated.{ext}", truncated(image_bytes(fmt), 0.5), f"{fmt} cut in half")
    put("truncated.pdf", truncated((eval_dir / "pdf/pypdf__crazyones.pdf").read_bytes(), 0.3), "PDF cut at 30%")
    wav = eval_dir / "audio/timit_LDC93S1.wav"
    put("truncated.wav", truncated(wav.read_bytes(), 40), "WAV header only")
    put("truncated.flac", truncated((eval_dir / "audio/jfk.flac").read_bytes(), 60), "FLAC header only")
    put("truncated.mp3", truncated(mp3_bytes(wav), 300), "MP3 cut after 300 bytes")
    put("truncated.mp4", truncated((eval_dir / "video/big_buck_bunny_small.mp4").read_bytes(), 2000), "MP4 first 2 KB")
    put("truncated.webm", truncated((eval_dir / "video/big_buck_bunny_0_30.webm").read_bytes(), 300), "WebM 300 bytes")
    put("png_as.pdf", image_bytes("PNG"), "PNG named .pdf")
    put("pdf_as.jpg", (eval_dir / "pdf/pypdf__crazyones.pdf").read_bytes(), "PDF named .jpg")
    put("jpeg_as.wav", image_bytes("JPEG"), "JPEG named .wav")
    put("binary_as.txt", bytes(range(256)) * 64, "binary bytes named .txt")
    bomb_png(root / "bomb.png")
    made["bomb.png"] = "15000 x 15000 PNG bomb"
    many_pages_pdf(root / "pages3000.pdf", 3000)
    made["pages3000.pdf"] = "3000 pages"
    with open(root / "sparse.txt", "wb") as fh:  # above ingest.max_file_bytes, no disk used
        fh.truncate(3 * 1024**3)
    made["sparse.txt"] = "3 GiB sparse file"
    os.mkfifo(root / "fifo.txt")
    made["fifo.txt"] = "a FIFO (reading it would block forever)"
    os.symlink(".", root / "loop")
    made["loop"] = "symlink to its own directory"
    os.symlink("self.txt", root / "self.txt")
    made["self.txt"] = "symlink to itself"
    os.symlink("missing.txt", root / "dangling.txt")
    made["dangling.txt"] = "dangling symlink"
    bad = os.fsencode(str(root)) + b"/latin1-caf\xe9.txt"
    with open(bad, "wb") as fh:
        fh.write(b"a file whose name is not UTF-8")
    made[os.fsdecode(b"latin1-caf\xe9.txt")] = "name not valid UTF-8"
    return made


def build_odd_names(root: Path, eval_dir: Path) -> dict[str, str]:
    """Valid files with hostile names or places; returns {relative path: a unique word in it}."""
    names = [
        "café naïve.txt", "cafe\u0301 decomposed.txt", "emoji 😀🎉.txt", "rtl \u202eevil\u202c.txt",
        "two\nlines.txt", "tab\there.txt", "carriage\rreturn.txt", "-rf --no-preserve-root.txt",
        "quotes 'single' \"double\" $HOME `cmd`.txt", "文件 ファイル.txt", "zero\u200bwidth.md", "x" * 240 + ".txt",
    ]
    deep = Path(*[f"level{i:02d}" for i in range(60)]) / "deep.txt"
    made: dict[str, str] = {}
    for i, name in enumerate(names + [str(deep)]):
        word = f"zorblax{i:02d}quint"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"The file {name!r} holds the marker {word} and a few plain words.\n", encoding="utf-8")
        made[name] = word
    html = "<html><body><h1>Partial page</h1><p>The marker zorblax90quint survives the cut</p><p>never closed"
    (root / "truncated.html").write_text(html, encoding="utf-8")
    made["truncated.html"] = "zorblax90quint"
    text = "The marker zorblax91quint is in a file cut inside a multibyte letter: é".encode()
    (root / "truncated_utf8.txt").write_bytes(text[:-1])
    made["truncated_utf8.txt"] = "zorblax91quint"
    huge_page_pdf(root / "huge_page.pdf")
    made["huge_page.pdf"] = ""
    return made


# ---- capabilities: make root obey file modes in one thread ---------------------------------------
def run_without_dac_override(fn):
    """Run ``fn()`` in a thread without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (threads it starts inherit
    that), so that even root gets EACCES from mode-000 files. Returns fn's result; skips if impossible."""
    import ctypes
    import threading

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    out: dict = {}

    def body() -> None:
        hdr, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, this thread
        if libc.capget(ctypes.byref(hdr), data) != 0:
            out["skip"] = f"capget failed (errno {ctypes.get_errno()})"
            return
        data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.capset(ctypes.byref(hdr), data) != 0:
            out["skip"] = f"capset failed (errno {ctypes.get_errno()})"
            return
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "skip" in out:
        pytest.skip(f"cannot drop capabilities to make permissions bite for root: {out['skip']}")
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- tests ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, eval_dir: Path, coco_photos: list[Path], text_encoder):
    """One engine (on the session's text model) with a good set ingested, and its observable snapshot."""
    root = tmp_path_factory.mktemp("hostile")
    good = root / "good"
    good.mkdir()
    for name, rel in GOOD_TEXTS.items():
        shutil.copy(eval_dir / rel, good / name)
    shutil.copy(coco_photos[0], good / "photo.jpg")
    shutil.copy(eval_dir / "pdf" / "pypdf__crazyones.pdf", good / "crazyones.pdf")
    eng = Engine.open(root / "store", overrides={"models.clip": "none", "pdf.ocr": "off"}, text=text_encoder)
    report = eng.ingest([good])
    assert report.added == 4 and not report.failed, report.to_dict()
    yield {"root": root, "eng": eng, "good": good, "before": snapshot(eng)}
    eng.close()


def snapshot(eng: Engine) -> dict:
    """Everything a user of the good set can observe: sources, items, ranked results."""
    catalog = eng.store.catalog
    sources = {s.uri: (s.status, s.content_hash, s.item_count) for s in catalog.sources(status="ok")}
    items = {uri: [(r.id, r.kind, r.locator, r.text, r.thumbnail) for r in catalog.items_of_source(uri)] for uri in sources}
    results = {q: [(h.item_id, round(h.score, 6)) for h in eng.search(text=q, k=6)] for q in GOOD_QUERIES}
    return {"sources": sources, "items": items, "results": results}


def _run_record(eng: Engine, run_id: int):
    from retriever.catalog.models import RunRow

    with eng.store.catalog.session() as s:
        return s.get(RunRow, run_id)


def _outcomes(report) -> dict[str, tuple[str, str]]:
    out = {p: ("failed", r) for p, r in report.failed}
    out.update({p: ("skipped", r) for p, r in report.skipped})
    return out


def test_hostile_files_fail_or_skip_with_reasons(env: dict, eval_dir: Path) -> None:
    eng, hostile = env["eng"], env["root"] / "hostile"
    made = build_hostile(hostile, eval_dir)
    for follow in (False, True):
        eng.config = eng.config.with_overrides({"ingest.follow_symlinks": follow})
        report = eng.ingest([hostile])
        outcome = _outcomes(report)
        assert (report.added, report.updated, report.items) == (0, 0, 0), report.to_dict()
        for name, what in made.items():
            key = os.fsencode(str(hostile / name)).decode("utf-8", "replace")
            assert key in outcome, f"{what} ({name!r}) was neither failed nor skipped: {sorted(outcome)}"
            assert len(outcome[key][1]) > 5, (name, outcome[key])
        failed = {s.uri: s.error for s in eng.store.catalog.sources(status="failed")}
        assert all(failed.get(path) == reason for path, reason in report.failed)  # the reasons are stored
        run = _run_record(eng, report.run_id)  # and the run finished, its summary logging every skip
        assert run.status == "ok" and len(run.summary["skipped"]) == len(report.skipped) > 0
        assert snapshot(eng) == env["before"]
    assert "symlink loop" in outcome[str(hostile / "loop")][1]
    assert "not a regular file" in outcome[str(hostile / "fifo.txt")][1]
    assert "max_image_pixels" in outcome[str(hostile / "bomb.png")][1]
    assert "pdf.max_pages" in outcome[str(hostile / "pages3000.pdf")][1]
    assert "not valid UTF-8" in outcome[os.fsencode(str(hostile)).decode() + "/latin1-caf\ufffd.txt"][1]
    assert eng.verify(check_files=False).ok
    eng.config = eng.config.with_overrides({"ingest.follow_symlinks": False})


def test_unreadable_file_and_directory_fail_with_reasons(env: dict) -> None:
    eng, root = env["eng"], env["root"] / "locked"
    (root / "closed").mkdir(parents=True)
    secret = root / "secret.txt"
    secret.write_text("you cannot read this file\n")
    (root / "closed" / "inside.txt").write_text("nor this one\n")
    secret.chmod(0)
    (root / "closed").chmod(0)
    try:
        def ingest():
            try:
                secret.read_bytes()
            except PermissionError:
                return eng.ingest([root])
            pytest.skip("file modes do not stop reads here (root with capabilities that cannot be dropped)")

        report = run_without_dac_override(ingest) if os.geteuid() == 0 else ingest()
    finally:
        secret.chmod(0o644)
        (root / "closed").chmod(0o755)
    outcome = _outcomes(report)
    assert outcome[str(secret)] == ("failed", "cannot read file: Permission denied")
    assert outcome[str(root / "closed")] == ("skipped", "cannot list directory: Permission denied")
    assert snapshot(eng) == env["before"]


def test_odd_names_deep_paths_and_odd_content_are_ingested(env: dict, eval_dir: Path) -> None:
    eng, root = env["eng"], env["root"] / "odd"
    made = build_odd_names(root, eval_dir)
    report = eng.ingest([root])
    assert not report.failed and not report.skipped, report.to_dict()
    assert report.added == len(made)
    for name, word in made.items():
        if not word:
            continue
        hits = eng.search(text=word, k=1, runs=["bm25"])
        assert hits and hits[0].source_uri == str(root / name), (name, [h.source_uri for h in hits])
        assert word in hits[0].text
    page = eng.store.catalog.items_of_source(str(root / "huge_page.pdf"))
    assert page and all(r.preview is None or (eng.store.root / r.preview).stat().st_size < 2_000_000 for r in page)
    before = env["before"]
    now = snapshot(eng)
    assert now["sources"] == {**before["sources"], **{u: now["sources"][u] for u in now["sources"] if u.startswith(str(root))}}
    assert {u: now["items"][u] for u in before["items"]} == before["items"]
    assert eng.remove([str(root)]) == len(made)
    assert snapshot(eng) == before
    assert eng.verify(check_files=False).clean


def test_the_bomb_is_a_real_bomb(tmp_path: Path) -> None:
    """A few hundred KB that inflate to 225 million pixels (the ingest test rejects it from the header)."""
    from PIL import Image

    path = tmp_path / "b.png"
    bomb_png(path)
    data = path.read_bytes()
    assert len(data) < 1_000_000 and struct.unpack(">II", data[16:24]) == (15_000, 15_000)
    inflate, total, idat = zlib.decompressobj(), 0, data[41:-12]  # IDAT payload (after IHDR, before CRC+IEND)
    chunk = inflate.decompress(idat, 1 << 24)
    while chunk:
        total += len(chunk)
        chunk = inflate.decompress(inflate.unconsumed_tail, 1 << 24)
    assert total == 15_000 * 15_001
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
