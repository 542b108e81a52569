//! The GPU forward pass as a list of kernel launches, computed without a GPU: which kernel runs each layer (its
//! `ConvPlan`: family, tile, split-K, grid, shared memory), the kernel's arguments in order, and the sizes of the
//! device buffers. [`super::launches`] turns the plans into launches and `super::generator` queues exactly those; `hyper-rt launch-plan` writes them out, and the
//! emulated kernel tests replay them on the CPU against the NumPy reference, so the host's side of every launch
//! (grids, shapes, split-K, buffer chaining, the fused last layer, buffer sizes) is checked in CI, not only on a
//! lent GPU.
//!
//! Activations are channels-last `[N, H, W, C]`; weights are the model's effective weights (`[9 * Cin, Cout]`), and
//! for phased layers (an upsampling layer run as four 2 x 2 convolutions, see kernels/conv_common.cuh) their phase weights
//! ([`super::model::ConvLayer::phase_weights`]).

use crate::generate::model::PgganModel;

/// Threads per block of every kernel.
pub const THREADS: u32 = 256;
/// K slice depth of the gather kernels conv3x3_{f32,tf32}_* (kernels/conv_common.cuh `BK`).
pub(super) const BK: usize = 16;
/// K slice depth of the pipelined kernels conv3x3_tf32p_* (kernels/conv_pipelined.cu `PIPE_BK`).
const PIPE_BK: usize = 32;
/// Every gather tile holds BM x BN = 4096 outputs (see kernels/conv_gather.cu).
const TILE_OUTPUTS: usize = 4096;

/// The gather kernels by [vectorised gather (Cin a multiple of 16)][precision f32, tf32][tile width 16, 32, 64].
pub(super) const GATHER_KERNELS: [[[&str; 3]; 2]; 2] = [
    [
        ["conv3x3_f32_n16", "conv3x3_f32_n32", "conv3x3_f32_n64"],
        ["conv3x3_tf32_n16", "conv3x3_tf32_n32", "conv3x3_tf32_n64"],
    ],
    [
        [
            "conv3x3_f32_n16_v",
            "conv3x3_f32_n32_v",
            "conv3x3_f32_n64_v",
        ],
        [
            "conv3x3_tf32_n16_v",
            "conv3x3_tf32_n32_v",
            "conv3x3_tf32_n64_v",
        ],
    ],
];
/// The pipelined TF32 kernels by tile width 16, 32, 64 (sm_80 and later).
pub(super) const PIPELINED_KERNELS: [&str; 3] = [
    "conv3x3_tf32p_n16",
    "conv3x3_tf32p_n32",
    "conv3x3_tf32p_n64",
];
/// The spatial-tile TF32 kernels by tile width 16, 32 (sm_80 and later).
pub(super) const SPATIAL_KERNELS: [&str; 2] = ["conv3x3_tf32s_n16", "conv3x3_tf32s_n32"];
/// Their variants for phased upsampling layers.
pub(super) const SPATIAL_PHASED_KERNELS: [&str; 2] = ["conv3x3_tf32sp_n16", "conv3x3_tf32sp_n32"];
/// The 16-channel spatial kernel with ToRGB fused into its epilogue (the last layer).
pub(super) const SPATIAL_RGB_KERNEL: &str = "conv3x3_tf32s_n16_rgb";
/// The 16-channel vector-gather kernels (Cin a multiple of 16) with ToRGB fused into their epilogue (the last
/// layer, one split), by precision f32, tf32.
pub(super) const GATHER_RGB_KERNELS: [&str; 2] =
    ["conv3x3_f32_n16_v_rgb", "conv3x3_tf32_n16_v_rgb"];

