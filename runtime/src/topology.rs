//! CPU cores and NUMA nodes: which cores reactors run on by default and where they are.
//!
//! With the `hwloc` feature the topology comes from hwloc (hwlocality); without it, from
//! Linux sysfs (`/sys/devices/system/node/node*/cpulist`). Either way the *default* set of
//! reactor cores is the CPU set the process was started with (`sched_getaffinity`), so
//! `taskset -c 0 vmpathd` runs exactly one reactor, on core 0.

use std::io;

/// One logical CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreInfo {
    /// OS index of the logical CPU.
    pub cpu: usize,
    /// NUMA node it belongs to (0 if unknown).
    pub numa_node: usize,
}

/// The machine's logical CPUs and the process's CPU set.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Every logical CPU the OS reports, ascending.
    pub cores: Vec<CoreInfo>,
    /// The CPUs this process may run on, ascending.
    pub allowed: Vec<usize>,
    /// Where the facts came from ("hwloc" or "sysfs").
    pub source: &'static str,
}

/// Errors reading the topology or resolving a core list.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// sched_getaffinity failed.
    #[error("cannot read the process CPU set: {0}")]
    Affinity(#[source] io::Error),
    /// A requested core is not in the process CPU set.
    #[error("core {core} is not available to this process (allowed cores: {allowed:?})")]
    CoreNotAllowed {
        /// The requested core.
        core: usize,
        /// The process's CPU set.
        allowed: Vec<usize>,
    },
    /// An empty core list was requested.
    #[error("no cores selected")]
    Empty,
}

impl Topology {
    /// Discovers the topology of this machine.
    pub fn discover() -> Result<Topology, TopologyError> {
        let allowed = crate::sys::process_cpus().map_err(TopologyError::Affinity)?;
        #[cfg(feature = "hwloc")]
        if let Some(cores) = hwloc_cores() {
            return Ok(Topology {
                cores,
                allowed,
                source: "hwloc",
            });
        }
        let cores = sysfs_cores(&allowed);
        Ok(Topology {
            cores,
            allowed,
            source: "sysfs",
        })
    }

    /// NUMA node of `cpu` (0 if unknown).
    pub fn numa_node_of(&self, cpu: usize) -> usize {
        self.cores
            .iter()
            .find(|c| c.cpu == cpu)
            .map(|c| c.numa_node)
            .unwrap_or(0)
    }

    /// Checks a requested core list against the process CPU set; `None` selects the default
    /// (every allowed CPU).
    pub fn resolve(&self, requested: Option<&[usize]>) -> Result<Vec<usize>, TopologyError> {
        match requested {
            None => {
                if self.allowed.is_empty() {
                    Err(TopologyError::Empty)
                } else {
                    Ok(self.allowed.clone())
                }
            }
            Some([]) => Err(TopologyError::Empty),
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for &core in list {
                    if !self.allowed.contains(&core) {
                        return Err(TopologyError::CoreNotAllowed {
                            core,
                            allowed: self.allowed.clone(),
                        });
                    }
                    if !out.contains(&core) {
                        out.push(core);
                    }
                }
                Ok(out)
            }
        }
    }
}

fn parse_cpulist(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.push(v);
                }
            }
        }
    }
    out
}

fn sysfs_cores(allowed: &[usize]) -> Vec<CoreInfo> {
    let mut cores: Vec<CoreInfo> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/devices/system/node") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(node) = name
                .strip_prefix("node")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if let Ok(list) = std::fs::read_to_string(e.path().join("cpulist")) {
                for cpu in parse_cpulist(&list) {
                    cores.push(CoreInfo {
                        cpu,
                        numa_node: node,
                    });
                }
            }
        }
    }
    if cores.is_empty() {
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|t| parse_cpulist(&t))
            .unwrap_or_else(|_| allowed.to_vec());
        cores = online
            .into_iter()
            .map(|cpu| CoreInfo { cpu, numa_node: 0 })
            .collect();
    }
    cores.sort_by_key(|c| c.cpu);
    cores.dedup_by_key(|c| c.cpu);
    cores
}

#[cfg(feature = "hwloc")]
fn hwloc_cores() -> Option<Vec<CoreInfo>> {
    use hwlocality::object::types::ObjectType;
    use hwlocality::Topology as HwTopology;
    let topo = HwTopology::new().ok()?;
    let mut cores = Vec::new();
    for pu in topo.objects_with_type(ObjectType::PU) {
        let cpu = pu.os_index()?;
        let numa_node = pu
            .ancestors()
            .find_map(|a| a.nodeset().and_then(|ns| ns.first_set()).map(usize::from))
            .unwrap_or(0);
        cores.push(CoreInfo { cpu, numa_node });
    }
    cores.sort_by_key(|c| c.cpu);
    Some(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulist_parsing() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpulist(""), Vec::<usize>::new());
    }

    #[test]
    fn discover_and_resolve() {
        let t = Topology::discover().unwrap();
        #[cfg(feature = "hwloc")]
        assert_eq!(t.source, "hwloc");
        assert!(!t.allowed.is_empty());
        for cpu in &t.allowed {
            assert!(t.cores.iter().any(|c| c.cpu == *cpu), "cpu {cpu} missing");
        }
        assert!(!t.cores.is_empty());
        assert_eq!(t.resolve(None).unwrap(), t.allowed);
        let first = t.allowed[0];
        assert_eq!(t.resolve(Some(&[first, first])).unwrap(), vec![first]);
        assert!(matches!(
            t.resolve(Some(&[100_000])),
            Err(TopologyError::CoreNotAllowed { core: 100_000, .. })
        ));
        assert!(matches!(t.resolve(Some(&[])), Err(TopologyError::Empty)));
    }
}
