//! Serde-derivable specifications: what the config file and the JSON-RPC layer hand to the
//! scheduler (issue 5, "VM model").
//!
//! Every struct uses `#[serde(deny_unknown_fields)]` and has a `validate()` that returns a
//! [`SpecError`] naming the offending field. The scheduler validates again on every call, so
//! a caller cannot bypass validation.
//!
//! Units: rates are `iops` (I/Os per second) and `mbps` (megabytes per second, 1 MB =
//! 1,000,000 bytes); times are milliseconds in specs and nanoseconds inside the scheduler.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Smallest accepted `shares` value.
pub const MIN_SHARES: u32 = 1;
/// Largest accepted `shares` value.
pub const MAX_SHARES: u32 = 10_000;
/// `shares` when a spec does not say.
pub const DEFAULT_SHARES: u32 = 1_000;
/// Largest number of paths the scheduler tracks (path sets are 64-bit masks).
pub const MAX_PATHS: usize = 63;
/// Largest number of reactor shards.
pub const MAX_SHARDS: usize = 64;
/// Largest per-VM hold queue bound (per shard).
pub const MAX_HELD_LIMIT: u32 = 1 << 20;
/// Longest accepted name (VMs and paths).
pub const MAX_NAME_LEN: usize = 128;
/// Largest accepted rate (IOPS or MB/s) — far above any device, catches unit mistakes.
pub const MAX_RATE: u64 = 1 << 40;

/// A validation failure; every variant names the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// A name is empty, too long or has characters other than `[A-Za-z0-9._:-]`.
    #[error("{field}: invalid name {name:?} (1-{MAX_NAME_LEN} characters of [A-Za-z0-9._:-])")]
    BadName {
        /// Field that holds the name.
        field: &'static str,
        /// The rejected name.
        name: String,
    },
    /// `shares` outside 1..=10000.
    #[error("shares: {0} is outside {MIN_SHARES}..={MAX_SHARES}")]
    Shares(u32),
    /// A rate of zero or above [`MAX_RATE`].
    #[error("{field}: {value} is not a valid rate (1..={MAX_RATE}; omit the field for none)")]
    Rate {
        /// Field path, e.g. `limit.iops`.
        field: &'static str,
        /// The rejected value.
        value: u64,
    },
    /// A reservation above the limit of the same unit.
    #[error("reservation.{unit} ({reservation}) is above limit.{unit} ({limit})")]
    ReservationAboveLimit {
        /// `iops` or `mbps`.
        unit: &'static str,
        /// Reserved rate.
        reservation: u64,
        /// Limit.
        limit: u64,
    },
    /// Round robin switching every 0 I/Os and 0 bytes.
    #[error("path_policy.selector.round-robin: ios and bytes are both 0 (set at least one)")]
    RoundRobinZero,
    /// A fail-after timeout of 0 or above one day.
    #[error("failover.fail-after.timeout_ms: {0} is outside 1..=86400000")]
    FailTimeout(u64),
    /// `max_held` outside 1..=2^20.
    #[error("max_held: {0} is outside 1..={MAX_HELD_LIMIT}")]
    MaxHeld(u32),
    /// The same path appears twice in an affinity list.
    #[error("path_policy.affinity: path {0:?} is listed twice")]
    DuplicateAffinity(String),
    /// Too many paths in an affinity list.
    #[error("path_policy.affinity: {0} paths listed, at most {MAX_PATHS}")]
    AffinityTooLong(usize),
    /// A path weight outside 1..=100.
    #[error("weight: {0} is outside 1..=100")]
    PathWeight(u32),
    /// A path capacity of zero.
    #[error("{field}: must be at least 1")]
    PathCapacity {
        /// `capacity_iops` or `capacity_mbps`.
        field: &'static str,
    },
    /// A path queue depth of zero or above 65536.
    #[error("max_outstanding: {0} is outside 1..=65536")]
    MaxOutstanding(u32),
    /// A scheduler config value out of range.
    #[error("scheduler.{field}: {value} is outside {range}")]
    Config {
        /// Field name.
        field: &'static str,
        /// The rejected value.
        value: u64,
        /// Accepted range, human readable.
        range: &'static str,
    },
}

fn check_name(field: &'static str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName {
            field,
            name: name.to_owned(),
        })
    }
}

