//! Human-readable rendering of RPC results: aligned tables and short summaries.
//!
//! Each renderer reads the result through a lenient typed view; a result that does not
//! have the expected shape is a [`FormatError`], and the caller falls back to JSON.

use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// The result does not have the shape the renderer expects.
#[derive(Debug, thiserror::Error)]
#[error("unexpected {what} result from vmpathd: {reason}")]
pub struct FormatError {
    what: &'static str,
    reason: String,
}

impl FormatError {
    /// A renderer's complaint about a result of `what`.
    pub fn new(what: &'static str, reason: impl Into<String>) -> Self {
        FormatError {
            what,
            reason: reason.into(),
        }
    }
}

/// Sets `m[k]` to `v` when there is one (optional request parameters).
pub(crate) fn put<T: serde::Serialize>(
    m: &mut serde_json::Map<String, Value>,
    k: &str,
    v: Option<T>,
) {
    if let Some(v) = v {
        m.insert(k.into(), serde_json::json!(v));
    }
}

/// Deserializes an RPC result for display; a shape error names the method.
pub(crate) fn view<T: DeserializeOwned>(
    what: &'static str,
    result: &Value,
) -> Result<T, FormatError> {
    T::deserialize(result).map_err(|e| FormatError {
        what,
        reason: e.to_string(),
    })
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text columns.
    Left,
    /// Number columns.
    Right,
}

/// A plain-text table: a header row and rows, columns separated by two spaces.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending with `\n`.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([title.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let headers: Vec<String> = self.columns.iter().map(|(t, _)| (*t).to_owned()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `1536` -> `1.5 KiB`, `67108864` -> `64 MiB`, `100` -> `100 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

fn dash_if_zero(value: u64, unit: &str) -> String {
    if value == 0 {
        "-".to_owned()
    } else {
        format!("{value}{unit}")
    }
}

// ---- vmpath_get_version ----

#[derive(Deserialize)]
struct Version {
    version: String,
    #[serde(default)]
    fields: serde_json::Map<String, Value>,
}

/// `vmpathd 0.1.0` and one `  key: value` line per field.
pub fn version(result: &Value) -> Result<String, FormatError> {
    let v: Version = view("vmpath_get_version", result)?;
    let mut out = format!("vmpathd {}\n", v.version);
    for (key, value) in &v.fields {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(out, "  {key}: {value}");
    }
    Ok(out)
}

// ---- rpc_get_methods ----

/// One method per line.
pub fn methods(result: &Value) -> Result<String, FormatError> {
    let methods: Vec<String> = view("rpc_get_methods", result)?;
    Ok(methods.iter().map(|m| format!("{m}\n")).collect())
}

// ---- bdev_get_bdevs ----

#[derive(Deserialize)]
struct Bdev {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    block_size: u64,
    num_blocks: u64,
    #[serde(default)]
    params: BdevKnobs,
}

#[derive(Deserialize, Default)]
struct BdevKnobs {
    #[serde(default)]
    latency_us: u64,
    #[serde(default)]
    max_iops: u64,
    #[serde(default)]
    max_bw_mbps: u64,
}

/// Table of bdevs: name, type, block size, blocks, capacity and simulation knobs.
pub fn bdevs(result: &Value) -> Result<String, FormatError> {
    let bdevs: Vec<Bdev> = view("bdev_get_bdevs", result)?;
    if bdevs.is_empty() {
        return Ok("no bdevs\n".to_owned());
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("TYPE", Align::Left),
        ("BLOCK_SIZE", Align::Right),
        ("BLOCKS", Align::Right),
        ("CAPACITY", Align::Right),
        ("LATENCY", Align::Right),
        ("MAX_IOPS", Align::Right),
        ("MAX_BW", Align::Right),
    ]);
    for b in bdevs {
        table.row(vec![
            b.name,
            b.kind,
            b.block_size.to_string(),
            b.num_blocks.to_string(),
            human_bytes(b.num_blocks.saturating_mul(b.block_size)),
            dash_if_zero(b.params.latency_us, "us"),
            dash_if_zero(b.params.max_iops, ""),
            dash_if_zero(b.params.max_bw_mbps, " MiB/s"),
        ]);
    }
    Ok(table.render())
}

// ---- framework_get_reactors ----

#[derive(Deserialize)]
struct Reactors {
    #[serde(default)]
    tick_rate: Option<u64>,
    reactors: Vec<Reactor>,
}

#[derive(Deserialize)]
struct Reactor {
    id: u64,
    lcore: u64,
    state: String,
    busy_ticks: u64,
    idle_ticks: u64,
    #[serde(default)]
    poller_runs: u64,
    #[serde(default)]
    messages: u64,
    #[serde(default)]
    sleeps: u64,
}

