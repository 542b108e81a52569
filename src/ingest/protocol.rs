//! The Pyneal Scanner wire protocol (see `docs/protocols.md` section 1): classifying messages, parsing and
//! validating the JSON volume header, and the reply strings.
//!
//! Everything here is pure (no sockets), so every malformed input has a unit test. Each rejection carries a
//! [`Rejection`] kind (counted in the session summary) and a message that says exactly what was wrong; the
//! receiver replies `error: <message>` so the sender is never left waiting.

use serde_json::Value;

use crate::volume::{Affine, ByteOrder, Dtype};

/// Why a message was rejected; one counter each in `summary.json`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    InvalidJson,
    MissingKey,
    WrongType,
    BadShape,
    TooLarge,
    UnknownDtype,
    BadAffine,
    BadTr,
    BadSliceTiming,
    BadIndex,
    IndexBeyondExpected,
    BufferLength,
    FrameCount,
    GeometryChanged,
    /// Valid, but it could not be recorded (a full disk, an I/O error): not acknowledged, so it may be sent again.
    NotRecorded,
}

/// A rejected message: its kind and a human-readable reason (sent after `error: `).
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub kind: Rejection,
    pub message: String,
}

impl ProtocolError {
    fn new(kind: Rejection, message: impl Into<String>) -> Self {
        ProtocolError {
            kind,
            message: message.into(),
        }
    }
    /// The reply string the receiver sends back.
    pub fn reply(&self) -> String {
        format!("error: {}", self.message)
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// A validated volume header.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeHeader {
    pub index: usize,
    pub dtype: Dtype,
    pub byte_order: ByteOrder,
    pub dims: [usize; 3],
    pub mm_from_voxel: Affine,
    pub tr_secs: f64,
    /// The optional `sliceTiming` key (an extension; Pyneal's receiver ignores it): BIDS `SliceTiming`, one time
    /// in seconds per slice along axis 2.
    pub slice_timing_secs: Option<Vec<f64>>,
}

impl VolumeHeader {
    /// Bytes the data frame must hold.
    pub fn expected_bytes(&self) -> u64 {
        self.dims.iter().map(|&d| d as u64).product::<u64>() * self.dtype.itemsize() as u64
    }
}

/// Limits a header must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_volume_bytes: u64,
    pub max_dim: usize,
    /// The highest `volIdx` taken when the run's length is not known (`receiver.max_volume_index`): an index
    /// sizes the recording, so a header cannot be allowed to claim any.
    pub max_volume_index: usize,
}

/// The shortest and longest TR taken, in seconds (after milliseconds are converted): outside these a header's
/// TR is a mistake, and an absurd one would break the pacing and the timing of trials downstream.
pub const TR_RANGE_SECS: (f64, f64) = (0.01, 100.0);

/// What a received multipart message is.
#[derive(Debug)]
pub enum Message<'a> {
    /// A single frame that is not a JSON object: a (re)handshake, echoed byte for byte.
    Handshake(&'a [u8]),
    /// Two frames: header and data.
    Volume { header: &'a [u8], data: &'a [u8] },
    /// Anything else; the error says what.
    Malformed(ProtocolError),
}

/// Classifies a multipart message by its frames.
pub fn classify(frames: &[Vec<u8>]) -> Message<'_> {
    match frames {
        [single] => {
            if looks_like_json_object(single) {
                Message::Malformed(ProtocolError::new(
                    Rejection::FrameCount,
                    "a volume needs two frames (JSON header, raw buffer); got the header alone",
                ))
            } else {
                Message::Handshake(single)
            }
        }
        [header, data] => Message::Volume { header, data },
        _ => Message::Malformed(ProtocolError::new(
            Rejection::FrameCount,
            format!(
                "expected 2 frames (JSON header, raw buffer), got {}",
                frames.len()
            ),
        )),
    }
}

