//! The daemon's whole configuration: [`Config`] and its sections.
//!
//! Adding a section (NVMe/TCP subsystems, VMs, vhost disks, ...) means: a new field on
//! [`Config`] with `#[serde(default)]`, the same field on the loader's raw mirror
//! (`load::RawConfig`), and its checks in `Config::check`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bdev::{BdevConfig, MallocBdevParams, NullBdevParams};
use crate::cpumask::{parse_cpumask, MAX_CORES};
use crate::error::{ConfigError, KeyPath, ParamError};

/// Default path of the JSON-RPC Unix socket.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/vmpath.sock";
/// Default idle spell, in microseconds, after which a reactor goes to sleep.
pub const DEFAULT_IDLE_SLEEP_US: u64 = 200;
/// Largest accepted `reactors.idle_sleep_us` (10 s).
pub const MAX_IDLE_SLEEP_US: u64 = 10_000_000;
/// Longest Unix socket path (`sun_path` holds 108 bytes including the final NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// The whole daemon configuration (one TOML file).
///
/// ```toml
/// [reactors]
/// cpumask = "0x3"
/// [rpc]
/// socket = "/var/tmp/vmpath.sock"
/// [[bdev]]
/// type = "malloc"
/// name = "Malloc0"
/// num_blocks = 16384
/// block_size = 4096
/// ```
///
/// `Default` gives an empty config (no bdevs); [`Config::default_builtin`] gives the one
/// the daemon runs when started without a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "crate::load::RawConfig")]
pub struct Config {
    /// Reactor (poller thread) placement and idle behaviour: `[reactors]`.
    pub reactors: ReactorsConfig,
    /// Management socket: `[rpc]`.
    pub rpc: RpcConfig,
    /// Block devices, in creation order: `[[bdev]]` tables.
    #[serde(rename = "bdev", skip_serializing_if = "Vec::is_empty")]
    pub bdevs: Vec<BdevConfig>,
    /// Scheduler-wide settings: `[scheduler]` (`shards` is set by the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<crate::vm::SchedulerConfig>,
    /// Block devices the scheduler may route VM I/O to: `[[path]]` tables.
    #[serde(rename = "path", default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<crate::vm::PathConfig>,
    /// Virtual machines: `[[vm]]` tables (shares, reservation, limit, priority, policies).
    #[serde(rename = "vm", default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<crate::vm::VmSpec>,
    /// The VMs' virtual disks: `[[volume]]` tables.
    #[serde(rename = "volume", default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::vm::VolumeConfig>,
    /// Remote hosts scheduled as VMs: `[[host]]` tables.
    #[serde(rename = "host", default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<crate::vm::HostBinding>,
    /// vhost-user settings: `[vhost]`.
    #[serde(default, skip_serializing_if = "crate::vhost::VhostConfig::is_default")]
    pub vhost: crate::vhost::VhostConfig,
    /// vhost-user-blk virtual disks: `[[vhost_blk]]` tables.
    #[serde(rename = "vhost_blk", default, skip_serializing_if = "Vec::is_empty")]
    pub vhost_blks: Vec<crate::vhost::VhostBlkConfig>,
    /// Commands run on management events: `[hooks]`.
    #[serde(default, skip_serializing_if = "crate::vm::HooksConfig::is_empty")]
    pub hooks: crate::vm::HooksConfig,
    /// NVMe/TCP controllers to attach: `[[nvme_controller]]` tables (same name = more paths).
    #[serde(
        rename = "nvme_controller",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nvme_controllers: Vec<crate::nvme::NvmeControllerConfig>,
    /// NVMe/TCP subsystems this node exports: `[[nvmf_subsystem]]` tables.
    #[serde(
        rename = "nvmf_subsystem",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nvmf_subsystems: Vec<crate::nvmf::NvmfSubsystemConfig>,
}

/// `[reactors]`: which cores run a reactor and when an idle reactor sleeps.
///
/// At most one of `cpumask` and `cores` may be set; with neither, the daemon runs one
/// reactor on each core of the CPU set it was started with (`taskset -c 0 vmpathd` runs
/// one reactor on core 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactorsConfig {
    /// SPDK-style mask, `"0x3"` or `"[0,2-3]"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpumask: Option<String>,
    /// Explicit list of cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<Vec<usize>>,
    /// Idle spell in microseconds after which a reactor sleeps until woken (default 200).
    #[serde(default = "default_idle_sleep_us")]
    pub idle_sleep_us: u64,
}

