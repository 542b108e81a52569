"""Writes volumes as scanner DICOM files with pydicom, from the geometry conventions (not from hyper-rt's code).

- `write_mosaic`: a Siemens mosaic: slices tiled row by row into a square grid, ImagePositionPatient at the
  corner of the whole mosaic drawn in the first slice's plane and centred on it, LPS patient coordinates, and a
  CSA2 image header holding NumberOfImagesInMosaic and SliceNormalVector. Tests check the writer itself against
  nibabel's mosaic reader.
- `write_slice_series`: one file per slice as GE writes an fMRI series: each slice's own ImagePositionPatient,
  InstanceNumber counting the images of the whole series, ImagesInAcquisition slices per volume and
  InStackPositionNumber the slice's place in its volume."""

import math
import struct
import warnings

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def csa2(entries):
    """A CSA2 ("SV10") header: entries is a list of (name, vr, [values as strings])."""
    out = b"SV10" + b"\x04\x03\x02\x01" + struct.pack("<II", len(entries), 77)
    for name, vr, values in entries:
        out += name.encode().ljust(64, b"\0")
        out += struct.pack("<i", len(values)) + vr.encode().ljust(4, b"\0") + struct.pack("<iii", 3, len(values), 77)
        for value in values:
            data = value.encode() + b"\0"
            out += struct.pack("<iiii", len(data), len(data), 77, len(data))
            out += data.ljust((len(data) + 3) // 4 * 4, b"\0")
    return out


def mr_image(image, manufacturer, series_uid, series, description, instance, tr_secs, position_lps, row_cos,
             col_cos, spacing, slice_mm, slope, intercept):
    """An MR image file's data set: `image` (rows x columns, integer) at `position_lps` with the given cosines."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.RepetitionTime = f"{tr_secs * 1000:g}"
    ds.SliceThickness = f"{slice_mm:.6f}"
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position_lps]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row_cos, col_cos])]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = ds.BitsStored = 8 * image.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if image.dtype.kind == "i" else 0
    if (slope, intercept) != (1.0, 0.0):
        # Full precision, so that tests can compare exactly with a NIfTI's float32 scaling; pydicom warns that
        # this is longer than DS's 16 characters, which readers (hyper-rt's, nibabel's) accept.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds.RescaleSlope, ds.RescaleIntercept = repr(float(slope)), repr(float(intercept))
    ds.PixelData = image.astype(image.dtype.newbyteorder("<")).tobytes()
    return ds


def write_mosaic(path, stored, affine_ras, tr_secs, instance, series=5, slope=1.0, intercept=0.0):
    """stored: (rows, columns, slices) integer array (axis 0 down a tile's rows, axis 1 along its columns);
    affine_ras: the 4 x 4 voxel -> RAS+ mm matrix of that array."""
    rows, columns, slices = stored.shape
    tiles = math.ceil(math.sqrt(slices))
    mosaic = np.zeros((rows * tiles, columns * tiles), stored.dtype)
    for k in range(slices):
        r, c = divmod(k, tiles)
        mosaic[r * rows:(r + 1) * rows, c * columns:(c + 1) * columns] = stored[:, :, k]
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine_ras, float)[:3, :]
    down, across, through, first = lps[:, 0], lps[:, 1], lps[:, 2], lps[:, 3]
    spacing = [np.linalg.norm(down), np.linalg.norm(across)]
    col_cos, row_cos = down / spacing[0], across / spacing[1]
    slice_mm = np.linalg.norm(through)
    corner = first - col_cos * spacing[0] * (mosaic.shape[0] - rows) / 2 - row_cos * spacing[1] * (mosaic.shape[1] - columns) / 2

    ds = mr_image(mosaic, "SIEMENS", "1.2.826.0.1.3680043.8.498.1", series, "simulated EPI", instance, tr_secs,
                  corner, row_cos, col_cos, spacing, slice_mm, slope, intercept)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.AcquisitionNumber = instance
    ds.SpacingBetweenSlices = f"{slice_mm:.6f}"
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100A), "US", slices)
    ds.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
    normal = through / slice_mm
    ds.add_new((0x0029, 0x1010), "OB", csa2([("NumberOfImagesInMosaic", "US", [str(slices)]),
                                             ("AcquisitionMatrixText", "SH", [f"{rows}p*{columns}"]),
                                             ("SliceNormalVector", "FD", [f"{v:.8f}" for v in normal])]))
    ds.save_as(str(path), enforce_file_format=True)


def write_nifti_run(img, folder, tr_secs, series):
    """Every volume of a 4-D nibabel image as a mosaic file `001_<series>_<volume>.dcm` in `folder`, with its
    stored values and its scaling as RescaleSlope / RescaleIntercept."""
    stored = np.asanyarray(img.dataobj.get_unscaled())
    slope, intercept = float(img.dataobj.slope), float(img.dataobj.inter)
    for t in range(stored.shape[3]):
        write_mosaic(folder / f"001_{series:06d}_{t + 1:06d}.dcm", stored[..., t], img.affine, tr_secs, t + 1,
                     series=series, slope=slope, intercept=intercept)
    return stored


def write_slice_series(folder, stored, affine_ras, tr_secs, series=7, slope=1.0, intercept=0.0, in_stack=True,
                       name="i{instance:05d}.MRDC.{instance}"):
    """stored: (rows, columns, slices, volumes) integer array (axis 0 down the rows, axis 1 along the columns);
    affine_ras: the voxel -> RAS+ mm matrix of each volume. Returns the paths written, in instance order."""
    rows, columns, slices, volumes = stored.shape
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine_ras, float)[:3, :]
    down, across, through, first = lps[:, 0], lps[:, 1], lps[:, 2], lps[:, 3]
    spacing = [np.linalg.norm(down), np.linalg.norm(across)]
    col_cos, row_cos = down / spacing[0], across / spacing[1]
    paths = []
    for t in range(volumes):
        for k in range(slices):
            instance = t * slices + k + 1
            image = np.ascontiguousarray(stored[:, :, k, t])  # rows x columns, columns fastest
            ds = mr_image(image, "GE MEDICAL SYSTEMS", "1.2.826.0.1.3680043.8.498.2", series, "rt EPI", instance,
                          tr_secs, first + through * k, row_cos, col_cos, spacing, np.linalg.norm(through), slope,
                          intercept)
            ds.ImagesInAcquisition = slices
            if in_stack:
                ds.InStackPositionNumber = k + 1
            path = folder / name.format(instance=instance)
            ds.save_as(str(path), enforce_file_format=True)
            paths.append(path)
    return paths
