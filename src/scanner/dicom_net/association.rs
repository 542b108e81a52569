//! Serving one DICOM association: negotiation (AE titles, presentation contexts) through dicom-ul, then its
//! P-DATA fragments gathered into messages, each C-ECHO and C-STORE answered with a status, until the peer
//! releases or aborts the association, or is silent for longer than allowed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::Association;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason, UserIdentity,
};
use dicom_ul::ServerAssociationOptions;

use super::dimse::{self, status, Command};
use super::instance::READABLE_SOP_CLASSES;
use super::instance::{keep, part10_file, readable_sop_class, InstanceOrigin};
use super::{bump, Received, ScpCounters, ScpOptions, StoreOutcome, MAX_DATA_SET_BYTES};
use crate::scanner::dicom::compressed::readable_transfer_syntaxes;
use crate::scanner::export::read_dicom_bytes;

/// The largest PDU this node takes (the peer cuts its data sets into PDUs of at most this).
const MAX_PDU_BYTES: u32 = 1 << 20;
/// How long a peer has to send its association request.
const ASSOCIATE_TIMEOUT: Duration = Duration::from_secs(5);
/// A command set is a few hundred bytes; more is not a command.
const MAX_COMMAND_BYTES: usize = 64 << 10;
/// How long a C-STORE waits for the pipeline to take its volume before it fails.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The AE title checks: the called title must be this node's; the calling one must be listed, when a list is given.
struct AeAccess {
    allow_ae: Vec<String>,
    peer: SocketAddr,
}

