//! Synthetic subject and scanner runs with known ground truth (`hyper-rt simulate`).
//!
//! A [`Subject`] holds the anatomy, the responsive voxels with their encoding weights, and the stimulus latents.
//! Its runs follow HYPER's paradigm (training runs of unique faces, a test session repeating a small set), and each
//! volume is made as a scanner would see it: the head-space image (baseline x (1 + BOLD + AR(1) noise +
//! physiological oscillations + drift)) is moved by the run's head motion (trilinear resampling), thermal noise is
//! added in scanner space, and the result is quantised to int16 with `scl_slope` 0.1 (or kept float32).
//! Everything is drawn from seeded generators, so the same seed gives the same bytes.

pub mod anatomy;
pub mod response;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::config::{SimOutput, SimulateConfig};
use crate::nifti::{self, NiftiSpec};
use crate::rng::Rng;
use crate::spatial::{move_volume, Rigid};
use crate::volume::Dtype;
use anatomy::Anatomy;
use response::{block_response_table, Encoding};

/// The int16 scaling the simulator writes (`scl_slope`).
pub const INT16_SLOPE: f32 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Nifti(#[from] nifti::NiftiError),
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
    #[error("invalid simulation setting {key}: {problem}")]
    Config { key: &'static str, problem: String },
}

/// Training or test session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Session {
    Train,
    Test,
}

/// One presentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    pub onset_secs: f64,
    pub stim_id: usize,
}

/// Everything that defines one run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// 1-based run number (BIDS `run-<n>`).
    pub number: usize,
    pub session: Session,
    pub trials: Vec<Trial>,
    pub volumes: usize,
    /// Head position of each volume.
    pub motion: Vec<Rigid>,
    seed: u64,
}

/// A simulated participant.
pub struct Subject {
    pub config: SimulateConfig,
    pub anatomy: Anatomy,
    pub encoding: Encoding,
    /// `[stimuli, latent_size]`, z ~ N(0, I): training faces first, then the test faces.
    pub latents: Vec<f32>,
    pub train_stimuli: usize,
}

