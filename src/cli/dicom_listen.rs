//! The DICOM network receiver's flags, shared by `hyper-rt send --dicom-listen` and `hyper-rt live --dicom-listen`,
//! and the options they make.

use std::path::PathBuf;

use hyper_rt::config::{overlay, Config};
use hyper_rt::ingest::dicom_forward::{DicomNode, ListenOptions, ListenReport};
use hyper_rt::scanner::dicom_net::{listen_address, ScpOptions};

#[derive(clap::Args, Debug)]
pub struct DicomListenArgs {
    /// Receive images over the DICOM network as a storage node (C-ECHO, C-STORE): `PORT` listens on loopback
    /// only, `HOST:PORT` on that address (`0.0.0.0:11112`: every interface). Point the scanner's DICOM
    /// destination here (host, port, --ae-title); each volume leaves as soon as its last image is in. Reads
    /// Siemens mosaics, Siemens XA enhanced images and GE single slices, uncompressed [dicom.listen]
    #[arg(long, value_name = "[HOST:]PORT")]
    pub dicom_listen: Option<String>,
    /// This node's AE title, which the scanner's destination must call [dicom.ae_title]
    #[arg(long, value_name = "TITLE")]
    pub ae_title: Option<String>,
    /// Accept associations only from this calling AE title (the console's); repeat for several [dicom.allow_ae]
    #[arg(long, value_name = "TITLE")]
    pub allow_ae: Vec<String>,
    /// Keep each received image as <SOPInstanceUID>.dcm in this folder [dicom.store]
    #[arg(long, value_name = "FOLDER")]
    pub dicom_store: Option<PathBuf>,
}

impl DicomListenArgs {
    /// Lays the flags over `[dicom]`.
    pub fn apply(&self, config: &mut Config) {
        let d = &mut config.dicom;
        overlay(&mut d.listen, &self.dicom_listen.clone().map(Some));
        overlay(&mut d.ae_title, &self.ae_title);
        if !self.allow_ae.is_empty() {
            d.allow_ae = self.allow_ae.clone();
        }
        overlay(&mut d.store, &self.dicom_store.clone().map(Some));
    }
}

/// The listening options of a validated configuration whose `dicom.listen` is set.
pub fn listen_options(
    config: &Config,
    series: Option<i64>,
    max_volumes: Option<usize>,
    idle_secs: f64,
    tr_override_secs: Option<f64>,
) -> anyhow::Result<ListenOptions> {
    let listen = config.dicom.listen.as_deref().unwrap_or_default();
    let bind = listen_address(listen).map_err(|e| anyhow::anyhow!("--dicom-listen: {e}"))?;
    Ok(ListenOptions {
        scp: ScpOptions {
            bind,
            ae_title: config.dicom.ae_title.trim().to_string(),
            allow_ae: config
                .dicom
                .allow_ae
                .iter()
                .map(|t| t.trim().to_string())
                .collect(),
            keep_dir: config.dicom.store.clone(),
            idle_timeout_secs: config.dicom.idle_timeout_secs,
        },
        series: series.or(config.dicom.series),
        max_volumes,
        idle_secs,
        tr_override_secs,
    })
}

/// Starts the storage node and says where it listens.
pub fn start_node(options: &ListenOptions) -> anyhow::Result<DicomNode> {
    let node = DicomNode::start(&options.scp)?;
    println!(
        "DICOM storage node {:?} listening on {}",
        options.scp.ae_title,
        node.local_addr()
    );
    Ok(node)
}

/// What the storage node did, in one line: associations, images stored, each kind of refusal.
pub fn counts_line(report: &ListenReport) -> String {
    let c = &report.counts;
    let mut parts = vec![
        format!("{} associations", c.associations),
        format!("{} images stored", c.stored),
    ];
    for (n, what) in [
        (c.echoes, "echoes"),
        (c.associations_refused, "associations refused"),
        (c.contexts_refused, "presentation contexts refused"),
        (
            c.unsupported_sop_class,
            "images of an unsupported SOP class",
        ),
        (c.unreadable, "images unreadable"),
        (c.too_large, "data sets too large"),
        (c.keep_failed, "images not kept (--dicom-store)"),
        (c.not_taken, "images not taken by the pipeline"),
        (c.unrecognized_commands, "unrecognised commands"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!("DICOM: {}", parts.join(", "))
}
