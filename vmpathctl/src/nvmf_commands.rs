//! Subcommands of the NVMe-over-TCP target: subsystems, namespaces, listeners, ANA states,
//! allowed hosts (SPDK's `nvmf_*` names and `rpc.py` arguments).

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::format::{put, Align, FormatError, Table};

/// NVMe-oF target subcommands (flattened into the main command list).
#[derive(Debug, Subcommand)]
pub enum NvmfCommand {
    /// Create an NVMe-oF subsystem (RPC nvmf_create_subsystem)
    ///
    /// Example: `vmpathctl nvmf_create_subsystem nqn.2016-06.io.vmpath:cnode2 -a --serial-number SN2`.
    #[command(name = "nvmf_create_subsystem", alias = "nvmf-create-subsystem")]
    CreateSubsystem {
        /// Subsystem NQN
        nqn: String,
        /// Serial number
        #[arg(long = "serial-number")]
        serial_number: Option<String>,
        /// Model number
        #[arg(short = 'd', long = "model-number")]
        model_number: Option<String>,
        /// Allow any host to connect
        #[arg(short = 'a', long = "allow-any-host")]
        allow_any_host: bool,
    },

    /// Delete a subsystem; its hosts are disconnected (RPC nvmf_delete_subsystem)
    #[command(name = "nvmf_delete_subsystem", alias = "nvmf-delete-subsystem")]
    DeleteSubsystem {
        /// Subsystem NQN
        nqn: String,
    },

    /// Export a bdev as a namespace (RPC nvmf_subsystem_add_ns)
    ///
    /// Example: `vmpathctl nvmf_subsystem_add_ns nqn.2016-06.io.vmpath:cnode2 Malloc1 -n 1`.
    #[command(name = "nvmf_subsystem_add_ns", alias = "nvmf-subsystem-add-ns")]
    AddNs {
        /// Subsystem NQN
        nqn: String,
        /// Bdev to export
        bdev_name: String,
        /// Namespace ID (default: the lowest free one)
        #[arg(short = 'n', long = "nsid")]
        nsid: Option<u32>,
        /// ANA group (default: the NSID)
        #[arg(short = 'g', long = "anagrpid")]
        anagrpid: Option<u32>,
    },

    /// Remove a namespace (RPC nvmf_subsystem_remove_ns)
    #[command(name = "nvmf_subsystem_remove_ns", alias = "nvmf-subsystem-remove-ns")]
    RemoveNs {
        /// Subsystem NQN
        nqn: String,
        /// Namespace ID
        nsid: u32,
    },

    /// Listen on a portal (RPC nvmf_subsystem_add_listener)
    ///
    /// Example: `vmpathctl nvmf_subsystem_add_listener nqn.2016-06.io.vmpath:cnode2 -a 10.0.0.1 --trsvcid 4420`.
    #[command(
        name = "nvmf_subsystem_add_listener",
        alias = "nvmf-subsystem-add-listener"
    )]
    AddListener(ListenerArgs),

    /// Stop listening on a portal; hosts connected through it are disconnected (RPC nvmf_subsystem_remove_listener)
    #[command(
        name = "nvmf_subsystem_remove_listener",
        alias = "nvmf-subsystem-remove-listener"
    )]
    RemoveListener(ListenerArgs),

    /// Set the ANA state of a portal, for all ANA groups or one (RPC nvmf_subsystem_listener_set_ana_state)
    #[command(
        name = "nvmf_subsystem_listener_set_ana_state",
        alias = "nvmf-subsystem-listener-set-ana-state"
    )]
    SetAnaState(ListenerArgs),

    /// Allow a host NQN (RPC nvmf_subsystem_add_host)
    #[command(name = "nvmf_subsystem_add_host", alias = "nvmf-subsystem-add-host")]
    AddHost {
        /// Subsystem NQN
        nqn: String,
        /// Host NQN
        host: String,
    },

    /// Remove a host NQN from the allow list (RPC nvmf_subsystem_remove_host)
    #[command(
        name = "nvmf_subsystem_remove_host",
        alias = "nvmf-subsystem-remove-host"
    )]
    RemoveHost {
        /// Subsystem NQN
        nqn: String,
        /// Host NQN
        host: String,
    },

    /// List subsystems with their namespaces, portals and hosts (RPC nvmf_get_subsystems)
    #[command(
        name = "nvmf_get_subsystems",
        alias = "nvmf-get-subsystems",
        visible_alias = "subsystems"
    )]
    GetSubsystems {
        /// Show only this subsystem
        nqn: Option<String>,
    },
}