fn check_rate(field: &'static str, v: Option<u64>) -> Result<(), SpecError> {
    match v {
        Some(value) if value == 0 || value > MAX_RATE => Err(SpecError::Rate { field, value }),
        _ => Ok(()),
    }
}

/// A rate in IOPS and/or MB/s; an absent field means "none" (no reservation / no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// I/Os per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// Megabytes (10^6 bytes) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbps: Option<u64>,
}

impl RateSpec {
    /// No rate at all.
    pub const NONE: RateSpec = RateSpec {
        iops: None,
        mbps: None,
    };

    /// True when neither unit is set.
    pub fn is_none(&self) -> bool {
        self.iops.is_none() && self.mbps.is_none()
    }

    fn validate(
        &self,
        iops_field: &'static str,
        mbps_field: &'static str,
    ) -> Result<(), SpecError> {
        check_rate(iops_field, self.iops)?;
        check_rate(mbps_field, self.mbps)
    }
}

/// Priority class: orders VMs when capacity is short (after reservations).
///
/// The proportional phase serves the highest class that has an eligible request first;
/// reservations are honoured for every class before that.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PriorityClass {
    /// Served first.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served only when no High or Normal VM wants the capacity.
    Low,
}

impl PriorityClass {
    /// Number of classes.
    pub const COUNT: usize = 3;

    /// 0 = highest.
    pub fn index(self) -> usize {
        match self {
            PriorityClass::High => 0,
            PriorityClass::Normal => 1,
            PriorityClass::Low => 2,
        }
    }

    /// Inverse of [`PriorityClass::index`] (out-of-range values map to `Low`).
    pub fn from_index(i: usize) -> Self {
        match i {
            0 => PriorityClass::High,
            1 => PriorityClass::Normal,
            _ => PriorityClass::Low,
        }
    }

    /// Multiplier applied to shares by the `vm-weighted` path selector.
    pub fn weight_factor(self) -> u64 {
        match self {
            PriorityClass::High => 4,
            PriorityClass::Normal => 2,
            PriorityClass::Low => 1,
        }
    }
}

/// Path selection policy of a VM (issue 5, "Path selection").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SelectorSpec {
    /// The VM keeps one path (its home, spread over paths at creation) while it is usable.
    #[default]
    VmAffinity,
    /// Switch path every `ios` I/Os or `bytes` bytes, whichever comes first (0 = unused).
    RoundRobin {
        /// I/Os per path before switching (0 = not counted).
        #[serde(default)]
        ios: u32,
        /// Bytes per path before switching (0 = not counted).
        #[serde(default)]
        bytes: u64,
    },
    /// Fewest outstanding I/Os.
    LeastQueueDepth,
    /// Fewest outstanding bytes.
    LeastBytes,
    /// Lowest expected completion time: (outstanding + 1) × measured service time / weight.
    ServiceTime,
    /// Path where the VM's share of capacity (by shares × priority factor) is largest.
    VmWeighted,
}

/// Path preference of a VM: a selector plus an optional path set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathPolicySpec {
    /// How a path is chosen among the allowed ones.
    #[serde(default)]
    pub selector: SelectorSpec,
    /// Path names the VM may use: empty = all paths, one = that path, several = that set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<String>,
}

impl PathPolicySpec {
    /// Checks the policy (path names are resolved by the scheduler).
    pub fn validate(&self) -> Result<(), SpecError> {
        if let SelectorSpec::RoundRobin { ios: 0, bytes: 0 } = self.selector {
            return Err(SpecError::RoundRobinZero);
        }
        if self.affinity.len() > MAX_PATHS {
            return Err(SpecError::AffinityTooLong(self.affinity.len()));
        }
        for (i, name) in self.affinity.iter().enumerate() {
            check_name("path_policy.affinity", name)?;
            if self.affinity[..i].contains(name) {
                return Err(SpecError::DuplicateAffinity(name.clone()));
            }
        }
        Ok(())
    }
}

/// What happens to a VM when none of its paths can serve it (issue 5, "Failover").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum FailoverPolicy {
    /// Re-route to another usable path; with none, hold requests until a path returns
    /// (the frontend keeps pulling until the hold queue is full).
    #[default]
    Hold,
    /// Suspend the VM (frontend stops pulling, held requests wait, in-flight I/O completes)
    /// until its path returns or another path can carry its reservation.
    Suspend,
    /// Like `hold`, but requests held for `timeout_ms` without any usable path are failed
    /// back to the frontend.
    FailAfter {
        /// Milliseconds without a usable path before held requests fail.
        timeout_ms: u64,
    },
}