fn looks_like_json_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Parses and validates a header frame.
pub fn parse_header(frame: &[u8], limits: Limits) -> Result<VolumeHeader, ProtocolError> {
    use Rejection::*;
    let text = std::str::from_utf8(frame)
        .map_err(|e| ProtocolError::new(InvalidJson, format!("header is not UTF-8 ({e})")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(InvalidJson, format!("header is not valid JSON ({e})")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ProtocolError::new(WrongType, "header must be a JSON object"))?;
    let get = |key: &str| {
        obj.get(key)
            .ok_or_else(|| ProtocolError::new(MissingKey, format!("header lacks key \"{key}\"")))
    };

    let index_value = get("volIdx")?;
    let index = match index_value.as_i64() {
        Some(i) if i >= 0 && i as u64 <= limits.max_volume_index as u64 => i as usize,
        Some(i) if i >= 0 => {
            return Err(ProtocolError::new(
                BadIndex,
                format!(
                    "volIdx {i} exceeds the limit of {} (receiver.max_volume_index, or --expected-volumes)",
                    limits.max_volume_index
                ),
            ))
        }
        Some(i) => {
            return Err(ProtocolError::new(
                BadIndex,
                format!("volIdx {i} is negative"),
            ))
        }
        None => {
            return Err(ProtocolError::new(
                WrongType,
                format!("volIdx must be an integer, got {index_value}"),
            ))
        }
    };

    let dtype_value = get("dtype")?;
    let dtype_name = dtype_value.as_str().ok_or_else(|| {
        ProtocolError::new(
            WrongType,
            format!("dtype must be a string, got {dtype_value}"),
        )
    })?;
    let (dtype, byte_order) = Dtype::parse_numpy(dtype_name).ok_or_else(|| {
        ProtocolError::new(
            UnknownDtype,
            format!(
                "unknown or non-numeric dtype \"{}\" (int8 ... float64, or <f4-style names)",
                dtype_name.escape_debug()
            ),
        )
    })?;

    let shape_value = get("shape")?;
    let shape = shape_value.as_array().ok_or_else(|| {
        ProtocolError::new(
            WrongType,
            format!("shape must be a list of 3 integers, got {shape_value}"),
        )
    })?;
    if shape.len() != 3 {
        return Err(ProtocolError::new(
            BadShape,
            format!("shape must have 3 dimensions, got {}", shape.len()),
        ));
    }
    let mut dims = [0usize; 3];
    for (axis, v) in shape.iter().enumerate() {
        let d = v.as_i64().ok_or_else(|| {
            ProtocolError::new(
                WrongType,
                format!("shape[{axis}] must be an integer, got {v}"),
            )
        })?;
        if d <= 0 {
            return Err(ProtocolError::new(
                BadShape,
                format!("shape[{axis}] = {d} must be positive"),
            ));
        }
        if d as u64 > limits.max_dim as u64 {
            return Err(ProtocolError::new(
                TooLarge,
                format!(
                    "shape[{axis}] = {d} exceeds the limit of {} (receiver.max_dim)",
                    limits.max_dim
                ),
            ));
        }
        dims[axis] = d as usize;
    }

    let affine_value = get("affine")?;
    let mm_from_voxel = parse_affine(affine_value)?;
    let tr_value = get("TR")?;
    let tr_secs = parse_tr(tr_value)?;
    let slice_timing_secs = match obj.get("sliceTiming") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_slice_timing(value, dims[2], tr_secs)?),
    };

    let header = VolumeHeader {
        index,
        dtype,
        byte_order,
        dims,
        mm_from_voxel,
        tr_secs,
        slice_timing_secs,
    };
    if header.expected_bytes() > limits.max_volume_bytes {
        return Err(ProtocolError::new(
            TooLarge,
            format!(
                "volume of {} bytes exceeds the limit of {} bytes (receiver.max_volume_bytes)",
                header.expected_bytes(),
                limits.max_volume_bytes
            ),
        ));
    }
    Ok(header)
}

/// The affine arrives as a string holding a JSON 4 x 4 list; a plain nested list is accepted too.
fn parse_affine(value: &Value) -> Result<Affine, ProtocolError> {
    use Rejection::*;
    let parsed;
    let list = match value {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| {
                ProtocolError::new(BadAffine, format!("affine string is not JSON ({e})"))
            })?;
            &parsed
        }
        Value::Array(_) => value,
        other => {
            return Err(ProtocolError::new(
                WrongType,
                format!("affine must be a string holding a 4 x 4 list, got {other}"),
            ))
        }
    };
    let rows = list
        .as_array()
        .filter(|r| r.len() == 4)
        .ok_or_else(|| ProtocolError::new(BadAffine, "affine must be a 4 x 4 list"))?;
    let mut a = [[0.0; 4]; 4];
    for (r, row) in rows.iter().enumerate() {
        let cols = row.as_array().filter(|c| c.len() == 4).ok_or_else(|| {
            ProtocolError::new(BadAffine, format!("affine row {r} must have 4 numbers"))
        })?;
        for (c, v) in cols.iter().enumerate() {
            a[r][c] = v.as_f64().ok_or_else(|| {
                ProtocolError::new(BadAffine, format!("affine[{r}][{c}] is not a number: {v}"))
            })?;
        }
    }
    // a non-finite entry, or a 3 x 3 part that gives voxels no distinct place
    crate::spatial::check_affine(&a)
        .map_err(|why| ProtocolError::new(BadAffine, format!("affine: {why}")))?;
    Ok(a)
}

