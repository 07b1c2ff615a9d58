//! Subcommands of the per-VM scheduler: VMs, scheduler paths and volumes.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::format::{human_bytes, put, Align, FormatError, Table};

/// VM, path and volume subcommands (flattened into the main command list).
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM with its QoS (RPC vm_create)
    ///
    /// Example: `vmpathctl vm_create vm-a --shares 2000 --reservation-iops 5000
    /// --limit-iops 50000 --selector least-queue-depth --failover suspend`.
    #[command(name = "vm_create", alias = "vm-create")]
    VmCreate(VmCreateArgs),

    /// Delete a VM (it must have no volume left) (RPC vm_delete)
    #[command(name = "vm_delete", alias = "vm-delete")]
    VmDelete {
        /// VM name
        name: String,
    },

    /// Change a VM's shares, reservation, limit or priority without stopping I/O (RPC vm_set_qos)
    #[command(name = "vm_set_qos", alias = "vm-set-qos")]
    VmSetQos(VmQosArgs),

    /// Change how a VM's requests pick their path (RPC vm_set_path_policy)
    ///
    /// Selectors: vm-affinity, round-robin, least-queue-depth, least-bytes, service-time,
    /// vm-weighted.
    #[command(name = "vm_set_path_policy", alias = "vm-set-path-policy")]
    VmSetPathPolicy(PathPolicyArgs),

    /// List VMs with their QoS, state and counters (RPC vm_get_vms)
    #[command(name = "vm_get_vms", alias = "vm-get-vms", visible_alias = "vms")]
    VmGetVms {
        /// Show only this VM
        #[arg(short = 'n', long = "name")]
        name: Option<String>,
    },

    /// Suspend a VM: its disks stop being pulled, in-flight I/O completes (RPC vm_suspend)
    #[command(name = "vm_suspend", alias = "vm-suspend")]
    VmSuspend {
        /// VM name
        name: String,
    },

    /// Resume a suspended VM (RPC vm_resume)
    #[command(name = "vm_resume", alias = "vm-resume")]
    VmResume {
        /// VM name
        name: String,
    },

    /// Schedule a remote host's NVMe/TCP I/O as a VM's, through any exported volume
    /// (RPC vm_bind_host)
    ///
    /// Example: `vmpathctl vm_bind_host nqn.2014-08.org.nvmexpress:uuid:... vm-a`. Replaces
    /// the host's earlier binding; connected queues follow on their next poll.
    #[command(name = "vm_bind_host", alias = "vm-bind-host")]
    VmBindHost {
        /// The host's NQN
        hostnqn: String,
        /// VM name
        vm: String,
    },

    /// Stop scheduling a host as a VM (RPC vm_unbind_host)
    #[command(name = "vm_unbind_host", alias = "vm-unbind-host")]
    VmUnbindHost {
        /// The host's NQN
        hostnqn: String,
    },

    /// List host NQN → VM bindings (RPC vm_get_hosts)
    #[command(name = "vm_get_hosts", alias = "vm-get-hosts")]
    VmGetHosts,

    /// Register a bdev as a path the scheduler may route VM I/O to (RPC sched_path_add)
    #[command(name = "sched_path_add", alias = "sched-path-add")]
    SchedPathAdd(PathAddArgs),

    /// Unregister a scheduler path (RPC sched_path_remove)
    #[command(name = "sched_path_remove", alias = "sched-path-remove")]
    SchedPathRemove {
        /// Path name
        name: String,
    },

    /// Set a path's state: optimized, non-optimized, inaccessible, failed, failing-over (RPC sched_path_set_state)
    #[command(name = "sched_path_set_state", alias = "sched-path-set-state")]
    SchedPathSetState {
        /// Path name
        name: String,
        /// New state
        state: String,
    },

    /// List scheduler paths with state and load (RPC sched_get_paths)
    #[command(
        name = "sched_get_paths",
        alias = "sched-get-paths",
        visible_alias = "paths"
    )]
    SchedGetPaths,

    /// Create a VM's virtual disk as a slice of the paths' storage (RPC volume_create)
    ///
    /// Example: `vmpathctl volume_create vm-a-disk vm-a local0 --offset-blocks 0
    /// --num-blocks 8192`. The volume is also a bdev, exportable over vhost or NVMe/TCP.
    #[command(name = "volume_create", alias = "volume-create")]
    VolumeCreate(VolumeCreateArgs),

    /// Delete a volume (RPC volume_delete)
    #[command(name = "volume_delete", alias = "volume-delete")]
    VolumeDelete {
        /// Volume name
        name: String,
    },

    /// List volumes (RPC volume_get_volumes)
    #[command(
        name = "volume_get_volumes",
        alias = "volume-get-volumes",
        visible_alias = "volumes"
    )]
    VolumeGetVolumes,

    /// Create a vhost-user-blk virtual disk for a QEMU or cloud-hypervisor guest (RPC vhost_create_blk_controller)
    ///
    /// Example: `vmpathctl vhost_create_blk_controller vm-a.sock vm-a-disk --num-queues 4`
    /// serves the volume vm-a-disk on the socket <vhost socket dir>/vm-a.sock; QEMU attaches
    /// with `-chardev socket,id=c0,path=/var/tmp/vm-a.sock,reconnect=1 -device
    /// vhost-user-blk-pci,chardev=c0,num-queues=4`.
    #[command(
        name = "vhost_create_blk_controller",
        alias = "vhost-create-blk-controller"
    )]
    VhostCreateBlkController(VhostCreateArgs),

    /// Delete a vhost-user-blk controller (RPC vhost_delete_controller)
    #[command(name = "vhost_delete_controller", alias = "vhost-delete-controller")]
    VhostDeleteController {
        /// Controller name
        ctrlr: String,
    },

    /// List vhost-user-blk controllers with queues and counters (RPC vhost_get_controllers)
    #[command(name = "vhost_get_controllers", alias = "vhost-get-controllers")]
    VhostGetControllers {
        /// Show only this controller
        #[arg(short = 'n', long = "name")]
        name: Option<String>,
    },
}

