//! Subcommands of the NVMe/TCP host: attach / detach controllers, list controllers and paths,
//! set options and the multipath policy (SPDK's `bdev_nvme_*` names and parameters).

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::format::{human_bytes, put, Align, FormatError, Table};

/// NVMe host subcommands (flattened into the main command list).
#[derive(Debug, Subcommand)]
pub enum NvmeCommand {
    /// Connect to an NVMe/TCP controller; its namespaces become bdevs NAMEn<nsid> (RPC bdev_nvme_attach_controller)
    ///
    /// Example: `vmpathctl bdev_nvme_attach_controller -b Nvme0 -T tcp -a 10.0.1.2 -P 4420
    /// -n nqn.2024-01.io.vmpath:disk1`. Attaching again under the same name through another
    /// portal adds a path.
    #[command(
        name = "bdev_nvme_attach_controller",
        alias = "bdev-nvme-attach-controller"
    )]
    Attach(AttachArgs),

    /// Disconnect a controller group, or one of its paths (RPC bdev_nvme_detach_controller)
    #[command(
        name = "bdev_nvme_detach_controller",
        alias = "bdev-nvme-detach-controller"
    )]
    Detach(DetachArgs),

    /// List NVMe controllers with their state (RPC bdev_nvme_get_controllers)
    #[command(
        name = "bdev_nvme_get_controllers",
        alias = "bdev-nvme-get-controllers"
    )]
    GetControllers {
        /// Show only this controller group
        #[arg(short = 'n', long = "name")]
        name: Option<String>,
    },

    /// List the paths of NVMe bdevs with their state and load (RPC bdev_nvme_get_io_paths)
    #[command(
        name = "bdev_nvme_get_io_paths",
        alias = "bdev-nvme-get-io-paths",
        visible_alias = "io-paths"
    )]
    GetIoPaths {
        /// Show only this bdev
        #[arg(short = 'b', long = "name")]
        name: Option<String>,
    },

    /// Set NVMe timeouts: defaults of later attaches, or with -b those of a controller group (RPC bdev_nvme_set_options)
    #[command(name = "bdev_nvme_set_options", alias = "bdev-nvme-set-options")]
    SetOptions(TimerArgs),

    /// Choose the built-in path policy of an NVMe bdev (RPC bdev_nvme_set_multipath_policy)
    #[command(
        name = "bdev_nvme_set_multipath_policy",
        alias = "bdev-nvme-set-multipath-policy"
    )]
    SetPolicy(PolicyArgs),
}

/// Options of `bdev_nvme_set_options`: the attach timers plus the ones only set globally
/// or per group (SPDK names; `_ms` forms for sub-second values).
#[derive(Debug, Args)]
pub struct TimerArgs {
    /// Controller group to change (default: change the defaults of later attaches)
    #[arg(short = 'b', long = "name")]
    pub name: Option<String>,
    #[command(flatten)]
    pub timers: AttachTimers,
    /// Admin command timeout in milliseconds
    #[arg(long)]
    pub timeout_admin_ms: Option<u64>,
    /// Extra wait after KATO before an in-doubt write is re-issued elsewhere (ms)
    #[arg(long)]
    pub write_fence_grace_ms: Option<u64>,
    /// Entries per I/O queue
    #[arg(long)]
    pub io_queue_depth: Option<u16>,
}

impl TimerArgs {
    fn fill(&self, m: &mut Map<String, Value>) {
        self.timers.fill(m);
        put(m, "timeout_admin_ms", self.timeout_admin_ms);
        put(m, "write_fence_grace_ms", self.write_fence_grace_ms);
        put(m, "io_queue_depth", self.io_queue_depth);
    }
}

