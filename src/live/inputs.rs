//! What a live run needs besides the bound receiver, loaded from the `[live]` config: the decoder, the stimulus
//! schedule, the stimulus latents, the generator (opened on the device asked for, checked and warmed up with one
//! image before the scanner connects) and the attribute directions. Used by `live`, `replay` and `demo`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::config::{LiveConfig, LiveMode};
use crate::decode::attributes::{self, Boundary};
use crate::decode::bundle::DecoderBundle;
use crate::generate::cpu::CpuAlgorithm;
use crate::generate::{self, Backend};
use crate::preprocess::trials::{read_events, ScheduledTrial};

/// Everything a live run needs besides the bound receiver.
pub struct LiveInputs {
    pub config: LiveConfig,
    pub bundle: DecoderBundle,
    pub schedule: Vec<ScheduledTrial>,
    /// Stimulus latents `[N, latent]` for showing the true stimulus, when known.
    pub stimuli: Option<Vec<f32>>,
    pub generator: Backend,
    /// The attribute directions the decoded latents are scored along.
    pub boundaries: Vec<Boundary>,
}

impl LiveInputs {
    /// Loads what `config` names; `bundle`, when given, is the decoder instead of `config.decoder` (the demo trains
    /// its own).
    pub fn load(config: &LiveConfig, bundle: Option<DecoderBundle>) -> anyhow::Result<LiveInputs> {
        let bundle = match bundle {
            Some(b) => b,
            None => {
                let path = config
                    .decoder
                    .as_deref()
                    .context("no decoder: give --decoder (or [live] decoder in the config)")?;
                DecoderBundle::load(path)?
            }
        };
        let schedule = match config.events.as_deref() {
            Some(p) => read_events(p, None)?,
            None => Vec::new(),
        };
        if schedule.is_empty() && config.onsets.is_none() && config.mode == LiveMode::Trials {
            tracing::warn!("no stimulus schedule (events): in trials mode nothing will be decoded; use --mode sliding for continuous decoding");
        }
        let stimuli = match config.stimuli.as_deref() {
            Some(p) => Some(crate::npy::read_f32(p)?.data),
            None => None,
        };
        let generator = open_generator(config, bundle.latent_size(), config.weights.as_deref())?;
        let boundaries = attributes::available(config.boundaries.as_deref(), bundle.latent_size());
        Ok(LiveInputs {
            config: config.clone(),
            bundle,
            schedule,
            stimuli,
            generator,
            boundaries,
        })
    }
}

/// The generator of `weights` (the built-in network when none) on the device `config` asks for, checked against
/// the decoder's latent size, and warmed up: one frame before the receiver binds, so that buffers, lazily loaded
/// GPU kernels and caches are ready for the first trial (and a GPU is checked against the CPU).
fn open_generator(
    config: &LiveConfig,
    latent_size: usize,
    weights: Option<&Path>,
) -> anyhow::Result<Backend> {
    let model = Arc::new(generate::load_model(weights)?);
    if model.latent_size != latent_size {
        bail!(
            "the decoder gives {latent_size}-d latents but the generator takes {}",
            model.latent_size
        );
    }
    tracing::info!("generator: {}", model.label);
    let mut generator = Backend::open(
        model,
        config.device,
        config.gpu,
        CpuAlgorithm::Winograd,
        config.precision,
    )?;
    generator.use_gpu_settings(generate::GpuSettings {
        upsample: config.upsample,
        launch: config.launch,
        ..Default::default()
    })?;
    let warm_up = Instant::now();
    generator.warm_up(config.device, CpuAlgorithm::Winograd)?;
    tracing::info!(
        "generating on {} (first frame {:.0} ms)",
        generator.describe(),
        warm_up.elapsed().as_secs_f64() * 1e3
    );
    Ok(generator)
}
