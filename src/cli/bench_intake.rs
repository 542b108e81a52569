//! `hyper-rt bench-intake`: reply latency and sustained throughput of the intake over loopback TCP, with
//! recording on (as in a real session). Prints a table and one JSON line for docs/benchmarks.md.

use anyhow::ensure;
use hyper_rt::config::Config;
use hyper_rt::ingest::recorder::LatencyMs;
use hyper_rt::ingest::sender::{self, Pacing, ScannerSender, WireVolume};
use hyper_rt::rng::Rng;
use hyper_rt::volume::Dtype;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Volumes to send
    #[arg(long, default_value_t = 600)]
    volumes: usize,
    /// Volume shape nx,ny,nz
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 64, 36])]
    dims: Vec<usize>,
}

pub fn run(args: Args, config: Config) -> anyhow::Result<()> {
    ensure!(
        args.dims.len() == 3 && args.dims.iter().all(|&d| d > 0),
        "--dims needs three positive sizes"
    );
    ensure!(args.volumes > 0, "--volumes must be positive");
    let dims = [args.dims[0], args.dims[1], args.dims[2]];
    let voxels: usize = dims.iter().product();
    let mut rng = Rng::new(3);
    // a few distinct payloads, reused, so generating data does not dominate the sender
    let payloads: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            (0..voxels)
                .flat_map(|_| (1000.0 + 50.0 * rng.normal()).to_le_bytes())
                .collect()
        })
        .collect();
    let root = std::env::temp_dir().join(format!("hyper-rt-bench-{}", std::process::id()));
    let receiver = super::LoopbackReceiver::start(&config, &root, Some(args.volumes), false)?;
    let scanner = ScannerSender::connect(&receiver.endpoint, &config.sender.handshake, 30.0)?;
    let started = std::time::Instant::now();
    let wire = (0..args.volumes).map(|t| WireVolume {
        index: t,
        dtype: Dtype::Float64,
        dims,
        mm_from_voxel: hyper_rt::volume::IDENTITY_AFFINE,
        tr_secs: 1.0,
        slice_timing_secs: None,
        c_order_le: payloads[t % payloads.len()].clone(),
    });
    let report = sender::stream(
        &scanner,
        wire,
        Pacing {
            tr_secs: 1.0,
            speed: f64::INFINITY,
        },
        |_, _| {},
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(scanner);
    let summary = receiver.join()?;
    std::fs::remove_dir_all(&root).ok();
    ensure!(
        summary.received == args.volumes,
        "only {} of {} volumes were received",
        summary.received,
        args.volumes
    );

    let reply = &summary.reply_latency_ms;
    let round_trip = LatencyMs::from_samples(&report.round_trip_ms);
    let rate = args.volumes as f64 / elapsed;
    let mib = (voxels * 8) as f64 / (1 << 20) as f64;
    println!("intake benchmark: {} float64 volumes of {:?} ({mib:.2} MiB each), loopback TCP, recording on", args.volumes, dims);
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        "receiver: message in -> reply out", reply.p50, reply.p95, reply.p99, reply.max
    );
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        "sender: send -> reply received",
        round_trip.p50,
        round_trip.p95,
        round_trip.p99,
        round_trip.max
    );
    println!("sustained: {rate:.0} volumes/s ({:.0} MiB/s)", rate * mib);
    println!(
        "{}",
        serde_json::json!({"volumes": args.volumes, "dims": dims, "reply_ms": reply, "round_trip_ms": round_trip, "volumes_per_sec": rate})
    );
    Ok(())
}