/// Arguments of `bdev_nvme_attach_controller` (SPDK's short options).
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Controller group name
    #[arg(short = 'b', long = "name")]
    pub name: String,
    /// Transport type
    #[arg(short = 'T', long, default_value = "tcp")]
    pub trtype: String,
    /// Target address
    #[arg(short = 'a', long)]
    pub traddr: String,
    /// Address family: ipv4 or ipv6
    #[arg(short = 'f', long, default_value = "ipv4")]
    pub adrfam: String,
    /// Target port
    #[arg(short = 'P', long, default_value = "4420")]
    pub trsvcid: String,
    /// Subsystem NQN
    #[arg(short = 'n', long)]
    pub subnqn: String,
    /// Host NQN
    #[arg(short = 'q', long)]
    pub hostnqn: Option<String>,
    /// disable, failover or multipath
    #[arg(short = 'x', long)]
    pub multipath: Option<String>,
    #[command(flatten)]
    pub timers: AttachTimers,
}

/// Timers of a controller, set at attach or by set_options.
#[derive(Debug, Args)]
pub struct AttachTimers {
    /// Give the controller up after this many seconds unreachable (-1 = never)
    #[arg(short = 'l', long, allow_hyphen_values = true)]
    pub ctrlr_loss_timeout_sec: Option<i64>,
    /// Same in milliseconds
    #[arg(long, allow_hyphen_values = true)]
    pub ctrlr_loss_timeout_ms: Option<i64>,
    /// Seconds between reconnect attempts
    #[arg(short = 'o', long)]
    pub reconnect_delay_sec: Option<u64>,
    /// Same in milliseconds
    #[arg(long)]
    pub reconnect_delay_ms: Option<u64>,
    /// Fail waiting I/O after the path has been down this many seconds (-1 = off)
    #[arg(short = 'u', long, allow_hyphen_values = true)]
    pub fast_io_fail_timeout_sec: Option<i64>,
    /// Same in milliseconds
    #[arg(long, allow_hyphen_values = true)]
    pub fast_io_fail_timeout_ms: Option<i64>,
    /// Keep Alive Timeout in milliseconds (0 = off)
    #[arg(short = 'k', long)]
    pub keep_alive_timeout_ms: Option<u32>,
    /// Per-I/O timeout in microseconds (0 = none)
    #[arg(long)]
    pub timeout_us: Option<u64>,
}

impl AttachTimers {
    fn fill(&self, m: &mut Map<String, Value>) {
        put(m, "ctrlr_loss_timeout_sec", self.ctrlr_loss_timeout_sec);
        put(m, "ctrlr_loss_timeout_ms", self.ctrlr_loss_timeout_ms);
        put(m, "reconnect_delay_sec", self.reconnect_delay_sec);
        put(m, "reconnect_delay_ms", self.reconnect_delay_ms);
        put(m, "fast_io_fail_timeout_sec", self.fast_io_fail_timeout_sec);
        put(m, "fast_io_fail_timeout_ms", self.fast_io_fail_timeout_ms);
        put(m, "keep_alive_timeout_ms", self.keep_alive_timeout_ms);
        put(m, "timeout_us", self.timeout_us);
    }
}

/// Arguments of `bdev_nvme_detach_controller`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Controller group name
    pub name: String,
    /// Only the path to this address
    #[arg(short = 'a', long)]
    pub traddr: Option<String>,
    /// Only the path to this port
    #[arg(short = 'P', long)]
    pub trsvcid: Option<String>,
    /// Only the path to this subsystem
    #[arg(short = 'n', long)]
    pub subnqn: Option<String>,
}

/// Arguments of `bdev_nvme_set_multipath_policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// NVMe bdev name (e.g. Nvme0n1)
    #[arg(short = 'b', long = "name")]
    pub name: String,
    /// active_passive or active_active
    #[arg(short = 'p', long)]
    pub policy: String,
    /// round_robin or queue_depth (active_active only)
    #[arg(short = 'S', long)]
    pub selector: Option<String>,
    /// I/Os per path before round robin moves on
    #[arg(long)]
    pub rr_min_io: Option<u32>,
}

