//! The generator's float output as pixels: the official 8-bit conversion, interleaved RGB bytes, packed `0x00RRGGBB`
//! display pixels, and PNG files.

use std::path::Path;

use crate::generate::error::GenerateError;

/// The official 8-bit conversion of one value.
#[inline]
pub fn to_u8(x: f32) -> u8 {
    (((x + 1.0) / 2.0 * 255.0).round_ties_even()).clamp(0.0, 255.0) as u8
}

/// One image of an NCHW batch as interleaved RGB bytes (`[H, W, 3]`).
pub fn image_rgb8(nchw: &[f32], index: usize, side: usize) -> Vec<u8> {
    let plane = side * side;
    let img = &nchw[index * 3 * plane..(index + 1) * 3 * plane];
    let mut out = Vec::with_capacity(3 * plane);
    for p in 0..plane {
        for c in 0..3 {
            out.push(to_u8(img[c * plane + p]));
        }
    }
    out
}

/// One image as packed `0x00RRGGBB` pixels, as minifb takes them.
pub fn image_0rgb(nchw: &[f32], index: usize, side: usize) -> Vec<u32> {
    let plane = side * side;
    let img = &nchw[index * 3 * plane..(index + 1) * 3 * plane];
    (0..plane)
        .map(|p| {
            (u32::from(to_u8(img[p])) << 16)
                | (u32::from(to_u8(img[plane + p])) << 8)
                | u32::from(to_u8(img[2 * plane + p]))
        })
        .collect()
}

/// Packed `0x00RRGGBB` pixels as interleaved RGB bytes (`[H, W, 3]`, as [`image_rgb8`] gives them).
pub fn rgb8_from_0rgb(packed: &[u32]) -> Vec<u8> {
    packed
        .iter()
        .flat_map(|&p| [(p >> 16) as u8, (p >> 8) as u8, p as u8])
        .collect()
}

/// Writes an RGB image as PNG.
pub fn write_png(path: &Path, rgb: &[u8], side: usize) -> Result<(), GenerateError> {
    let io = |e: image::ImageError| GenerateError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let img =
        image::RgbImage::from_raw(side as u32, side as u32, rgb.to_vec()).ok_or_else(|| {
            GenerateError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("buffer size"),
            }
        })?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_conversion_follows_the_official_formula() {
        // rint rounds half to even: (x + 1) / 2 * 255 = 127.5 -> 128, 0.5 -> 0, 1.5 -> 2
        assert_eq!(to_u8(0.0), 128);
        assert_eq!(to_u8(1.0 / 255.0 - 1.0), 0);
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn packed_pixels_match_the_rgb_bytes() {
        let nchw = vec![
            -1.0, 1.0, 0.0, 0.5, 1.0, -1.0, 0.2, 0.3, 0.0, 0.0, 0.9, -0.9,
        ];
        let rgb = image_rgb8(&nchw, 0, 2);
        let packed = image_0rgb(&nchw, 0, 2);
        for p in 0..4 {
            assert_eq!(
                packed[p],
                (rgb[3 * p] as u32) << 16 | (rgb[3 * p + 1] as u32) << 8 | rgb[3 * p + 2] as u32
            );
        }
        assert_eq!(rgb8_from_0rgb(&packed), rgb);
    }
}