/// Arguments of vhost_create_blk_controller.
#[derive(Debug, Args)]
pub struct VhostCreateArgs {
    /// Controller name (also the socket file name unless --socket is given)
    ctrlr: String,
    /// Bdev to serve (a VM volume is scheduled as its VM)
    dev_name: String,
    /// Socket path (relative: under the daemon's vhost socket directory)
    #[arg(long)]
    socket: Option<String>,
    /// Number of virtqueues (spread over the reactors)
    #[arg(long, default_value_t = 1)]
    num_queues: u16,
    /// VM tag for a bdev that is not a volume
    #[arg(long)]
    vm: Option<String>,
    /// Present the disk read-only
    #[arg(long)]
    readonly: bool,
}

/// QoS flags shared by vm_create and vm_set_qos.
#[derive(Debug, Args)]
pub struct QosFlags {
    /// Proportional share weight (1-10000; default 1000 at creation)
    #[arg(long)]
    shares: Option<u32>,
    /// Reserved IOPS (a floor the VM gets whenever it asks)
    #[arg(long)]
    reservation_iops: Option<u64>,
    /// Reserved MB/s
    #[arg(long)]
    reservation_mbps: Option<u64>,
    /// IOPS limit (a ceiling)
    #[arg(long)]
    limit_iops: Option<u64>,
    /// MB/s limit
    #[arg(long)]
    limit_mbps: Option<u64>,
    /// Priority class: low, normal, high
    #[arg(long)]
    priority: Option<String>,
    /// Failover policy: hold, suspend (or use --fail-after-ms)
    #[arg(long, conflicts_with = "fail_after_ms")]
    failover: Option<String>,
    /// Failover policy fail-after: fail held requests after this many ms without a path
    #[arg(long)]
    fail_after_ms: Option<u64>,
}

