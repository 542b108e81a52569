//! Which geometry (shape and affine) a run has, decided so that one stray volume cannot cost the run.
//!
//! The first volume's geometry used to fix the run's: a 2 x 2 x 2 volume sent first (a test left running, a
//! wrong series) then had every real volume rejected. Now a geometry is **provisional until two volumes agree
//! on it**. Until then each volume is accepted (acknowledged and recorded: nothing acknowledged is lost) and held
//! back from the analysis; the first geometry that two volumes share becomes the run's, its held volumes go on
//! to the analysis in arrival order, and volumes of any other geometry become strays, which finalising writes to
//! `strays/` rather than into the run. Once confirmed, a volume of another geometry is rejected with
//! `geometry_changed`, which costs that volume only. A run whose length is one volume confirms at once.
//!
//! Two, not more: a real run's second volume arrives one TR after its first, so the analysis waits one TR at
//! most; a stray is rarely sent twice with the same geometry. At most [`MAX_CANDIDATES`] geometries are held at
//! once, so a peer sending volumes of ever-new shapes cannot make the receiver hold them all.

use std::collections::BTreeSet;

use super::protocol::{ProtocolError, Rejection};
use crate::volume::Affine;

/// Geometries held at once before one is confirmed.
pub const MAX_CANDIDATES: usize = 4;

/// A volume's shape and voxel-to-scanner affine.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub dims: [usize; 3],
    pub mm_from_voxel: Affine,
}

/// What happens to a volume that passed [`RunGeometry::check`].
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Part of the confirmed run.
    Run,
    /// Its geometry is not confirmed yet: hold it back from the analysis.
    Held,
    /// It confirmed its geometry: the held volumes of that geometry join the run; those at `stray_indices`
    /// (other geometries) are strays.
    Confirmed { stray_indices: Vec<usize> },
}

/// What [`RunGeometry::check`] finds before a volume is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    New,
    Duplicate,
}

#[derive(Debug)]
struct Candidate {
    geometry: Geometry,
    indices: BTreeSet<usize>,
}

/// The run's geometry and the indices accepted in it.
#[derive(Debug)]
pub struct RunGeometry {
    confirmed: Option<Geometry>,
    accepted: BTreeSet<usize>,
    candidates: Vec<Candidate>,
    agreeing_needed: usize,
    strays: usize,
}

impl RunGeometry {
    /// `expected_volumes` of 1 confirms with the first volume.
    pub fn new(expected_volumes: Option<usize>) -> RunGeometry {
        RunGeometry {
            confirmed: None,
            accepted: BTreeSet::new(),
            candidates: Vec::new(),
            agreeing_needed: if expected_volumes == Some(1) { 1 } else { 2 },
            strays: 0,
        }
    }

    /// The confirmed geometry, if any.
    pub fn confirmed(&self) -> Option<&Geometry> {
        self.confirmed.as_ref()
    }

    /// Volumes accepted into the confirmed run.
    pub fn accepted_count(&self) -> usize {
        self.accepted.len()
    }

    /// Volumes set aside as strays so far.
    pub fn strays(&self) -> usize {
        self.strays
    }

    /// Whether a volume of `geometry` at `index` is new, a duplicate, or refused.
    pub fn check(&self, geometry: &Geometry, index: usize) -> Result<Check, ProtocolError> {
        if let Some(run) = &self.confirmed {
            if run != geometry {
                return Err(geometry_changed(geometry, run));
            }
            return Ok(if self.accepted.contains(&index) {
                Check::Duplicate
            } else {
                Check::New
            });
        }
        match self.candidates.iter().find(|c| &c.geometry == geometry) {
            Some(c) if c.indices.contains(&index) => Ok(Check::Duplicate),
            Some(_) => Ok(Check::New),
            None if self.candidates.len() < MAX_CANDIDATES => Ok(Check::New),
            None => Err(ProtocolError {
                kind: Rejection::GeometryChanged,
                message: format!(
                    "shape {:?}: no two of the first volumes agree on a geometry yet, and {MAX_CANDIDATES} are held already",
                    geometry.dims
                ),
            }),
        }
    }

