"""Page renders and embedded raster figures of a PDF page (pdfium).

Figures are found as image page objects (also inside Form XObjects, whose matrices
are composed so the box is on the page) and decoded by pdfium, which handles every
standard filter (DCT, JPX, JBIG2, CCITT, Flate, ...). Before anything is decoded the
candidates are filtered on what the object says about itself: tiny decorations
(icons, bullets) and rules (absurd aspect ratios) are dropped, as are page-size
backgrounds (a scanned page's image *is* the page render) and repeats of an image
already taken from this document (logos on every page).

All pdfium calls here must run under the caller's pdfium lock.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from indexers.pdf.text import Box, PageGeometry

__all__ = ["FigureRef", "Render", "decode_figure", "is_blank", "list_figures", "render_page", "skip_reason"]

MAX_ASPECT = 20.0  # longer side / shorter side above this: a rule or a border, not a figure
FULL_PAGE = 0.85  # share of the page area above which an image is the page's background
MAX_FIGURE_SIDE = 2048  # decoded figures are downscaled to this on the longest side


@dataclass(frozen=True)
class FigureRef:
    """An image object on a page, described before decoding."""

    index: int  # position among the page's image objects, in content order
    width_px: int
    height_px: int
    bbox: Box | None  # (x0, top, x1, bottom) on the displayed page, points
    coverage: float  # share of the page area the image covers
    filters: tuple[str, ...]
    key: str  # identifies the image stream (dedup within a document)


def _image_objects(page: Any, max_depth: int = 8) -> list[Any]:
    """Image objects of the page, descending into Form XObjects, in content order.

    Walks the raw handles and wraps only images and forms: pages of vector art can
    hold 100k+ path objects, and a Python wrapper per object would dominate.
    """
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    out: list[Any] = []

    def walk(form: Any, level: int) -> None:
        if form is None:
            count, get = pdfium_c.FPDFPage_CountObjects(page), lambda j: pdfium_c.FPDFPage_GetObject(page, j)
        else:
            count, get = (
                pdfium_c.FPDFFormObj_CountObjects(form),
                lambda j: pdfium_c.FPDFFormObj_GetObject(form, j),
            )
        for j in range(max(0, count)):
            raw = get(j)
            kind = pdfium_c.FPDFPageObj_GetType(raw) if raw else None
            if kind == pdfium_c.FPDF_PAGEOBJ_IMAGE:
                out.append(pdfium.PdfObject(raw, page=page, container=form, level=level))
            elif kind == pdfium_c.FPDF_PAGEOBJ_FORM and level < max_depth:
                walk(pdfium.PdfObject(raw, page=page, container=form, level=level), level + 1)

    walk(None, 0)
    return out


def _page_box(obj: Any, geom: PageGeometry) -> Box | None:
    """The object's bounds in page space (composing enclosing forms' matrices), displayed."""
    l, b, r, t = obj.get_bounds()
    pts = [(l, b), (l, t), (r, b), (r, t)]
    container = obj.container
    depth = 0
    while container is not None and depth < 16:
        m = container.get_matrix()
        pts = [m.on_point(x, y) for x, y in pts]
        container = container.container
        depth += 1
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    return geom.to_view(min(xs), min(ys), max(xs), max(ys))


def _stream_key(obj: Any, w: int, h: int) -> str:
    try:
        data = obj.get_data(decode_simple=False)
        digest = hashlib.sha1(bytes(data)).hexdigest()[:16]
    except Exception:  # noqa: BLE001 - pdfium refuses raw data for some streams; fall back to geometry
        digest = "nodata"
    return f"{w}x{h}:{digest}"


def list_figures(page: Any, geom: PageGeometry) -> tuple[list[Any], list[FigureRef]]:
    """Image objects of the page and their descriptions (same order)."""
    objs = _image_objects(page)
    page_area = max(1e-6, geom.width * geom.height)
    refs = []
    for i, obj in enumerate(objs):
        w, h = (int(v) for v in obj.get_px_size())
        bbox = _page_box(obj, geom)
        area = 0.0 if bbox is None else (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
        try:
            filters = tuple(str(f) for f in obj.get_filters())
        except Exception:  # noqa: BLE001 - a broken /Filter entry: still a candidate
            filters = ()
        refs.append(FigureRef(i, w, h, bbox, min(1.0, area / page_area), filters, _stream_key(obj, w, h)))
    return objs, refs


def skip_reason(ref: FigureRef, min_px: int, max_pixels: int, seen: set[str]) -> str | None:
    """Why a figure candidate is not worth an item (None: keep it)."""
    w, h = ref.width_px, ref.height_px
    if w < min_px or h < min_px:
        return "small"
    if max(w, h) / max(1, min(w, h)) > MAX_ASPECT:
        return "thin"
    if ref.bbox is None:
        return "off-page"
    bw, bh = ref.bbox[2] - ref.bbox[0], ref.bbox[3] - ref.bbox[1]
    if bw < min_px / 2 or bh < min_px / 2:
        return "small"  # shown as an icon, whatever its pixel size
    if ref.coverage >= FULL_PAGE:
        return "full-page"
    if ref.key in seen:
        return "repeat"
    if w * h > max_pixels:
        return "too-large"
    return None


def decode_figure(obj: Any) -> Any:
    """Decode an image object to an RGB PIL image (at most ``MAX_FIGURE_SIDE`` on a side)."""
    bitmap = obj.get_bitmap(render=False)
    try:
        image = _bitmap_rgb(bitmap)
    finally:
        bitmap.close()
    if max(image.size) > MAX_FIGURE_SIDE:
        image.thumbnail((MAX_FIGURE_SIDE, MAX_FIGURE_SIDE))
    return image


def _bitmap_rgb(bitmap: Any) -> Any:
    """Copy a pdfium bitmap into an RGB PIL image (alpha composited on white)."""
    from PIL import Image

    bitmap.warn_on_close = False  # safe: the pixels are copied out before it is closed
    pil = bitmap.to_pil()
    if pil.mode in ("RGBA", "LA"):
        background = Image.new("RGB", pil.size, (255, 255, 255))
        background.paste(pil, mask=pil.getchannel("A"))
        return background
    return pil.convert("RGB")  # always a copy, independent of pdfium's buffer


def is_blank(image: Any) -> bool:
    """True when a render is (nearly) uniform: nothing on the page to read."""
    lo, hi = image.convert("L").getextrema()
    return hi - lo < 16


@dataclass(frozen=True)
class Render:
    image: Any  # PIL RGB
    dpi: float  # effective resolution (lower than asked when the pixel limit applied)


def render_scale(geom: PageGeometry, dpi: float, max_pixels: int) -> float:
    """pdfium scale for ``dpi``, reduced so the bitmap stays within ``max_pixels``."""
    scale = dpi / 72.0
    pixels = (geom.width * scale) * (geom.height * scale)
    if pixels > max_pixels:
        scale *= math.sqrt(max_pixels / pixels)
    return scale


def render_page(page: Any, geom: PageGeometry, dpi: float, max_pixels: int) -> Render:
    """Render the displayed page (rotation applied) as RGB on white."""
    scale = render_scale(geom, dpi, max_pixels)
    bitmap = page.render(scale=scale, may_draw_forms=True)
    try:
        image = _bitmap_rgb(bitmap)
    finally:
        bitmap.close()
    return Render(image, scale * 72.0)
