//! DIMSE command sets, the small data sets that head every DICOM network message (PS3.7): reading a request's
//! command (always implicit VR little endian) and writing the response to it, through dicom-object. Only what a
//! storage node needs: C-ECHO and C-STORE, and a response to any other command saying it is not served here.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// `CommandField` of a C-STORE request.
pub const C_STORE_RQ: u16 = 0x0001;
/// `CommandField` of a C-ECHO request.
pub const C_ECHO_RQ: u16 = 0x0030;
/// A response's `CommandField` is its request's with this bit set.
const RESPONSE_BIT: u16 = 0x8000;
/// `CommandDataSetType` when no data set follows the command.
pub const NO_DATA_SET: u16 = 0x0101;

/// The status codes sent here (PS3.7 annex C, PS3.4 annex B).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Failure: the SOP instance could not be processed (the pipeline refused the volume, or did not answer).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Refused: the SOP class is not one read here.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Failure: a command other than C-ECHO and C-STORE.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: out of resources (the data set is larger than allowed, the disk is full).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: the data set could not be understood (damaged, or not an fMRI volume read here).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

/// `ErrorComment` is a LO: at most 64 characters.
const ERROR_COMMENT_CHARS: usize = 64;

/// A request's command set, as far as it is used.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    /// `AffectedSOPClassUID` (C-STORE, C-ECHO); empty when the command has none.
    pub sop_class_uid: String,
    /// `AffectedSOPInstanceUID` (C-STORE).
    pub sop_instance_uid: String,
    /// Whether a data set follows.
    pub has_data_set: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("a command set that cannot be read: {reason}")]
pub struct CommandError {
    pub reason: String,
}

impl Command {
    /// Reads a command set (implicit VR little endian, as PS3.7 fixes for commands).
    pub fn read(bytes: &[u8]) -> Result<Command, CommandError> {
        let obj =
            InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .map_err(|e| CommandError {
                    reason: e.to_string(),
                })?;
        let number = |tag, name: &str| -> Result<Option<u16>, CommandError> {
            obj.get(tag)
                .map(|e| {
                    e.to_int::<u16>().map_err(|e| CommandError {
                        reason: format!("{name}: {e}"),
                    })
                })
                .transpose()
        };
        let text = |tag| {
            obj.get(tag)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
                .unwrap_or_default()
        };
        Ok(Command {
            field: number(tags::COMMAND_FIELD, "CommandField")?.ok_or_else(|| CommandError {
                reason: "no CommandField (0000,0100)".into(),
            })?,
            message_id: number(tags::MESSAGE_ID, "MessageID")?.unwrap_or(0),
            sop_class_uid: text(tags::AFFECTED_SOP_CLASS_UID),
            sop_instance_uid: text(tags::AFFECTED_SOP_INSTANCE_UID),
            has_data_set: number(tags::COMMAND_DATA_SET_TYPE, "CommandDataSetType")?
                .is_some_and(|t| t != NO_DATA_SET),
        })
    }

    /// The response to this request: its `status`, and for a failure a comment (cut to the 64 characters a LO
    /// holds; the log has the whole of it).
    pub fn response(&self, status: u16, comment: Option<&str>) -> Result<Vec<u8>, CommandError> {
        let mut elements = vec![
            DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(self.sop_class_uid.as_str()),
            ),
            DataElement::new(
                tags::COMMAND_FIELD,
                VR::US,
                PrimitiveValue::from(self.field | RESPONSE_BIT),
            ),
            DataElement::new(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                VR::US,
                PrimitiveValue::from(self.message_id),
            ),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(NO_DATA_SET),
            ),
            DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
        ];
        if !self.sop_instance_uid.is_empty() {
            elements.push(DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(self.sop_instance_uid.as_str()),
            ));
        }
        if let Some(comment) = comment {
            let printable: String = comment
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
                .take(ERROR_COMMENT_CHARS)
                .collect();
            elements.push(DataElement::new(
                tags::ERROR_COMMENT,
                VR::LO,
                PrimitiveValue::from(printable.trim_end()),
            ));
        }
        let obj = InMemDicomObject::command_from_element_iter(elements);
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| CommandError {
                reason: e.to_string(),
            })?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_reads_back_as_the_request_answered() {
        let request = Command {
            field: C_STORE_RQ,
            message_id: 7,
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4.1".into(),
            sop_instance_uid: "1.2.3.4".into(),
            has_data_set: true,
        };
        let bytes = request
            .response(status::CANNOT_UNDERSTAND, Some(&"x".repeat(100)))
            .unwrap();
        let obj =
            InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
        let us = |tag| obj.get(tag).unwrap().to_int::<u16>().unwrap();
        assert_eq!(us(tags::COMMAND_FIELD), 0x8001);
        assert_eq!(us(tags::MESSAGE_ID_BEING_RESPONDED_TO), 7);
        assert_eq!(us(tags::STATUS), 0xC000);
        assert_eq!(us(tags::COMMAND_DATA_SET_TYPE), NO_DATA_SET);
        let comment = obj.get(tags::ERROR_COMMENT).unwrap().to_str().unwrap();
        assert_eq!(comment.trim_end().len(), 64);
        // the group length covers the rest of the command
        let group_length = obj
            .get(tags::COMMAND_GROUP_LENGTH)
            .unwrap()
            .to_int::<u32>()
            .unwrap();
        assert_eq!(group_length as usize, bytes.len() - 12);
        let parsed = Command::read(&bytes).unwrap();
        assert_eq!(
            (
                parsed.field,
                parsed.has_data_set,
                parsed.sop_instance_uid.as_str()
            ),
            (0x8001, false, "1.2.3.4")
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Command::read(b"\x00\x00\x00\x01\xff\xff\xff\x7f").is_err());
        assert!(Command::read(b"").is_err());
    }
}
