//! What the Winograd bands of [`super::winograd`] (portable) and [`super::winograd_avx2`] (AVX2 + FMA) share: the
//! transform matrices of F(2 x 2, 3 x 3) and F(4 x 4, 3 x 3), where each pixel of an input tile is read from, and
//! where a band's finished pixels go.

/// Where one input tile reads: the channel-0 offset in the `[side_in, side_in, cin]` input of each of its
/// `a x a` pixels (row major; at most 6 x 6), `None` outside the (upsampled) image, which reads as zero padding.
pub(super) type TileSources = [Option<usize>; 36];

/// Layers with at most this many output channels (and the AVX2 kernels) run in small blocks with a
/// register-blocked micro-kernel instead of the packed GEMM, whose set-up costs more than such thin products.
pub(super) const NARROW_COUT: usize = 64;

/// Row counts of the narrow micro-kernel's products are multiples of this (it takes 12, 6 or 3 rows at a time).
pub(super) const NARROW_ROW_MULTIPLE: usize = 12;

/// The transform matrices of one F(m, 3) variant.
#[derive(Debug)]
pub struct WinogradSpec {
    /// Output tile side.
    pub m: usize,
    /// Input tile side, m + 2.
    pub a: usize,
    /// `B^T`, a x a, row major.
    pub(super) bt: &'static [f32],
    /// `G`, a x 3, row major (exact rationals, applied in f64).
    pub(super) g: &'static [f64],
    /// `A^T`, m x a, row major.
    pub(super) at: &'static [f32],
}

pub static F2: WinogradSpec = WinogradSpec {
    m: 2,
    a: 4,
    bt: &[
        1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0, -1.0,
    ],
    g: &[1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0],
    at: &[1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
};

pub static F4: WinogradSpec = WinogradSpec {
    m: 4,
    a: 6,
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    g: &[
        0.25,
        0.0,
        0.0, //
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0, //
        -1.0 / 6.0,
        1.0 / 6.0,
        -1.0 / 6.0, //
        1.0 / 24.0,
        1.0 / 12.0,
        1.0 / 6.0, //
        1.0 / 24.0,
        -1.0 / 12.0,
        1.0 / 6.0, //
        0.0,
        0.0,
        1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0, //
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0, //
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

/// Where a band's finished pixels go.
pub(super) enum BandSink<'a> {
    /// Channels-last activations `[rows, side, cout]`.
    Activations(&'a mut [f32]),
    /// Through the 1 x 1 ToRGB layer into three planar `[rows, side]` slices; `weight` is `[3][C]`.
    Rgb {
        planes: [&'a mut [f32]; 3],
        weight: &'a [f32],
        bias: [f32; 3],
    },
}

impl BandSink<'_> {
    /// Output rows the band holds.
    pub(super) fn rows(&self, side: usize, cout: usize) -> usize {
        match self {
            BandSink::Activations(out) => out.len() / (side * cout),
            BandSink::Rgb { planes, .. } => planes[0].len() / side,
        }
    }
}

/// The channel-0 offsets in the input of the `a x a` pixels of the tile whose top-left input pixel is `(oy, ox)`
/// in the (upsampled) image, `None` for zero padding.
pub(super) fn tile_sources(
    spec: &WinogradSpec,
    side_in: usize,
    side: usize,
    up: usize,
    cin: usize,
    oy: isize,
    ox: isize,
) -> TileSources {
    let a = spec.a;
    let mut sources = [None; 36];
    for r in 0..a {
        for c in 0..a {
            let (y, x) = (oy + r as isize, ox + c as isize);
            if y >= 0 && x >= 0 && y < side as isize && x < side as isize {
                sources[r * a + c] =
                    Some((((y as usize) >> up) * side_in + ((x as usize) >> up)) * cin);
            }
        }
    }
    sources
}
