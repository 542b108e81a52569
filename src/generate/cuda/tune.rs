//! Per-layer kernel tuning ([`ConvKernels::Tuned`](crate::generate::settings::ConvKernels::Tuned)): for one batch
//! size, every candidate plan of every convolution layer is run on the previous layer's real output, checked against
//! the reference (the gather kernel) and timed; a candidate replaces the reference only where it agrees and is
//! faster.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaStream};

use super::device::driver_err;
use super::execute::{download_head, execute, DeviceBuffers, OnDevice};
use super::launches::{dense_launches, Buf, Launch, LayerLaunch};
use super::plan::{layer_plans, ConvPlan};
use crate::generate::error::CudaError;
use crate::generate::model::PgganModel;
use crate::generate::parity::relative_l2;
use crate::generate::settings::Precision;
use crate::rng::Rng;

/// How closely a staged kernel's output must agree with the gather kernel's (relative L2, both TF32, which differ by
/// about 1e-3 in summation order) for the tuning to use it: the parity tests' bound for TF32 images.
const TUNING_AGREEMENT: f64 = 1e-2;
/// A staged kernel replaces the gather kernel only when it is at least this much faster (the timing's noise is
/// about 1 %): a tie keeps the measured kernel and the same choice from run to run.
const TUNING_MIN_GAIN: f64 = 0.02;

/// One batch size's tuned plans and the measurements behind them.
pub(super) struct Tuning {
    pub(super) plans: Vec<(usize, ConvPlan)>,
    pub(super) layers: Vec<LayerChoice>,
}

/// One candidate of a layer's tuning: a kernel family with the layer's upsampling phased or folded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateTiming {
    /// E.g. "gather phased", "spatial folded", "pipelined" (a layer that does not upsample).
    pub kernel: String,
    /// Milliseconds per launch (with the split-K finish where the plan has one), if it ran.
    pub ms: Option<f64>,
    /// Relative L2 difference of its output from the reference candidate's (the batch's first image).
    pub difference: Option<f64>,
    /// Why it could not be measured, if it could not.
    pub failure: Option<String>,
}

/// What the tuning measured on one convolution layer, and the candidate it chose. The first candidate is the
/// reference: the gather kernel with the upsampling form [`CudaGenerator::use_upsample`] chose.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerChoice {
    pub layer: String,
    pub candidates: Vec<CandidateTiming>,
    /// Index of the candidate used.
    pub chosen: usize,
    pub reason: String,
}

/// Milliseconds per launch summed over the tuned layers: of the reference candidates, and of the ones chosen.
pub fn tuning_totals(layers: &[LayerChoice]) -> (f64, f64) {
    let ms = |l: &LayerChoice, i: usize| l.candidates.get(i).and_then(|c| c.ms).unwrap_or(f64::NAN);
    layers.iter().fold((0.0, 0.0), |(reference, chosen), l| {
        (reference + ms(l, 0), chosen + ms(l, l.chosen))
    })
}

/// Which of a layer's candidates to use, and why. `reference_ms` is the reference candidate's time (it is used
/// unless another is better); `others` are the other candidates' milliseconds and relative differences from the
/// reference's output, or why they could not be measured. A candidate must agree with the reference within
/// [`TUNING_AGREEMENT`] and be at least [`TUNING_MIN_GAIN`] faster than the best so far; returns its index in
/// `others` plus one (0: the reference).
fn choose_candidate(
    reference_ms: f64,
    others: &[Result<(f64, f64), CudaError>],
) -> (usize, String) {
    let (mut best, mut best_ms) = (0, reference_ms);
    let mut rejected = Vec::new();
    for (i, other) in others.iter().enumerate() {
        match other {
            Err(why) => rejected.push(format!("#{} failed: {why}", i + 1)),
            Ok((_, diff)) if diff.is_nan() || *diff > TUNING_AGREEMENT => rejected.push(format!(
                "#{} disagrees with the reference: relative L2 {diff:.2e} > {TUNING_AGREEMENT:e}",
                i + 1
            )),
            Ok((ms, _)) if *ms < best_ms * (1.0 - TUNING_MIN_GAIN) => {
                (best, best_ms) = (i + 1, *ms)
            }
            Ok(_) => {}
        }
    }
    let mut reason = match best {
        0 if others.is_empty() => "the only candidate for this shape".to_string(),
        0 => format!(
            "no other candidate is at least {:.0} % faster",
            TUNING_MIN_GAIN * 100.0
        ),
        _ => format!("{:.2}x faster than the reference", reference_ms / best_ms),
    };
    if !rejected.is_empty() {
        reason = format!("{reason}; {}", rejected.join("; "));
    }
    (best, reason)
}