/// `busy / (busy + idle)` as a percentage with one decimal, `-` when both are 0.
pub fn busy_percent(busy: u64, idle: u64) -> String {
    let total = busy as f64 + idle as f64;
    if total == 0.0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", busy as f64 * 100.0 / total)
    }
}

/// Table of reactors: id, core, state, ticks, poller runs, messages, sleeps, busy %.
pub fn reactors(result: &Value) -> Result<String, FormatError> {
    let r: Reactors = view("framework_get_reactors", result)?;
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("CORE", Align::Right),
        ("STATE", Align::Left),
        ("BUSY_TICKS", Align::Right),
        ("IDLE_TICKS", Align::Right),
        ("POLLER_RUNS", Align::Right),
        ("MESSAGES", Align::Right),
        ("SLEEPS", Align::Right),
        ("BUSY%", Align::Right),
    ]);
    for x in &r.reactors {
        table.row(vec![
            x.id.to_string(),
            x.lcore.to_string(),
            x.state.clone(),
            x.busy_ticks.to_string(),
            x.idle_ticks.to_string(),
            x.poller_runs.to_string(),
            x.messages.to_string(),
            x.sleeps.to_string(),
            busy_percent(x.busy_ticks, x.idle_ticks),
        ]);
    }
    let mut out = String::new();
    if let Some(rate) = r.tick_rate {
        let _ = writeln!(out, "tick rate: {rate} Hz");
    }
    out.push_str(&table.render());
    Ok(out)
}

// ---- save_config ----

#[derive(Deserialize)]
struct SavedConfig {
    config: String,
}

