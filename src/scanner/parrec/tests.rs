//! The PAR/REC reader on headers written here: versions, image kinds, incomplete dynamics, damage, and the affine
//! against nibabel's for real angulated headers.

use std::path::{Path, PathBuf};

use super::geometry::*;
use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hyper-rt-parrec-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small V4.2-style PAR: `dynamics` x `slices` images of 4 x 3 pixels, 16 bits.
fn write_pair(
    dir: &Path,
    name: &str,
    dynamics: usize,
    slices: usize,
    lines_to_drop: usize,
) -> PathBuf {
    let mut par = String::from(
        "# CLINICAL TRYOUT             Research image export tool     V4.2\n\
         .    Protocol name                      :   test EPI\n\
         .    Acquisition nr                     :   3\n\
         .    Max. number of slices/locations    :   SLICES\n\
         .    Repetition time [ms]               :   2000.0\n\
         .    Angulation midslice(ap,fh,rl)[degr]:   10.0  0.0  0.0\n\
         .    Off Centre midslice(ap,fh,rl) [mm] :   1.0  2.0  3.0\n\
         # === IMAGE INFORMATION DEFINITION =====\n\
         #  slice number                             (integer)\n\
         #  echo number                              (integer)\n\
         #  dynamic scan number                      (integer)\n\
         #  cardiac phase number                     (integer)\n\
         #  image_type_mr                            (integer)\n\
         #  index in REC file (in images)            (integer)\n\
         #  image pixel size (in bits)               (integer)\n\
         #  recon resolution (x y)                   (2*integer)\n\
         #  rescale intercept                        (float)\n\
         #  rescale slope                            (float)\n\
         #  slice thickness (in mm )                 (float)\n\
         #  slice gap (in mm )                       (float)\n\
         #  slice orientation ( TRA/SAG/COR )        (integer)\n\
         #  pixel spacing (x,y) (in mm)              (2*float)\n\
         # === IMAGE INFORMATION =====\n",
    )
    .replace("SLICES", &slices.to_string());
    let mut index = 0;
    for d in 1..=dynamics {
        for s in 1..=slices {
            par.push_str(&format!(
                "{s} 1 {d} 1 0 {index} 16 4 3 {} 2.0 3.0 1.0 1 2.5 2.5\n",
                d as f64
            ));
            index += 1;
        }
    }
    let keep = par.lines().count() - lines_to_drop;
    let par: String = par.lines().take(keep).map(|l| format!("{l}\n")).collect();
    let par_path = dir.join(format!("{name}.PAR"));
    std::fs::write(&par_path, par).unwrap();
    let rec: Vec<u8> = (0..index * 12)
        .flat_map(|v| (v as u16).to_le_bytes())
        .collect();
    std::fs::write(dir.join(format!("{name}.REC")), rec).unwrap();
    par_path
}

#[test]
fn reads_dynamics_as_volumes_with_displayed_values() {
    let dir = scratch("run");
    let run = ParRecRun::read(&write_pair(&dir, "run", 2, 3, 0)).unwrap();
    assert_eq!(run.dims, [4, 3, 3]);
    assert_eq!(run.volumes.len(), 2);
    assert_eq!(run.acquisition_number, 3);
    assert_eq!(run.tr_secs, Some(2.0));
    // dynamic 2, first pixel of its first slice: stored value 36, slope 2, intercept 2.
    assert_eq!(run.volumes[1].dynamic, 2);
    assert_eq!(run.volumes[1].values[0], 36.0 * 2.0 + 2.0);
    assert_eq!(run.volumes[0].values[35], 35.0 * 2.0 + 1.0);
}

#[test]
fn leaves_out_a_dynamic_missing_slices_and_says_so() {
    let dir = scratch("cut");
    let run = ParRecRun::read(&write_pair(&dir, "cut", 3, 3, 1)).unwrap();
    assert_eq!(
        run.volumes.iter().map(|v| v.dynamic).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        run.notes.iter().any(|n| n.contains("[3]")),
        "{:?}",
        run.notes
    );
}

#[test]
fn a_short_rec_file_is_an_error_naming_the_sizes() {
    let dir = scratch("short");
    let par = write_pair(&dir, "short", 2, 3, 0);
    std::fs::write(dir.join("short.REC"), vec![0u8; 100]).unwrap();
    let message = ParRecRun::read(&par).unwrap_err().to_string();
    assert!(
        message.contains("100 bytes") && message.contains("144"),
        "{message}"
    );
}

