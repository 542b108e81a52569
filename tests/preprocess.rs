//! Preprocessing: a live run (volumes through the real ZeroMQ receiver) and an offline pass over the same
//! recorded run give bit-identical trial patterns; bad volumes are errors the run survives.

use std::sync::atomic::AtomicBool;

use hyper_rt::config::SimulateConfig;
use hyper_rt::ingest::protocol::Limits;
use hyper_rt::ingest::receiver::{Receiver, ReceiverSettings};
use hyper_rt::ingest::recorder::{Recorder, SessionMeta};
use hyper_rt::ingest::sender::{nifti_wire_volume, stream, Pacing, ScannerSender};
use hyper_rt::nifti::NiftiImage;
use hyper_rt::preprocess::trials::{read_events, TrialAverager, TrialWindow};
use hyper_rt::preprocess::{
    mask_indices, nifti_volume, run_patterns, PreprocessError, PreprocessSettings, Preprocessor,
};
use hyper_rt::volume::Volume;

fn small_config() -> SimulateConfig {
    SimulateConfig {
        dims: [32, 32, 20],
        voxel_mm: 4.0,
        train_runs: 1,
        train_trials_per_run: 12,
        test_runs: 0,
        responsive_voxels: 300,
        clusters: 3,
        ..Default::default()
    }
}