fn derive_seed(seed: u64, purpose: u64, index: u64) -> u64 {
    let mut r = Rng::new(
        seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ index.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

impl Subject {
    /// Builds the subject; the configuration must have passed [`SimulateConfig::validate`].
    pub fn new(config: &SimulateConfig) -> Result<Subject, SimulateError> {
        config
            .validate()
            .map_err(|(key, problem)| SimulateError::Config { key, problem })?;
        let anatomy = Anatomy::new(config.dims, config.voxel_mm, config.seed);
        let encoding = Encoding::new(
            &anatomy.brain,
            config.dims,
            &anatomy.mm_from_voxel,
            config.responsive_voxels,
            config.clusters,
            config.latent_size,
            config.visual_percent,
            derive_seed(config.seed, 1, 0),
        );
        let train_stimuli = config.train_runs * config.train_trials_per_run;
        let stimuli = train_stimuli
            + if config.test_runs > 0 {
                config.test_faces
            } else {
                0
            };
        let mut rng = Rng::new(derive_seed(config.seed, 2, 0));
        let latents = (0..stimuli * config.latent_size)
            .map(|_| rng.normal() as f32)
            .collect();
        Ok(Subject {
            config: config.clone(),
            anatomy,
            encoding,
            latents,
            train_stimuli,
        })
    }

    /// The runs: training runs 1..=train_runs, then the test runs.
    pub fn runs(&self) -> Vec<RunPlan> {
        let c = &self.config;
        let trial_secs = c.stim_secs + c.blank_secs;
        let mut plans = Vec::new();
        for r in 0..c.train_runs {
            let stims: Vec<usize> =
                (r * c.train_trials_per_run..(r + 1) * c.train_trials_per_run).collect();
            plans.push((Session::Train, stims));
        }
        if c.test_runs > 0 {
            let mut presentations: Vec<usize> = (0..c.test_repeats)
                .flat_map(|_| (0..c.test_faces).map(|f| self.train_stimuli + f))
                .collect();
            let mut rng = Rng::new(derive_seed(c.seed, 3, 0));
            for i in (1..presentations.len()).rev() {
                let j = (rng.uniform() * (i + 1) as f64) as usize % (i + 1);
                presentations.swap(i, j);
            }
            for chunk in presentations.chunks(c.test_trials_per_run()) {
                plans.push((Session::Test, chunk.to_vec()));
            }
        }
        let mut offset_rng = Rng::new(derive_seed(c.seed, 4, 0));
        let session_offset = Rigid {
            trans_mm: unit_vector(&mut offset_rng).map(|v| v * c.session_offset_mm),
            rot_deg: unit_vector(&mut offset_rng).map(|v| v * c.session_offset_deg),
        };
        plans
            .into_iter()
            .enumerate()
            .map(|(index, (session, stims))| {
                let trials = stims
                    .iter()
                    .enumerate()
                    .map(|(i, &stim_id)| Trial {
                        onset_secs: c.lead_in_secs + i as f64 * trial_secs,
                        stim_id,
                    })
                    .collect::<Vec<_>>();
                let volumes = c.volumes_for(trials.len());
                let seed = derive_seed(c.seed, 5, index as u64);
                let offset = if session == Session::Test {
                    session_offset
                } else {
                    Rigid::default()
                };
                let motion = head_motion(volumes, c, offset, seed);
                RunPlan {
                    number: index + 1,
                    session,
                    trials,
                    volumes,
                    motion,
                    seed,
                }
            })
            .collect()
    }

    /// The noise-free stimulus-driven signal of a run in percent, `[volumes, R]`.
    pub fn run_signal(&self, plan: &RunPlan) -> Vec<f32> {
        let c = &self.config;
        let stims: Vec<usize> = plan.trials.iter().map(|t| t.stim_id).collect();
        let amplitudes = self
            .encoding
            .amplitudes(&self.latents, &stims, c.signal_percent);
        let r_count = self.encoding.voxels.len();
        let n_trials = stims.len();
        let mut signal = vec![0.0f32; plan.volumes * r_count];
        // the response shape, tabulated every 10 ms over 40 s
        const STEP: f64 = 0.01;
        let table = block_response_table(c.stim_secs, STEP, 4000);
        let response = |dt: f64| {
            if dt <= 0.0 {
                0.0
            } else {
                table
                    .get((dt / STEP).round() as usize)
                    .copied()
                    .unwrap_or(0.0)
            }
        };
        for t in 0..plan.volumes {
            let time = t as f64 * c.tr_secs;
            let regressors: Vec<(usize, f32)> = plan
                .trials
                .iter()
                .enumerate()
                .filter_map(|(i, trial)| {
                    let x = response(time - trial.onset_secs);
                    (x.abs() > 1e-7).then_some((i, x as f32))
                })
                .collect();
            let row = &mut signal[t * r_count..(t + 1) * r_count];
            for (r, value) in row.iter_mut().enumerate() {
                *value = regressors
                    .iter()
                    .map(|&(i, x)| amplitudes[r * n_trials + i] * x)
                    .sum();
            }
        }
        signal
    }

    /// A generator of the run's volumes in order.
    pub fn run_volumes<'a>(&'a self, plan: &'a RunPlan) -> RunVolumes<'a> {
        RunVolumes::new(self, plan)
    }
}

fn unit_vector(rng: &mut Rng) -> [f64; 3] {
    let v = [rng.normal(), rng.normal(), rng.normal()];
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
    v.map(|x| x / n)
}

/// Smooth drift (three slow sinusoids per parameter) plus occasional jerks that persist, clipped to the bounds,
/// plus the session offset.
fn head_motion(volumes: usize, c: &SimulateConfig, offset: Rigid, seed: u64) -> Vec<Rigid> {
    let mut rng = Rng::new(seed ^ 0x4D07);
    let period_volumes = |rng: &mut Rng| (40.0 + 160.0 * rng.uniform()) / c.tr_secs;
    let mut waves = Vec::new();
    for param in 0..6 {
        let bound = if param < 3 {
            c.max_motion_mm
        } else {
            c.max_motion_deg
        };
        let w: Vec<(f64, f64, f64)> = (0..3)
            .map(|_| {
                (
                    0.25 * bound * rng.normal(),
                    period_volumes(&mut rng),
                    std::f64::consts::TAU * rng.uniform(),
                )
            })
            .collect();
        waves.push(w);
    }
    let mut jerk = [0.0f64; 6];
    (0..volumes)
        .map(|t| {
            if rng.uniform() < c.jerk_probability {
                for (p, j) in jerk.iter_mut().enumerate() {
                    let bound = if p < 3 {
                        c.max_motion_mm
                    } else {
                        c.max_motion_deg
                    };
                    *j += 0.3 * bound * rng.normal();
                }
            }
            let value = |p: usize| {
                let bound = if p < 3 {
                    c.max_motion_mm
                } else {
                    c.max_motion_deg
                };
                let smooth: f64 = waves[p]
                    .iter()
                    .map(|(a, period, phase)| {
                        a * ((std::f64::consts::TAU * t as f64 / period) + phase).sin()
                    })
                    .sum();
                (smooth + jerk[p]).clamp(-bound, bound)
            };
            Rigid {
                trans_mm: [0, 1, 2].map(|p| value(p) + offset.trans_mm[p]),
                rot_deg: [3, 4, 5].map(|p| value(p) + offset.rot_deg[p - 3]),
            }
        })
        .collect()
}

/// Produces a run's volumes in acquisition order (AR(1) noise carries state from one volume to the next).
pub struct RunVolumes<'a> {
    subject: &'a Subject,
    plan: &'a RunPlan,
    signal: Vec<f32>,
    brain_voxels: Vec<usize>,
    ar_state: Vec<f32>,
    physio: Vec<(f32, f32, f32)>,
    drift_scale: Vec<f32>,
    drift: Vec<f64>,
    responsive_slot: Vec<u32>,
    rng: Rng,
    t: usize,
    noise_percent: f64,
    thermal_sd: f32,
}

impl<'a> RunVolumes<'a> {
    fn new(subject: &'a Subject, plan: &'a RunPlan) -> RunVolumes<'a> {
        let c = &subject.config;
        let mut rng = Rng::new(plan.seed);
        let brain_voxels: Vec<usize> = (0..subject.anatomy.brain.len())
            .filter(|&i| subject.anatomy.brain[i])
            .collect();
        let noise_percent = c.signal_percent / c.snr;
        let ar_sd = (noise_percent * 0.3f64.sqrt()) as f32;
        let ar_state = brain_voxels
            .iter()
            .map(|_| ar_sd * rng.normal() as f32)
            .collect();
        let physio_amp = noise_percent * 0.2f64.sqrt();
        let physio = brain_voxels
            .iter()
            .map(|_| {
                (
                    (physio_amp * (0.5 + rng.uniform())) as f32,
                    (std::f64::consts::TAU * rng.uniform()) as f32,
                    (std::f64::consts::TAU * rng.uniform()) as f32,
                )
            })
            .collect();
        let drift_scale = brain_voxels
            .iter()
            .map(|_| (0.5 + rng.uniform()) as f32)
            .collect();
        let coefs: Vec<f64> = (0..3).map(|_| rng.normal()).collect();
        let drift = (0..plan.volumes)
            .map(|t| {
                c.drift_percent
                    * (1..=3)
                        .map(|k| {
                            coefs[k - 1]
                                * (std::f64::consts::PI * k as f64 * t as f64 / plan.volumes as f64)
                                    .cos()
                        })
                        .sum::<f64>()
                    / 3f64.sqrt()
            })
            .collect();
        let mut responsive_slot = vec![u32::MAX; subject.anatomy.brain.len()];
        for (slot, &v) in subject.encoding.voxels.iter().enumerate() {
            responsive_slot[v] = slot as u32;
        }
        let brain_mean = brain_voxels
            .iter()
            .map(|&v| subject.anatomy.baseline[v] as f64)
            .sum::<f64>()
            / brain_voxels.len().max(1) as f64;
        let thermal_sd = (noise_percent / 100.0 * 0.5f64.sqrt() * brain_mean) as f32;
        RunVolumes {
            signal: subject.run_signal(plan),
            subject,
            plan,
            brain_voxels,
            ar_state,
            physio,
            drift_scale,
            drift,
            responsive_slot,
            rng,
            t: 0,
            noise_percent,
            thermal_sd,
        }
    }

    /// The run's noise-free stimulus signal `[volumes, R]` in percent.
    pub fn signal(&self) -> &[f32] {
        &self.signal
    }

    /// Std of the per-volume noise in percent (signal_percent / snr).
    pub fn noise_percent(&self) -> f64 {
        self.noise_percent
    }
}