/// Entry points the kernel module must export (kernels/*.cu).
pub const KERNELS: [&str; 25] = [
    "dense_f32",
    "conv3x3_f32_n64",
    "conv3x3_f32_n32",
    "conv3x3_f32_n16",
    "conv3x3_tf32_n64",
    "conv3x3_tf32_n32",
    "conv3x3_tf32_n16",
    "conv3x3_f32_n64_v",
    "conv3x3_f32_n32_v",
    "conv3x3_f32_n16_v",
    "conv3x3_tf32_n64_v",
    "conv3x3_tf32_n32_v",
    "conv3x3_tf32_n16_v",
    "conv3x3_tf32p_n16",
    "conv3x3_tf32p_n32",
    "conv3x3_tf32p_n64",
    "conv3x3_tf32s_n16",
    "conv3x3_tf32s_n32",
    "conv3x3_tf32s_n16_rgb",
    "conv3x3_f32_n16_v_rgb",
    "conv3x3_tf32_n16_v_rgb",
    "conv3x3_tf32sp_n16",
    "conv3x3_tf32sp_n32",
    "conv_finish_f32",
    "torgb_f32",
];

/// The tile width for a layer: the smallest of 16, 32, 64 that holds all its output channels (64 when none does).
fn tile_n(cout: usize) -> usize {
    match cout {
        0..=16 => 16,
        17..=32 => 32,
        _ => 64,
    }
}

/// The pipelined kernels' tiles by tile width 16, 32, 64: (BM, pipeline stages), as in kernels/conv_pipelined.cu's
/// `PIPE_ENTRY` lines.
const PIPE_TILES: [(usize, usize); 3] = [(256, 2), (256, 2), (128, 3)];

/// The pipelined kernel of tile width `bn`: its BM and its dynamic shared memory in bytes (kernels/conv_pipelined.cu
/// `PipeTile::SHARED_FLOATS`: per stage a [BM][PIPE_BK + 4] input slice and a [PIPE_BK][BN + 8] weight slice).
fn pipe_tile(bn: usize) -> (usize, usize) {
    let (bm, stages) = PIPE_TILES[bn.trailing_zeros() as usize - 4];
    (bm, 4 * stages * (bm * (PIPE_BK + 4) + PIPE_BK * (bn + 8)))
}

/// The spatial-tile kernels (kernels/conv_spatial.cu `SPATIAL_ENTRY`) by tile width 16, 32: (BN, WN).
const SPATIAL_TILES: [(usize, usize); 2] = [(16, 16), (32, 32)];
/// Output columns per spatial tile and input channels per chunk (kernels/conv_spatial.cu `SPATIAL_TW`, `SPATIAL_CC`).
const SPATIAL_TW: usize = 32;
const SPATIAL_CC: usize = 16;

/// The spatial-tile kernel of width `bn`: output rows per block and the bytes of one pipeline stage (kernels/conv_spatial.cu
/// `SpatialTile`: the (TH + 2) x (TW + 2) input patch with 16 + 4 floats per pixel, and the chunk's nine taps of
/// 16 weight rows of BN + 8 floats; `phased`: the (TH / 2 + 2) x (TW / 2 + 2) patch and 16 phase taps).
fn spatial_tile(bn: usize, phased: bool) -> (usize, usize) {
    let (bn, wn) = SPATIAL_TILES[bn.trailing_zeros() as usize - 4];
    let rows = (THREADS as usize / 32) / (bn / wn);
    let (patch_pixels, taps) = if phased {
        ((rows / 2 + 2) * (SPATIAL_TW / 2 + 2), 16)
    } else {
        ((rows + 2) * (SPATIAL_TW + 2), 9)
    };
    (
        rows,
        4 * (patch_pixels * (SPATIAL_CC + 4) + taps * SPATIAL_CC * (bn + 8)),
    )
}