/// The config text of a `save_config` result, ending with a newline.
pub fn saved_config(result: &Value) -> Result<String, FormatError> {
    let c: SavedConfig = view("save_config", result)?;
    let mut text = c.config;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

// ---- vmpath_get_events ----

#[derive(Deserialize)]
struct Events {
    events: Vec<EventView>,
    next_seq: u64,
    #[serde(default)]
    lost: u64,
}

#[derive(Deserialize)]
struct EventView {
    seq: u64,
    timestamp_us: u64,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// `1700000000123456` -> `2023-11-14T22:13:20.123456Z` (UTC).
pub fn utc_timestamp(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days` algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Table of events (seq, UTC time, type, data) and a line telling where to continue.
pub fn events(result: &Value) -> Result<String, FormatError> {
    let e: Events = view("vmpath_get_events", result)?;
    let mut out = String::new();
    if e.lost > 0 {
        let _ = writeln!(
            out,
            "({} older events were dropped before they were read)",
            e.lost
        );
    }
    if e.events.is_empty() {
        out.push_str("no events\n");
    } else {
        let mut table = Table::new(&[
            ("SEQ", Align::Right),
            ("TIME", Align::Left),
            ("TYPE", Align::Left),
            ("DATA", Align::Left),
        ]);
        for ev in &e.events {
            table.row(vec![
                ev.seq.to_string(),
                utc_timestamp(ev.timestamp_us),
                ev.kind.clone(),
                if ev.data.is_null() {
                    String::new()
                } else {
                    ev.data.to_string()
                },
            ]);
        }
        out.push_str(&table.render());
    }
    let _ = writeln!(out, "(next: --since {})", e.next_seq);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes((1 << 40) + (1 << 39)), "1.5 TiB");
        assert_eq!(human_bytes(u64::MAX), "16 EiB");
    }

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&[("NAME", Align::Left), ("N", Align::Right)]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["long-name".into(), "12345".into()]);
        assert_eq!(
            t.render(),
            "NAME           N\na              1\nlong-name  12345\n"
        );
    }

    #[test]
    fn bdev_table() {
        let result = json!([
            {"name": "Malloc0", "type": "malloc", "block_size": 4096, "num_blocks": 16384,
             "uuid": "8d5e5a3c-1f2d-4c5e-9a7b-1234567890ab",
             "params": {"name": "Malloc0", "num_blocks": 16384, "block_size": 4096},
             "stats": {"read_ops": 1, "write_ops": 2, "bytes_read": 4096, "bytes_written": 8192}},
            {"name": "Slow0", "type": "malloc", "block_size": 512, "num_blocks": 262144,
             "uuid": "8d5e5a3c-1f2d-4c5e-9a7b-1234567890ac",
             "params": {"name": "Slow0", "num_blocks": 262144, "block_size": 512,
                        "latency_us": 100, "max_iops": 20000, "max_bw_mbps": 80},
             "stats": {"read_ops": 0, "write_ops": 0, "bytes_read": 0, "bytes_written": 0}},
            {"name": "Uring0", "type": "uring", "block_size": 512, "num_blocks": 2048,
             "params": {"name": "Uring0", "filename": "/tmp/f"}}
        ]);
        let text = bdevs(&result).unwrap();
        let expected = "\
NAME     TYPE    BLOCK_SIZE  BLOCKS  CAPACITY  LATENCY  MAX_IOPS    MAX_BW
Malloc0  malloc        4096   16384    64 MiB        -         -         -
Slow0    malloc         512  262144   128 MiB    100us     20000  80 MiB/s
Uring0   uring          512    2048     1 MiB        -         -         -
";
        assert_eq!(text, expected);
        assert_eq!(bdevs(&json!([])).unwrap(), "no bdevs\n");
        let e = bdevs(&json!([{"name": "x"}])).unwrap_err().to_string();
        assert!(e.contains("bdev_get_bdevs"), "{e}");
        assert!(bdevs(&json!({"not": "a list"})).is_err());
    }

    #[test]
    fn reactor_table() {
        let result = json!({"tick_rate": 1_000_000_000u64, "reactors": [
            {"id": 0, "lcore": 0, "state": "running", "busy_ticks": 750, "idle_ticks": 250,
             "poller_runs": 1000, "messages": 12, "sleeps": 0},
            {"id": 1, "lcore": 3, "state": "sleeping", "busy_ticks": 1, "idle_ticks": 999,
             "poller_runs": 5, "messages": 0, "sleeps": 42},
            {"id": 2, "lcore": 4, "state": "running", "busy_ticks": 0, "idle_ticks": 0}
        ]});
        let text = reactors(&result).unwrap();
        let expected = "\
tick rate: 1000000000 Hz
ID  CORE  STATE     BUSY_TICKS  IDLE_TICKS  POLLER_RUNS  MESSAGES  SLEEPS  BUSY%
 0     0  running          750         250         1000        12       0  75.0%
 1     3  sleeping           1         999            5         0      42   0.1%
 2     4  running            0           0            0         0       0      -
";
        assert_eq!(text, expected);
        assert!(reactors(&json!({"reactors": [{"id": 0}]})).is_err());
    }

    #[test]
    fn version_and_methods() {
        let v = json!({"version": "0.1.0", "fields": {"major": 0, "minor": 1, "commit": "abc"}});
        assert_eq!(
            version(&v).unwrap(),
            "vmpathd 0.1.0\n  commit: abc\n  major: 0\n  minor: 1\n"
        );
        assert_eq!(version(&json!({"version": "1"})).unwrap(), "vmpathd 1\n");
        assert_eq!(
            methods(&json!(["bdev_get_bdevs", "rpc_get_methods"])).unwrap(),
            "bdev_get_bdevs\nrpc_get_methods\n"
        );
        assert!(methods(&json!("x")).is_err());
    }

    #[test]
    fn config_text() {
        assert_eq!(
            saved_config(&json!({"config": "[rpc]\nsocket = \"/x\""})).unwrap(),
            "[rpc]\nsocket = \"/x\"\n"
        );
        assert!(saved_config(&json!("text")).is_err());
    }

    #[test]
    fn event_table() {
        let result = json!({"events": [
            {"seq": 3, "timestamp_us": 1_700_000_000_123_456u64, "type": "bdev_created",
             "data": {"name": "M1"}},
            {"seq": 4, "timestamp_us": 0, "type": "shutdown", "data": null}
        ], "next_seq": 5, "lost": 2});
        let expected = "\
(2 older events were dropped before they were read)
SEQ  TIME                         TYPE          DATA
  3  2023-11-14T22:13:20.123456Z  bdev_created  {\"name\":\"M1\"}
  4  1970-01-01T00:00:00.000000Z  shutdown
(next: --since 5)
";
        assert_eq!(events(&result).unwrap(), expected);
        assert_eq!(
            events(&json!({"events": [], "next_seq": 1, "lost": 0})).unwrap(),
            "no events\n(next: --since 1)\n"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (leap day) 12:00:00 UTC.
        assert_eq!(
            utc_timestamp(951_825_600_000_000),
            "2000-02-29T12:00:00.000000Z"
        );
        assert_eq!(
            utc_timestamp(4_102_444_799_000_001),
            "2099-12-31T23:59:59.000001Z"
        );
    }

    #[test]
    fn busy() {
        assert_eq!(busy_percent(0, 0), "-");
        assert_eq!(busy_percent(1, 3), "25.0%");
        assert_eq!(busy_percent(5, 0), "100.0%");
    }
}
