//! TensorBoard event files, so that `tensorboard --logdir runs` shows every
//! run side by side, one folder one run: a run's
//! `events.out.tfevents.pretrain` holds every number of its metrics.jsonl
//! as `train/NAME` at the line's step, and `events.out.tfevents.scores`
//! beside it the evaluation scores of its weights as `eval/PROTOCOL`.
//!
//! The format is TFRecord framing around protobuf `Event`s: per record the
//! data's length (u64, little-endian), the masked CRC32C of those 8 bytes,
//! the data, the masked CRC32C of the data; the first event names the file
//! version. The few message fields used are encoded here: the crates that
//! write the format (`tensorboard-rs`, `tfrecord`) pull in protobuf stacks
//! and `image`/`tch` versions years older than ours.
//!
//! No step can appear twice: the pretraining file is a function of
//! metrics.jsonl, rebuilt whole from it when a run opens (after resume has
//! dropped the lines of the steps that will run again) and then appended to
//! line by line; a scores file is rewritten whole with all its scores.
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::files::write_atomically;
use crate::{Error, Result};

/// A run's training scalars, in the run directory.
pub const PRETRAIN: &str = "events.out.tfevents.pretrain";
/// Evaluation scores, beside [`PRETRAIN`] in a run directory. Named to sort
/// after it: TensorBoard's older loader reads a folder's event files in name
/// order and then follows only the last, and the scores come last.
pub const SCORES: &str = "events.out.tfevents.scores";

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Seconds since the Unix epoch, as TensorBoard's `wall_time`.
pub fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The record an event file starts with.
pub fn file_version(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    put_fixed64(&mut event, 1, wall_time.to_bits());
    put_len(&mut event, 3, b"brain.Event:2");
    record(&event)
}

/// The record of one event: `values` (tag, value) at `step`. TensorBoard
/// keeps scalars as f32.
pub fn scalars(wall_time: f64, step: u64, values: &[(String, f64)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, x) in values {
        let mut value = Vec::new();
        put_len(&mut value, 1, tag.as_bytes());
        put_key(&mut value, 2, FIXED32);
        value.extend_from_slice(&(*x as f32).to_le_bytes());
        put_len(&mut summary, 1, &value);
    }
    let mut event = Vec::new();
    put_fixed64(&mut event, 1, wall_time.to_bits());
    put_key(&mut event, 2, VARINT);
    put_varint(&mut event, step);
    put_len(&mut event, 5, &summary);
    record(&event)
}

/// Scalars at one step.
struct Event {
    wall_time: f64,
    step: u64,
    values: Vec<(String, f64)>,
}

/// A metrics.jsonl line as an event: each of its numbers but `step` and
/// `wall_time` as `train/NAME` (null, which is how JSON writes a NaN, as
/// NaN). None for a line without a step.
fn metrics_event(line: &str) -> Option<Event> {
    let Ok(Value::Object(fields)) = serde_json::from_str(line) else {
        return None;
    };
    let step = fields.get("step")?.as_u64()?;
    // Lines logged before metrics.jsonl had a wall time: at the epoch.
    let wall_time = fields.get("wall_time").and_then(Value::as_f64).unwrap_or(0.0);
    let values = fields
        .iter()
        .filter(|(name, _)| *name != "step" && *name != "wall_time")
        .filter_map(|(name, v)| {
            let x = if v.is_null() { f64::NAN } else { v.as_f64()? };
            Some((format!("train/{name}"), x))
        })
        .collect();
    Some(Event { wall_time, step, values })
}

/// The record of a metrics.jsonl line (see [`metrics_event`]).
pub fn metrics_record(line: &str) -> Option<Vec<u8>> {
    metrics_event(line).map(|e| scalars(e.wall_time, e.step, &e.values))
}

