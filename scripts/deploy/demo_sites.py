"""Write three small synthetic site datasets for a deployment rehearsal on one machine.

    python scripts/deploy/demo_sites.py --out demo-sites
    -> demo-sites/breastmnist.npz, demo-sites/pneumoniamnist.npz (MedMNIST format)
       demo-sites/chest/{normal,pneumonia}/*.png            (an image folder)

No patient data: the images come from MedForge's synthetic MedMNIST stand-ins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fl_app.data.demo_sites import write_demo_image_folder, write_demo_npz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-sites"), help="folder to write (default: demo-sites)")
    parser.add_argument("--n-train", type=int, default=200, help="training images per .npz site (default 200)")
    args = parser.parse_args(argv)
    for flag in ("breastmnist", "pneumoniamnist"):
        print(write_demo_npz(args.out / f"{flag}.npz", flag, n_train=args.n_train))
    print(write_demo_image_folder(args.out / "chest", ["normal", "pneumonia"], n_images=args.n_train))
    return 0


if __name__ == "__main__":
    sys.exit(main())
