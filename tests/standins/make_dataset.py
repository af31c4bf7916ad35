#!/usr/bin/env python3
"""Write a tiny fake rotation dataset (placeholder .cbf images) for the stand-in xia2.

    python tests/standins/make_dataset.py /tmp/zbatch-demo-data [--images 20] [--prefix demo]

Prints the `dataset=` parameter that examples/xia2-fast_ep.json takes, e.g.
`dataset=/tmp/zbatch-demo-data/demo_00001.cbf:1:20`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HEADER = """###CBF: VERSION 1.5, CBFlib v0.7.8 - PILATUS detectors (zbatch placeholder image)
data_{name}
_array_data.header_convention "PILATUS_1.2"
_array_data.header_contents
;
# Detector: PILATUS3 6M, S/N 60-0000 (stand-in)
# Wavelength 0.97950 A
# Detector_distance 0.30000 m
# Exposure_time 0.100000 s
# Start_angle {start:.4f} deg.
# Angle_increment 0.1000 deg.
;
"""


def make_dataset(directory: Path, images: int = 20, prefix: str = "demo") -> str:
    """Write the images; return the `path:first:last` sweep xia2 takes as `image=`."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(1, images + 1):
        name = f"{prefix}_{number:05d}"
        (directory / f"{name}.cbf").write_text(HEADER.format(name=name, start=0.1 * (number - 1)))
    return f"{directory.resolve() / f'{prefix}_00001.cbf'}:1:{images}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--prefix", default="demo")
    args = parser.parse_args()
    print(f"dataset={make_dataset(args.directory, args.images, args.prefix)}")


if __name__ == "__main__":
    main()
