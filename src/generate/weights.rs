//! Loading a converted PGGAN checkpoint (safetensors written by `scripts/convert_pggan.py`): tensors by name,
//! shape checks that name the tensor, and a finiteness check of every value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::generate::error::GenerateError;

/// One float32 tensor in the checkpoint's own (TensorFlow) layout.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor of a checkpoint, keyed by its official name.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
    /// Where it came from (a path, or "built-in"), for messages.
    pub source: String,
}

impl Checkpoint {
    /// Reads a safetensors file. Only F32 tensors are accepted.
    pub fn load(path: &Path) -> Result<Checkpoint, GenerateError> {
        let bytes = std::fs::read(path).map_err(|source| GenerateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |message: String| GenerateError::Format {
            path: PathBuf::from(path),
            message,
        };
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(format(format!(
                    "tensor {name} is {:?}; the generator needs F32",
                    view.dtype()
                )));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(
                name.to_string(),
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Checkpoint {
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
            source: path.display().to_string(),
        })
    }

    /// The tensor `name`, checked against `expected` shape and for NaN / infinity.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<&Tensor, GenerateError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| GenerateError::MissingTensor {
                source_name: self.source.clone(),
                name: name.to_string(),
            })?;
        if t.shape != expected {
            return Err(GenerateError::Shape {
                source_name: self.source.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: t.shape.clone(),
            });
        }
        if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(GenerateError::NonFinite {
                source_name: self.source.clone(),
                name: name.to_string(),
                index,
            });
        }
        Ok(t)
    }

    /// The shape of `name`, or an error naming it.
    pub fn shape_of(&self, name: &str) -> Result<&[usize], GenerateError> {
        self.tensors
            .get(name)
            .map(|t| t.shape.as_slice())
            .ok_or_else(|| GenerateError::MissingTensor {
                source_name: self.source.clone(),
                name: name.to_string(),
            })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
