//! The compiled CUDA kernels, kept between runs so that a session starts without waiting for NVRTC.
//!
//! The kernels are compiled from the sources embedded in the binary for the device's architecture. The PTX is kept
//! in this process's memory (several generators share one compile) and in a file of the cache folder
//! ([`default_cache_dir`]) named by the SHA-256 of everything that determines it: the kernel sources, the NVRTC
//! options, the architecture and the NVRTC version. The file's first line holds the SHA-256 of the PTX after it,
//! checked on reading, so a truncated or altered file is recompiled rather than loaded. A cache folder that cannot
//! be read or written costs a compile and one warning, never an error.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::nvrtc::{compile_to_text, nvrtc_version, NVRTC_OPTIONS};
use super::source::kernel_source;
use crate::generate::error::CudaError;

const HEADER_PREFIX: &str = "// hyper-rt kernel cache, sha256 of the PTX below: ";

/// Where the PTX came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtxSource {
    /// Compiled earlier in this process.
    Memory,
    /// Read from the cache folder.
    Disk,
    /// Compiled now with NVRTC (and stored where possible).
    Compiled,
}

/// `$HYPER_RT_CACHE_DIR`, else `$XDG_CACHE_HOME/hyper-rt`, else `$HOME/.cache/hyper-rt`; `None` when none is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HYPER_RT_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("hyper-rt")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("hyper-rt")))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn cache_file(dir: &Path, arch: &str) -> PathBuf {
    let key = format!(
        "{}\n{}\n{arch}\nnvrtc {}",
        kernel_source(),
        NVRTC_OPTIONS.join(" "),
        nvrtc_version()
    );
    dir.join(format!(
        "kernels-{arch}-{}.ptx",
        &sha256_hex(key.as_bytes())[..16]
    ))
}

/// Why the kernel cache could not be used (the kernels are then compiled, and this is said as a warning).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Damaged { path: PathBuf, why: &'static str },
}

/// The PTX stored in `path`, if it is there and intact.
fn read_cached(path: &Path) -> Result<Option<String>, CacheError> {
    let damaged = |why| CacheError::Damaged {
        path: path.to_path_buf(),
        why,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let (header, ptx) = text
        .split_once('\n')
        .ok_or_else(|| damaged("no header line"))?;
    let recorded = header
        .strip_prefix(HEADER_PREFIX)
        .ok_or_else(|| damaged("not a hyper-rt kernel cache file"))?;
    if recorded != sha256_hex(ptx.as_bytes()) {
        return Err(damaged(
            "the PTX does not match its checksum (truncated or altered)",
        ));
    }
    Ok(Some(ptx.to_owned()))
}

/// Writes `ptx` to `path` through a temporary file and a rename, so that readers never see half a file.
fn write_cached(path: &Path, ptx: &str) -> Result<(), CacheError> {
    let dir = path.parent().ok_or_else(|| CacheError::Damaged {
        path: path.to_path_buf(),
        why: "no parent folder",
    })?;
    std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("kernels"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{HEADER_PREFIX}{}", sha256_hex(ptx.as_bytes()))?;
        f.write_all(ptx.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        CacheError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The kernels' PTX for `arch` through the cache folder `dir` alone (no in-process layer): read if present and
/// intact, else compiled and stored. Problems with the folder are returned beside the PTX, to be said as warnings.
pub fn ptx_via_disk(
    arch: &'static str,
    dir: &Path,
) -> Result<(String, PtxSource, Vec<CacheError>), CudaError> {
    let path = cache_file(dir, arch);
    let mut problems = Vec::new();
    match read_cached(&path) {
        Ok(Some(ptx)) => return Ok((ptx, PtxSource::Disk, problems)),
        Ok(None) => {}
        Err(e) => problems.push(e),
    }
    let ptx = compile_to_text(arch)?;
    if let Err(e) = write_cached(&path, &ptx) {
        problems.push(e);
    }
    Ok((ptx, PtxSource::Compiled, problems))
}

/// The kernels' PTX for `arch`: from this process's memory, else the cache folder (`dir`, when given), else
/// compiled. Cache problems are logged as one warning.
pub fn kernels_ptx(
    arch: &'static str,
    dir: Option<&Path>,
) -> Result<(String, PtxSource), CudaError> {
    static MEMORY: OnceLock<Mutex<HashMap<&'static str, String>>> = OnceLock::new();
    let memory = MEMORY.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(ptx) = memory
        .lock()
        .map_err(|_| CudaError::Plan("kernel cache lock poisoned".into()))?
        .get(arch)
    {
        return Ok((ptx.clone(), PtxSource::Memory));
    }
    let (ptx, source) = match dir {
        Some(dir) => {
            let (ptx, source, problems) = ptx_via_disk(arch, dir)?;
            for problem in problems {
                tracing::warn!("kernel cache not used: {problem}");
            }
            (ptx, source)
        }
        None => (compile_to_text(arch)?, PtxSource::Compiled),
    };
    memory
        .lock()
        .map_err(|_| CudaError::Plan("kernel cache lock poisoned".into()))?
        .insert(arch, ptx.clone());
    Ok((ptx, source))
}