#[test]
fn a_damaged_image_line_is_named_by_its_line_number() {
    let dir = scratch("bad");
    let par = write_pair(&dir, "bad", 1, 2, 0);
    let text = std::fs::read_to_string(&par)
        .unwrap()
        .replace("2 1 1 1 0 1 16", "2 1 x 1 0 1 16");
    std::fs::write(&par, text).unwrap();
    let message = ParRecRun::read(&par).unwrap_err().to_string();
    assert!(
        message.contains("line 25") && message.contains("dynamic scan number"),
        "{message}"
    );
}

#[test]
fn angulated_headers_get_the_affine_nibabel_computes() {
    // nibabel 5.4.2's PARRECHeader.get_affine() for two of the real headers it ships: name, dims, voxel
    // size, slice orientation, angulation, off-centre, the affine's first three rows.
    type Case = (
        &'static str,
        [usize; 3],
        [f64; 3],
        i64,
        [f64; 3],
        [f64; 3],
        [[f64; 4]; 3],
    );
    let cases: [Case; 2] = [
        (
            "ASL_3D_Multiecho.PAR (transverse, angulated about all three axes)",
            [80, 80, 8],
            [2.8, 2.8, 3.0],
            1,
            [5.0, 15.0, 30.0],
            [-4.81, 3.5, -3.607],
            [
                [
                    -2.694300523317363,
                    0.7219356493896386,
                    -0.2614672282429745,
                    82.43054781899552,
                ],
                [
                    -0.7454632064787544,
                    -2.3106650579074524,
                    1.4942920471376182,
                    120.2970442782735,
                ],
                [
                    0.15820650377970497,
                    1.4069953476489927,
                    2.588189746988463,
                    -67.38413724589317,
                ],
            ],
        ),
        (
            "Phantom_EPI_3mm_cor_20APtrans_15RLrot_SENSE_15_1.PAR (coronal)",
            [80, 80, 40],
            [3.0, 3.0, 3.3],
            3,
            [0.0, 0.0, 15.0],
            [20.0, 0.0, 0.0],
            [
                [-3.0, 0.0, 0.0, 118.5],
                [
                    0.0,
                    -0.7764571353075622,
                    -3.187555226753925,
                    72.82738376635025,
                ],
                [
                    0.0,
                    -2.897777478867205,
                    0.8541028488383184,
                    97.80720486290738,
                ],
            ],
        ),
    ];
    for (name, dims, voxel_mm, orientation, angulation, off_centre, expected) in cases {
        let a = philips_affine(dims, voxel_mm, orientation, angulation, off_centre).unwrap();
        for r in 0..3 {
            for c in 0..4 {
                assert!(
                    (a[r][c] - expected[r][c]).abs() < 1e-9,
                    "{name}: [{r}][{c}] {} vs {}",
                    a[r][c],
                    expected[r][c]
                );
            }
        }
    }
}

#[test]
fn transverse_without_angulation_maps_x_to_left_and_y_to_posterior() {
    // Transverse voxel axes are (L, P, S) in PSL terms: x -> -R, y -> -A, slices -> +S.
    let a = philips_affine([4, 4, 3], [2.0, 2.0, 3.0], 1, [0.0; 3], [0.0; 3]).unwrap();
    assert_eq!([a[0][0], a[1][1], a[2][2]], [-2.0, -2.0, 3.0]);
    // The centre voxel sits at the off-centre (zero here).
    let centre = [1.5, 1.5, 1.0];
    for (r, row) in a.iter().take(3).enumerate() {
        let mm: f64 = (0..3).map(|c| row[c] * centre[c]).sum::<f64>() + row[3];
        assert!(mm.abs() < 1e-12, "axis {r}: {mm}");
    }
}

#[test]
fn a_rec_index_beyond_addressable_memory_is_an_error_not_a_panic() {
    // found by the fuzz target: index 2^64 - 1 wrapped the size check to 0, and slicing the REC panicked
    let dir = scratch("huge-index");
    let par_path = write_pair(&dir, "run", 1, 3, 0);
    let par = std::fs::read_to_string(&par_path).unwrap();
    let first_image = par
        .lines()
        .position(|l| l.starts_with("1 1 1 1 0 0 "))
        .unwrap();
    let rewritten: String = par
        .lines()
        .enumerate()
        .map(|(n, l)| {
            if n == first_image {
                format!("1 1 1 1 0 {} {}\n", u64::MAX, &l["1 1 1 1 0 0 ".len()..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&par_path, rewritten).unwrap();
    let err = ParRecRun::read(&par_path).unwrap_err().to_string();
    assert!(err.contains("more bytes than can be addressed"), "{err}");
}