impl QosFlags {
    fn fill(&self, m: &mut Map<String, Value>) {
        put(m, "shares", self.shares);
        let rate = |iops: Option<u64>, mbps: Option<u64>| {
            let mut r = Map::new();
            put(&mut r, "iops", iops);
            put(&mut r, "mbps", mbps);
            Value::Object(r)
        };
        if self.reservation_iops.is_some() || self.reservation_mbps.is_some() {
            m.insert(
                "reservation".into(),
                rate(self.reservation_iops, self.reservation_mbps),
            );
        }
        if self.limit_iops.is_some() || self.limit_mbps.is_some() {
            m.insert("limit".into(), rate(self.limit_iops, self.limit_mbps));
        }
        put(m, "priority", self.priority.as_ref());
        put(m, "failover", self.failover.as_ref());
        if let Some(t) = self.fail_after_ms {
            m.insert(
                "failover".into(),
                json!({ "fail-after": { "timeout_ms": t } }),
            );
        }
    }
}

/// Arguments of vm_create.
#[derive(Debug, Args)]
pub struct VmCreateArgs {
    /// VM name
    name: String,
    #[command(flatten)]
    qos: QosFlags,
    /// Path selector (vm-affinity, least-queue-depth, least-bytes, service-time, vm-weighted)
    #[arg(long)]
    selector: Option<String>,
    /// Paths the VM may use (repeat or comma-separate)
    #[arg(long, value_delimiter = ',')]
    affinity: Vec<String>,
}

/// Arguments of vm_set_qos.
#[derive(Debug, Args)]
pub struct VmQosArgs {
    /// VM name
    name: String,
    #[command(flatten)]
    qos: QosFlags,
}

/// Arguments of vm_set_path_policy.
#[derive(Debug, Args)]
pub struct PathPolicyArgs {
    /// VM name
    name: String,
    /// Selector name
    selector: String,
    /// For round-robin: switch path every N I/Os
    #[arg(long)]
    rr_ios: Option<u32>,
    /// For round-robin: switch path every N bytes
    #[arg(long)]
    rr_bytes: Option<u64>,
    /// Paths the VM may use (repeat or comma-separate)
    #[arg(long, value_delimiter = ',')]
    affinity: Vec<String>,
}

/// Arguments of sched_path_add.
#[derive(Debug, Args)]
pub struct PathAddArgs {
    /// Path name
    name: String,
    /// Bdev behind the path
    bdev: String,
    /// Estimated capacity in IOPS
    #[arg(long)]
    capacity_iops: u64,
    /// Estimated capacity in MB/s
    #[arg(long)]
    capacity_mbps: u64,
    /// Relative weight 1-100 (service-time selector)
    #[arg(long)]
    weight: Option<u32>,
    /// Queue depth the scheduler keeps on the path
    #[arg(long)]
    max_outstanding: Option<u32>,
}

/// Arguments of volume_create.
#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Volume name (also its bdev name)
    name: String,
    /// VM it belongs to
    vm: String,
    /// Paths reaching its storage (comma-separated)
    #[arg(value_delimiter = ',')]
    paths: Vec<String>,
    /// First block of the slice
    #[arg(long, default_value_t = 0)]
    offset_blocks: u64,
    /// Size in blocks (default: to the end of the storage)
    #[arg(long)]
    num_blocks: Option<u64>,
}

fn selector_json(name: &str, rr_ios: Option<u32>, rr_bytes: Option<u64>) -> Value {
    if name == "round-robin" {
        json!({ "round-robin": { "ios": rr_ios.unwrap_or(0), "bytes": rr_bytes.unwrap_or(0) } })
    } else {
        json!(name)
    }
}

