"""Decoders for the encoded data path (raysl.views): JPEG decode rate per decoder, then decode + crops.

One thread (torch.set_num_threads(1); the decoders are single-threaded), on a folder of variable-size images
(raysl.ingest.synthetic: 80% JPEG q60-95, 12% PNG, 8% gray JPEG, 100-500 px sides by default):

    .venv/bin/python benchmarks/decoders.py [--folder /tmp/folder1] [--images 1000] [--repeat 2]

Without --folder a 1000-image folder is made in a temporary directory (about 10 s). Tables:
1. decoders: JPEG images/s and ms/image, to RGB, and the ratio to PIL open + convert("RGB"); the reduced rows
   decode at 1/2 or 1/4 in the DCT domain (PIL's draft, libjpeg-turbo's scaling), what views_from_encoded
   does when every crop of an image allows it. Then the whole mix (JPEG + PNG) for the decoders that read PNG.
2. end to end per source image: decode once + 2 random resized crops (scale 0.08-1, RandomResizedCrop
   semantics) at 224 and at 96, as raysl.views.encoded.crops_from_encoded does (geometry drawn first), for each
   JPEG decoder (PNG always through PIL), DCT reduction off / on, and the resize by torch (uint8 antialiased
   F.interpolate, whole-pixel boxes: the default) or by PIL (Image.resize with a fractional box). Then what
   the photometric ops (views.photometric: colour jitter, grayscale, blur) cost per view on top.
PyTurboJPEG rows need `pip install "PyTurboJPEG<2"` and the libturbojpeg0 Debian package (PyTurboJPEG 2.x
wants libjpeg-turbo 3, Debian 12 ships 2.1); simplejpeg rows `pip install simplejpeg` (a self-contained wheel).
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image

from raysl.config import ViewsConfig
from raysl.views.decode import BACKEND, JPEG_DECODERS, _decode_simplejpeg, crop_resize, decode, decode_reduced, image_size, is_jpeg, to_pil
from raysl.views.encoded import Geometry, crops_from_encoded
from raysl.views.geometry import reduction_for
from raysl.views.batch import photometric

warnings.filterwarnings("ignore", message="The given buffer is not writable")


def load_folder(folder: str | None, count: int) -> list[bytes]:
    if folder is None:
        from raysl.ingest.synthetic import make_folder

        folder = str(make_folder(tempfile.mkdtemp(prefix="raysl-decoders-"), train=count, val=0))
    files = sorted(glob.glob(os.path.join(folder, "train", "*", "*")))[:count]
    if not files:
        raise SystemExit(f"no images under {folder}/train/*/")
    return [open(path, "rb").read() for path in files]


def rate(function, items: list, repeat: int) -> float:
    """Best items/s over `repeat` passes."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            function(item)
        best = max(best, len(items) / (time.perf_counter() - start))
    return best