/// Milliseconds per call of `launch` (which queues work on `stream`): the best of three rounds of three calls.
fn time_launches(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    mut launch: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    const ROUNDS: usize = 3;
    const CALLS: usize = 3;
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err("creating an event"))
    };
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let (start, end) = (event()?, event()?);
        start
            .record(stream)
            .map_err(driver_err("recording an event"))?;
        for _ in 0..CALLS {
            launch()?;
        }
        end.record(stream)
            .map_err(driver_err("recording an event"))?;
        stream.synchronize().map_err(driver_err("synchronising"))?;
        best = best.min(
            f64::from(
                start
                    .elapsed_ms(&end)
                    .map_err(driver_err("reading an event"))?,
            ) / CALLS as f64,
        );
    }
    Ok(best)
}

/// The sets of plans [`ConvKernels::Tuned`](crate::generate::settings::ConvKernels::Tuned) compares for `batch` images: first the reference (the gather
/// kernels, the upsampling layers `phased` or folded), then the staged kernels where this GPU runs them
/// (`staged_runs`), then the same with the upsampling layers in the other form.
pub(super) fn tuning_candidates(
    model: &PgganModel,
    sm_count: usize,
    batch: usize,
    phased: bool,
    staged_runs: bool,
) -> Vec<Vec<(usize, ConvPlan)>> {
    let families: &[bool] = if staged_runs {
        &[false, true]
    } else {
        &[false]
    };
    [phased, !phased]
        .into_iter()
        .flat_map(|phased| {
            families
                .iter()
                .map(move |&staged| layer_plans(model, sm_count, batch, staged, phased))
        })
        .collect()
}