/// The staged kernels and the most dynamic shared memory each may be launched with (over 48 KiB must be allowed
/// per function before the first launch).
pub fn staged_kernels_shared_bytes() -> Vec<(&'static str, usize)> {
    let pipelined = PIPELINED_KERNELS
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, pipe_tile(16 << i).1));
    let spatial = SPATIAL_KERNELS
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, 2 * spatial_tile(16 << i, false).1));
    let phased = SPATIAL_PHASED_KERNELS
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, 2 * spatial_tile(16 << i, true).1));
    pipelined
        .chain(spatial)
        .chain(phased)
        .chain(std::iter::once((
            SPATIAL_RGB_KERNEL,
            2 * spatial_tile(16, false).1,
        )))
        .collect()
}

/// Which kernel family runs a convolution layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// conv3x3_{f32,tf32}_*: the input gathered through registers, 16-deep K slices.
    Gather,
    /// conv3x3_tf32p_*: gathered with asynchronous copies, 32-deep K slices, several in flight.
    Pipelined,
    /// conv3x3_tf32s_*: a spatial tile's input patch staged once per channel chunk (narrow, high-resolution layers).
    Spatial,
}

impl ConvKind {
    pub fn label(self) -> &'static str {
        match self {
            ConvKind::Gather => "gather",
            ConvKind::Pipelined => "pipelined",
            ConvKind::Spatial => "spatial",
        }
    }
}

/// How one convolution layer is launched: which kernel family, its tile, its split-K, its grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPlan {
    pub kind: ConvKind,
    /// Output pixels and channels per block.
    pub bm: usize,
    pub bn: usize,
    /// Dynamic shared memory per block (the pipelined and spatial kernels; the others use static shared memory).
    pub shared_bytes: usize,
    pub splits: usize,
    pub k_per_split: usize,
    /// One split and one N tile: the kernel's epilogue finishes the layer (no conv_finish_f32).
    pub fused: bool,
    /// An upsampling layer run as four 2 x 2 convolutions over its input grid, one per output phase: for the gather
    /// and pipelined kernels the GEMM's rows are input pixels, K is 4 * Cin, and the grid's z is splits x 4; the
    /// spatial kernel's grid stays over the output.
    pub phased: bool,
    pub grid: (u32, u32, u32),
}

/// A layer's GEMM view: (phases, side, taps): its rows cover the output grid of `side` pixels with the nine taps
/// of the 3 x 3 kernel, or, `phased`, the input grid (half the side) four times over, one phase each, with 4 taps.
pub(super) fn gemm_view(side: usize, phased: bool) -> (usize, usize, usize) {
    if phased {
        (4, side / 2, 4)
    } else {
        (1, side, 9)
    }
}