impl NvmeCommand {
    /// Method and params.
    pub fn request(&self) -> (String, Option<Value>) {
        match self {
            NvmeCommand::Attach(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                m.insert("trtype".into(), json!(a.trtype));
                m.insert("adrfam".into(), json!(a.adrfam));
                m.insert("traddr".into(), json!(a.traddr));
                m.insert("trsvcid".into(), json!(a.trsvcid));
                m.insert("subnqn".into(), json!(a.subnqn));
                if let Some(h) = &a.hostnqn {
                    m.insert("hostnqn".into(), json!(h));
                }
                if let Some(x) = &a.multipath {
                    m.insert("multipath".into(), json!(x));
                }
                a.timers.fill(&mut m);
                ("bdev_nvme_attach_controller".into(), Some(Value::Object(m)))
            }
            NvmeCommand::Detach(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                for (k, v) in [
                    ("traddr", &a.traddr),
                    ("trsvcid", &a.trsvcid),
                    ("subnqn", &a.subnqn),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), json!(v));
                    }
                }
                ("bdev_nvme_detach_controller".into(), Some(Value::Object(m)))
            }
            NvmeCommand::GetControllers { name } => (
                "bdev_nvme_get_controllers".into(),
                name.as_ref().map(|n| json!({ "name": n })),
            ),
            NvmeCommand::GetIoPaths { name } => (
                "bdev_nvme_get_io_paths".into(),
                name.as_ref().map(|n| json!({ "name": n })),
            ),
            NvmeCommand::SetOptions(t) => {
                let mut m = Map::new();
                if let Some(n) = &t.name {
                    m.insert("name".into(), json!(n));
                }
                t.fill(&mut m);
                ("bdev_nvme_set_options".into(), Some(Value::Object(m)))
            }
            NvmeCommand::SetPolicy(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                m.insert("policy".into(), json!(a.policy));
                if let Some(s) = &a.selector {
                    m.insert("selector".into(), json!(s));
                }
                if let Some(r) = a.rr_min_io {
                    m.insert("rr_min_io".into(), json!(r));
                }
                (
                    "bdev_nvme_set_multipath_policy".into(),
                    Some(Value::Object(m)),
                )
            }
        }
    }

    /// Human-readable result.
    pub fn render(&self, result: &Value) -> Result<String, FormatError> {
        match self {
            NvmeCommand::GetControllers { .. } => controllers(result),
            NvmeCommand::GetIoPaths { .. } => io_paths(result),
            NvmeCommand::Attach(_) => Ok(match result.as_array() {
                Some(a) => a
                    .iter()
                    .map(|v| format!("{}\n", v.as_str().unwrap_or("?")))
                    .collect(),
                None => format!("{result}\n"),
            }),
            _ => Ok(match result {
                Value::Bool(true) => "done\n".to_string(),
                other => format!("{other}\n"),
            }),
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The bdev_nvme_get_controllers table.
pub fn controllers(result: &Value) -> Result<String, FormatError> {
    let groups = result
        .as_array()
        .ok_or_else(|| FormatError::new("bdev_nvme_get_controllers", "not an array"))?;
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("CNTLID", Align::Right),
        ("ADDRESS", Align::Left),
        ("SUBNQN", Align::Left),
        ("RESETS", Align::Right),
        ("BDEVS", Align::Left),
    ]);
    for g in groups {
        let ctrlrs = g["ctrlrs"]
            .as_array()
            .ok_or_else(|| FormatError::new("bdev_nvme_get_controllers", "no ctrlrs array"))?;
        for c in ctrlrs {
            let bdevs: Vec<String> = c["bdevs"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            t.row(vec![
                s(&g["name"]),
                s(&c["state"]),
                s(&c["cntlid"]),
                format!("{}:{}", s(&c["trid"]["traddr"]), s(&c["trid"]["trsvcid"])),
                s(&c["trid"]["subnqn"]),
                s(&c["resets"]),
                bdevs.join(","),
            ]);
        }
    }
    Ok(t.render())
}

/// The bdev_nvme_get_io_paths table.
pub fn io_paths(result: &Value) -> Result<String, FormatError> {
    let paths = result["io_paths"]
        .as_array()
        .ok_or_else(|| FormatError::new("bdev_nvme_get_io_paths", "no io_paths array"))?;
    let mut t = Table::new(&[
        ("BDEV", Align::Left),
        ("ID", Align::Right),
        ("PATH", Align::Left),
        ("STATE", Align::Left),
        ("QD", Align::Right),
        ("BYTES", Align::Right),
        ("SVC_US", Align::Right),
        ("DONE", Align::Right),
        ("ERRORS", Align::Right),
        ("IN_DOUBT", Align::Right),
    ]);
    for p in paths {
        t.row(vec![
            s(&p["bdev_name"]),
            s(&p["path_id"]),
            s(&p["name"]),
            s(&p["state"]),
            s(&p["outstanding_ios"]),
            human_bytes(p["outstanding_bytes"].as_u64().unwrap_or(0)),
            format!("{:.1}", p["ewma_service_us"].as_f64().unwrap_or(0.0)),
            s(&p["completed_ios"]),
            s(&p["errors"]),
            s(&p["in_doubt_writes"]),
        ]);
    }
    Ok(t.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_request_uses_spdk_names() {
        let c = NvmeCommand::Attach(AttachArgs {
            name: "Nvme0".into(),
            trtype: "tcp".into(),
            traddr: "10.0.1.2".into(),
            adrfam: "ipv4".into(),
            trsvcid: "4420".into(),
            subnqn: "nqn.x".into(),
            hostnqn: None,
            multipath: Some("multipath".into()),
            timers: AttachTimers {
                ctrlr_loss_timeout_sec: Some(-1),
                ctrlr_loss_timeout_ms: None,
                reconnect_delay_sec: None,
                reconnect_delay_ms: Some(200),
                fast_io_fail_timeout_sec: None,
                fast_io_fail_timeout_ms: None,
                keep_alive_timeout_ms: None,
                timeout_us: None,
            },
        });
        let (m, p) = c.request();
        assert_eq!(m, "bdev_nvme_attach_controller");
        let p = p.unwrap();
        assert_eq!(p["traddr"], "10.0.1.2");
        assert_eq!(p["multipath"], "multipath");
        assert_eq!(p["ctrlr_loss_timeout_sec"], -1);
        assert_eq!(p["reconnect_delay_ms"], 200);
        assert!(p.get("keep_alive_timeout_ms").is_none());
    }

    #[test]
    fn set_options_request_carries_every_timer() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: NvmeCommand,
        }
        let t = T::parse_from([
            "x",
            "bdev_nvme_set_options",
            "-b",
            "Nvme0",
            "-l",
            "-1",
            "--reconnect-delay-ms",
            "250",
            "-k",
            "2000",
            "--timeout-admin-ms",
            "900",
            "--write-fence-grace-ms",
            "300",
        ]);
        let (m, p) = t.c.request();
        assert_eq!(m, "bdev_nvme_set_options");
        assert_eq!(
            p.unwrap(),
            json!({"name": "Nvme0", "ctrlr_loss_timeout_sec": -1, "reconnect_delay_ms": 250,
                   "keep_alive_timeout_ms": 2000, "timeout_admin_ms": 900,
                   "write_fence_grace_ms": 300})
        );
    }

    #[test]
    fn tables() {
        let r = json!([{ "name": "Nvme0", "ctrlrs": [{
            "state": "enabled", "cntlid": 3, "resets": 1, "bdevs": ["Nvme0n1"],
            "trid": { "traddr": "10.0.1.2", "trsvcid": "4420", "subnqn": "nqn.x" } }] }]);
        let out = controllers(&r).unwrap();
        assert!(out.contains("Nvme0") && out.contains("10.0.1.2:4420") && out.contains("enabled"));
        let r = json!({ "io_paths": [{ "bdev_name": "Nvme0n1", "path_id": 0, "name": "Nvme0:10.0.1.2:4420",
            "state": "optimized", "outstanding_ios": 4, "outstanding_bytes": 16384,
            "ewma_service_us": 51.25, "completed_ios": 10, "errors": 0, "in_doubt_writes": 0 }] });
        let out = io_paths(&r).unwrap();
        assert!(
            out.contains("optimized") && out.contains("16 KiB") && out.contains("51.2"),
            "{out}"
        );
        assert!(io_paths(&json!([])).is_err());
    }
}