/// A portal and, for ANA changes, the state.
#[derive(Debug, Args)]
pub struct ListenerArgs {
    /// Subsystem NQN
    pub nqn: String,
    /// Transport type
    #[arg(long = "trtype", default_value = "tcp")]
    pub trtype: String,
    /// Transport address (IP)
    #[arg(short = 'a', long = "traddr")]
    pub traddr: String,
    /// Transport service id (TCP port)
    #[arg(long = "trsvcid", default_value = "4420")]
    pub trsvcid: String,
    /// Address family (ipv4 or ipv6)
    #[arg(short = 'f', long = "adrfam")]
    pub adrfam: Option<String>,
    /// ANA state: optimized, non_optimized or inaccessible (add: initial state; required to set)
    #[arg(short = 'n', long = "ana-state")]
    pub ana_state: Option<String>,
    /// ANA group (set only; default: every group)
    #[arg(short = 'g', long = "anagrpid")]
    pub anagrpid: Option<u32>,
}

impl ListenerArgs {
    fn params(&self, with_ana: bool) -> Value {
        let mut addr = Map::new();
        addr.insert("trtype".into(), json!(self.trtype));
        put(&mut addr, "adrfam", self.adrfam.as_ref());
        addr.insert("traddr".into(), json!(self.traddr));
        addr.insert("trsvcid".into(), json!(self.trsvcid));
        let mut m = Map::new();
        m.insert("nqn".into(), json!(self.nqn));
        m.insert("listen_address".into(), Value::Object(addr));
        if with_ana {
            put(&mut m, "ana_state", self.ana_state.as_ref());
            put(&mut m, "anagrpid", self.anagrpid);
        }
        Value::Object(m)
    }
}

impl NvmfCommand {
    /// The JSON-RPC method and params.
    pub fn request(&self) -> (String, Option<Value>) {
        let (m, p) = match self {
            NvmfCommand::CreateSubsystem {
                nqn,
                serial_number,
                model_number,
                allow_any_host,
            } => {
                let mut m = Map::new();
                m.insert("nqn".into(), json!(nqn));
                put(&mut m, "serial_number", serial_number.as_ref());
                put(&mut m, "model_number", model_number.as_ref());
                if *allow_any_host {
                    m.insert("allow_any_host".into(), json!(true));
                }
                ("nvmf_create_subsystem", Some(Value::Object(m)))
            }
            NvmfCommand::DeleteSubsystem { nqn } => {
                ("nvmf_delete_subsystem", Some(json!({ "nqn": nqn })))
            }
            NvmfCommand::AddNs {
                nqn,
                bdev_name,
                nsid,
                anagrpid,
            } => {
                let mut ns = Map::new();
                ns.insert("bdev_name".into(), json!(bdev_name));
                put(&mut ns, "nsid", nsid.as_ref());
                put(&mut ns, "anagrpid", anagrpid.as_ref());
                (
                    "nvmf_subsystem_add_ns",
                    Some(json!({ "nqn": nqn, "namespace": ns })),
                )
            }
            NvmfCommand::RemoveNs { nqn, nsid } => (
                "nvmf_subsystem_remove_ns",
                Some(json!({ "nqn": nqn, "nsid": nsid })),
            ),
            NvmfCommand::AddListener(a) => {
                let mut p = a.params(false);
                if let Some(s) = &a.ana_state {
                    p["ana_state"] = json!(s);
                }
                ("nvmf_subsystem_add_listener", Some(p))
            }
            NvmfCommand::RemoveListener(a) => {
                ("nvmf_subsystem_remove_listener", Some(a.params(false)))
            }
            NvmfCommand::SetAnaState(a) => (
                "nvmf_subsystem_listener_set_ana_state",
                Some(a.params(true)),
            ),
            NvmfCommand::AddHost { nqn, host } => (
                "nvmf_subsystem_add_host",
                Some(json!({ "nqn": nqn, "host": host })),
            ),
            NvmfCommand::RemoveHost { nqn, host } => (
                "nvmf_subsystem_remove_host",
                Some(json!({ "nqn": nqn, "host": host })),
            ),
            NvmfCommand::GetSubsystems { nqn } => (
                "nvmf_get_subsystems",
                nqn.as_ref().map(|n| json!({ "nqn": n })),
            ),
        };
        (m.to_string(), p)
    }