impl VmCommand {
    /// Method and params.
    pub fn request(&self) -> (String, Option<Value>) {
        let name_only = |m: &str, n: &str| (m.to_string(), Some(json!({ "name": n })));
        match self {
            VmCommand::VmCreate(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                a.qos.fill(&mut m);
                if a.selector.is_some() || !a.affinity.is_empty() {
                    let mut p = Map::new();
                    if let Some(s) = &a.selector {
                        p.insert("selector".into(), selector_json(s, None, None));
                    }
                    if !a.affinity.is_empty() {
                        p.insert("affinity".into(), json!(a.affinity));
                    }
                    m.insert("path_policy".into(), Value::Object(p));
                }
                ("vm_create".into(), Some(Value::Object(m)))
            }
            VmCommand::VmDelete { name } => name_only("vm_delete", name),
            VmCommand::VmSetQos(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                a.qos.fill(&mut m);
                ("vm_set_qos".into(), Some(Value::Object(m)))
            }
            VmCommand::VmSetPathPolicy(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                m.insert(
                    "selector".into(),
                    selector_json(&a.selector, a.rr_ios, a.rr_bytes),
                );
                if !a.affinity.is_empty() {
                    m.insert("affinity".into(), json!(a.affinity));
                }
                ("vm_set_path_policy".into(), Some(Value::Object(m)))
            }
            VmCommand::VmGetVms { name } => (
                "vm_get_vms".into(),
                name.as_ref().map(|n| json!({ "name": n })),
            ),
            VmCommand::VmSuspend { name } => name_only("vm_suspend", name),
            VmCommand::VmResume { name } => name_only("vm_resume", name),
            VmCommand::VmBindHost { hostnqn, vm } => (
                "vm_bind_host".into(),
                Some(json!({ "hostnqn": hostnqn, "vm": vm })),
            ),
            VmCommand::VmUnbindHost { hostnqn } => {
                ("vm_unbind_host".into(), Some(json!({ "hostnqn": hostnqn })))
            }
            VmCommand::VmGetHosts => ("vm_get_hosts".into(), None),
            VmCommand::SchedPathAdd(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                m.insert("bdev".into(), json!(a.bdev));
                m.insert("capacity_iops".into(), json!(a.capacity_iops));
                m.insert("capacity_mbps".into(), json!(a.capacity_mbps));
                put(&mut m, "weight", a.weight);
                put(&mut m, "max_outstanding", a.max_outstanding);
                ("sched_path_add".into(), Some(Value::Object(m)))
            }
            VmCommand::SchedPathRemove { name } => name_only("sched_path_remove", name),
            VmCommand::SchedPathSetState { name, state } => (
                "sched_path_set_state".into(),
                Some(json!({ "name": name, "state": state })),
            ),
            VmCommand::SchedGetPaths => ("sched_get_paths".into(), None),
            VmCommand::VolumeCreate(a) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(a.name));
                m.insert("vm".into(), json!(a.vm));
                m.insert("paths".into(), json!(a.paths));
                m.insert("offset_blocks".into(), json!(a.offset_blocks));
                put(&mut m, "num_blocks", a.num_blocks);
                ("volume_create".into(), Some(Value::Object(m)))
            }
            VmCommand::VolumeDelete { name } => name_only("volume_delete", name),
            VmCommand::VolumeGetVolumes => ("volume_get_volumes".into(), None),
            VmCommand::VhostCreateBlkController(a) => {
                let mut m = Map::new();
                m.insert("ctrlr".into(), json!(a.ctrlr));
                m.insert("dev_name".into(), json!(a.dev_name));
                m.insert("num_queues".into(), json!(a.num_queues));
                put(&mut m, "socket", a.socket.as_ref());
                put(&mut m, "vm", a.vm.as_ref());
                if a.readonly {
                    m.insert("readonly".into(), json!(true));
                }
                ("vhost_create_blk_controller".into(), Some(Value::Object(m)))
            }
            VmCommand::VhostDeleteController { ctrlr } => (
                "vhost_delete_controller".into(),
                Some(json!({ "ctrlr": ctrlr })),
            ),
            VmCommand::VhostGetControllers { name } => (
                "vhost_get_controllers".into(),
                name.as_ref().map(|n| json!({ "name": n })),
            ),
        }
    }

    /// Human-readable result.
    pub fn render(&self, result: &Value) -> Result<String, FormatError> {
        match self {
            VmCommand::VmGetVms { .. } => vms(result),
            VmCommand::SchedGetPaths => Ok(paths(result)),
            VmCommand::VolumeGetVolumes => Ok(volumes(result)),
            VmCommand::VmGetHosts => hosts(result),
            VmCommand::VhostGetControllers { .. } => Ok(controllers(result)),
            _ => Ok(match result {
                Value::String(s) => format!("{s}\n"),
                Value::Bool(true) => "done\n".to_string(),
                other => format!("{other}\n"),
            }),
        }
    }
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The vm_get_hosts table.
pub fn hosts(result: &Value) -> Result<String, FormatError> {
    let list = result
        .as_array()
        .ok_or_else(|| FormatError::new("vm_get_hosts", "not an array"))?;
    let mut t = Table::new(&[("HOSTNQN", Align::Left), ("VM", Align::Left)]);
    for h in list {
        t.row(vec![num(&h["hostnqn"]), num(&h["vm"])]);
    }
    Ok(t.render())
}

