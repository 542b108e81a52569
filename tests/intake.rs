//! The receiver and the sender of this crate talk to each other over a real loopback socket, and the
//! volumes handed downstream equal what was sent, in arrival order, with nothing dropped.

use std::sync::atomic::AtomicBool;

use hyper_rt::ingest::protocol::Limits;
use hyper_rt::ingest::receiver::{EndReason, Receiver, ReceiverSettings};
use hyper_rt::ingest::recorder::{Recorder, SessionMeta};
use hyper_rt::ingest::sender::{stream, Pacing, ScannerSender, WireVolume};
use hyper_rt::volume::{x_fastest_to_c_order, Dtype, IDENTITY_AFFINE};

#[test]
fn volumes_flow_downstream_in_arrival_order_without_loss() {
    let root = std::env::temp_dir().join(format!("hyper-rt-it-{}", std::process::id()));
    let meta = SessionMeta {
        started_unix_secs: 0.0,
        bind: "tcp://127.0.0.1:*".into(),
        expected_volumes: Some(8),
        max_volume_index: None,
        hyper_rt_version: "test".into(),
    };
    let settings = ReceiverSettings {
        bind: "tcp://127.0.0.1:*".into(),
        expected_volumes: Some(8),
        idle_timeout_secs: 10.0,
        handshake_timeout_secs: 5.0,
        allow_from: Vec::new(),
        limits: Limits {
            max_volume_bytes: 1 << 20,
            max_dim: 64,
            max_volume_index: 9999,
        },
    };
    let mut receiver = Receiver::bind(settings, Recorder::create(&root, &meta).unwrap()).unwrap();
    let endpoint = receiver.endpoint().to_string();
    // capacity 1: the receiver must block, not drop, when downstream is slow
    let (tx, rx) = crossbeam_channel::bounded(1);
    let handle = std::thread::spawn(move || {
        let reason = receiver.run(Some(&tx), &AtomicBool::new(false)).unwrap();
        receiver.finish(reason, false).unwrap();
        reason
    });
    let order = [3usize, 0, 1, 7, 2, 4, 6, 5];
    let volume = |t: usize| -> Vec<u8> {
        (0..24)
            .map(|i| (i * 10 + t) as f32)
            .flat_map(|v| v.to_le_bytes())
            .collect()
    };
    let sender_thread = std::thread::spawn(move || {
        let sender = ScannerSender::connect(&endpoint, "hello", 10.0).unwrap();
        let wire = order.iter().map(|&t| WireVolume {
            index: t,
            dtype: Dtype::Float32,
            dims: [2, 3, 4],
            mm_from_voxel: IDENTITY_AFFINE,
            tr_secs: 2.0,
            slice_timing_secs: None,
            c_order_le: x_fastest_to_c_order(&volume(t), [2, 3, 4], 4),
        });
        stream(
            &sender,
            wire,
            Pacing {
                tr_secs: 2.0,
                speed: f64::INFINITY,
            },
            |_, _| {},
        )
        .unwrap()
    });
    let mut seen = Vec::new();
    for v in rx.iter() {
        std::thread::sleep(std::time::Duration::from_millis(5)); // a slow consumer
        assert_eq!(
            v.voxel_bytes,
            volume(v.index),
            "volume {} changed on the way",
            v.index
        );
        assert_eq!(v.tr_secs, 2.0);
        seen.push(v.index);
    }
    let report = sender_thread.join().unwrap();
    assert!(report.stopped_by_receiver);
    assert_eq!(handle.join().unwrap(), EndReason::Complete);
    assert_eq!(seen, order);
    std::fs::remove_dir_all(&root).unwrap();
}
