//! Fuzzing in the suite, on stable Rust: every target of `fuzz/targets.rs` gets the real files as seeds and then
//! mutants of them (bit flips, boundary integers, huge numbers in text, cuts, repeats, splices), for a bounded
//! time each (`HYPER_RT_FUZZ_SECS`, default 8). A failure saves the input under `target/fuzz-failures/` and
//! names it with the seed that reproduces the run (`HYPER_RT_FUZZ_SEED`). This driver is not coverage-guided;
//! `scripts/fuzz.sh` runs the same targets under libFuzzer, which is, for longer.

mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_rt::ingest::protocol::header_json;
use hyper_rt::rng::Rng;
use hyper_rt::volume::Dtype;

/// The real files, as the Python tests find them (`tests/python/conftest.py`).
fn data_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("HYPER_RT_DATA").map(PathBuf::from),
        Some(root.join("../shared/data")),
        Some(root.join(".cache/data")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("pyneal/testSeries.nii.gz").exists())
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()))
}

fn files_in(dir: &Path, suffix: &str, most: usize) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.truncate(most);
    found
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("seed is not gzip: {e}"));
    out
}

/// The seeds of each target: real files where there are any.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let data = data_dir().expect("real test data not found: run scripts/test.sh, which fetches it");
    match target {
        "protocol_message" => {
            // a header as captured from Pyneal Scanner, and the crate's own headers for other types
            let pyneal = br#"{"volIdx": 0, "dtype": "float64", "shape": [4, 4, 2], "affine": "[[3.0, 0.0, 0.0, -93.0], [0.0, 2.9597164863372902, -0.6206386314698001, -66.13679876871245], [0.0, 0.48997787756520006, 3.748974134805806, -85.02169640668882], [0.0, 0.0, 0.0, 1.0]]", "TR": "1.0"}"#;
            let mut out = vec![
                targets::wire_input(pyneal, &[0u8; 4 * 4 * 2 * 8]),
                b"\0\0hello from pynealScanner_sim".to_vec(),
            ];
            for (dtype, size) in [(Dtype::Int16, 2), (Dtype::Uint8, 1), (Dtype::Float32, 4)] {
                let affine = hyper_rt::volume::IDENTITY_AFFINE;
                let header = header_json(3, dtype, [3, 2, 2], &affine, 2.0, Some(&[0.0, 1.0]));
                out.push(targets::wire_input(
                    header.as_bytes(),
                    &vec![7u8; 12 * size],
                ));
            }
            out
        }
        "nifti" => {
            let mut out = Vec::new();
            for name in [
                "pyneal/testSeries_mask.nii.gz",
                "pyneal/siemens/dummyMask.nii.gz",
            ] {
                let gz = read(&data.join(name));
                out.push(gunzip(&gz));
                out.push(gz);
            }
            out
        }
        "dicom" => {
            let mut files = files_in(&data.join("pyneal/siemens"), ".dcm", 1);
            files.extend(files_in(&data.join("siemens-xa30"), ".dcm", 1));
            let mut seeds: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
            // compressed copies made by dcmtk (installed by scripts/test.sh): JPEG lossless, RLE, deflate
            let tools: [(&str, &[&str]); 3] = [
                ("dcmcjpeg", &["+e1"]),
                ("dcmcrle", &[]),
                ("dcmconv", &["+td"]),
            ];
            for source in &files {
                for (tool, options) in tools {
                    let out = std::env::temp_dir().join(format!(
                        "hyper-rt-fuzz-seed-{tool}-{}.dcm",
                        std::process::id()
                    ));
                    let made = std::process::Command::new(tool)
                        .args(options)
                        .arg(source)
                        .arg(&out)
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if made {
                        seeds.push(read(&out));
                        let _ = std::fs::remove_file(&out);
                    }
                }
            }
            seeds
        }
        "parrec" => {
            // nibabel's real Philips files (in the Python venv that scripts/test.sh makes)
            let venv_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
            let mut out = Vec::new();
            for python in files_in(&venv_lib, "", 4) {
                let dir = python.join("site-packages/nibabel/tests/data");
                for name in [
                    "phantom_EPI_asc_CLEAR_2_1",
                    "phantom_varscale",
                    "Phantom_EPI_3mm_tra_SENSE_6_1",
                    "ASL_3D_Multiecho",
                    "DTIv40",
                ] {
                    let par = dir.join(format!("{name}.PAR"));
                    if par.exists() {
                        let rec = std::fs::read(par.with_extension("REC")).unwrap_or_default();
                        out.push(targets::parrec_input(&read(&par), &rec));
                    }
                }
            }
            assert!(
                !out.is_empty(),
                "nibabel's PAR files not found under {}: run scripts/test.sh",
                venv_lib.display()
            );
            out
        }
        "config" => {
            let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
            vec![
                read(&default),
                b"[receiver]\nexpected_volumes = 175\nallow_from = [\"10.0.0.0/8\"]\n".to_vec(),
            ]
        }
        other => panic!("no seeds for {other}"),
    }
}