impl Default for ReactorsConfig {
    fn default() -> Self {
        ReactorsConfig {
            cpumask: None,
            cores: None,
            idle_sleep_us: DEFAULT_IDLE_SLEEP_US,
        }
    }
}

impl ReactorsConfig {
    /// The cores selected by `cpumask` or `cores`, sorted and distinct, or `None` when
    /// neither is set (use the process CPU set).
    pub fn core_list(&self) -> Result<Option<Vec<usize>>, ParamError> {
        match (&self.cpumask, &self.cores) {
            (Some(_), Some(_)) => Err(ParamError::new(
                "cores",
                "set either `cpumask` or `cores`, not both",
            )),
            (Some(mask), None) => parse_cpumask(mask)
                .map(Some)
                .map_err(|e| ParamError::new("cpumask", e.to_string())),
            (None, Some(cores)) => {
                if cores.is_empty() {
                    return Err(ParamError::new("cores", "must name at least one core"));
                }
                let mut sorted = cores.clone();
                sorted.sort_unstable();
                if let Some(&core) = sorted.iter().find(|&&c| c >= MAX_CORES) {
                    return Err(ParamError::new(
                        "cores",
                        format!("core {core} is out of range (max {})", MAX_CORES - 1),
                    ));
                }
                if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                    return Err(ParamError::new(
                        "cores",
                        format!("core {} is listed twice", w[0]),
                    ));
                }
                Ok(Some(sorted))
            }
            (None, None) => Ok(None),
        }
    }

    fn validate(&self) -> Result<(), ParamError> {
        self.core_list()?;
        if self.idle_sleep_us > MAX_IDLE_SLEEP_US {
            return Err(ParamError::new(
                "idle_sleep_us",
                format!(
                    "must be at most {MAX_IDLE_SLEEP_US} (10 s), got {}",
                    self.idle_sleep_us
                ),
            ));
        }
        Ok(())
    }
}

/// `[rpc]`: where the JSON-RPC server listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// Path of the Unix socket (default `/var/tmp/vmpath.sock`).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            socket: default_socket(),
        }
    }
}