/// Rewrites `events` whole (atomically) from the lines of `metrics`; a
/// missing `metrics` gives a file of no steps.
pub fn rebuild_from_metrics(metrics: &Path, events: &Path) -> Result<()> {
    let text = match fs::read_to_string(metrics) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(metrics, e)),
    };
    let lines: Vec<Event> = text.lines().filter_map(metrics_event).collect();
    // Dated by the first line rather than now: after a resume that drops no
    // line every record has the length and the place it had, so a
    // TensorBoard already reading the file reads on from where it was.
    let mut bytes = file_version(lines.first().map_or_else(unix_seconds, |e| e.wall_time));
    for e in &lines {
        bytes.extend(scalars(e.wall_time, e.step, &e.values));
    }
    write_atomically(events, &bytes)
}

/// Writes `dir/`[`SCORES`] whole (atomically): `scores` (tag, value) at
/// `step`, the pretraining steps behind the weights measured.
pub fn write_scores(dir: &Path, step: u64, scores: &[(String, f64)]) -> Result<()> {
    let now = unix_seconds();
    let mut bytes = file_version(now);
    bytes.extend(scalars(now, step, scores));
    write_atomically(&dir.join(SCORES), &bytes)
}

fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's checksum: the CRC32C rotated and offset, because a CRC
/// computed over data that itself holds CRCs is weak.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8 & 0x7f) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u8) {
    put_varint(out, field << 3 | u64::from(wire_type));
}

fn put_fixed64(out: &mut Vec<u8>, field: u64, bits: u64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&bits.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The expected bytes are what TensorBoard's own Python writer makes:
    /// `RecordWriter(f).write(event_pb2.Event(...).SerializeToString())`
    /// with tensorboard 2.21 and protobuf 7.
    #[test]
    fn records_are_the_bytes_tensorboards_writer_makes() {
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(
            hex(&file_version(1_700_000_000.25)),
            "1800000000000000a37f4b220900001040fc54d9411a0d627261696e2e4576656e743a32338d2fe9"
        );
        let values = [("train/loss".to_string(), -1.5), ("train/lr".to_string(), 0.125)];
        assert_eq!(
            hex(&scalars(1_700_000_000.25, 42, &values)),
            "31000000000000009d8383e90900001040fc54d941102a2a240a110a0a747261696e2f6c6f737315\
             0000c0bf0a0f0a08747261696e2f6c72150000003ee8293ada"
        );
        let mut long = Vec::new();
        put_varint(&mut long, 300);
        assert_eq!(long, [0xac, 0x02]);
    }

    #[test]
    fn a_metrics_line_gives_every_number_but_its_step_and_time() {
        let line = r#"{"step":7,"wall_time":1.5,"epoch":1,"loss":-2.0,"loss_avg":null,"note":"x"}"#;
        let want = [
            ("train/epoch".to_string(), 1.0),
            ("train/loss".to_string(), -2.0),
            ("train/loss_avg".to_string(), f64::NAN),
        ];
        assert_eq!(metrics_record(line), Some(scalars(1.5, 7, &want)));
        assert_eq!(metrics_record(r#"{"loss":-2.0}"#), None);
        assert_eq!(metrics_record(r#"{"step":7,"lo"#), None);
        // Read back as written (serde_json's default parser is off by a unit
        // in the last place for some of these).
        for i in 0..1000 {
            let t = 1.7e9 + f64::from(i) * 0.012_345_678_9;
            let line = serde_json::json!({ "step": 1, "wall_time": t }).to_string();
            assert_eq!(metrics_event(&line).unwrap().wall_time, t, "{line}");
        }
    }

    #[test]
    fn a_rebuilt_file_is_its_metrics_lines_in_order_dated_by_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (metrics, events) = (dir.path().join("metrics.jsonl"), dir.path().join(PRETRAIN));
        let lines = [r#"{"step":1,"wall_time":10.5,"loss":0.5}"#, r#"{"step":2,"wall_time":11.0}"#];
        fs::write(&metrics, lines.map(|l| format!("{l}\n")).concat()).unwrap();
        rebuild_from_metrics(&metrics, &events).unwrap();
        let mut want = file_version(10.5);
        lines.iter().for_each(|l| want.extend(metrics_record(l).unwrap()));
        assert_eq!(fs::read(&events).unwrap(), want);
    }
}