const INTERESTING: [i64; 12] = [
    0,
    -1,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    -0x8000_0000,
    0xffff_ffff,
    i64::MAX,
];
const TEXT_TOKENS: [&str; 12] = [
    "99999999999999999999",
    "-1",
    "1e308",
    "NaN",
    "inf",
    "0",
    "\"",
    "[",
    "{",
    "\n",
    "18446744073709551615",
    "32767",
];

/// One random change, like libFuzzer's byte-level mutators; positions favour the start, where headers are.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let below = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let position = |rng: &mut Rng, len: usize| {
        if rng.next_u64().is_multiple_of(2) {
            below(rng, len.min(16 << 10))
        } else {
            below(rng, len)
        }
    };
    let len = input.len();
    match rng.next_u64() % 9 {
        0 if len > 0 => {
            let at = position(rng, len);
            input[at] ^= 1 << (rng.next_u64() % 8);
        }
        1 if len > 0 => {
            let at = position(rng, len);
            input[at] = rng.next_u64() as u8;
        }
        2 if len >= 8 => {
            let at = position(rng, len - 7);
            let value = INTERESTING[below(rng, INTERESTING.len())];
            let width = [1usize, 2, 4, 8][below(rng, 4)];
            let bytes = if rng.next_u64().is_multiple_of(2) {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            input[at..at + width].copy_from_slice(&bytes[..width]);
        }
        3 => {
            let at = position(rng, len + 1);
            let token = TEXT_TOKENS[below(rng, TEXT_TOKENS.len())].as_bytes();
            // replace a run of digits when there is one here, else insert
            let end = input[at.min(len)..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .count();
            input.splice(at..at + end, token.iter().copied());
        }
        4 if len > 0 => input.truncate(position(rng, len)),
        5 => {
            let at = position(rng, len + 1);
            let n = 1 + below(rng, 64);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
        6 if len > 1 => {
            let at = position(rng, len);
            let n = 1 + below(rng, (len - at).min(256));
            input.drain(at..at + n);
        }
        7 if len > 1 => {
            let at = position(rng, len);
            let n = 1 + below(rng, (len - at).min(256));
            let copy = input[at..at + n].to_vec();
            let to = position(rng, len + 1);
            input.splice(to..to, copy);
        }
        _ => {
            // splice: this input's start with another seed's end
            let other = &seeds[below(rng, seeds.len())];
            if !other.is_empty() {
                let cut = position(rng, len + 1);
                let from = position(rng, other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
        }
    }
}

fn budget() -> Duration {
    let secs = std::env::var("HYPER_RT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(8.0);
    Duration::from_secs_f64(secs)
}

/// Runs `target` on the seeds, then on mutants of them until the budget is spent.
fn fuzz(name: &str, target: fn(&[u8])) {
    let seeds = seeds(name);
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let seed = std::env::var("HYPER_RT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut executions = 0u64;
    let mut slowest = Duration::ZERO;
    let mut input = Vec::new();
    while executions < seeds.len() as u64 || started.elapsed() < budget() {
        if executions < seeds.len() as u64 {
            input = seeds[executions as usize].clone();
        } else {
            // mostly a fresh seed; sometimes keep mutating the last input
            if !rng.next_u64().is_multiple_of(4) {
                input = seeds[(rng.next_u64() % seeds.len() as u64) as usize].clone();
            }
            for _ in 0..1 + rng.next_u64() % 6 {
                mutate(&mut rng, &mut input, &seeds);
            }
        }
        let one = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        slowest = slowest.max(one.elapsed());
        executions += 1;
        if outcome.is_err() || one.elapsed() > Duration::from_secs(5) {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let saved = dir.join(format!("{name}-seed{seed}-{executions}.bin"));
            let _ = std::fs::write(&saved, &input);
            panic!(
                "fuzz target {name}: input {executions} {} (saved as {}; HYPER_RT_FUZZ_SEED={seed} repeats the run)",
                if outcome.is_err() { "panicked" } else { "took over 5 s" },
                saved.display()
            );
        }
    }
    eprintln!(
        "fuzz {name}: {executions} inputs in {:.1} s from {} seeds (seed {seed}), slowest {:.1} ms, 0 failures",
        started.elapsed().as_secs_f64(),
        seeds.len(),
        slowest.as_secs_f64() * 1e3
    );
}

#[test]
fn fuzz_protocol_message() {
    fuzz("protocol_message", targets::protocol_message);
}

#[test]
fn fuzz_nifti() {
    fuzz("nifti", targets::nifti);
}

#[test]
fn fuzz_dicom() {
    fuzz("dicom", targets::dicom);
}

#[test]
fn fuzz_parrec() {
    fuzz("parrec", targets::parrec);
}

#[test]
fn fuzz_config() {
    fuzz("config", targets::config);
}

/// Writes the seeds as the libFuzzer corpus: `HYPER_RT_FUZZ_CORPUS=DIR cargo test --test tests -- --ignored
/// write_fuzz_corpus` (scripts/fuzz.sh does this).
#[test]
#[ignore = "run by scripts/fuzz.sh"]
fn write_fuzz_corpus() {
    let root =
        PathBuf::from(std::env::var_os("HYPER_RT_FUZZ_CORPUS").expect("set HYPER_RT_FUZZ_CORPUS"));
    for name in ["protocol_message", "nifti", "dicom", "parrec", "config"] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for (i, seed) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("corpus file");
        }
    }
}