    /// Admits a volume that [`check`](Self::check) found new (and that is now recorded).
    pub fn admit(&mut self, geometry: &Geometry, index: usize) -> Admission {
        if self.confirmed.is_some() {
            self.accepted.insert(index);
            return Admission::Run;
        }
        let at = match self.candidates.iter().position(|c| &c.geometry == geometry) {
            Some(at) => at,
            None => {
                self.candidates.push(Candidate {
                    geometry: geometry.clone(),
                    indices: BTreeSet::new(),
                });
                self.candidates.len() - 1
            }
        };
        self.candidates[at].indices.insert(index);
        if self.candidates[at].indices.len() < self.agreeing_needed {
            return Admission::Held;
        }
        let winner = self.candidates.swap_remove(at);
        let stray_indices: Vec<usize> = self.candidates.drain(..).flat_map(|c| c.indices).collect();
        self.strays += stray_indices.len();
        self.accepted = winner.indices;
        self.confirmed = Some(winner.geometry);
        Admission::Confirmed { stray_indices }
    }
}

fn geometry_changed(got: &Geometry, run: &Geometry) -> ProtocolError {
    let message = if got.dims != run.dims {
        format!(
            "shape {:?} differs from this run's {:?} (confirmed by two volumes)",
            got.dims, run.dims
        )
    } else {
        "affine differs from this run's (confirmed by two volumes)".to_string()
    };
    ProtocolError {
        kind: Rejection::GeometryChanged,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::IDENTITY_AFFINE;

    fn shape(dims: [usize; 3]) -> Geometry {
        Geometry {
            dims,
            mm_from_voxel: IDENTITY_AFFINE,
        }
    }

    #[test]
    fn a_stray_first_volume_does_not_cost_the_run() {
        let mut run = RunGeometry::new(Some(20));
        let (stray, real) = (shape([2, 2, 2]), shape([64, 64, 36]));
        assert_eq!(run.check(&stray, 0), Ok(Check::New));
        assert_eq!(run.admit(&stray, 0), Admission::Held);
        // the real volume 0 shares the stray's index: a different geometry, so not a duplicate
        assert_eq!(run.check(&real, 0), Ok(Check::New));
        assert_eq!(run.admit(&real, 0), Admission::Held);
        assert_eq!(run.check(&real, 1), Ok(Check::New));
        assert_eq!(
            run.admit(&real, 1),
            Admission::Confirmed {
                stray_indices: vec![0]
            }
        );
        assert_eq!((run.accepted_count(), run.strays()), (2, 1));
        assert_eq!(run.check(&real, 1), Ok(Check::Duplicate));
        assert_eq!(run.admit(&real, 2), Admission::Run);
        let late_stray = run.check(&stray, 3).unwrap_err();
        assert_eq!(late_stray.kind, Rejection::GeometryChanged);
        assert!(late_stray.message.contains("[2, 2, 2]"));
    }

    #[test]
    fn held_geometries_are_bounded() {
        let mut run = RunGeometry::new(None);
        for n in 0..MAX_CANDIDATES {
            let g = shape([n + 1, 1, 1]);
            assert_eq!(run.check(&g, 0), Ok(Check::New));
            assert_eq!(run.admit(&g, 0), Admission::Held);
        }
        assert_eq!(run.check(&shape([2, 1, 1]), 0), Ok(Check::Duplicate));
        assert!(run.check(&shape([99, 1, 1]), 0).is_err());
        assert_eq!(
            run.admit(&shape([3, 1, 1]), 1),
            Admission::Confirmed {
                stray_indices: vec![0, 0, 0]
            }
        );
    }

    #[test]
    fn a_one_volume_run_confirms_at_once() {
        let mut run = RunGeometry::new(Some(1));
        assert_eq!(
            run.admit(&shape([4, 4, 4]), 0),
            Admission::Confirmed {
                stray_indices: vec![]
            }
        );
        assert_eq!(run.accepted_count(), 1);
    }
}