def jpeg_decoders() -> dict[str, object]:
    """name -> fn(bytes) -> RGB pixels, for the JPEG table (those that import here)."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    def pil(data):
        return Image.open(io.BytesIO(data)).convert("RGB")

    def pil_draft(k):
        def run(data):
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (image.width // k, image.height // k))
            return image.convert("RGB")
        return run

    def tensor(data):
        return torch.frombuffer(data, dtype=torch.uint8)

    decoders = {
        "PIL open + convert": pil,
        "PIL draft 1/2": pil_draft(2),
        "PIL draft 1/4": pil_draft(4),
        "torchvision decode_jpeg": lambda data: decode_jpeg(tensor(data), mode=ImageReadMode.RGB),
        "torchvision decode_image": lambda data: decode_image(tensor(data), mode=ImageReadMode.RGB),
    }
    try:
        import simplejpeg

        decoders["simplejpeg"] = lambda data: simplejpeg.decode_jpeg(data, "RGB")
        for k in (2, 4):
            decoders[f"simplejpeg 1/{k}"] = lambda data, k=k: _decode_simplejpeg(data, 3, k)
    except ImportError:
        print("(simplejpeg not installed: pip install simplejpeg)")
    turbo = turbojpeg_decoder()
    if turbo is not None:
        import turbojpeg

        decoders["PyTurboJPEG"] = lambda data: turbo.decode(data, pixel_format=turbojpeg.TJPF_RGB)
        decoders["PyTurboJPEG 1/2"] = lambda data: turbo.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, 2))
    return decoders


def turbojpeg_decoder():
    try:
        import turbojpeg

        return turbojpeg.TurboJPEG()
    except Exception as error:  # not installed, or no (matching) libturbojpeg
        print(f"(PyTurboJPEG unavailable: {str(error).splitlines()[0]})")
        return None


def register_turbojpeg() -> bool:
    """PyTurboJPEG as a raysl.views.decode JPEG decoder, for the end-to-end table only."""
    turbo = turbojpeg_decoder()
    if turbo is None:
        return False
    import turbojpeg

    def run(data: bytes, channels: int, k: int):
        fmt = turbojpeg.TJPF_GRAY if channels == 1 else turbojpeg.TJPF_RGB
        array = turbo.decode(data, pixel_format=fmt, scaling_factor=None if k == 1 else (1, k))
        return array, 1.0 / k

    JPEG_DECODERS["turbojpeg"] = run
    return True


def crops_pil(blobs, views, generator, backend, reduce):
    """The same geometry and decode as crops_from_encoded, the resize by PIL with fractional boxes."""
    sizes = [image_size(data) for data in blobs]
    geometry = Geometry([w for w, _ in sizes], [h for _, h in sizes], views, generator)
    reduction = reduction_for(geometry.boxes, geometry.sizes) if reduce else torch.ones(len(blobs), dtype=torch.int64)
    boxes = geometry.boxes.tolist()
    for row, data in enumerate(blobs):
        image, scale = decode_reduced(data, 3, int(reduction[row]), backend)
        image = to_pil(image)
        for index, spec in enumerate(geometry.specs):
            crop_resize(image, tuple(v * scale for v in boxes[row][index]), spec.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=None, help="an image folder (OUT/train/<class>/*); default: make one")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="passes per row, the best kept")
    parser.add_argument("--batch", type=int, default=256, help="images per views batch (end-to-end table)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    blobs = load_folder(args.folder, args.images)
    jpegs = [data for data in blobs if is_jpeg(data)]
    sizes = np.array([image_size(data) for data in blobs])
    print(f"{len(blobs)} images ({len(jpegs)} JPEG), sides {sizes.min()}-{sizes.max()} px, mean "
          f"{sizes.mean(0).round().astype(int).tolist()}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, one thread; torch {torch.__version__}, PIL {Image.__version__}")

    print("\n1. JPEG decode to RGB, one thread")
    print(f"{'decoder':28s} {'images/s':>9s} {'ms/image':>9s} {'x PIL':>6s}")
    base = None
    for name, function in jpeg_decoders().items():
        speed = rate(function, jpegs, args.repeat)
        base = base or speed
        print(f"{name:28s} {speed:9.0f} {1000 / speed:9.3f} {speed / base:6.2f}")
    print("\n   the whole mix (JPEG + PNG), to RGB")
    from torchvision.io import ImageReadMode, decode_image

    mix = {
        "PIL open + convert": lambda data: Image.open(io.BytesIO(data)).convert("RGB"),
        "torchvision decode_image": lambda data: decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB),
        f"raysl decode ({BACKEND} + PIL)": lambda data: decode(data, 3),
    }
    base = None
    for name, function in mix.items():
        speed = rate(function, blobs, args.repeat)
        base = base or speed
        print(f"{name:28s} {speed:9.0f} {1000 / speed:9.3f} {speed / base:6.2f}")

    backends = ["pil"] + [name for name in ("simplejpeg",) if name in JPEG_DECODERS]
    if register_turbojpeg():
        backends.append("turbojpeg")
    batches = [blobs[start : start + args.batch] for start in range(0, len(blobs), args.batch)]
    for size in (224, 96):
        views = ViewsConfig.model_validate({"crops": [{"count": 2, "size": size, "scale": [0.08, 1.0]}]})
        geometry = Geometry(sizes[:, 0].tolist(), sizes[:, 1].tolist(), views, torch.Generator().manual_seed(0))
        reductions = torch.bincount(reduction_for(geometry.boxes, geometry.sizes), minlength=9)
        print(f"\n2. decode + 2 crops at {size} (scale 0.08-1) per source image, one thread; DCT reductions "
              f"chosen 1/1: {int(reductions[1])}, 1/2: {int(reductions[2])}, 1/4: {int(reductions[4])}, 1/8: {int(reductions[8])}")
        print(f"{'JPEG decoder':12s} {'reduce':>6s} {'resize':>6s} {'images/s':>9s} {'ms/image':>9s} {'x PIL':>6s}")
        base = None
        for backend in backends:
            for reduce in (False, True):
                for resize in ("torch", "pil"):
                    def run(batch):
                        generator = torch.Generator().manual_seed(0)
                        if resize == "torch":
                            crops_from_encoded(batch, views, generator, 3, reduce=reduce, backend=backend)
                        else:
                            crops_pil(batch, views, generator, backend, reduce)
                    speed = rate(run, batches, args.repeat) * len(blobs) / len(batches)  # batches/s -> images/s
                    base = base or speed
                    print(f"{backend:12s} {str(reduce):>6s} {resize:>6s} {speed:9.0f} {1000 / speed:9.3f} {speed / base:6.2f}")
        crops, _ = crops_from_encoded(batches[0], views, torch.Generator().manual_seed(0), 3)
        images = crops[0].float().div_(255)
        start = time.perf_counter()
        photometric(images, views, torch.Generator().manual_seed(1))
        seconds = time.perf_counter() - start
        print(f"   + photometric (jitter, grayscale) per view: {seconds / len(images) * 1000:.3f} ms/image "
              f"({seconds:.2f} s per {len(images)}-image view batch); x2 views")


if __name__ == "__main__":
    main()