impl ConvPlan {
    /// The plan for a layer of `batch` images of `side` x `side` output pixels; `phased`: the layer upsamples and
    /// runs as four 2 x 2 convolutions ([`ConvPlan::phased`]). With `staged` (TF32 on sm_80+), the narrow layers
    /// from 32 px up (Cout 16 or 32, Cin a multiple of 16) take the spatial kernel (its phased variant when phased)
    /// and the others with 16-byte rows (Cin and Cout multiples of 4) and at least one tile of pixels the pipelined
    /// one. Split-K: enough blocks to fill the GPU twice, at least four K slices per split.
    pub fn new(
        sm_count: usize,
        batch: usize,
        side: usize,
        cin: usize,
        cout: usize,
        staged: bool,
        phased: bool,
    ) -> ConvPlan {
        let (phases, grid_side, taps) = gemm_view(side, phased);
        let (m_total, k_total) = (batch * grid_side * grid_side, taps * cin);
        if staged
            && (cout == 16 || cout == 32)
            && cin.is_multiple_of(SPATIAL_CC)
            && side >= SPATIAL_TW
        {
            let (rows, stage_bytes) = spatial_tile(cout, phased);
            return ConvPlan {
                kind: ConvKind::Spatial,
                bm: rows * SPATIAL_TW,
                bn: cout,
                shared_bytes: (cin / SPATIAL_CC).min(2) * stage_bytes,
                splits: 1,
                k_per_split: k_total,
                fused: true,
                phased,
                grid: ((side / SPATIAL_TW * (side / rows)) as u32, batch as u32, 1),
            };
        }
        let bn = tile_n(cout);
        // the pipelined tiles are twice as tall: layers with fewer pixels than one tile (4 and 8 px at batch 1) keep
        // the gather kernel rather than computing mostly padding
        let fits = m_total >= pipe_tile(bn).0;
        let kind = if staged && cin.is_multiple_of(4) && cout.is_multiple_of(4) && fits {
            ConvKind::Pipelined
        } else {
            ConvKind::Gather
        };
        let (bm, bk, shared_bytes) = if kind == ConvKind::Pipelined {
            let (bm, shared_bytes) = pipe_tile(bn);
            (bm, PIPE_BK, shared_bytes)
        } else {
            (TILE_OUTPUTS / bn, BK, 0)
        };
        let tiles = phases * m_total.div_ceil(bm) * cout.div_ceil(bn);
        let k_slices = k_total.div_ceil(bk);
        let wanted = (2 * sm_count)
            .div_ceil(tiles)
            .clamp(1, (k_slices / 4).max(1));
        let k_per_split = k_slices.div_ceil(wanted) * bk;
        let splits = k_total.div_ceil(k_per_split);
        let grid = (
            m_total.div_ceil(bm) as u32,
            cout.div_ceil(bn) as u32,
            (phases * splits) as u32,
        );
        ConvPlan {
            kind,
            bm,
            bn,
            shared_bytes,
            splits,
            k_per_split,
            fused: splits == 1 && cout <= bn,
            phased,
            grid,
        }
    }
}