impl Iterator for RunVolumes<'_> {
    /// Scanner-space intensities (already quantised when the output is int16), x fastest.
    type Item = Vec<f32>;

    fn next(&mut self) -> Option<Vec<f32>> {
        if self.t >= self.plan.volumes {
            return None;
        }
        let c = &self.subject.config;
        let t = self.t;
        let anatomy = &self.subject.anatomy;
        let r_count = self.subject.encoding.voxels.len();
        let ar = c.ar1 as f32;
        let innovation = (1.0 - ar * ar).sqrt() * (self.noise_percent * 0.3f64.sqrt()) as f32;
        let time = (t as f64 * c.tr_secs) as f32;
        let (resp, card) = (
            std::f32::consts::TAU * 0.3 * time,
            std::f32::consts::TAU * 1.1 * time,
        );
        let mut head = anatomy.baseline.clone();
        for (b, &v) in self.brain_voxels.iter().enumerate() {
            self.ar_state[b] = ar * self.ar_state[b] + innovation * self.rng.normal() as f32;
            let (amp, p1, p2) = self.physio[b];
            let physio =
                amp * ((resp + p1).sin() + (card + p2).sin()) * std::f32::consts::FRAC_1_SQRT_2;
            let slot = self.responsive_slot[v];
            let bold = if slot == u32::MAX {
                0.0
            } else {
                self.signal[t * r_count + slot as usize]
            };
            let percent =
                bold + self.ar_state[b] + physio + self.drift_scale[b] * self.drift[t] as f32;
            head[v] *= 1.0 + 0.01 * percent;
        }
        let mut moved = move_volume(
            &head,
            anatomy.dims,
            &anatomy.mm_from_voxel,
            &self.plan.motion[t],
        );
        for v in moved.iter_mut() {
            *v += self.thermal_sd * self.rng.normal() as f32;
            if c.output == SimOutput::Int16 {
                *v = (*v / INT16_SLOPE)
                    .round()
                    .clamp(i16::MIN as f32, i16::MAX as f32)
                    * INT16_SLOPE;
            }
        }
        self.t += 1;
        Some(moved)
    }
}

