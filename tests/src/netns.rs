//! Network namespaces joined by veth pairs, for fault tests over real networks.
//!
//! Every namespace gets a unique name (`vpt-<pid>-<n>-<role>`) and is deleted on drop (also
//! while unwinding from a failed assertion); namespaces left by a killed run are removed by
//! the next run (their pid is gone). Interfaces live only inside the test's namespaces, so
//! their names and addresses cannot clash with the host's. Needs root, `ip` (iproute2) and,
//! for firewall cuts, `nft` (nftables).

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);
const PREFIX: &str = "vpt-";

/// Errors of namespace set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its error output.
        stderr: String,
    },
    /// An OS call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was done.
        what: String,
        /// Cause.
        source: io::Error,
    },
}

/// Runs a command, failing with its stderr.
pub fn run(args: &[&str]) -> Result<(), NetnsError> {
    run_input(args, None)
}

/// Runs a command with `input` on stdin.
pub fn run_input(args: &[&str], input: Option<&str>) -> Result<(), NetnsError> {
    let cmdline = args.join(" ");
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|source| NetnsError::Os {
        what: format!("spawning `{cmdline}`"),
        source,
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NetnsError::Os {
        what: format!("waiting for `{cmdline}`"),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: cmdline,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// True when this process can build namespaces (root, `ip` and `nft` present).
pub fn available() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && run(&["ip", "netns", "list"]).is_ok() && run(&["nft", "--version"]).is_ok()
}

/// Deletes namespaces of earlier runs whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with its loopback up.
    pub fn create(role: &str) -> Result<Netns, NetnsError> {
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        run(&a)
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<(), NetnsError> {
        run_input(
            &["ip", "netns", "exec", &self.name, "nft", "-f", "-"],
            Some(ruleset),
        )
    }

    /// Moves the calling thread into the namespace. Threads it starts afterwards (reactors,
    /// controller threads) are in it too; sockets it opens belong to it.
    pub fn enter(&self) -> Result<(), NetnsError> {
        let path = format!("/run/netns/{}", self.name);
        let f = std::fs::File::open(&path).map_err(|source| NetnsError::Os {
            what: format!("opening {path}"),
            source,
        })?;
        // SAFETY: setns with a valid namespace fd; affects only the calling thread.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(NetnsError::Os {
                what: format!("setns into {}", self.name),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// One network between the host and the target namespace: a veth pair and a /24.
#[derive(Debug, Clone)]
pub struct Link {
    /// Interface name on the host side.
    pub host_if: String,
    /// Interface name on the target side.
    pub target_if: String,
    /// Host address.
    pub host_addr: String,
    /// Target address (the portal).
    pub target_addr: String,
}

/// A host namespace and a target namespace joined by `n` separate networks.
#[derive(Debug)]
pub struct Fabric {
    /// The initiator's namespace.
    pub host: Netns,
    /// The target's namespace.
    pub target: Netns,
    /// The networks, one per path.
    pub links: Vec<Link>,
}

impl Fabric {
    /// Builds the namespaces and `n` networks `10.77.<i+1>.0/24` (host .1, target .2).
    pub fn build(n: usize) -> Result<Fabric, NetnsError> {
        let host = Netns::create("h")?;
        let target = Netns::create("t")?;
        let mut links = Vec::new();
        for i in 0..n {
            let l = Link {
                host_if: format!("h{i}"),
                target_if: format!("t{i}"),
                host_addr: format!("10.77.{}.1", i + 1),
                target_addr: format!("10.77.{}.2", i + 1),
            };
            run(&[
                "ip",
                "link",
                "add",
                &l.host_if,
                "netns",
                host.name(),
                "type",
                "veth",
                "peer",
                "name",
                &l.target_if,
                "netns",
                target.name(),
            ])?;
            host.ip(&[
                "addr",
                "add",
                &format!("{}/24", l.host_addr),
                "dev",
                &l.host_if,
            ])?;
            target.ip(&[
                "addr",
                "add",
                &format!("{}/24", l.target_addr),
                "dev",
                &l.target_if,
            ])?;
            host.ip(&["link", "set", &l.host_if, "up"])?;
            target.ip(&["link", "set", &l.target_if, "up"])?;
            links.push(l);
        }
        Ok(Fabric {
            host,
            target,
            links,
        })
    }

    /// Takes network `i` down (both ends) or up again.
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), NetnsError> {
        let state = if up { "up" } else { "down" };
        let l = &self.links[i];
        self.host.ip(&["link", "set", &l.host_if, state])?;
        self.target.ip(&["link", "set", &l.target_if, state])?;
        if up {
            // Addresses survive a down/up; make sure the route is back before returning.
            let _ = self.host.ip(&[
                "route",
                "replace",
                &format!("10.77.{}.0/24", i + 1),
                "dev",
                &l.host_if,
            ]);
        }
        Ok(())
    }

    /// Drops every packet of network `i` in the target namespace (no RST, no ICMP), or
    /// removes the drop.
    pub fn set_drop(&self, i: usize, drop: bool) -> Result<(), NetnsError> {
        let table = format!("vpt_drop{i}");
        if drop {
            let l = &self.links[i];
            self.target.nft(&format!(
                "table inet {table} {{\n\
                 chain in {{ type filter hook input priority -300; policy accept; ip saddr {h} drop; }}\n\
                 chain out {{ type filter hook output priority -300; policy accept; ip daddr {h} drop; }}\n\
                 }}\n",
                h = l.host_addr
            ))
        } else {
            self.target.nft(&format!("delete table inet {table}\n"))
        }
    }
}