impl FailoverPolicy {
    fn validate(&self) -> Result<(), SpecError> {
        match *self {
            FailoverPolicy::FailAfter { timeout_ms }
                if timeout_ms == 0 || timeout_ms > 86_400_000 =>
            {
                Err(SpecError::FailTimeout(timeout_ms))
            }
            _ => Ok(()),
        }
    }
}

fn default_shares() -> u32 {
    DEFAULT_SHARES
}

fn default_max_held() -> u32 {
    256
}

/// A VM as created by config or `vm_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Unique name.
    pub name: String,
    /// Proportional share weight, 1..=10000 (default 1000).
    #[serde(default = "default_shares")]
    pub shares: u32,
    /// Floor the VM gets whenever it asks for it.
    #[serde(default, skip_serializing_if = "RateSpec::is_none")]
    pub reservation: RateSpec,
    /// Ceiling never exceeded.
    #[serde(default, skip_serializing_if = "RateSpec::is_none")]
    pub limit: RateSpec,
    /// Priority class.
    #[serde(default)]
    pub priority: PriorityClass,
    /// Path selection and affinity.
    #[serde(default)]
    pub path_policy: PathPolicySpec,
    /// Behaviour when no path can serve the VM.
    #[serde(default)]
    pub failover: FailoverPolicy,
    /// Bound of the VM's hold queue on each reactor; a full queue is backpressure.
    #[serde(default = "default_max_held")]
    pub max_held: u32,
}

impl VmSpec {
    /// A VM with default QoS (shares 1000, no reservation, no limit, vm-affinity, hold).
    pub fn new(name: impl Into<String>) -> Self {
        VmSpec {
            name: name.into(),
            shares: DEFAULT_SHARES,
            reservation: RateSpec::NONE,
            limit: RateSpec::NONE,
            priority: PriorityClass::Normal,
            path_policy: PathPolicySpec::default(),
            failover: FailoverPolicy::Hold,
            max_held: default_max_held(),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("name", &self.name)?;
        if !(MIN_SHARES..=MAX_SHARES).contains(&self.shares) {
            return Err(SpecError::Shares(self.shares));
        }
        self.reservation
            .validate("reservation.iops", "reservation.mbps")?;
        self.limit.validate("limit.iops", "limit.mbps")?;
        for (unit, r, l) in [
            ("iops", self.reservation.iops, self.limit.iops),
            ("mbps", self.reservation.mbps, self.limit.mbps),
        ] {
            if let (Some(r), Some(l)) = (r, l) {
                if r > l {
                    return Err(SpecError::ReservationAboveLimit {
                        unit,
                        reservation: r,
                        limit: l,
                    });
                }
            }
        }
        self.path_policy.validate()?;
        self.failover.validate()?;
        if self.max_held == 0 || self.max_held > MAX_HELD_LIMIT {
            return Err(SpecError::MaxHeld(self.max_held));
        }
        Ok(())
    }

    /// Applies a QoS update (fields present in `u` replace ours) and validates the result.
    pub fn with_update(&self, u: &VmQosUpdate) -> Result<VmSpec, SpecError> {
        let mut s = self.clone();
        if let Some(v) = u.shares {
            s.shares = v;
        }
        if let Some(v) = u.reservation {
            s.reservation = v;
        }
        if let Some(v) = u.limit {
            s.limit = v;
        }
        if let Some(v) = u.priority {
            s.priority = v;
        }
        if let Some(v) = u.failover {
            s.failover = v;
        }
        if let Some(v) = u.max_held {
            s.max_held = v;
        }
        s.validate()?;
        Ok(s)
    }
}

/// `vm_set_qos` parameters: each present field replaces the VM's current value
/// (`reservation`/`limit` replace both units; pass `{}` to clear them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmQosUpdate {
    /// New shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u32>,
    /// New reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<RateSpec>,
    /// New limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<RateSpec>,
    /// New priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityClass>,
    /// New failover policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverPolicy>,
    /// New hold queue bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_held: Option<u32>,
}