#[test]
fn live_and_offline_trial_patterns_are_bit_identical() {
    let root = std::env::temp_dir().join(format!("hyper-rt-pre-{}", std::process::id()));
    let data = root.join("data");
    hyper_rt::simulate::write_dataset(&small_config(), &data, &|_| {}).unwrap();
    let func = data.join("sub-01").join("func");
    let img = NiftiImage::read(&func.join("sub-01_task-faces_run-1_bold.nii.gz")).unwrap();
    let tr = img.tr_secs.unwrap();
    let trials = read_events(
        &func.join("sub-01_task-faces_run-1_events.tsv"),
        Some(img.volumes as f64 * tr),
    )
    .unwrap();
    let brain = NiftiImage::read(&data.join("truth").join("brain_mask.nii.gz")).unwrap();
    let mask = mask_indices(
        &brain
            .volume_values(0)
            .iter()
            .map(|v| *v as f32)
            .collect::<Vec<_>>(),
    );
    let reference: Vec<f32> = nifti_volume(&img, 0, tr).to_f32();
    let window = TrialWindow::default();

    // offline
    let mut offline = Preprocessor::new(
        &reference,
        img.dims,
        img.mm_from_voxel,
        mask.clone(),
        tr,
        PreprocessSettings::default(),
    )
    .unwrap();
    let (offline_patterns, _) = run_patterns(&img, tr, &mut offline, &trials, window).unwrap();
    assert_eq!(offline_patterns.len(), trials.len());

    // live: the same run through the Pyneal-compatible sender and receiver
    let meta = SessionMeta {
        started_unix_secs: 0.0,
        bind: "tcp://127.0.0.1:*".into(),
        expected_volumes: Some(img.volumes),
        max_volume_index: None,
        hyper_rt_version: "test".into(),
    };
    let settings = ReceiverSettings {
        bind: "tcp://127.0.0.1:*".into(),
        expected_volumes: Some(img.volumes),
        idle_timeout_secs: 20.0,
        handshake_timeout_secs: 5.0,
        allow_from: Vec::new(),
        limits: Limits {
            max_volume_bytes: 1 << 26,
            max_dim: 512,
            max_volume_index: 9999,
        },
    };
    let mut receiver = Receiver::bind(
        settings,
        Recorder::create(&root.join("sessions"), &meta).unwrap(),
    )
    .unwrap();
    let endpoint = receiver.endpoint().to_string();
    let (tx, rx) = crossbeam_channel::bounded::<Volume>(4);
    let rx_thread = std::thread::spawn(move || {
        let reason = receiver.run(Some(&tx), &AtomicBool::new(false)).unwrap();
        receiver.finish(reason, false).unwrap();
    });
    let img_for_sender = img.clone();
    let tx_thread = std::thread::spawn(move || {
        let sender = ScannerSender::connect(&endpoint, "hello", 20.0).unwrap();
        let wire = (0..img_for_sender.volumes).map(|t| nifti_wire_volume(&img_for_sender, t, tr));
        stream(
            &sender,
            wire,
            Pacing {
                tr_secs: tr,
                speed: f64::INFINITY,
            },
            |_, _| {},
        )
        .unwrap();
    });
    let mut live: Option<Preprocessor> = None;
    let mut averager = TrialAverager::new(window, tr);
    for trial in &trials {
        averager.add_trial(trial.clone());
    }
    let mut live_patterns = Vec::new();
    for volume in rx.iter() {
        // the live reference is the first volume received, as without a decoder
        let pre = live.get_or_insert_with(|| {
            Preprocessor::new(
                &volume.to_f32(),
                volume.dims,
                volume.mm_from_voxel,
                mask.clone(),
                tr,
                PreprocessSettings::default(),
            )
            .unwrap()
        });
        let p = pre.process(&volume).unwrap();
        live_patterns.extend(averager.push_volume(p.index, &p.values));
    }
    live_patterns.extend(averager.finish());
    live_patterns.sort_by_key(|p| p.trial.index);
    tx_thread.join().unwrap();
    rx_thread.join().unwrap();

    assert_eq!(live_patterns.len(), offline_patterns.len());
    for (a, b) in live_patterns.iter().zip(&offline_patterns) {
        assert_eq!(a.trial, b.trial);
        assert_eq!(a.volumes, b.volumes);
        assert!(
            a.pattern
                .iter()
                .zip(&b.pattern)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "trial {} differs",
            a.trial.index
        );
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bad_volumes_are_errors_the_run_survives() {
    let c = small_config();
    let subject = hyper_rt::simulate::Subject::new(&c).unwrap();
    let anat = &subject.anatomy;
    let mask: Vec<usize> = (0..anat.brain.len()).filter(|&i| anat.brain[i]).collect();
    let mut pre = Preprocessor::new(
        &anat.baseline,
        anat.dims,
        anat.mm_from_voxel,
        mask,
        1.5,
        PreprocessSettings::default(),
    )
    .unwrap();
    let volume = |index: usize, values: &[f32], dims: [usize; 3], affine| Volume {
        index,
        dims,
        mm_from_voxel: affine,
        tr_secs: 1.5,
        dtype: hyper_rt::volume::Dtype::Float32,
        voxel_bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        arrived_at: std::time::Instant::now(),
    };
    let good = pre
        .process(&volume(0, &anat.baseline, anat.dims, anat.mm_from_voxel))
        .unwrap();
    assert!(!good.alignment.diverged);
    // wrong dimensions, then a different affine: errors, counted
    let small = vec![1.0f32; 16 * 16 * 10];
    assert!(matches!(
        pre.process(&volume(1, &small, [16, 16, 10], anat.mm_from_voxel)),
        Err(PreprocessError::Dimensions { .. })
    ));
    let mut shifted = anat.mm_from_voxel;
    shifted[0][3] += 5.0;
    assert!(matches!(
        pre.process(&volume(2, &anat.baseline, anat.dims, shifted)),
        Err(PreprocessError::Affine { .. })
    ));
    // non-finite voxels: replaced and counted
    let mut holes = anat.baseline.clone();
    holes[100] = f32::NAN;
    holes[2000] = f32::INFINITY;
    let p = pre
        .process(&volume(3, &holes, anat.dims, anat.mm_from_voxel))
        .unwrap();
    assert_eq!(p.non_finite_replaced, 2);
    assert!(p.values.iter().all(|v| v.is_finite()));
    // a volume of noise cannot be registered: the previous transform is kept and the volume flagged
    let mut rng = hyper_rt::rng::Rng::new(4);
    let noise: Vec<f32> = (0..anat.baseline.len())
        .map(|_| (1000.0 * rng.uniform()) as f32)
        .collect();
    let p = pre
        .process(&volume(4, &noise, anat.dims, anat.mm_from_voxel))
        .unwrap();
    assert!(
        p.alignment.diverged || !p.alignment.converged,
        "{:?}",
        p.alignment
    );
    // and the run goes on
    let after = pre
        .process(&volume(5, &anat.baseline, anat.dims, anat.mm_from_voxel))
        .unwrap();
    assert!(!after.alignment.diverged);
    assert_eq!(pre.counts.rejected_geometry, 2);
    assert_eq!(pre.counts.non_finite_voxels_replaced, 2);
}