/// TR arrives as a string holding a number: seconds, or milliseconds when over 100.
fn parse_tr(value: &Value) -> Result<f64, ProtocolError> {
    use Rejection::*;
    let tr = match value {
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| ProtocolError::new(BadTr, format!("TR \"{s}\" is not a number")))?,
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        other => {
            return Err(ProtocolError::new(
                WrongType,
                format!("TR must be a string holding a number, got {other}"),
            ))
        }
    };
    if !(tr.is_finite() && tr > 0.0) {
        return Err(ProtocolError::new(
            BadTr,
            format!("TR {tr} must be a positive number"),
        ));
    }
    let tr_secs = if tr > 100.0 { tr / 1000.0 } else { tr };
    let (shortest, longest) = TR_RANGE_SECS;
    if !(shortest..=longest).contains(&tr_secs) {
        return Err(ProtocolError::new(
            BadTr,
            format!("TR {tr} is {tr_secs} s, outside {shortest} to {longest} s (values over 100 are milliseconds)"),
        ));
    }
    Ok(tr_secs)
}

/// `sliceTiming`: a list of one number per slice, each from 0 to the TR (seconds).
fn parse_slice_timing(
    value: &Value,
    n_slices: usize,
    tr_secs: f64,
) -> Result<Vec<f64>, ProtocolError> {
    let list = value.as_array().ok_or_else(|| {
        ProtocolError::new(
            Rejection::WrongType,
            "sliceTiming must be a list of numbers (seconds)",
        )
    })?;
    if list.len() != n_slices {
        return Err(ProtocolError::new(
            Rejection::BadSliceTiming,
            format!(
                "sliceTiming holds {} times for {n_slices} slices",
                list.len()
            ),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(k, v)| match v.as_f64() {
            Some(t) if (0.0..=tr_secs).contains(&t) => Ok(t),
            _ => Err(ProtocolError::new(
                Rejection::BadSliceTiming,
                format!("sliceTiming[{k}] = {v} is not a time from 0 to the TR ({tr_secs} s)"),
            )),
        })
        .collect()
}

/// Checks the data frame's length against the header.
pub fn check_buffer(header: &VolumeHeader, data: &[u8]) -> Result<(), ProtocolError> {
    if data.len() as u64 != header.expected_bytes() {
        return Err(ProtocolError::new(
            Rejection::BufferLength,
            format!(
                "buffer holds {} bytes but shape {:?} of {} needs {}",
                data.len(),
                header.dims,
                header.dtype.numpy_name(),
                header.expected_bytes()
            ),
        ));
    }
    Ok(())
}

/// The reply to an accepted (or duplicate) volume.
pub fn volume_reply(index: usize, run_complete: bool, duplicate: bool) -> String {
    let mut reply = format!("received volIdx {index}");
    if duplicate {
        reply.push_str(" (duplicate, ignored)");
    }
    if run_complete {
        reply.push_str(" - STOP");
    }
    reply
}

/// Builds the header JSON a Pyneal Scanner sender sends.
pub fn header_json(
    index: usize,
    dtype: Dtype,
    dims: [usize; 3],
    mm_from_voxel: &Affine,
    tr_secs: f64,
    slice_timing_secs: Option<&[f64]>,
) -> String {
    let affine =
        serde_json::to_string(&mm_from_voxel.iter().map(|r| r.to_vec()).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
    let mut header = serde_json::json!({
        "volIdx": index,
        "dtype": dtype.numpy_name(),
        "shape": dims,
        "affine": affine,
        "TR": format!("{tr_secs:?}"),
    });
    if let (Some(times), Some(obj)) = (slice_timing_secs, header.as_object_mut()) {
        obj.insert("sliceTiming".into(), serde_json::json!(times));
    }
    header.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_volume_bytes: 1 << 20,
        max_dim: 512,
        max_volume_index: 9999,
    };

    #[test]
    fn parses_the_captured_real_headers() {
        let real = br#"{"volIdx": 0, "dtype": "float64", "shape": [64, 64, 18], "affine": "[[3.0, 0.0, 0.0, -93.0], [0.0, 2.9597164863372902, -0.6206386314698001, -66.13679876871245], [0.0, 0.48997787756520006, 3.748974134805806, -85.02169640668882], [0.0, 0.0, 0.0, 1.0]]", "TR": "1.0"}"#;
        let h = parse_header(real, LIMITS).unwrap();
        assert_eq!(
            (h.index, h.dtype, h.dims, h.tr_secs),
            (0, Dtype::Float64, [64, 64, 18], 1.0)
        );
        assert_eq!(h.mm_from_voxel[1][2], -0.6206386314698001);
        let sim = br#"{"volIdx": 0, "dtype": "float64", "shape": [64, 64, 30], "affine": "[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]", "TR": "500.0"}"#;
        assert_eq!(parse_header(sim, LIMITS).unwrap().tr_secs, 0.5);
    }

    #[test]
    fn header_json_round_trips() {
        let a = [
            [2.0, 0.1, 0.0, -3.5],
            [0.0, 2.0, 0.0, 1.0],
            [0.0, 0.0, 2.5, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let text = header_json(7, Dtype::Int16, [4, 5, 6], &a, 1.5, None);
        let h = parse_header(text.as_bytes(), LIMITS).unwrap();
        assert_eq!(
            (h.index, h.dtype, h.dims, h.mm_from_voxel, h.tr_secs),
            (7, Dtype::Int16, [4, 5, 6], a, 1.5)
        );
        assert_eq!(h.slice_timing_secs, None);
        let times = [0.0, 0.75, 0.25, 1.0, 0.5, 1.25];
        let text = header_json(7, Dtype::Int16, [4, 5, 6], &a, 1.5, Some(&times));
        let h = parse_header(text.as_bytes(), LIMITS).unwrap();
        assert_eq!(h.slice_timing_secs.as_deref(), Some(&times[..]));
    }

    #[test]
    fn bad_slice_timing_is_rejected() {
        let with = |timing: &str| {
            format!(
                r#"{{"volIdx": 0, "dtype": "int16", "shape": [2, 2, 3], "affine": "[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]", "TR": "2.0", "sliceTiming": {timing}}}"#
            )
        };
        assert_eq!(kind_of(&with("[0, 1]")), Rejection::BadSliceTiming);
        assert_eq!(kind_of(&with("[0, 1, 2.5]")), Rejection::BadSliceTiming);
        assert_eq!(kind_of(&with("[0, -1, 1]")), Rejection::BadSliceTiming);
        assert_eq!(kind_of(&with("[0, \"1\", 1]")), Rejection::BadSliceTiming);
        assert_eq!(kind_of(&with("\"0 1 2\"")), Rejection::WrongType);
        let ok = parse_header(with("[0, 1, 0.5]").as_bytes(), LIMITS).unwrap();
        assert_eq!(ok.slice_timing_secs, Some(vec![0.0, 1.0, 0.5]));
        let null = parse_header(with("null").as_bytes(), LIMITS).unwrap();
        assert_eq!(null.slice_timing_secs, None);
    }

    fn kind_of(header: &str) -> Rejection {
        parse_header(header.as_bytes(), LIMITS).unwrap_err().kind
    }

    #[test]
    fn every_bad_header_is_rejected_with_its_kind() {
        let ok_affine = "\"[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]\"";
        let h = |idx: &str, dtype: &str, shape: &str, affine: &str, tr: &str| {
            format!(
                r#"{{"volIdx": {idx}, "dtype": {dtype}, "shape": {shape}, "affine": {affine}, "TR": {tr}}}"#
            )
        };
        assert_eq!(kind_of("{not json"), Rejection::InvalidJson);
        assert_eq!(kind_of("[1,2]"), Rejection::WrongType);
        assert_eq!(kind_of(r#"{"volIdx": 0}"#), Rejection::MissingKey);
        assert_eq!(
            kind_of(&h("\"3\"", "\"int16\"", "[2,2,2]", ok_affine, "\"1.0\"")),
            Rejection::WrongType
        );
        assert_eq!(
            kind_of(&h("-1", "\"int16\"", "[2,2,2]", ok_affine, "\"1.0\"")),
            Rejection::BadIndex
        );
        assert_eq!(
            kind_of(&h("0", "\"complex64\"", "[2,2,2]", ok_affine, "\"1.0\"")),
            Rejection::UnknownDtype
        );
        assert_eq!(
            kind_of(&h("0", "\"int16\"", "[2,2]", ok_affine, "\"1.0\"")),
            Rejection::BadShape
        );
        assert_eq!(
            kind_of(&h("0", "\"int16\"", "[2,0,2]", ok_affine, "\"1.0\"")),
            Rejection::BadShape
        );
        assert_eq!(
            kind_of(&h("0", "\"int16\"", "[2,100000,2]", ok_affine, "\"1.0\"")),
            Rejection::TooLarge
        );
        assert_eq!(
            kind_of(&h(
                "0",
                "\"float64\"",
                "[512,512,512]",
                ok_affine,
                "\"1.0\""
            )),
            Rejection::TooLarge
        );
        assert_eq!(
            kind_of(&h(
                "0",
                "\"int16\"",
                "[2,2,2]",
                "\"[[1,0,0,0],[0,1,0,0],[0,0,1,0]]\"",
                "\"1.0\""
            )),
            Rejection::BadAffine
        );
        assert_eq!(
            kind_of(&h(
                "0",
                "\"int16\"",
                "[2,2,2]",
                "\"[[NaN,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]\"",
                "\"1.0\""
            )),
            Rejection::BadAffine
        );
        assert_eq!(
            kind_of(&h(
                "0",
                "\"int16\"",
                "[2,2,2]",
                "\"[[1e999,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]\"",
                "\"1.0\""
            )),
            Rejection::BadAffine
        );
        assert_eq!(
            kind_of(&h(
                "0",
                "\"int16\"",
                "[2,2,2]",
                "\"[[2,0,0,0],[0,2,0,0],[2,0,0,0],[0,0,0,1]]\"",
                "\"1.0\""
            )),
            Rejection::BadAffine
        );
        assert_eq!(
            kind_of(&h("0", "\"int16\"", "[2,2,2]", ok_affine, "\"0\"")),
            Rejection::BadTr
        );
        assert_eq!(
            kind_of(&h("0", "\"int16\"", "[2,2,2]", ok_affine, "\"fast\"")),
            Rejection::BadTr
        );
        assert_eq!(
            kind_of(&h("0", "\"int16\"", "[2,2,2]", ok_affine, "\"-2\"")),
            Rejection::BadTr
        );
    }

    /// What a hostile test sent: indices that sized memory, absurd TRs, a projective affine, a dtype that forged
    /// a log line.
    #[test]
    fn hostile_headers_are_bounded() {
        let ok_affine = "\"[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]\"";
        let h = |idx: &str, dtype: &str, affine: &str, tr: &str| {
            format!(
                r#"{{"volIdx": {idx}, "dtype": {dtype}, "shape": [2,2,2], "affine": {affine}, "TR": {tr}}}"#
            )
        };
        for idx in ["10000", "1000000", "1000000000000", "9223372036854775807"] {
            let err = parse_header(h(idx, "\"int16\"", ok_affine, "\"1\"").as_bytes(), LIMITS)
                .unwrap_err();
            assert_eq!(err.kind, Rejection::BadIndex, "{idx}");
            assert!(
                err.message.contains("receiver.max_volume_index"),
                "{}",
                err.message
            );
        }
        assert!(parse_header(
            h("9999", "\"int16\"", ok_affine, "\"1\"").as_bytes(),
            LIMITS
        )
        .is_ok());
        for tr in ["\"1e308\"", "\"1e-300\"", "\"1e9\"", "\"0.001\""] {
            assert_eq!(
                kind_of(&h("0", "\"int16\"", ok_affine, tr)),
                Rejection::BadTr,
                "{tr}"
            );
        }
        let projective = "\"[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0.5,1]]\"";
        assert_eq!(
            kind_of(&h("0", "\"int16\"", projective, "\"1\"")),
            Rejection::BadAffine
        );
        let forged = h("0", "\"x\\nINFO forged line\"", ok_affine, "\"1\"");
        let err = parse_header(forged.as_bytes(), LIMITS).unwrap_err();
        assert_eq!(err.kind, Rejection::UnknownDtype);
        assert!(!err.message.contains('\n'), "{}", err.message);
    }

    #[test]
    fn frames_are_classified() {
        assert!(matches!(
            classify(&[b"hello from pyneal_scanner ".to_vec()]),
            Message::Handshake(_)
        ));
        assert!(matches!(
            classify(&[b" {\"volIdx\": 1}".to_vec()]),
            Message::Malformed(_)
        ));
        assert!(matches!(
            classify(&[vec![1], vec![2], vec![3]]),
            Message::Malformed(_)
        ));
        assert!(matches!(
            classify(&[vec![1], vec![2]]),
            Message::Volume { .. }
        ));
    }

    #[test]
    fn buffer_length_must_match() {
        let h = parse_header(br#"{"volIdx": 0, "dtype": "<i2", "shape": [2, 3, 4], "affine": "[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]", "TR": "2"}"#, LIMITS).unwrap();
        assert!(check_buffer(&h, &[0; 48]).is_ok());
        assert_eq!(
            check_buffer(&h, &[0; 47]).unwrap_err().kind,
            Rejection::BufferLength
        );
        assert_eq!(volume_reply(4, true, false), "received volIdx 4 - STOP");
    }
}