impl AccessControl for AeAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let (calling, called) = (calling_ae_title.trim(), called_ae_title.trim());
        if called != this_ae_title.trim() {
            tracing::warn!(
                "DICOM association from {calling:?} at {}: refused, it calls AE title {called:?} but this node is \
                 {:?} (--ae-title, or the scanner's destination)",
                self.peer,
                this_ae_title.trim()
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allow_ae.is_empty() && !self.allow_ae.iter().any(|a| a == calling) {
            tracing::warn!(
                "DICOM association from {calling:?} at {}: refused, the calling AE title is not in --allow-ae ({})",
                self.peer,
                self.allow_ae.join(", ")
            );
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// The other end of an association, as the log names it: `"CONSOLE" at 192.168.2.10:40112`.
struct Peer {
    calling_ae: String,
    address: SocketAddr,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} at {}", self.calling_ae, self.address)
    }
}

/// Rejects an association because too many are open: reads the request, answers A-ASSOCIATE-RJ (transient,
/// service provider, local limit exceeded), closes.
pub(super) fn reject_busy(mut socket: TcpStream) {
    let _ = socket.set_read_timeout(Some(ASSOCIATE_TIMEOUT));
    let mut request = [0u8; 4096];
    let _ = socket.read(&mut request);
    let _ = socket.write_all(&[0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2]);
    let _ = socket.shutdown(std::net::Shutdown::Both);
}

/// A message gathered from P-DATA fragments.
enum Message {
    Command {
        context: u8,
        command: Command,
    },
    WithData {
        context: u8,
        command: Command,
        data: Vec<u8>,
        /// Bytes that came, when more than [`MAX_DATA_SET_BYTES`] (the data were dropped).
        too_large: Option<usize>,
    },
}

/// The message being gathered.
#[derive(Default)]
struct Gathering {
    command_bytes: Vec<u8>,
    waiting_for_data: Option<(u8, Command)>,
    data: Vec<u8>,
    data_len: usize,
}

impl Gathering {
    fn push(&mut self, value: PDataValue) -> Result<Option<Message>, String> {
        let context = value.presentation_context_id;
        match value.value_type {
            PDataValueType::Command => {
                if self.command_bytes.len() + value.data.len() > MAX_COMMAND_BYTES {
                    return Err(format!("a command set over {MAX_COMMAND_BYTES} bytes"));
                }
                self.command_bytes.extend_from_slice(&value.data);
                if !value.is_last {
                    return Ok(None);
                }
                let command = Command::read(&std::mem::take(&mut self.command_bytes))
                    .map_err(|e| e.to_string())?;
                if command.has_data_set {
                    self.waiting_for_data = Some((context, command));
                    return Ok(None);
                }
                Ok(Some(Message::Command { context, command }))
            }
            PDataValueType::Data => {
                if self.waiting_for_data.is_none() {
                    return Err("a data set fragment without a command before it".into());
                }
                self.data_len += value.data.len();
                if self.data_len <= MAX_DATA_SET_BYTES {
                    self.data.extend_from_slice(&value.data);
                } else {
                    self.data = Vec::new(); // drained: memory stays bounded
                }
                if !value.is_last {
                    return Ok(None);
                }
                let Some((context, command)) = self.waiting_for_data.take() else {
                    return Ok(None); // checked above
                };
                let too_large = (self.data_len > MAX_DATA_SET_BYTES).then_some(self.data_len);
                self.data_len = 0;
                Ok(Some(Message::WithData {
                    context,
                    command,
                    data: std::mem::take(&mut self.data),
                    too_large,
                }))
            }
        }
    }
}

/// Serves one association to its end.
pub(super) fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    options: &ScpOptions,
    counters: &ScpCounters,
    deliveries: &Sender<Received>,
) {
    let access = AeAccess {
        allow_ae: options.allow_ae.clone(),
        peer,
    };
    let mut negotiation = ServerAssociationOptions::new()
        .ae_access_control(access)
        .ae_title(options.ae_title.as_str())
        .promiscuous(true)
        .max_pdu_length(MAX_PDU_BYTES)
        .read_timeout(ASSOCIATE_TIMEOUT);
    // the transfer syntaxes the DICOM readers here decode
    for ts in readable_transfer_syntaxes() {
        negotiation = negotiation.with_transfer_syntax(ts);
    }
    // each response is one small write, sent at once rather than held back by Nagle's algorithm
    let _ = socket.set_nodelay(true);
    let mut association = match negotiation.establish(socket) {
        Ok(a) => a,
        Err(e) => {
            bump(&counters.associations_refused);
            tracing::warn!("DICOM association from {peer} not established: {e}");
            return;
        }
    };
    bump(&counters.associations);
    let who = Peer {
        calling_ae: association.peer_ae_title().trim().to_string(),
        address: peer,
    };
    tracing::info!("DICOM association from {who}");
    let contexts = association.presentation_contexts().to_vec();
    for pc in contexts
        .iter()
        .filter(|pc| pc.reason != PresentationContextResultReason::Acceptance)
    {
        bump(&counters.contexts_refused);
        tracing::warn!(
            "DICOM association from {who}: presentation context {} for {} refused ({:?}): none of its transfer \
             syntaxes is read here (explicit or implicit VR little endian; send uncompressed images)",
            pc.id,
            pc.abstract_syntax,
            pc.reason
        );
    }
    let idle = Duration::from_secs_f64(options.idle_timeout_secs.max(1.0));
    let _ = association.inner_stream().set_read_timeout(Some(idle));
    let mut gathering = Gathering::default();
    loop {
        let pdu = match association.receive() {
            Ok(pdu) => pdu,
            Err(e) => {
                tracing::warn!("DICOM association from {who} ends: {e}");
                let _ = association.abort();
                return;
            }
        };
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    let message = match gathering.push(value) {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(reason) => {
                            tracing::warn!("DICOM association from {who} aborted: {reason}");
                            let _ = association.abort();
                            return;
                        }
                    };
                    let (context, response) =
                        answer(message, &contexts, &who, options, counters, deliveries);
                    let sent = response.map_err(|e| e.to_string()).and_then(|bytes| {
                        association
                            .send(&Pdu::PData {
                                data: vec![PDataValue {
                                    presentation_context_id: context,
                                    value_type: PDataValueType::Command,
                                    is_last: true,
                                    data: bytes,
                                }],
                            })
                            .map_err(|e| e.to_string())
                    });
                    if let Err(e) = sent {
                        tracing::warn!("DICOM association from {who}: cannot answer: {e}");
                        let _ = association.abort();
                        return;
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = association.send(&Pdu::ReleaseRP);
                tracing::info!("DICOM association from {who} released");
                return;
            }
            Pdu::AbortRQ { source } => {
                tracing::warn!("DICOM association from {who} aborted by the peer ({source:?})");
                return;
            }
            other => {
                tracing::warn!(
                    "DICOM association from {who}: unexpected {}; aborting",
                    other.short_description()
                );
                let _ = association.abort();
                return;
            }
        }
    }
}

