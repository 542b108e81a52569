"""Fetches the real test data from their public sources into a cache folder, for machines without the
workplace's ../shared/data. Each file is checked against the sha256 its source README lists (where one is
listed) and only downloaded once."""

import hashlib
import pathlib
import sys
import urllib.request

PYNEAL = "https://raw.githubusercontent.com/jeffmacinnes/pyneal/750f0ec5a231ccfa77aea960242de9b5019ba493/tests/testData/"
INTERFACEGAN = "https://raw.githubusercontent.com/genforce/interfacegan/8da3fc0fe2a1d4c88dc5f9bee65e8077093ad2bb/boundaries/"
BOUNDARIES = {
    "age": "21f0c9e8d770d5dbcf8a595a0a3393ef06493f1ea10a7e94bdd9d377b4b25808",
    "eyeglasses": "610887e564b02f3bdb40ceeb74ecf35d996f10fa4726b813ce3222a7ec0d0cb2",
    "gender": "52d8d086930c2b75a0ecfd526fcb373781398d78ec76dd89216074d7769833f1",
    "pose": "4f2ad3c43ecc4dcd58362e7a8e340c39992c9c8a66bfae5ca381f050f9a519a8",
    "smile": "a8005cd24aa46d2810065358480cae4611bf8b8838ac453ec148a58a0162c3a8",
}

FILES = [(PYNEAL + "testSeries.nii.gz", "pyneal/testSeries.nii.gz", None),
         (PYNEAL + "testSeries_mask.nii.gz", "pyneal/testSeries_mask.nii.gz", None)]
SIEMENS = {  # three volumes of a real Siemens EPI series, one mosaic DICOM file each
    "001_000013_000001.dcm": "6ddfc76167e3d974658bcb3edd8e59655f4b6c5367d9347b53ec9ddda0e54ad4",
    "001_000013_000002.dcm": "4a6223c19a854b59652827720ef443310db069c9e1069e0ab1c188b4d4caa444",
    "001_000013_000003.dcm": "931cd872ac88974110946feb58d2e564b7364d4d7c774607d153767a93cd270f",
}
FILES += [(PYNEAL + f"Siemens_env/funcData/{name}", f"pyneal/siemens/{name}", h) for name, h in SIEMENS.items()]
FILES += [(INTERFACEGAN + f"pggan_celebahq_{a}_boundary.npy", f"interfacegan/pggan_celebahq_{a}_boundary.npy", h)
          for a, h in BOUNDARIES.items()]


def main(dest):
    dest = pathlib.Path(dest)
    for url, rel, sha in FILES:
        path = dest / rel
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"fetching {url}")
        data = urllib.request.urlopen(url, timeout=60).read()
        if sha and hashlib.sha256(data).hexdigest() != sha:
            sys.exit(f"{url}: sha256 mismatch")
        path.write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1])