impl RpcConfig {
    fn validate(&self) -> Result<(), ParamError> {
        let len = self.socket.as_os_str().len();
        if len == 0 {
            return Err(ParamError::new("socket", "must not be empty"));
        }
        if len > MAX_SOCKET_PATH_LEN {
            return Err(ParamError::new(
                "socket",
                format!("Unix socket paths are limited to {MAX_SOCKET_PATH_LEN} bytes, got {len}"),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The built-in config used when the daemon is started without a file: reactors on
    /// the process CPU set, the default RPC socket, a 64 MiB malloc bdev `Malloc0` with
    /// 4096-byte blocks and a 1 GiB null bdev `Null0` with 4096-byte blocks; `Malloc0` is the
    /// scheduler path `local0`, split into two 32 MiB volumes `vm1-disk` and `vm2-disk` of
    /// the VMs `vm1` (2000 shares) and `vm2` (1000 shares).
    pub fn default_builtin() -> Config {
        Config {
            reactors: ReactorsConfig::default(),
            rpc: RpcConfig::default(),
            bdevs: vec![
                BdevConfig::Malloc(MallocBdevParams {
                    name: "Malloc0".into(),
                    uuid: None,
                    num_blocks: (64 << 20) / 4096,
                    block_size: 4096,
                    latency_us: 0,
                    max_iops: 0,
                    max_bw_mbps: 0,
                }),
                BdevConfig::Null(NullBdevParams {
                    name: "Null0".into(),
                    uuid: None,
                    num_blocks: (1 << 30) / 4096,
                    block_size: 4096,
                    latency_us: 0,
                    max_iops: 0,
                    max_bw_mbps: 0,
                }),
            ],
            scheduler: None,
            paths: vec![crate::vm::PathConfig {
                name: "local0".into(),
                bdev: "Malloc0".into(),
                capacity_iops: 200_000,
                capacity_mbps: 2_000,
                weight: None,
                max_outstanding: None,
                fabric_path: None,
            }],
            vms: vec![
                crate::vm::VmSpec {
                    shares: 2000,
                    ..crate::vm::VmSpec::new("vm1")
                },
                crate::vm::VmSpec {
                    shares: 1000,
                    ..crate::vm::VmSpec::new("vm2")
                },
            ],
            volumes: vec![
                crate::vm::VolumeConfig {
                    name: "vm1-disk".into(),
                    vm: "vm1".into(),
                    paths: vec!["local0".into()],
                    offset_blocks: 0,
                    num_blocks: Some(8192),
                },
                crate::vm::VolumeConfig {
                    name: "vm2-disk".into(),
                    vm: "vm2".into(),
                    paths: vec!["local0".into()],
                    offset_blocks: 8192,
                    num_blocks: Some(8192),
                },
            ],
            hosts: Vec::new(),
            vhost: Default::default(),
            vhost_blks: vec![
                crate::vhost::VhostBlkConfig {
                    name: "vmpath-vm1.sock".into(),
                    bdev: "vm1-disk".into(),
                    socket: None,
                    vm: None,
                    num_queues: 2,
                    readonly: false,
                },
                crate::vhost::VhostBlkConfig {
                    name: "vmpath-vm2.sock".into(),
                    bdev: "vm2-disk".into(),
                    socket: None,
                    vm: None,
                    num_queues: 2,
                    readonly: false,
                },
            ],
            hooks: Default::default(),
            nvme_controllers: Vec::new(),
            nvmf_subsystems: vec![crate::nvmf::NvmfSubsystemConfig {
                allow_any_host: true,
                namespaces: vec![crate::nvmf::NvmfNamespaceConfig {
                    bdev_name: "Malloc0".into(),
                    nsid: Some(1),
                    anagrpid: None,
                }],
                listeners: vec![crate::nvmf::NvmfListenerConfig::tcp("127.0.0.1", "4420")],
                ..crate::nvmf::NvmfSubsystemConfig::new("nqn.2016-06.io.vmpath:cnode1")
            }],
        }
    }

    /// Reads and checks a config file. Errors name the file, the key path, the line and
    /// column, and what is wrong.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_str(&text, &path.display().to_string())
    }

    /// Parses and checks a config text; `origin` names it in errors (usually the file name).
    pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        crate::load::parse(text, origin)
    }

    /// Writes the config as TOML; [`Config::from_str`] of the result gives back `self`.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(self)?;
        Ok(format!(
            "# vmpathd configuration (written by vmpath {})\n\n{body}",
            env!("CARGO_PKG_VERSION")
        ))
    }

    /// Checks a config built in code (e.g. before `save_config`); `origin` names it in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check().map_err(|(key, message)| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_string(),
            location: None,
            message,
        })
    }

    /// The bdev named `name`, if any.
    pub fn bdev(&self, name: &str) -> Option<&BdevConfig> {
        self.bdevs.iter().find(|b| b.name() == name)
    }

    /// Semantic checks; the error is the key path of the bad field and the message.
    pub(crate) fn check(&self) -> Result<(), (KeyPath, String)> {
        let root = KeyPath::root();
        let in_section = |section: &str, e: ParamError| (root.key(section).key(e.field), e.message);
        self.reactors
            .validate()
            .map_err(|e| in_section("reactors", e))?;
        self.rpc.validate().map_err(|e| in_section("rpc", e))?;
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, bdev) in self.bdevs.iter().enumerate() {
            let at = root.key("bdev").index(i);
            bdev.validate().map_err(|e| (at.key(e.field), e.message))?;
            if let Some(first) = names.insert(bdev.name(), i) {
                return Err((
                    at.key("name"),
                    format!(
                        "duplicate bdev name {:?} (already used by bdev[{first}])",
                        bdev.name()
                    ),
                ));
            }
        }
        self.check_vms()?;
        self.check_nvme()?;
        self.check_nvmf()
    }

    fn check_nvmf(&self) -> Result<(), (KeyPath, String)> {
        let root = KeyPath::root();
        for (i, s) in self.nvmf_subsystems.iter().enumerate() {
            let at = root.key("nvmf_subsystem").index(i);
            s.validate().map_err(|e| (at.key(e.field), e.message))?;
            if let Some(j) = self.nvmf_subsystems[..i]
                .iter()
                .position(|o| o.nqn == s.nqn)
            {
                return Err((
                    at.key("nqn"),
                    format!("duplicate subsystem NQN (already used by nvmf_subsystem[{j}])"),
                ));
            }
            for (k, ns) in s.namespaces.iter().enumerate() {
                let known = self.bdev(&ns.bdev_name).is_some()
                    || self.volumes.iter().any(|v| v.name == ns.bdev_name);
                if !known {
                    return Err((
                        at.key(format!("namespace[{k}].bdev_name")),
                        format!("no bdev named {:?}", ns.bdev_name),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_nvme(&self) -> Result<(), (KeyPath, String)> {
        let root = KeyPath::root();
        for (i, c) in self.nvme_controllers.iter().enumerate() {
            let at = root.key("nvme_controller").index(i);
            c.validate().map_err(|e| (at.key(e.field), e.message))?;
            if let Some(first) = self.nvme_controllers[..i]
                .iter()
                .position(|o| o.same_path(c))
            {
                return Err((
                    at.key("traddr"),
                    format!("the same path as nvme_controller[{first}]"),
                ));
            }
        }
        Ok(())
    }

    fn check_vms(&self) -> Result<(), (KeyPath, String)> {
        let root = KeyPath::root();
        if let Some(s) = &self.scheduler {
            let mut s = s.clone();
            s.shards = 1;
            s.validate().map_err(|e| {
                let e = crate::vm::param_error(e);
                let field = e.field.trim_start_matches("scheduler.").to_string();
                (root.key("scheduler").key(field), e.message)
            })?;
        }
        let mut paths: HashMap<&str, usize> = HashMap::new();
        for (i, p) in self.paths.iter().enumerate() {
            let at = root.key("path").index(i);
            p.validate().map_err(|e| (at.key(e.field), e.message))?;
            if let Some(first) = paths.insert(p.name.as_str(), i) {
                return Err((
                    at.key("name"),
                    format!(
                        "duplicate path name {:?} (already used by path[{first}])",
                        p.name
                    ),
                ));
            }
        }
        let mut vms: HashMap<&str, usize> = HashMap::new();
        for (i, vm) in self.vms.iter().enumerate() {
            let at = root.key("vm").index(i);
            vm.validate().map_err(|e| {
                let e = crate::vm::param_error(e);
                (at.key(e.field), e.message)
            })?;
            if let Some(first) = vms.insert(vm.name.as_str(), i) {
                return Err((
                    at.key("name"),
                    format!(
                        "duplicate VM name {:?} (already used by vm[{first}])",
                        vm.name
                    ),
                ));
            }
            for a in &vm.path_policy.affinity {
                if !paths.contains_key(a.as_str()) {
                    return Err((
                        at.key("path_policy").key("affinity"),
                        format!("no [[path]] named {a:?}"),
                    ));
                }
            }
        }
        let mut ctrlrs: HashMap<&str, usize> = HashMap::new();
        for (i, c) in self.vhost_blks.iter().enumerate() {
            let at = root.key("vhost_blk").index(i);
            c.validate().map_err(|e| (at.key(e.field), e.message))?;
            if let Some(first) = ctrlrs.insert(c.name.as_str(), i) {
                return Err((
                    at.key("name"),
                    format!(
                        "duplicate controller name {:?} (already used by vhost_blk[{first}])",
                        c.name
                    ),
                ));
            }
            if let Some(vm) = &c.vm {
                if !vms.contains_key(vm.as_str()) {
                    return Err((at.key("vm"), format!("no [[vm]] named {vm:?}")));
                }
            }
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let at = root.key("volume").index(i);
            v.validate().map_err(|e| (at.key(e.field), e.message))?;
            if !vms.contains_key(v.vm.as_str()) {
                return Err((at.key("vm"), format!("no [[vm]] named {:?}", v.vm)));
            }
            if let Some(p) = v.paths.iter().find(|p| !paths.contains_key(p.as_str())) {
                return Err((at.key("paths"), format!("no [[path]] named {p:?}")));
            }
            if self.bdev(&v.name).is_some() {
                return Err((
                    at.key("name"),
                    format!("{:?} is already the name of a bdev", v.name),
                ));
            }
            if let Some(first) = names.insert(v.name.as_str(), i) {
                return Err((
                    at.key("name"),
                    format!(
                        "duplicate volume name {:?} (already used by volume[{first}])",
                        v.name
                    ),
                ));
            }
        }
        let mut hosts: HashMap<&str, usize> = HashMap::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let at = root.key("host").index(i);
            h.validate().map_err(|e| (at.key(e.field), e.message))?;
            if !vms.contains_key(h.vm.as_str()) {
                return Err((at.key("vm"), format!("no [[vm]] named {:?}", h.vm)));
            }
            if let Some(first) = hosts.insert(h.nqn.as_str(), i) {
                return Err((
                    at.key("nqn"),
                    format!("host {:?} is already bound to a VM by host[{first}]", h.nqn),
                ));
            }
        }
        Ok(())
    }
}

fn default_idle_sleep_us() -> u64 {
    DEFAULT_IDLE_SLEEP_US
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_RPC_SOCKET)
}