/// The response to one message, and the presentation context it goes on.
fn answer(
    message: Message,
    contexts: &[dicom_ul::pdu::PresentationContextNegotiated],
    who: &Peer,
    options: &ScpOptions,
    counters: &ScpCounters,
    deliveries: &Sender<Received>,
) -> (u8, Result<Vec<u8>, dimse::CommandError>) {
    match message {
        Message::Command { context, command } if command.field == dimse::C_ECHO_RQ => {
            bump(&counters.echoes);
            tracing::info!("DICOM C-ECHO from {who}");
            (context, command.response(status::SUCCESS, None))
        }
        Message::Command { context, command }
        | Message::WithData {
            context, command, ..
        } if command.field != dimse::C_STORE_RQ => {
            bump(&counters.unrecognized_commands);
            tracing::warn!(
                "DICOM association from {who}: command 0x{:04X} is not served here (C-ECHO and C-STORE are)",
                command.field
            );
            (
                context,
                command.response(
                    status::UNRECOGNIZED_OPERATION,
                    Some("only C-ECHO and C-STORE are served"),
                ),
            )
        }
        Message::Command { context, command } => {
            bump(&counters.unreadable);
            tracing::warn!("DICOM C-STORE from {who} without a data set");
            (
                context,
                command.response(
                    status::CANNOT_UNDERSTAND,
                    Some("a C-STORE without a data set"),
                ),
            )
        }
        Message::WithData {
            context,
            command,
            data,
            too_large,
        } => {
            let transfer_syntax = contexts
                .iter()
                .find(|pc| {
                    pc.id == context && pc.reason == PresentationContextResultReason::Acceptance
                })
                .map(|pc| pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_string());
            let origin = InstanceOrigin {
                sop_class_uid: command.sop_class_uid.clone(),
                sop_instance_uid: command.sop_instance_uid.clone(),
                transfer_syntax_uid: transfer_syntax.unwrap_or_default(),
                calling_ae: who.calling_ae.clone(),
            };
            let (code, comment) =
                store(&origin, data, too_large, who, options, counters, deliveries);
            (context, command.response(code, comment.as_deref()))
        }
    }
}

/// Stores one instance: checks, keeps, reads and hands it over, and says the status to answer with.
fn store(
    origin: &InstanceOrigin,
    data: Vec<u8>,
    too_large: Option<usize>,
    who: &Peer,
    options: &ScpOptions,
    counters: &ScpCounters,
    deliveries: &Sender<Received>,
) -> (u16, Option<String>) {
    let instance = &origin.sop_instance_uid;
    let fail = |counter, code, reason: String| {
        bump(counter);
        tracing::warn!("DICOM C-STORE of {instance} from {who}: {reason}");
        (code, Some(reason))
    };
    if let Some(bytes) = too_large {
        return fail(
            &counters.too_large,
            status::OUT_OF_RESOURCES,
            format!("a data set of {bytes} bytes, over the {MAX_DATA_SET_BYTES} taken"),
        );
    }
    if readable_sop_class(&origin.sop_class_uid).is_none() {
        let read: Vec<String> = READABLE_SOP_CLASSES
            .iter()
            .map(|(uid, name)| format!("{name} {uid}"))
            .collect();
        return fail(
            &counters.unsupported_sop_class,
            status::SOP_CLASS_NOT_SUPPORTED,
            format!(
                "SOP class {} is not read here ({} are)",
                origin.sop_class_uid,
                read.join(", ")
            ),
        );
    }
    if origin.transfer_syntax_uid.is_empty() {
        return fail(
            &counters.unreadable,
            status::CANNOT_UNDERSTAND,
            "sent on a presentation context that was not accepted".into(),
        );
    }
    let file = part10_file(origin, &data);
    drop(data);
    let named = match &options.keep_dir {
        Some(dir) => match keep(dir, instance, &file) {
            Ok(path) => path,
            Err(e) => {
                return fail(
                    &counters.keep_failed,
                    status::OUT_OF_RESOURCES,
                    format!("cannot keep it in {} (--dicom-store): {e}", dir.display()),
                )
            }
        },
        None => PathBuf::from(format!(
            "dicom://{}@{}/{instance}",
            origin.calling_ae, who.address
        )),
    };
    let export = match read_dicom_bytes(&named, &file) {
        Ok(export) => export,
        Err(e) => {
            return fail(
                &counters.unreadable,
                status::CANNOT_UNDERSTAND,
                e.to_string(),
            )
        }
    };
    let (reply, outcome) = crossbeam_channel::bounded(1);
    let received = Received {
        file: export,
        received_at: Instant::now(),
        reply,
    };
    if deliveries.send_timeout(received, PIPELINE_TIMEOUT).is_err() {
        return fail(
            &counters.not_taken,
            status::OUT_OF_RESOURCES,
            "the pipeline is not taking volumes (stopped, or busy for 30 s)".into(),
        );
    }
    match outcome.recv_timeout(PIPELINE_TIMEOUT) {
        Ok(StoreOutcome::Stored) => {
            bump(&counters.stored);
            (status::SUCCESS, None)
        }
        Ok(StoreOutcome::Failed { status, comment }) => fail(&counters.not_taken, status, comment),
        Err(_) => fail(
            &counters.not_taken,
            status::PROCESSING_FAILURE,
            "the pipeline did not answer within 30 s".into(),
        ),
    }
}