/// Path state as seen by the scheduler (fed by the multipath layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathState {
    /// Being established; not usable yet.
    #[default]
    Connecting,
    /// ANA optimized: preferred.
    Optimized,
    /// ANA non-optimized: used only when no optimized path is allowed and usable.
    NonOptimized,
    /// ANA inaccessible: never used.
    Inaccessible,
    /// Lost: never used.
    Failed,
    /// A failover is in progress: not used; VMs re-route, hold or suspend per policy.
    FailingOver,
}

impl PathState {
    /// Optimized or non-optimized.
    pub fn is_usable(self) -> bool {
        matches!(self, PathState::Optimized | PathState::NonOptimized)
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            PathState::Connecting => 0,
            PathState::Optimized => 1,
            PathState::NonOptimized => 2,
            PathState::Inaccessible => 3,
            PathState::Failed => 4,
            PathState::FailingOver => 5,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => PathState::Optimized,
            2 => PathState::NonOptimized,
            3 => PathState::Inaccessible,
            4 => PathState::Failed,
            5 => PathState::FailingOver,
            _ => PathState::Connecting,
        }
    }
}

fn default_path_weight() -> u32 {
    100
}

fn default_max_outstanding() -> u32 {
    128
}

/// A path as registered by the daemon (one per `nvme_paths` path or local device queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    /// Unique name (referenced by VM affinity lists).
    pub name: String,
    /// Initial state.
    #[serde(default)]
    pub state: PathState,
    /// Estimated capacity in IOPS (admission control, service-time and vm-weighted).
    pub capacity_iops: u64,
    /// Estimated capacity in MB/s.
    pub capacity_mbps: u64,
    /// Relative throughput weight 1..=100 (service-time selector), default 100.
    #[serde(default = "default_path_weight")]
    pub weight: u32,
    /// Most I/Os the scheduler keeps outstanding on the path (its queue depth); beyond it,
    /// requests are held and released by the scheduler in QoS order.
    #[serde(default = "default_max_outstanding")]
    pub max_outstanding: u32,
}

impl PathSpec {
    /// A path with the given capacity estimates and defaults elsewhere.
    pub fn new(name: impl Into<String>, capacity_iops: u64, capacity_mbps: u64) -> Self {
        PathSpec {
            name: name.into(),
            state: PathState::Optimized,
            capacity_iops,
            capacity_mbps,
            weight: default_path_weight(),
            max_outstanding: default_max_outstanding(),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("name", &self.name)?;
        if self.capacity_iops == 0 || self.capacity_iops > MAX_RATE {
            return Err(SpecError::PathCapacity {
                field: "capacity_iops",
            });
        }
        if self.capacity_mbps == 0 || self.capacity_mbps > MAX_RATE {
            return Err(SpecError::PathCapacity {
                field: "capacity_mbps",
            });
        }
        if !(1..=100).contains(&self.weight) {
            return Err(SpecError::PathWeight(self.weight));
        }
        if !(1..=65_536).contains(&self.max_outstanding) {
            return Err(SpecError::MaxOutstanding(self.max_outstanding));
        }
        Ok(())
    }
}

fn d_shards() -> usize {
    1
}
fn d_max_vms() -> u32 {
    4096
}
fn d_io_cost() -> u32 {
    4096
}
fn d_slack() -> u32 {
    2
}
fn d_catchup() -> u64 {
    1000
}
fn d_limit_catchup() -> u32 {
    2
}
fn d_limit_catchup_us() -> u32 {
    100
}
fn d_window() -> u64 {
    10_000
}
fn d_tolerance() -> u32 {
    5
}
fn d_headroom() -> u32 {
    100
}
fn d_events() -> u32 {
    1024
}

/// Scheduler-wide settings (the `[scheduler]` config section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Number of reactor shards (one per reactor), 1..=64.
    #[serde(default = "d_shards")]
    pub shards: usize,
    /// VM table size, 1..=65536 (per-shard state is sized by it).
    #[serde(default = "d_max_vms")]
    pub max_vms: u32,
    /// Per-I/O overhead in byte-equivalents for the proportional cost
    /// (cost = io_cost_bytes + request bytes), 0..=1 MiB.
    #[serde(default = "d_io_cost")]
    pub io_cost_bytes: u32,
    /// Cross-shard fairness slack, in requests of 4 KiB at 1000 shares (1..=64).
    #[serde(default = "d_slack")]
    pub cross_shard_slack: u32,
    /// How far behind real time a reservation tag may lag (catch-up after a late dispatch),
    /// in microseconds; 0..=1000000.
    #[serde(default = "d_catchup")]
    pub reservation_catchup_us: u64,
    /// Limit burst tolerance, in request intervals (0..=16), and
    /// [`limit_catchup_us`](Self::limit_catchup_us) in time: a limit tag may lag real time
    /// by the larger of the two, so that a VM kept waiting (its path full, other VMs ahead
    /// of it, its reactor descheduled) does not lose the wait. A VM dispatches at most
    /// `limit × W` plus `1 + max(limit_catchup, limit × limit_catchup_us)` requests in any
    /// window `W`. Both 0 = strict (`limit × W` + one request, but waits are lost).
    /// Default 2.
    #[serde(default = "d_limit_catchup")]
    pub limit_catchup: u32,
    /// Limit burst tolerance in microseconds (0..=10000), see
    /// [`limit_catchup`](Self::limit_catchup). Default 100: with a high limit, two
    /// intervals are a few microseconds, less than a VM may wait behind others.
    #[serde(default = "d_limit_catchup_us")]
    pub limit_catchup_us: u32,
    /// How long a reservation must stay unmet before `vm_migrate_recommended`, in ms.
    #[serde(default = "d_window")]
    pub migrate_window_ms: u64,
    /// Shortfall tolerated before a reservation counts as unmet, in percent (0..=50).
    #[serde(default = "d_tolerance")]
    pub migrate_tolerance_pct: u32,
    /// Admission control: reservations may add up to this percentage of path capacity
    /// (1..=100).
    #[serde(default = "d_headroom")]
    pub admission_pct: u32,
    /// Bound of the event queue the daemon drains (1..=1048576).
    #[serde(default = "d_events")]
    pub event_queue_len: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            shards: d_shards(),
            max_vms: d_max_vms(),
            io_cost_bytes: d_io_cost(),
            cross_shard_slack: d_slack(),
            reservation_catchup_us: d_catchup(),
            limit_catchup: d_limit_catchup(),
            limit_catchup_us: d_limit_catchup_us(),
            migrate_window_ms: d_window(),
            migrate_tolerance_pct: d_tolerance(),
            admission_pct: d_headroom(),
            event_queue_len: d_events(),
        }
    }
}