/// The vm_get_vms table.
pub fn vms(result: &Value) -> Result<String, FormatError> {
    let list = result
        .as_array()
        .ok_or_else(|| FormatError::new("vm_get_vms", "not an array"))?;
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("SHARES", Align::Right),
        ("RES_IOPS", Align::Right),
        ("LIM_IOPS", Align::Right),
        ("PRIO", Align::Left),
        ("SELECTOR", Align::Left),
        ("STATE", Align::Left),
        ("HELD", Align::Right),
        ("INFLIGHT", Align::Right),
        ("IOS", Align::Right),
        ("BYTES", Align::Right),
        ("MIGRATE", Align::Left),
    ]);
    for v in list {
        let spec = &v["spec"];
        let suspended = v["suspended"].as_array().is_some_and(|a| !a.is_empty());
        let sel = &spec["path_policy"]["selector"];
        t.row(vec![
            num(&v["name"]),
            num(&spec["shares"]),
            num(&spec["reservation"]["iops"]),
            num(&spec["limit"]["iops"]),
            num(&spec["priority"]),
            match sel {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
                _ => "vm-affinity".into(),
            },
            if suspended { "suspended" } else { "running" }.into(),
            num(&v["held"]),
            num(&v["inflight"]),
            num(&v["dispatched_ios"]),
            human_bytes(v["dispatched_bytes"].as_u64().unwrap_or(0)),
            if v["migrate_recommended"] == Value::Bool(true) {
                "RECOMMENDED"
            } else {
                "-"
            }
            .into(),
        ]);
    }
    Ok(t.render())
}

fn paths(result: &Value) -> String {
    let mut t = Table::new(&[("PATH", Align::Left), ("DETAILS", Align::Left)]);
    for p in result.as_array().into_iter().flatten() {
        let name = p.get("name").map(num).unwrap_or_default();
        let mut rest = p.clone();
        if let Some(o) = rest.as_object_mut() {
            o.remove("name");
        }
        t.row(vec![name, rest.to_string()]);
    }
    t.render()
}

fn volumes(result: &Value) -> String {
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("VM", Align::Left),
        ("PATHS", Align::Left),
        ("OFFSET", Align::Right),
        ("BLOCKS", Align::Right),
    ]);
    for v in result.as_array().into_iter().flatten() {
        t.row(vec![
            num(&v["name"]),
            num(&v["vm"]),
            v["paths"]
                .as_array()
                .map(|a| a.iter().map(num).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            num(&v["offset_blocks"]),
            num(&v["num_blocks"]),
        ]);
    }
    t.render()
}

