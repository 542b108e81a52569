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
XA30 = ("https://raw.githubusercontent.com/neurolabusc/dcm_qa_xa30/096571750d876a91888d8855d0ffd528994ef3ed/"
        "In/7_func-bold_task-fa_run-1/")
XA30_FILES = {  # a real Siemens XA30 multiband BOLD run: 20 Enhanced MR Image files, one per volume (BSD 2-Clause)
    "0001_1.3.12.2.1107.5.2.43.67093.2022071112090640678703211.dcm": "724d069d3dedf054f352e7f4c74255cf474d9323e0677d77a65c3561b6601ab2",
    "0002_1.3.12.2.1107.5.2.43.67093.2022071112090721533603267.dcm": "6ececffe12cbef4265eae44aa1e838243555212b0ab0a3f39b4f162fce501dcf",
    "0003_1.3.12.2.1107.5.2.43.67093.2022071112090821453403334.dcm": "c924c4ec90acf0a31135e8f9d4b2472ae3fc03dc8418f4daf0c4146f9ffedf74",
    "0004_1.3.12.2.1107.5.2.43.67093.2022071112090921432203401.dcm": "d20c9e8bcfa37d4adae6aa3500abc481a3a290ae7df7c93b59e9343787c9ef83",
    "0005_1.3.12.2.1107.5.2.43.67093.2022071112091021348003468.dcm": "1f2fc897c29ac5e78806ad8d19a85f8cd3d67d90fc488a346e2ee93dd4a3cc03",
    "0006_1.3.12.2.1107.5.2.43.67093.2022071112091121359903535.dcm": "eff1f5df259c355ec764cc0e2ac4808993f82520eae77e1b4adfff92d15c4a93",
    "0007_1.3.12.2.1107.5.2.43.67093.2022071112091221384503602.dcm": "387ed578eae2230f8a7a65758343f8d23f38d14dbb61363b0f3c6f26317a6305",
    "0008_1.3.12.2.1107.5.2.43.67093.2022071112091321434903669.dcm": "6785d0e57685ba0790d63f5469df7b002d71cb1b8d63e2983a4769aee1478811",
    "0009_1.3.12.2.1107.5.2.43.67093.2022071112091421401903736.dcm": "28c38de3e772f3ab42c52d593c7886413b2d0e7fc7b58fa9052d31cc41a7d8bb",
    "0010_1.3.12.2.1107.5.2.43.67093.2022071112091521473903803.dcm": "c20f4f42009e260e6269528a02aade9513278edd4a42708c2abfb97514e7ef76",
    "0011_1.3.12.2.1107.5.2.43.67093.2022071112091621456803870.dcm": "df00f8a613bd70f91db9967f8009315e6a19d838194d63d9a997d84085d5a754",
    "0012_1.3.12.2.1107.5.2.43.67093.2022071112091721428903937.dcm": "1f73b6a30c61eefcae11f65ff51a710705d99f0e2cf76045d9a0764c30fc29c7",
    "0013_1.3.12.2.1107.5.2.43.67093.2022071112091821713104004.dcm": "efd5d7be31ae5e2835705ecce951e131a1cffb441e252c34ce03875e774f5f4f",
    "0014_1.3.12.2.1107.5.2.43.67093.2022071112091921455304071.dcm": "34c56dde04bf531df1dcac006fe28d15260772f74b00cb8d96117d32f07806ef",
    "0015_1.3.12.2.1107.5.2.43.67093.2022071112092021381604138.dcm": "7b5e5d4fc73eae5918a966ea96770a8f9a8635bbe2b18e54f5265c3bcbcdffee",
    "0016_1.3.12.2.1107.5.2.43.67093.2022071112092121480404205.dcm": "cd0d7211c98a3b8754842219d326104090c33d874eafb6cb2110eacf04922aa3",
    "0017_1.3.12.2.1107.5.2.43.67093.2022071112092221400604272.dcm": "9276a7af7d4585aa8ceb4d84502980512c06a189d292b9419ed3eced10bb2f50",
    "0018_1.3.12.2.1107.5.2.43.67093.2022071112092321351504339.dcm": "21f32be7e0c561ade69d8d1535d143a956e65831da7f06c98a634a7e4c24424c",
    "0019_1.3.12.2.1107.5.2.43.67093.2022071112092421907504406.dcm": "c9c694e15b4d7b724bedf36d25858906dbf2c00bf0fe06c4f668e21e07cbd43f",
    "0020_1.3.12.2.1107.5.2.43.67093.2022071112092521440604473.dcm": "0bac3c7cd1968213caa8a096425dd2987433d7f697905a85efe4091c3b5b28bd",
}
FILES += [(XA30 + name, f"siemens-xa30/{name}", h) for name, h in XA30_FILES.items()]
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