/// What `simulate` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetSummary {
    pub root: PathBuf,
    pub runs: usize,
    pub volumes: usize,
    pub stimuli: usize,
    pub responsive_voxels: usize,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SimulateError + '_ {
    move |source| SimulateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The BIDS file name of a run's bold series (without folder).
pub fn bold_name(subject: &str, run: usize) -> String {
    format!("sub-{subject}_task-faces_run-{run}_bold.nii.gz")
}

/// Writes the whole dataset under `root`; `progress` is called with the number of volumes finished.
pub fn write_dataset(
    config: &SimulateConfig,
    root: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DatasetSummary, SimulateError> {
    let subject = Subject::new(config)?;
    let runs = subject.runs();
    let sub = format!("sub-{}", config.subject);
    let func = root.join(&sub).join("func");
    let truth = root.join("truth");
    let stimuli = root.join("stimuli");
    for dir in [&func, &truth, &stimuli] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let c = config;
    let l = c.latent_size;
    let n_stimuli = subject.latents.len() / l;
    crate::npy::write_f32(
        &stimuli.join("latents.npy"),
        &[n_stimuli, l],
        &subject.latents,
    )?;
    let description = serde_json::json!({
        "Name": "hyper-rt simulated face-viewing subject",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "hyper-rt simulate", "Version": env!("CARGO_PKG_VERSION")}],
        "Seed": c.seed,
    });
    write_text(
        &root.join("dataset_description.json"),
        &serde_json::to_string_pretty(&description).unwrap_or_default(),
    )?;
    write_text(
        &truth.join("simulation.json"),
        &serde_json::to_string_pretty(c).unwrap_or_default(),
    )?;

    // truth: encoding, masks, anatomy
    let enc = &subject.encoding;
    crate::npy::write_f32(
        &truth.join("encoding_weights.npy"),
        &[enc.voxels.len(), l],
        &enc.weights,
    )?;
    crate::npy::write_f32(
        &truth.join("visual_weights.npy"),
        &[enc.voxels.len()],
        &enc.visual_percent,
    )?;
    let indices: Vec<f32> = enc.voxels.iter().map(|&v| v as f32).collect();
    crate::npy::write_f32(
        &truth.join("responsive_indices.npy"),
        &[indices.len()],
        &indices,
    )?;
    let anat = &subject.anatomy;
    let mask_spec = |dtype| NiftiSpec {
        dims: anat.dims,
        volumes: 1,
        dtype,
        mm_from_voxel: anat.mm_from_voxel,
        tr_secs: c.tr_secs,
        scaling: None,
        description: "hyper-rt simulation truth".into(),
    };
    let mut responsive = vec![0u8; anat.brain.len()];
    for &v in &enc.voxels {
        responsive[v] = 1;
    }
    nifti::write(
        &truth.join("responsive_mask.nii.gz"),
        &mask_spec(Dtype::Uint8),
        &responsive,
    )?;
    let brain: Vec<u8> = anat.brain.iter().map(|&b| u8::from(b)).collect();
    nifti::write(
        &truth.join("brain_mask.nii.gz"),
        &mask_spec(Dtype::Uint8),
        &brain,
    )?;
    let baseline: Vec<u8> = anat.baseline.iter().flat_map(|v| v.to_le_bytes()).collect();
    nifti::write(
        &truth.join("anatomy.nii.gz"),
        &mask_spec(Dtype::Float32),
        &baseline,
    )?;

    runs.par_iter()
        .try_for_each(|plan| -> Result<(), SimulateError> {
            let mut volumes = subject.run_volumes(plan);
            let signal = volumes.signal().to_vec();
            let mut data: Vec<u8> = Vec::with_capacity(plan.volumes * anat.brain.len() * 2);
            for volume in volumes.by_ref() {
                match c.output {
                    SimOutput::Int16 => data.extend(
                        volume
                            .iter()
                            .flat_map(|v| ((v / INT16_SLOPE).round() as i16).to_le_bytes()),
                    ),
                    SimOutput::Float32 => data.extend(volume.iter().flat_map(|v| v.to_le_bytes())),
                }
                progress(1);
            }
            let spec = NiftiSpec {
                dims: anat.dims,
                volumes: plan.volumes,
                dtype: if c.output == SimOutput::Int16 {
                    Dtype::Int16
                } else {
                    Dtype::Float32
                },
                mm_from_voxel: anat.mm_from_voxel,
                tr_secs: c.tr_secs,
                scaling: (c.output == SimOutput::Int16).then_some((INT16_SLOPE as f64, 0.0)),
                description: format!("hyper-rt simulate seed {} run {}", c.seed, plan.number),
            };
            nifti::write(&func.join(bold_name(&c.subject, plan.number)), &spec, &data)?;
            let mut events = String::from("onset\tduration\ttrial_type\tstim_id\n");
            let kind = if plan.session == Session::Train {
                "train"
            } else {
                "test"
            };
            for trial in &plan.trials {
                events.push_str(&format!(
                    "{:.3}\t{:.3}\t{kind}\t{}\n",
                    trial.onset_secs, c.stim_secs, trial.stim_id
                ));
            }
            write_text(
                &func.join(format!(
                    "sub-{}_task-faces_run-{}_events.tsv",
                    c.subject, plan.number
                )),
                &events,
            )?;
            let mut motion = String::from(
                "trans_x_mm\ttrans_y_mm\ttrans_z_mm\trot_x_deg\trot_y_deg\trot_z_deg\n",
            );
            for m in &plan.motion {
                motion.push_str(&format!(
                    "{:.6}\t{:.6}\t{:.6}\t{:.6}\t{:.6}\t{:.6}\n",
                    m.trans_mm[0],
                    m.trans_mm[1],
                    m.trans_mm[2],
                    m.rot_deg[0],
                    m.rot_deg[1],
                    m.rot_deg[2]
                ));
            }
            write_text(
                &truth.join(format!("motion_run-{}.tsv", plan.number)),
                &motion,
            )?;
            crate::npy::write_f32(
                &truth.join(format!("signal_run-{}.npy", plan.number)),
                &[plan.volumes, enc.voxels.len()],
                &signal,
            )?;
            Ok(())
        })?;
    Ok(DatasetSummary {
        root: root.to_path_buf(),
        runs: runs.len(),
        volumes: runs.iter().map(|r| r.volumes).sum(),
        stimuli: n_stimuli,
        responsive_voxels: enc.voxels.len(),
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), SimulateError> {
    std::fs::write(path, text).map_err(io(path))
}

/// Total volumes the configured dataset holds (for progress bars).
pub fn total_volumes(config: &SimulateConfig) -> usize {
    let test_trials = config.test_faces * config.test_repeats;
    let per_test = config.test_trials_per_run();
    let mut total = config.train_runs * config.volumes_for(config.train_trials_per_run);
    let mut left = if config.test_runs > 0 { test_trials } else { 0 };
    while left > 0 {
        let n = left.min(per_test);
        total += config.volumes_for(n);
        left -= n;
    }
    total
}