    /// The result for a human.
    pub fn render(&self, result: &Value) -> Result<String, FormatError> {
        match self {
            NvmfCommand::GetSubsystems { .. } => subsystems(result),
            NvmfCommand::AddNs { .. } => Ok(format!("namespace {result}\n")),
            _ => Ok(match result {
                Value::Bool(true) => "done\n".to_string(),
                other => format!("{other}\n"),
            }),
        }
    }
}

#[derive(Deserialize)]
struct Sub {
    nqn: String,
    subtype: String,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    hosts: Vec<HostView>,
    #[serde(default)]
    namespaces: Vec<NsView>,
    #[serde(default)]
    ana_states: Vec<PortalView>,
    #[serde(default)]
    controllers: Vec<Value>,
}

#[derive(Deserialize)]
struct HostView {
    nqn: String,
}

#[derive(Deserialize)]
struct NsView {
    nsid: u32,
    bdev_name: String,
    anagrpid: u32,
}

#[derive(Deserialize)]
struct PortalView {
    traddr: String,
    trsvcid: String,
    ana_state: String,
}

/// One table row per subsystem: namespaces, portals with ANA state, hosts, controllers.
pub fn subsystems(result: &Value) -> Result<String, FormatError> {
    let subs: Vec<Sub> = crate::format::view("nvmf_get_subsystems", result)?;
    let mut t = Table::new(&[
        ("NQN", Align::Left),
        ("TYPE", Align::Left),
        ("NAMESPACES", Align::Left),
        ("PORTALS", Align::Left),
        ("HOSTS", Align::Left),
        ("CTRLRS", Align::Right),
    ]);
    for s in subs {
        let ns: Vec<String> = s
            .namespaces
            .iter()
            .map(|n| format!("{}:{}(g{})", n.nsid, n.bdev_name, n.anagrpid))
            .collect();
        let portals: Vec<String> = s
            .ana_states
            .iter()
            .map(|p| format!("{}:{}({})", p.traddr, p.trsvcid, p.ana_state))
            .collect();
        let hosts = if s.allow_any_host {
            "any".to_string()
        } else {
            s.hosts
                .iter()
                .map(|h| h.nqn.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        t.row(vec![
            s.nqn,
            s.subtype,
            or_dash(ns.join(",")),
            or_dash(portals.join(",")),
            or_dash(hosts),
            s.controllers.len().to_string(),
        ]);
    }
    Ok(t.render())
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_spdk_params() {
        let c = NvmfCommand::AddNs {
            nqn: "nqn.2016-06.io.vmpath:a".into(),
            bdev_name: "Malloc0".into(),
            nsid: Some(3),
            anagrpid: None,
        };
        assert_eq!(
            c.request(),
            (
                "nvmf_subsystem_add_ns".into(),
                Some(
                    json!({"nqn": "nqn.2016-06.io.vmpath:a", "namespace": {"bdev_name": "Malloc0", "nsid": 3}})
                )
            )
        );
        let c = NvmfCommand::SetAnaState(ListenerArgs {
            nqn: "nqn.2016-06.io.vmpath:a".into(),
            trtype: "tcp".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: "4420".into(),
            adrfam: None,
            ana_state: Some("inaccessible".into()),
            anagrpid: Some(2),
        });
        assert_eq!(
            c.request().1.unwrap(),
            json!({"nqn": "nqn.2016-06.io.vmpath:a", "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420"},
                   "ana_state": "inaccessible", "anagrpid": 2})
        );
    }

    #[test]
    fn subsystem_table() {
        let r = json!([
            {"nqn": "nqn.2014-08.org.nvmexpress.discovery", "subtype": "Discovery", "listen_addresses": [], "allow_any_host": true, "hosts": []},
            {"nqn": "nqn.2016-06.io.vmpath:cnode1", "subtype": "NVMe", "allow_any_host": false,
             "hosts": [{"nqn": "nqn.2014-08.org.nvmexpress:uuid:1"}],
             "namespaces": [{"nsid": 1, "bdev_name": "Malloc0", "anagrpid": 1}],
             "ana_states": [{"traddr": "127.0.0.1", "trsvcid": "4420", "ana_state": "optimized"}],
             "controllers": [{"cntlid": 1}]}
        ]);
        let text = subsystems(&r).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("1:Malloc0(g1)"), "{text}");
        assert!(text.contains("127.0.0.1:4420(optimized)"), "{text}");
        assert!(subsystems(&json!({"x": 1})).is_err());
    }
}
