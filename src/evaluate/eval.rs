//! `eval`: decodes the test trials and reports HYPER's measures, with repetitions averaged (as published) and
//! single-trial, each against a permutation null of random latents, plus a grid of stimulus | reconstruction.

use std::path::{Path, PathBuf};

use super::plots;
use crate::decode::attributes::{self, Boundary};
use crate::decode::bundle::DecoderBundle;
use crate::decode::metrics::{
    attribute_score, cosine, identification, latent_similarity, luminance, p_value, pearson,
    resize_rgb, ssim_rgb,
};
use crate::decode::{decode_trials, Dataset, DecodeError};
use crate::generate::{image_rgb8, Backend, GenerateError};
use crate::rng::Rng;

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Folder with `pggan_celebahq_<attribute>_boundary.npy` to use instead of the embedded attribute directions.
    pub boundaries: Option<PathBuf>,
    /// Random latents in the permutation test of the latent measures.
    pub permutations: usize,
    /// Random images in the permutation test of the image measures (each costs a generator pass).
    pub image_permutations: usize,
    pub seed: u64,
}

/// A measure with its spread and permutation p-value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measure {
    pub mean: f64,
    /// Standard error of the mean over test items.
    pub se: f64,
    pub null_mean: f64,
    pub p: f64,
    /// The null distribution itself (for the histograms).
    #[serde(skip)]
    pub null: Vec<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportSet {
    pub items: usize,
    pub latent_similarity: Measure,
    pub cosine: Measure,
    pub identification_pairwise: f64,
    pub identification_nway: f64,
    /// Correlation of true and decoded attribute scores across items, with p-value.
    pub attributes: Vec<(String, f64, f64)>,
    /// Per attribute: true and decoded scores of every item.
    pub attribute_scores: Vec<(String, Vec<f64>, Vec<f64>)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub subject: String,
    pub generator: String,
    pub averaged: ReportSet,
    pub single_trial: ReportSet,
    pub pixel_pearson: Measure,
    pub ssim: Measure,
    pub penalty: f64,
    pub cv_curve: Vec<(f64, f64)>,
    pub voxels: usize,
    pub training_trials: usize,
}

fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (var / n.max(1.0)).sqrt())
}

fn measure(values: &[f64], null: &[f64]) -> Measure {
    let (mean, se) = mean_se(values);
    Measure {
        mean,
        se,
        null_mean: null.iter().sum::<f64>() / null.len().max(1) as f64,
        p: p_value(mean, null),
        null: null.to_vec(),
    }
}

fn report_set(
    preds: &[Vec<f32>],
    truths: &[Vec<f32>],
    randoms: &[Vec<f32>],
    boundaries: &[Boundary],
    seed: u64,
) -> ReportSet {
    let sims: Vec<f64> = preds
        .iter()
        .zip(truths)
        .map(|(p, t)| latent_similarity(p, t))
        .collect();
    let coss: Vec<f64> = preds
        .iter()
        .zip(truths)
        .map(|(p, t)| cosine(p, t))
        .collect();
    // null: one random latent in place of every prediction
    let null_sim: Vec<f64> = randoms
        .iter()
        .map(|r| truths.iter().map(|t| latent_similarity(r, t)).sum::<f64>() / truths.len() as f64)
        .collect();
    let null_cos: Vec<f64> = randoms
        .iter()
        .map(|r| truths.iter().map(|t| cosine(r, t)).sum::<f64>() / truths.len() as f64)
        .collect();
    let (pair, nway) = identification(preds, truths);
    let attribute_scores: Vec<(String, Vec<f64>, Vec<f64>)> = boundaries
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                truths
                    .iter()
                    .map(|z| attribute_score(z, &b.normal))
                    .collect(),
                preds
                    .iter()
                    .map(|z| attribute_score(z, &b.normal))
                    .collect(),
            )
        })
        .collect();
    let attributes = boundaries
        .iter()
        .zip(&attribute_scores)
        .map(|(b, (_, t, p))| {
            let r = pearson(t, p);
            // null: for each permutation, a random latent (drawn from the pool) in place of every prediction
            let pool: Vec<f64> = randoms
                .iter()
                .map(|z| attribute_score(z, &b.normal))
                .collect();
            let mut rng = Rng::new(seed ^ 0xA77);
            let null: Vec<f64> = (0..randoms.len())
                .map(|_| {
                    let drawn: Vec<f64> = (0..t.len())
                        .map(|_| {
                            pool[(rng.uniform() * pool.len() as f64) as usize % pool.len().max(1)]
                        })
                        .collect();
                    pearson(t, &drawn)
                })
                .collect();
            (b.name.clone(), r, p_value(r, &null))
        })
        .collect();
    ReportSet {
        items: preds.len(),
        latent_similarity: measure(&sims, &null_sim),
        cosine: measure(&coss, &null_cos),
        identification_pairwise: pair,
        identification_nway: nway,
        attributes,
        attribute_scores,
    }
}