fn controllers(result: &Value) -> String {
    let mut t = Table::new(&[
        ("CTRLR", Align::Left),
        ("SOCKET", Align::Left),
        ("BDEV", Align::Left),
        ("VM", Align::Left),
        ("QUEUES", Align::Right),
        ("REACTORS", Align::Left),
        ("GUEST", Align::Left),
        ("READS", Align::Right),
        ("WRITES", Align::Right),
        ("ERRORS", Align::Right),
    ]);
    for c in result.as_array().into_iter().flatten() {
        let reactors: Vec<String> = c["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|q| num(&q["reactor"]))
            .collect();
        t.row(vec![
            num(&c["ctrlr"]),
            num(&c["socket"]),
            num(&c["bdev"]),
            num(&c["vm"]),
            num(&c["num_queues"]),
            reactors.join(","),
            if c["suspended"] == Value::Bool(true) {
                "suspended"
            } else if c["connected"] == Value::Bool(true) {
                "connected"
            } else {
                "waiting"
            }
            .into(),
            num(&c["reads"]),
            num(&c["writes"]),
            num(&c["io_errors"]),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_create_builds_nested_params() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: VmCommand,
        }
        let t = T::parse_from([
            "x",
            "vm_create",
            "vm-a",
            "--shares",
            "2000",
            "--reservation-iops",
            "5000",
            "--limit-mbps",
            "400",
            "--fail-after-ms",
            "3000",
            "--selector",
            "least-queue-depth",
            "--affinity",
            "p0,p1",
        ]);
        let (m, p) = t.c.request();
        assert_eq!(m, "vm_create");
        assert_eq!(
            p.unwrap(),
            json!({"name": "vm-a", "shares": 2000, "reservation": {"iops": 5000},
                   "limit": {"mbps": 400}, "failover": {"fail-after": {"timeout_ms": 3000}},
                   "path_policy": {"selector": "least-queue-depth", "affinity": ["p0", "p1"]}})
        );
    }

    #[test]
    fn vm_table() {
        let r = json!([{"name": "vm1", "spec": {"name": "vm1", "shares": 2000, "priority": "normal",
            "path_policy": {"selector": "vm-affinity"}, "reservation": {"iops": 100}},
            "suspended": [], "held": 0, "inflight": 2, "dispatched_ios": 10, "dispatched_bytes": 40960,
            "migrate_recommended": true}]);
        let out = vms(&r).unwrap();
        assert!(out.contains("vm1"), "{out}");
        assert!(out.contains("2000"), "{out}");
        assert!(out.contains("RECOMMENDED"), "{out}");
        assert!(out.contains("40 KiB"), "{out}");
    }

    #[test]
    fn host_bindings_map_to_their_rpcs_and_table() {
        let nqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000bb";
        let cmd = VmCommand::VmBindHost {
            hostnqn: nqn.into(),
            vm: "vm-a".into(),
        };
        assert_eq!(
            cmd.request(),
            (
                "vm_bind_host".into(),
                Some(json!({"hostnqn": nqn, "vm": "vm-a"}))
            )
        );
        let cmd = VmCommand::VmUnbindHost {
            hostnqn: nqn.into(),
        };
        assert_eq!(
            cmd.request(),
            ("vm_unbind_host".into(), Some(json!({ "hostnqn": nqn })))
        );
        let out = VmCommand::VmGetHosts
            .render(&json!([{"hostnqn": nqn, "vm": "vm-a"}]))
            .unwrap();
        assert!(out.starts_with("HOSTNQN"), "{out}");
        assert!(out.contains(nqn) && out.contains("vm-a"), "{out}");
        assert!(VmCommand::VmGetHosts.render(&json!({})).is_err());
    }
}
