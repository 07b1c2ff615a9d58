//! Shared fixture: a runtime with two reactors, a target with one subsystem exporting a
//! malloc and a null namespace on a loopback portal with a kernel-chosen port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nvme_spec::AnaState;
use nvmf_target::testing::InitiatorOptions;
use nvmf_target::*;
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::null::NullBdev;
use vmpath_bdev::BlockDevice;
use vmpath_runtime::{Runtime, RuntimeConfig};

pub const NQN: &str = "nqn.2016-06.io.vmpath:test";
pub const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
pub const BS: u32 = 512;
pub const BLOCKS: u64 = 8192;

pub struct Fixture {
    pub target: Target,
    pub addr: SocketAddr,
    pub malloc: Arc<dyn BlockDevice>,
    pub runtime: Option<Runtime>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.target.shutdown(Duration::from_secs(5));
        if let Some(rt) = self.runtime.take() {
            rt.shutdown();
        }
    }
}

pub fn runtime() -> Runtime {
    Runtime::start(RuntimeConfig {
        cores: None,
        idle_sleep_ns: 1_000_000,
        max_sleep_ns: 50_000_000,
        pin: false,
        stop_grace: Duration::from_secs(5),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

pub fn fixture_with(opts: TargetOptions) -> Fixture {
    let rt = runtime();
    let target = Target::new(opts, rt.handles().to_vec()).expect("target");
    target
        .create_subsystem(SubsystemParams {
            nqn: NQN.into(),
            serial: "VMPATH-TEST-1".into(),
            model: "vmpath test".into(),
            allow_any_host: true,
            hosts: vec![],
        })
        .unwrap();
    let malloc: Arc<dyn BlockDevice> =
        Arc::new(MallocBdev::new("Malloc0", BLOCKS, BS, Default::default()).unwrap());
    let null: Arc<dyn BlockDevice> =
        Arc::new(NullBdev::new("Null0", 1 << 20, 4096, Default::default()).unwrap());
    assert_eq!(
        target
            .add_namespace(
                NQN,
                NamespaceParams {
                    bdev: malloc.clone(),
                    nsid: Some(1),
                    anagrpid: None
                }
            )
            .unwrap(),
        1
    );
    assert_eq!(
        target
            .add_namespace(
                NQN,
                NamespaceParams {
                    bdev: null,
                    nsid: Some(2),
                    anagrpid: Some(2)
                }
            )
            .unwrap(),
        2
    );
    let l = target
        .add_listener(NQN, &ListenAddr::new("127.0.0.1", "0"), AnaState::Optimized)
        .unwrap();
    let addr = l.socket_addr().unwrap();
    Fixture {
        target,
        addr,
        malloc,
        runtime: Some(rt),
    }
}

pub fn fixture() -> Fixture {
    fixture_with(TargetOptions::default())
}

pub fn opts() -> InitiatorOptions {
    InitiatorOptions {
        timeout: Duration::from_secs(5),
        ..InitiatorOptions::default()
    }
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}