/// Runs the evaluation and writes `report.json`, `report.md` and `grid.png` to `out`.
pub fn evaluate(
    data: &Dataset,
    bundle: &DecoderBundle,
    generator: &mut Backend,
    settings: &EvalSettings,
    out: &Path,
    progress: &dyn Fn(&str),
) -> Result<Report, DecodeError> {
    let gen_err = |e: GenerateError| DecodeError::Data {
        path: out.to_path_buf(),
        message: e.to_string(),
    };
    let latent = data.latent_size;
    if generator.model().latent_size != latent {
        return Err(DecodeError::Data {
            path: data.root.clone(),
            message: format!(
                "the generator takes {}-d latents, the dataset has {latent}",
                generator.model().latent_size
            ),
        });
    }
    progress("decoding test trials");
    let decoded = decode_trials(data, bundle, "test", &|_, _| {})?;
    let mut stims: Vec<usize> = decoded.iter().map(|d| d.0).collect();
    stims.sort_unstable();
    stims.dedup();
    let averaged: Vec<Vec<f32>> = stims
        .iter()
        .map(|s| {
            let members: Vec<&Vec<f32>> =
                decoded.iter().filter(|d| d.0 == *s).map(|d| &d.1).collect();
            (0..latent)
                .map(|i| members.iter().map(|m| m[i]).sum::<f32>() / members.len() as f32)
                .collect()
        })
        .collect();
    let truths: Vec<Vec<f32>> = stims.iter().map(|s| data.latent(*s).to_vec()).collect();
    let single_truths: Vec<Vec<f32>> = decoded.iter().map(|d| data.latent(d.0).to_vec()).collect();
    let single_preds: Vec<Vec<f32>> = decoded.iter().map(|d| d.1.clone()).collect();
    let mut rng = Rng::new(settings.seed);
    let randoms: Vec<Vec<f32>> = (0..settings.permutations)
        .map(|_| (0..latent).map(|_| rng.normal() as f32).collect())
        .collect();
    let boundaries = if latent == 512 {
        attributes::all(settings.boundaries.as_deref(), latent)?
    } else {
        Vec::new()
    };
    let averaged_set = report_set(&averaged, &truths, &randoms, &boundaries, settings.seed);
    let single_set = report_set(
        &single_preds,
        &single_truths,
        &randoms,
        &boundaries,
        settings.seed,
    );

    progress("drawing stimuli and reconstructions");
    let side = generator.model().resolution;
    let draw = |g: &mut Backend, zs: &[Vec<f32>]| -> Result<Vec<Vec<u8>>, DecodeError> {
        let mut images = Vec::new();
        for chunk in zs.chunks(8) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let nchw = g.generate(&flat).map_err(gen_err)?;
            images.extend((0..chunk.len()).map(|i| image_rgb8(&nchw, i, side)));
        }
        Ok(images)
    };
    let stim_images = draw(generator, &truths)?;
    let recon_images = draw(generator, &averaged)?;
    const EVAL_SIDE: usize = 224;
    let small = |img: &Vec<u8>| resize_rgb(img, side, EVAL_SIDE);
    let stim_small: Vec<Vec<u8>> = stim_images.iter().map(small).collect();
    let recon_small: Vec<Vec<u8>> = recon_images.iter().map(small).collect();
    let pix: Vec<f64> = stim_small
        .iter()
        .zip(&recon_small)
        .map(|(a, b)| pearson(&luminance(a), &luminance(b)))
        .collect();
    let ssim: Vec<f64> = stim_small
        .iter()
        .zip(&recon_small)
        .map(|(a, b)| ssim_rgb(a, b, EVAL_SIDE))
        .collect();
    progress("permutation test of the image measures");
    let random_images = draw(
        generator,
        &randoms[..settings.image_permutations.min(randoms.len())],
    )?;
    let (mut null_pix, mut null_ssim) = (Vec::new(), Vec::new());
    for r in &random_images {
        let r = small(r);
        null_pix.push(
            stim_small
                .iter()
                .map(|s| pearson(&luminance(s), &luminance(&r)))
                .sum::<f64>()
                / stim_small.len() as f64,
        );
        null_ssim.push(
            stim_small
                .iter()
                .map(|s| ssim_rgb(s, &r, EVAL_SIDE))
                .sum::<f64>()
                / stim_small.len() as f64,
        );
    }
    let report = Report {
        subject: data.subject.clone(),
        generator: generator.model().label.clone(),
        averaged: averaged_set,
        single_trial: single_set,
        pixel_pearson: measure(&pix, &null_pix),
        ssim: measure(&ssim, &null_ssim),
        penalty: bundle.penalty,
        cv_curve: bundle.cv_curve.clone(),
        voxels: bundle.voxels.len(),
        training_trials: bundle.info.trials,
    };
    std::fs::create_dir_all(out).map_err(|e| DecodeError::Data {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    let write = |name: &str, text: String| {
        std::fs::write(out.join(name), text).map_err(|e| DecodeError::Data {
            path: out.join(name),
            message: e.to_string(),
        })
    };
    write(
        "report.json",
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )?;
    write("report.md", markdown(&report))?;
    write_grid(&out.join("grid.png"), &stim_images, &recon_images, side).map_err(gen_err)?;
    let plot_err = |e: std::io::Error| DecodeError::Data {
        path: out.to_path_buf(),
        message: format!("plot: {e}"),
    };
    plots::cv_curve(&out.join("cv_curve.png"), &report.cv_curve, report.penalty)
        .map_err(plot_err)?;
    if !report.averaged.attribute_scores.is_empty() {
        plots::attribute_scatter(
            &out.join("attributes.png"),
            &report.averaged.attribute_scores,
        )
        .map_err(plot_err)?;
    }
    let measures = vec![
        (
            "latent similarity".to_string(),
            report.averaged.latent_similarity.mean,
            report.averaged.latent_similarity.null.clone(),
        ),
        (
            "cosine".to_string(),
            report.averaged.cosine.mean,
            report.averaged.cosine.null.clone(),
        ),
        (
            "pixel pearson r".to_string(),
            report.pixel_pearson.mean,
            report.pixel_pearson.null.clone(),
        ),
        (
            "ssim".to_string(),
            report.ssim.mean,
            report.ssim.null.clone(),
        ),
    ];
    plots::null_histograms(&out.join("null_histograms.png"), &measures).map_err(plot_err)?;
    Ok(report)
}

/// Stimulus | reconstruction pairs, four pairs per row.
fn write_grid(
    path: &Path,
    stimuli: &[Vec<u8>],
    recons: &[Vec<u8>],
    side: usize,
) -> Result<(), GenerateError> {
    let per_row = 4;
    let rows = stimuli.len().div_ceil(per_row).max(1);
    let (w, h) = (per_row * (2 * side + 8), rows * (side + 8));
    let mut canvas = vec![255u8; w * h * 3];
    for (i, (s, r)) in stimuli.iter().zip(recons).enumerate() {
        let (x0, y0) = ((i % per_row) * (2 * side + 8), (i / per_row) * (side + 8));
        for (k, img) in [s, r].iter().enumerate() {
            for y in 0..side {
                let dst = ((y0 + y) * w + x0 + k * side) * 3;
                canvas[dst..dst + side * 3].copy_from_slice(&img[y * side * 3..(y + 1) * side * 3]);
            }
        }
    }
    let img =
        image::RgbImage::from_raw(w as u32, h as u32, canvas).ok_or_else(|| GenerateError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("grid size"),
        })?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| GenerateError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

fn markdown(r: &Report) -> String {
    let m = |x: &Measure| {
        format!(
            "{:.4} ± {:.4} (null {:.4}, p = {:.3})",
            x.mean, x.se, x.null_mean, x.p
        )
    };
    let mut s = format!("# Decoding report: sub-{}\n\nGenerator: {}. Decoder: {} voxels, {} training trials, ridge penalty {:.3e}.\n\n", r.subject, r.generator, r.voxels, r.training_trials, r.penalty);
    s.push_str("| measure | repetitions averaged | single trial | HYPER S1 (published) | HYPER S2 (published) |\n|---|---|---|---|---|\n");
    s.push_str(&format!(
        "| latent similarity 1/(1+MSE) | {} | {} | 0.4722 ± 0.0024 | 0.4666 ± 0.0020 |\n",
        m(&r.averaged.latent_similarity),
        m(&r.single_trial.latent_similarity)
    ));
    s.push_str(&format!(
        "| cosine similarity | {} | {} | – | – |\n",
        m(&r.averaged.cosine),
        m(&r.single_trial.cosine)
    ));
    s.push_str(&format!(
        "| pixel Pearson r (224 px luminance) | {} | – | 0.5464 ± 0.0256 | 0.5013 ± 0.0291 |\n",
        m(&r.pixel_pearson)
    ));
    s.push_str(&format!(
        "| SSIM (7 x 7, colour) | {} | – | 0.6663 ± 0.0115 | 0.6035 ± 0.0128 |\n",
        m(&r.ssim)
    ));
    s.push_str(&format!(
        "| identification, pairwise / N-way | {:.3} / {:.3} | {:.3} / {:.3} | – | – |\n",
        r.averaged.identification_pairwise,
        r.averaged.identification_nway,
        r.single_trial.identification_pairwise,
        r.single_trial.identification_nway
    ));
    let published = [
        ("gender", "0.89", "0.72"),
        ("age", "0.78", "0.69"),
        ("pose", "0.83", "0.72"),
        ("eyeglasses", "0.59", "0.56"),
        ("smile", "0.10", "0.20"),
    ];
    for (name, r_avg, p_avg) in &r.averaged.attributes {
        let single = r
            .single_trial
            .attributes
            .iter()
            .find(|a| &a.0 == name)
            .map(|a| format!("{:.3} (p = {:.3})", a.1, a.2))
            .unwrap_or_default();
        let (s1, s2) = published
            .iter()
            .find(|p| p.0 == name)
            .map(|p| (p.1, p.2))
            .unwrap_or(("–", "–"));
        s.push_str(&format!(
            "| attribute r: {name} | {r_avg:.3} (p = {p_avg:.3}) | {single} | {s1} | {s2} |\n"
        ));
    }
    s.push_str("\nPlots: `cv_curve.png`, `attributes.png` (true vs decoded attribute scores), `null_histograms.png` (each measure against its permutation null), `grid.png` (stimulus | reconstruction).\n");
    s.push_str("\nPublished numbers: Dado et al., Scientific Reports 2022 (real fMRI, real PGGAN). Figures from simulated data or the built-in random-weight generator are not comparable to them.\n\n## Cross-validation curve\n\n| penalty | validation MSE |\n|---|---|\n");
    for (p, e) in &r.cv_curve {
        s.push_str(&format!("| {p:.3e} | {e:.5} |\n"));
    }
    s
}