/// Tunes the convolutions for `batch` images: a forward pass of random latents in which every layer runs each of
/// its distinct plans among `candidates` (the first set is the reference), each layer's input being the previous
/// layer's real output. Each plan is launched once, its output for the first image kept, then timed; another plan
/// replaces the reference's where its output agrees and it is faster ([`choose_candidate`]). `mem` must have
/// been sized for every set.
pub(super) fn tune(
    gpu: &OnDevice,
    m: &PgganModel,
    precision: Precision,
    mem: &mut DeviceBuffers,
    batch: usize,
    candidates: &[Vec<(usize, ConvPlan)>],
) -> Result<Tuning, CudaError> {
    let mut rng = Rng::new(0x7475_6e65);
    let z: Vec<f32> = (0..batch * m.latent_size)
        .map(|_| rng.normal() as f32)
        .collect();
    let OnDevice {
        ctx,
        stream,
        kernels,
        weights,
        device_name,
    } = gpu;
    stream
        .memcpy_htod(&z, &mut mem.z)
        .map_err(driver_err("uploading latents"))?;
    for launch in &dense_launches(m, batch) {
        execute(kernels, stream, weights, mem, launch)?; // into activation buffer 0
    }
    let mut tuning = Tuning {
        plans: Vec::new(),
        layers: Vec::new(),
    };
    for (index, conv) in m.convs.iter().enumerate() {
        let input = index % 2;
        let (src, dst) = (Buf::Act(input), Buf::Act(1 - input));
        let side = candidates[0][index].0;
        let first_image = side * side * conv.cout;
        // this layer's distinct plans, the reference first
        let mut plans: Vec<ConvPlan> = Vec::new();
        for set in candidates {
            if !plans.contains(&set[index].1) {
                plans.push(set[index].1);
            }
        }
        let launches: Vec<Vec<Launch>> = plans
            .iter()
            .map(|&plan| {
                LayerLaunch::new(m, index, (side, plan), precision, batch).launches(src, dst)
            })
            .collect();
        let run = |mem: &mut DeviceBuffers, launches: &[Launch]| {
            launches
                .iter()
                .try_for_each(|l| execute(kernels, stream, weights, mem, l))
        };
        // one run (also the warm-up) for the output, then the timed ones
        let mut measure = |launches: &[Launch]| -> Result<(Vec<f32>, f64), CudaError> {
            run(mem, launches)?;
            let output = download_head(stream, &mem.act[1 - input], first_image)?;
            let ms = time_launches(ctx, stream, || run(mem, launches))?;
            Ok((output, ms))
        };
        let (reference, reference_ms) = measure(&launches[0])?;
        let others: Vec<Result<(f64, f64), CudaError>> = launches[1..]
            .iter()
            .map(|l| measure(l).map(|(out, ms)| (ms, relative_l2(&out, &reference))))
            .collect();
        let (chosen, reason) = choose_candidate(reference_ms, &others);
        if chosen + 1 != launches.len() {
            run(mem, &launches[chosen])?; // the next layer's input is the chosen plan's output
        }
        let plan_label = |plan: &ConvPlan| match (conv.upsample, plan.phased) {
            (false, _) => plan.kind.label().to_string(),
            (true, true) => format!("{} phased", plan.kind.label()),
            (true, false) => format!("{} folded", plan.kind.label()),
        };
        let candidates = plans
            .iter()
            .zip(std::iter::once(Ok((reference_ms, 0.0))).chain(others))
            .map(|(plan, measured)| CandidateTiming {
                kernel: plan_label(plan),
                ms: measured.as_ref().ok().map(|m| m.0),
                difference: measured.as_ref().ok().map(|m| m.1),
                failure: measured.err().map(|e| e.to_string()),
            })
            .collect();
        let choice = LayerChoice {
            layer: conv.name.clone(),
            candidates,
            chosen,
            reason,
        };
        tracing::debug!(
            "kernel tuning, {} at batch {batch}: {} ({})",
            choice.layer,
            plan_label(&plans[chosen]),
            choice.reason
        );
        tuning.plans.push((side, plans[chosen]));
        tuning.layers.push(choice);
    }
    stream.synchronize().map_err(driver_err("synchronising"))?;
    let changed = tuning.layers.iter().filter(|l| l.chosen != 0).count();
    let (before, after) = tuning_totals(&tuning.layers);
    tracing::info!(
        "kernel tuning for batch {batch} on {}: {changed} of {} layers off the reference, convolutions {before:.3} -> {after:.3} ms",
        device_name,
        tuning.layers.len()
    );
    Ok(tuning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_uses_a_candidate_only_when_it_agrees_and_is_faster() {
        let decide = |others: &[Result<(f64, f64), &str>]| {
            let others: Vec<_> = others
                .iter()
                .map(|o| o.map_err(|why| CudaError::Plan(why.to_string())))
                .collect();
            choose_candidate(0.50, &others)
        };
        assert_eq!(
            decide(&[]),
            (0, "the only candidate for this shape".to_string())
        );
        assert_eq!(
            decide(&[Ok((0.25, 1.4e-3))]),
            (1, "2.00x faster than the reference".to_string())
        );
        // within the timing noise: the reference stays
        let (chosen, why) = decide(&[Ok((0.495, 1e-3))]);
        assert!(chosen == 0 && why.contains("no other candidate"), "{why}");
        // faster but wrong, or NaN: never used, and the reason says so
        for diff in [0.3, f64::NAN, f64::INFINITY] {
            let (chosen, why) = decide(&[Ok((0.1, diff))]);
            assert!(chosen == 0 && why.contains("#1 disagrees"), "{diff}: {why}");
        }
        let (chosen, why) = decide(&[Err("launching a kernel: CUDA_ERROR_INVALID_VALUE")]);
        assert!(
            chosen == 0 && why.contains("#1 failed") && why.contains("INVALID_VALUE"),
            "{why}"
        );
        // the fastest that agrees wins; one must beat the best so far, not only the reference
        let (chosen, why) = decide(&[
            Ok((0.40, 1e-3)),
            Ok((0.20, 0.5)),
            Ok((0.30, 2e-3)),
            Ok((0.297, 1e-3)),
        ]);
        assert_eq!(chosen, 3, "{why}");
        assert!(
            why.starts_with("1.67x faster") && why.contains("#2 disagrees"),
            "{why}"
        );
    }
}