impl SchedulerConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let checks: [(&'static str, u64, u64, u64, &'static str); 11] = [
            ("shards", self.shards as u64, 1, MAX_SHARDS as u64, "1..=64"),
            ("max_vms", self.max_vms.into(), 1, 65_536, "1..=65536"),
            (
                "io_cost_bytes",
                self.io_cost_bytes.into(),
                0,
                1 << 20,
                "0..=1048576",
            ),
            (
                "cross_shard_slack",
                self.cross_shard_slack.into(),
                1,
                64,
                "1..=64",
            ),
            (
                "reservation_catchup_us",
                self.reservation_catchup_us,
                0,
                1_000_000,
                "0..=1000000",
            ),
            ("limit_catchup", self.limit_catchup.into(), 0, 16, "0..=16"),
            (
                "limit_catchup_us",
                self.limit_catchup_us.into(),
                0,
                10_000,
                "0..=10000",
            ),
            (
                "migrate_window_ms",
                self.migrate_window_ms,
                1,
                86_400_000,
                "1..=86400000",
            ),
            (
                "migrate_tolerance_pct",
                self.migrate_tolerance_pct.into(),
                0,
                50,
                "0..=50",
            ),
            (
                "admission_pct",
                self.admission_pct.into(),
                1,
                100,
                "1..=100",
            ),
            (
                "event_queue_len",
                self.event_queue_len.into(),
                1,
                1 << 20,
                "1..=1048576",
            ),
        ];
        for (field, value, lo, hi, range) in checks {
            if value < lo || value > hi {
                return Err(SpecError::Config {
                    field,
                    value,
                    range,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_spec_defaults_from_minimal_json() {
        let s: VmSpec = serde_json::from_str(r#"{"name":"vm-a"}"#).unwrap();
        assert_eq!(s, VmSpec::new("vm-a"));
        s.validate().unwrap();
    }

    #[test]
    fn vm_spec_full_toml_roundtrip() {
        let text = r#"
            name = "db1"
            shares = 2000
            reservation = { iops = 1000 }
            limit = { iops = 5000, mbps = 200 }
            priority = "high"
            failover = { fail-after = { timeout_ms = 3000 } }
            max_held = 64
            [path_policy]
            selector = { round-robin = { ios = 1000, bytes = 10485760 } }
            affinity = ["p0", "p1"]
        "#;
        let s: VmSpec = toml::from_str(text).unwrap();
        s.validate().unwrap();
        assert_eq!(s.shares, 2000);
        assert_eq!(s.reservation.iops, Some(1000));
        assert_eq!(s.limit.mbps, Some(200));
        assert_eq!(s.priority, PriorityClass::High);
        assert_eq!(s.failover, FailoverPolicy::FailAfter { timeout_ms: 3000 });
        assert_eq!(
            s.path_policy.selector,
            SelectorSpec::RoundRobin {
                ios: 1000,
                bytes: 10 << 20
            }
        );
        let json = serde_json::to_string(&s).unwrap();
        let back: VmSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let unit: PathPolicySpec =
            serde_json::from_str(r#"{"selector":"least-queue-depth"}"#).unwrap();
        assert_eq!(unit.selector, SelectorSpec::LeastQueueDepth);
        let f: VmSpec = serde_json::from_str(r#"{"name":"x","failover":"suspend"}"#).unwrap();
        assert_eq!(f.failover, FailoverPolicy::Suspend);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<VmSpec>(r#"{"name":"a","sharez":5}"#).is_err());
        assert!(serde_json::from_str::<VmQosUpdate>(r#"{"limit":{"iopz":5}}"#).is_err());
        assert!(serde_json::from_str::<PathSpec>(
            r#"{"name":"p","capacity_iops":1,"capacity_mbps":1,"x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<PathPolicySpec>(
            r#"{"selector":{"round-robin":{"ios":1,"bogus":2}}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<SchedulerConfig>(r#"{"shard":2}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = VmSpec::new("a");
        s.shares = 0;
        assert_eq!(s.validate(), Err(SpecError::Shares(0)));
        s.shares = 10_001;
        assert!(s.validate().unwrap_err().to_string().contains("shares"));
        let mut s = VmSpec::new("a");
        s.reservation.iops = Some(500);
        s.limit.iops = Some(100);
        let e = s.validate().unwrap_err();
        assert!(e.to_string().contains("reservation.iops"), "{e}");
        let mut s = VmSpec::new("a");
        s.limit.mbps = Some(0);
        assert!(s.validate().unwrap_err().to_string().contains("limit.mbps"));
        let mut s = VmSpec::new("bad name");
        assert!(matches!(s.validate(), Err(SpecError::BadName { .. })));
        s.name = "ok".into();
        s.path_policy.selector = SelectorSpec::RoundRobin { ios: 0, bytes: 0 };
        assert_eq!(s.validate(), Err(SpecError::RoundRobinZero));
        s.path_policy.selector = SelectorSpec::LeastBytes;
        s.path_policy.affinity = vec!["p".into(), "p".into()];
        assert_eq!(s.validate(), Err(SpecError::DuplicateAffinity("p".into())));
        s.path_policy.affinity.clear();
        s.failover = FailoverPolicy::FailAfter { timeout_ms: 0 };
        assert_eq!(s.validate(), Err(SpecError::FailTimeout(0)));
        s.failover = FailoverPolicy::Hold;
        s.max_held = 0;
        assert_eq!(s.validate(), Err(SpecError::MaxHeld(0)));
    }

    #[test]
    fn qos_update_merges_and_validates() {
        let s = VmSpec::new("a");
        let u = VmQosUpdate {
            shares: Some(50),
            limit: Some(RateSpec {
                iops: Some(100),
                mbps: None,
            }),
            ..Default::default()
        };
        let n = s.with_update(&u).unwrap();
        assert_eq!((n.shares, n.limit.iops), (50, Some(100)));
        let bad = VmQosUpdate {
            reservation: Some(RateSpec {
                iops: Some(200),
                mbps: None,
            }),
            ..Default::default()
        };
        assert!(n.with_update(&bad).is_err());
    }

    #[test]
    fn path_and_config_validation() {
        let mut p = PathSpec::new("p0", 100_000, 1000);
        p.validate().unwrap();
        p.weight = 0;
        assert_eq!(p.validate(), Err(SpecError::PathWeight(0)));
        p.weight = 100;
        p.capacity_iops = 0;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("capacity_iops"));
        let c = SchedulerConfig {
            shards: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("scheduler.shards"));
        SchedulerConfig::default().validate().unwrap();
    }
}
