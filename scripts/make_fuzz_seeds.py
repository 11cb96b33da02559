"""Writes the image seed corpus of the `decode_image` fuzz target and the
CMYK JPEG fixture of the dataset tests (`pip install pillow`, then run from
the repository root). The outputs are committed; this records how they were
made. Images are tiny so that the fuzzer spends its time on mutations, and
cover each colour type and container the loader must handle deliberately.
"""
from pathlib import Path

from PIL import Image

SEEDS = Path("fuzz/seeds/decode_image")
FIXTURES = Path("tests/fixtures")


def gradient(mode, size=(8, 6)):
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(x * 30, y * 40, (x + y) * 15) for y in range(h) for x in range(w)])
    return img.convert(mode)


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def quadrants_cmyk():
    """16 x 16: red, green / blue, black quadrants, in CMYK inks."""
    inks = {(0, 0): (0, 255, 255, 0), (1, 0): (255, 0, 255, 0),
            (0, 1): (255, 255, 0, 0), (1, 1): (0, 0, 0, 255)}
    img = Image.new("CMYK", (16, 16))
    img.putdata([inks[(x // 8, y // 8)] for y in range(16) for x in range(16)])
    return img


def main():
    SEEDS.mkdir(parents=True, exist_ok=True)
    for mode, name in [("RGB", "rgb"), ("L", "gray"), ("LA", "gray-alpha"),
                       ("RGBA", "rgba"), ("1", "bilevel"), ("I;16", "gray16")]:
        gradient(mode).save(SEEDS / f"{name}.png")
    gradient("P").save(SEEDS / "palette-transparent.png", transparency=0)
    gradient("RGB").save(SEEDS / "rgb.jpg", quality=80)
    gradient("L").save(SEEDS / "gray.jpg", quality=80)
    gradient("RGB", (16, 12)).save(SEEDS / "progressive.jpg", quality=80, progressive=True)
    gradient("RGB").save(SEEDS / "exif-rotate90.jpg", quality=80, exif=exif_orientation(6))
    gradient("CMYK").save(SEEDS / "cmyk.jpg", quality=80)
    gradient("RGB").save(SEEDS / "lossless.webp", lossless=True)
    gradient("RGBA").save(SEEDS / "lossy-alpha.webp", quality=60)
    quadrants_cmyk().save(FIXTURES / "cmyk.jpg", quality=95, subsampling=0)


if __name__ == "__main__":
    main()