/// Each convolution layer's output side and plan for `batch` images, on the staged kernels where a layer's shape
/// allows (`staged`) or on the gather kernels, with the upsampling layers phased (`phased`) or not.
pub fn layer_plans(
    m: &PgganModel,
    sm_count: usize,
    batch: usize,
    staged: bool,
    phased: bool,
) -> Vec<(usize, ConvPlan)> {
    m.convs
        .iter()
        .zip(m.layer_sides())
        .map(|(c, side)| {
            (
                side,
                ConvPlan::new(
                    sm_count,
                    batch,
                    side,
                    c.cin,
                    c.cout,
                    staged,
                    phased && c.upsample,
                ),
            )
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::cuda::source::kernel_source;

    /// The tiles the host plans with are those the kernel sources instantiate.
    #[test]
    fn pipelined_tiles_match_the_kernel_kernel_source() {
        let mut seen = 0;
        for line in kernel_source()
            .lines()
            .filter(|l| l.starts_with("PIPE_ENTRY(conv3x3_tf32p_n"))
        {
            let inner = line.trim_start_matches("PIPE_ENTRY(").trim_end_matches(')');
            let fields: Vec<usize> = inner
                .split(',')
                .skip(1)
                .map(|f| f.trim().parse().expect("a number"))
                .collect();
            let [bm, bn, _wm, _wn, stages] = fields[..] else {
                panic!("unexpected PIPE_ENTRY line: {line}")
            };
            assert!(
                inner.starts_with(&format!("conv3x3_tf32p_n{bn},")),
                "{line}"
            );
            assert_eq!(
                PIPE_TILES[bn.trailing_zeros() as usize - 4],
                (bm, stages),
                "{line}"
            );
            seen += 1;
        }
        assert_eq!(seen, 3);
    }

    /// The spatial kernels the host plans with are those the kernel sources instantiate.
    #[test]
    fn spatial_tiles_match_the_kernel_kernel_source() {
        for prefix in [
            "SPATIAL_ENTRY(conv3x3_tf32s_n",
            "SPATIAL_PHASED_ENTRY(conv3x3_tf32sp_n",
        ] {
            let entries: Vec<(usize, usize)> = kernel_source()
                .lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(|rest| {
                    let fields: Vec<usize> = rest
                        .trim_end_matches(')')
                        .split(',')
                        .map(|f| f.trim().parse().expect("a number"))
                        .collect();
                    assert_eq!(fields[0], fields[1], "the entry's name is its BN");
                    (fields[1], fields[2])
                })
                .collect();
            assert_eq!(entries, SPATIAL_TILES, "{prefix}");
        }
        for needle in [
            format!("#define SPATIAL_TW {SPATIAL_TW} "),
            format!("#define SPATIAL_CC {SPATIAL_CC} "),
        ] {
            assert!(
                kernel_source().contains(&needle),
                "the kernel sources lack `{needle}`"
            );
        }
    }

    #[test]
    fn plans_cover_k_once_and_fit_two_blocks_per_multiprocessor() {
        // every PGGAN 1024 layer (Cin, Cout, side) at batch 1 and 8, and channel counts the new kernels refuse
        let layers = [
            (512, 512, 4),
            (512, 512, 8),
            (512, 512, 32),
            (512, 256, 64),
            (256, 128, 128),
            (128, 64, 256),
            (64, 32, 512),
            (32, 32, 512),
            (32, 16, 1024),
            (16, 16, 1024),
            (3, 64, 8),
            (20, 24, 8),
            (12, 20, 16),
            (16, 16, 16),
        ];
        for (cin, cout, side) in layers {
            for batch in [1, 8] {
                for (staged, phased) in [
                    (false, false),
                    (true, false),
                    (false, side >= 8),
                    (true, side >= 8),
                ] {
                    let p = ConvPlan::new(132, batch, side, cin, cout, staged, phased);
                    let (phases, grid_side, taps) = if phased {
                        (4, side / 2, 4)
                    } else {
                        (1, side, 9)
                    };
                    let (m_total, k_total) = (batch * grid_side * grid_side, taps * cin);
                    assert_eq!(p.phased, phased);
                    let spatial =
                        staged && (cout == 16 || cout == 32) && cin % 16 == 0 && side >= 32;
                    let fits = m_total >= pipe_tile(tile_n(cout)).0;
                    let expected = match (
                        spatial,
                        staged && cin.is_multiple_of(4) && cout.is_multiple_of(4) && fits,
                    ) {
                        (true, _) => ConvKind::Spatial,
                        (false, true) => ConvKind::Pipelined,
                        (false, false) => ConvKind::Gather,
                    };
                    assert_eq!(p.kind, expected, "{cin}->{cout} at {side} px");
                    let bk = match p.kind {
                        ConvKind::Gather => BK,
                        ConvKind::Pipelined => PIPE_BK,
                        ConvKind::Spatial => k_total,
                    };
                    assert_eq!(p.k_per_split % bk, 0);
                    assert!(
                        p.splits * p.k_per_split >= k_total
                            && (p.splits - 1) * p.k_per_split < k_total
                    );
                    assert_eq!(p.fused, p.splits == 1 && cout <= p.bn);
                    assert!(p.bn >= cout.min(64));
                    // the grid's blocks cover every output pixel and channel exactly once per split
                    let (gx, gy, gz) = p.grid;
                    assert_eq!(
                        gz as usize,
                        if p.kind == ConvKind::Spatial {
                            1
                        } else {
                            phases * p.splits
                        }
                    );
                    let blocks_per_split = gx as usize * gy as usize;
                    match p.kind {
                        ConvKind::Spatial => {
                            assert_eq!(blocks_per_split * p.bm, batch * side * side)
                        }
                        _ => assert_eq!(
                            blocks_per_split,
                            m_total.div_ceil(p.bm) * cout.div_ceil(p.bn)
                        ),
                    }
                    // sm_80 and sm_90 give a block up to 227 KiB; two blocks per multiprocessor need under half
                    assert!(p.shared_bytes <= 113 * 1024, "{} bytes", p.shared_bytes);
                    assert_eq!(p.shared_bytes > 0, p.kind != ConvKind::Gather);
                }
            }
        }
    }
}
