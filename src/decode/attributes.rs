//! The attribute directions a latent is scored along (InterFaceGAN's boundaries for PGGAN CelebA-HQ: gender, age,
//! pose, eyeglasses, smile). They travel inside the binary (`interfacegan/`, with their source and licence), so
//! every command finds them from any folder; a folder of files with the same names replaces them.

use std::path::Path;

use super::DecodeError;

/// The attributes scored and shown, in display order.
pub const ATTRIBUTES: [&str; 5] = ["gender", "age", "pose", "eyeglasses", "smile"];

/// The embedded boundary files, by attribute.
const EMBEDDED: [(&str, &[u8]); 5] = [
    (
        "gender",
        include_bytes!("interfacegan/pggan_celebahq_gender_boundary.npy"),
    ),
    (
        "age",
        include_bytes!("interfacegan/pggan_celebahq_age_boundary.npy"),
    ),
    (
        "pose",
        include_bytes!("interfacegan/pggan_celebahq_pose_boundary.npy"),
    ),
    (
        "eyeglasses",
        include_bytes!("interfacegan/pggan_celebahq_eyeglasses_boundary.npy"),
    ),
    (
        "smile",
        include_bytes!("interfacegan/pggan_celebahq_smile_boundary.npy"),
    ),
];

/// One attribute direction: its name and the unit normal of its boundary in the latent space.
#[derive(Debug, Clone, PartialEq)]
pub struct Boundary {
    pub name: String,
    pub normal: Vec<f64>,
}

/// The file name of `attribute`'s boundary (`pggan_celebahq_<attribute>_boundary.npy`).
pub fn file_name(attribute: &str) -> String {
    format!("pggan_celebahq_{attribute}_boundary.npy")
}

/// The boundary of `attribute` from the `.npy` bytes that `origin` names, checked against the latent size.
fn parse(
    attribute: &str,
    bytes: &[u8],
    origin: &Path,
    latent: usize,
) -> Result<Boundary, DecodeError> {
    let arr = crate::npy::parse_f32(bytes, origin)?;
    if arr.data.len() != latent {
        return Err(DecodeError::Data {
            path: origin.to_path_buf(),
            message: format!(
                "boundary has {} values, the latents {latent}",
                arr.data.len()
            ),
        });
    }
    Ok(Boundary {
        name: attribute.to_string(),
        normal: arr.data.iter().map(|v| f64::from(*v)).collect(),
    })
}

/// The boundary of `attribute`: from `dir` when given (`pggan_celebahq_<attribute>_boundary.npy`), else the
/// embedded one.
pub fn boundary(
    dir: Option<&Path>,
    attribute: &str,
    latent: usize,
) -> Result<Boundary, DecodeError> {
    match dir {
        Some(dir) => {
            let path = dir.join(file_name(attribute));
            let bytes = std::fs::read(&path).map_err(|source| crate::npy::NpyError::Io {
                path: path.clone(),
                source,
            })?;
            parse(attribute, &bytes, &path, latent)
        }
        None => {
            let bytes = EMBEDDED
                .iter()
                .find(|(name, _)| *name == attribute)
                .map(|(_, bytes)| *bytes)
                .ok_or_else(|| DecodeError::Data {
                    path: file_name(attribute).into(),
                    message: format!(
                        "no embedded boundary for \"{attribute}\" (there are: {})",
                        ATTRIBUTES.join(", ")
                    ),
                })?;
            let origin = format!("(embedded) {}", file_name(attribute));
            parse(attribute, bytes, Path::new(&origin), latent)
        }
    }
}

/// Every attribute of [`ATTRIBUTES`], from `dir` or embedded; the first that cannot be read is the error.
pub fn all(dir: Option<&Path>, latent: usize) -> Result<Vec<Boundary>, DecodeError> {
    ATTRIBUTES
        .iter()
        .map(|a| boundary(dir, a, latent))
        .collect()
}

/// The attributes that can be read (for the live session, which runs without those that cannot: each is named in
/// a warning). Latents of another size than the boundaries' have none.
pub fn available(dir: Option<&Path>, latent: usize) -> Vec<Boundary> {
    ATTRIBUTES
        .iter()
        .filter_map(|a| match boundary(dir, a, latent) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("attribute {a} not shown: {e}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_directions_are_unit_vectors_and_a_folder_replaces_them() {
        let embedded = all(None, 512).unwrap();
        assert_eq!(embedded.len(), 5);
        for b in &embedded {
            let norm: f64 = b.normal.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6, "{}: norm {norm}", b.name);
        }
        // gender and age are distinct directions
        let dot: f64 = embedded[0]
            .normal
            .iter()
            .zip(&embedded[1].normal)
            .map(|(a, b)| a * b)
            .sum();
        assert!(dot.abs() < 0.9, "{dot}");
        // a folder of files replaces them: here a flipped gender direction
        let dir = std::env::temp_dir().join(format!("hyper-rt-attributes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flipped: Vec<f32> = embedded[0].normal.iter().map(|v| -*v as f32).collect();
        crate::npy::write_f32(&dir.join(file_name("gender")), &[1, 512], &flipped).unwrap();
        let from_folder = boundary(Some(&dir), "gender", 512).unwrap();
        assert_eq!(from_folder.normal[0], -embedded[0].normal[0]);
        // a missing file names itself; the others are still available
        let e = boundary(Some(&dir), "age", 512).unwrap_err().to_string();
        assert!(e.contains("pggan_celebahq_age_boundary.npy"), "{e}");
        assert_eq!(available(Some(&dir), 512).len(), 1);
        // the wrong latent size is refused with the file named
        let e = boundary(None, "smile", 256).unwrap_err().to_string();
        assert!(
            e.contains("(embedded) pggan_celebahq_smile_boundary.npy") && e.contains("256"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
