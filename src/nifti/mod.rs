//! NIfTI-1 single-file (`.nii`, `.nii.gz`) reading and writing.
//!
//! Reading accepts both byte orders, every integer and real datatype, the sform / qform / fallback affine in
//! the order nibabel uses (sform if its code is set, else qform, else the centred pixdim diagonal), scaling
//! (`scl_slope`, `scl_inter`) and the time units of `xyzt_units`. Voxel bytes are kept raw (converted to little
//! endian, x fastest), so a caller decides whether to scale; [`NiftiImage::volume_values`] applies the scaling
//! the way nibabel's `get_fdata` does (in float64).
//!
//! Writing produces a NIfTI-1 file with the sform (code 1, scanner) set from the affine, pixdim from the
//! affine's column lengths, and the TR in seconds.

//!
//! Files: `format.rs` (header constants, datatype codes, errors), `read.rs`, `write.rs`.

mod format;
mod read;
mod write;

pub use format::{code_from_dtype, dtype_from_code, NiftiError, DATA_OFFSET, HEADER_BYTES};
pub use read::{qform_affine, tr_from_pixdim, NiftiImage, MAX_FILE_BYTES};
pub use write::{header_bytes, write, NiftiSpec, NiftiWriter};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::volume::Dtype;

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("hyper-rt-nifti-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let affine = [
            [2.0, 0.0, 0.0, -10.0],
            [0.0, 3.0, 0.5, 4.0],
            [0.0, -0.5, 3.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let spec = NiftiSpec {
            dims: [3, 4, 2],
            volumes: 2,
            dtype: Dtype::Int16,
            mm_from_voxel: affine,
            tr_secs: 1.5,
            scaling: None,
            description: "test".into(),
        };
        let data: Vec<u8> = (0..48i16)
            .flat_map(|v| (v * 7 - 100).to_le_bytes())
            .collect();
        for name in ["a.nii", "a.nii.gz"] {
            let path = dir.join(name);
            write(&path, &spec, &data).unwrap();
            let img = NiftiImage::read(&path).unwrap();
            assert_eq!(img.dims, [3, 4, 2]);
            assert_eq!(img.volumes, 2);
            assert_eq!(img.dtype, Dtype::Int16);
            assert_eq!(img.data_le, data);
            assert_eq!(img.tr_secs, Some(1.5));
            assert_eq!(img.mm_from_voxel, affine);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_singular_affine_is_refused_naming_the_file_and_its_source() {
        let path =
            std::env::temp_dir().join(format!("hyper-rt-singular-{}.nii", std::process::id()));
        let spec = NiftiSpec {
            dims: [2, 2, 2],
            volumes: 1,
            dtype: Dtype::Int16,
            mm_from_voxel: [
                [2.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 2.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            tr_secs: 1.0,
            scaling: None,
            description: "singular".into(),
        };
        write(&path, &spec, &[0u8; 16]).unwrap();
        let err = NiftiImage::read(&path).unwrap_err().to_string();
        assert!(
            err.contains(path.to_str().unwrap())
                && err.contains("affine from the sform")
                && err.contains("singular"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tr_units_follow_xyzt_units_and_flag_millisecond_values() {
        assert_eq!(tr_from_pixdim(2.0, 8), (Some(2.0), false));
        assert_eq!(tr_from_pixdim(2000.0, 8), (Some(2.0), true));
        assert_eq!(tr_from_pixdim(1500.0, 16), (Some(1.5), false));
        assert_eq!(tr_from_pixdim(0.0, 8), (None, false));
    }

    #[test]
    fn identity_quaternion_gives_diagonal_affine() {
        let a = qform_affine([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 2.0, 3.0], -1.0);
        assert_eq!(a[0], [2.0, 0.0, 0.0, 1.0]);
        assert_eq!(a[2], [0.0, 0.0, -3.0, 3.0]);
    }

    #[test]
    fn rejects_garbage_with_the_path_in_the_message() {
        let path =
            std::env::temp_dir().join(format!("hyper-rt-garbage-{}.nii", std::process::id()));
        std::fs::write(&path, vec![7u8; 400]).unwrap();
        let err = NiftiImage::read(&path).unwrap_err().to_string();
        assert!(err.contains("not a NIfTI-1 file"), "{err}");
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_compressed_file_is_inflated_no_further_than_its_header_claims() {
        use std::io::Write;
        let spec = NiftiSpec {
            dims: [2, 2, 2],
            volumes: 1,
            dtype: Dtype::Float32,
            mm_from_voxel: crate::volume::IDENTITY_AFFINE,
            tr_secs: 1.0,
            scaling: None,
            description: String::new(),
        };
        let gzip = |header: &[u8], data_bytes: usize| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(header).unwrap();
            for _ in 0..data_bytes / (1 << 20) {
                gz.write_all(&[0u8; 1 << 20]).unwrap();
            }
            gz.finish().unwrap()
        };
        // 256 MiB of zeros behind a header that claims 32 bytes of voxels: only the claim is inflated
        let bomb = gzip(&header_bytes(&spec).unwrap(), 256 << 20);
        let image = NiftiImage::from_bytes(Path::new("bomb.nii.gz"), bomb).unwrap();
        assert_eq!(image.data_le.len(), 32);
        // a claim beyond the reader's limit is an error before anything is inflated
        let mut huge = header_bytes(&spec).unwrap();
        for (i, d) in [4i16, 32767, 32767, 32767, 32767].iter().enumerate() {
            huge[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
        }
        let err = NiftiImage::from_bytes(Path::new("huge.nii.gz"), gzip(&huge, 0)).unwrap_err();
        assert!(err.to_string().contains("over the"), "{err}");
    }
}
