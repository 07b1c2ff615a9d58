//! Wire check: a loopback capture of a test session, decoded by Wireshark's NVMe/TCP
//! dissector (`tshark`), shows no malformed PDU and no dissector warning, and contains every
//! PDU type of the session. Skips (with a message) when `tshark` is not installed or cannot
//! capture on `lo`; CI installs it (`ci/setup.sh`) and runs as root.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nvmf_target::testing::Host;
use nvmf_target::TargetOptions;

fn tshark_available() -> bool {
    Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn session(f: &Fixture, hdgst: bool, ddgst: bool) {
    let mut o = opts();
    o.hdgst = hdgst;
    o.ddgst = ddgst;
    let mut h = Host::connect(f.addr, NQN, &o, 1).unwrap();
    let io = &mut h.io[0];
    let small = pattern(4096, 1);
    io.write(1, 0, &small, BS).unwrap().ok().unwrap();
    let big = pattern(32 * 1024, 2);
    io.write(1, 64, &big, BS).unwrap().ok().unwrap();
    assert_eq!(io.read(1, 0, 8, BS).unwrap().ok().unwrap().data, small);
    assert_eq!(io.read(1, 64, 64, BS).unwrap().ok().unwrap().data, big);
    h.admin.keep_alive().unwrap().ok().unwrap();
    h.admin
        .get_log(nvme_spec::LogPageId::Ana as u8, 0, 4096, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
}

#[test]
fn tshark_sees_well_formed_nvme_tcp() {
    if !tshark_available() {
        eprintln!("SKIPPED: tshark is not installed (ci/setup.sh installs it)");
        return;
    }
    // Small C2H and H2C PDUs so reads and writes span several PDUs.
    let f = fixture_with(TargetOptions {
        max_c2h_data: 8192,
        max_h2c_data: 8192,
        ..TargetOptions::default()
    });
    let port = f.addr.port();
    let dir = std::env::temp_dir().join(format!("nvmf-wire-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("session.pcapng");
    let mut cap = Command::new("tshark")
        .args(["-i", "lo", "-f", &format!("tcp port {port}"), "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the capture to start (tshark creates the file once capturing).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pcap.exists() {
        if let Some(st) = cap.try_wait().unwrap() {
            eprintln!("SKIPPED: tshark cannot capture on lo ({st}); run as root");
            return;
        }
        assert!(Instant::now() < deadline, "tshark did not start capturing");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    session(&f, false, false);
    session(&f, true, true);
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &cap.id().to_string()])
        .status();
    let st = cap.wait().unwrap();
    assert!(st.success() || st.code().is_some(), "tshark: {st:?}");

    let decode = |extra: &[&str]| {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-d", &format!("tcp.port=={port},nvme-tcp")])
            // Let the dissector verify header and data digests too.
            .args([
                "-o",
                "nvme-tcp.check_hdgst:TRUE",
                "-o",
                "nvme-tcp.check_ddgst:TRUE",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bad = decode(&[
        "-Y",
        "_ws.malformed || (nvme-tcp && _ws.expert.severity >= warning)",
        "-T",
        "fields",
        "-e",
        "frame.number",
        "-e",
        "_ws.expert.message",
    ]);
    assert!(
        bad.trim().is_empty(),
        "malformed or suspicious PDUs:\n{bad}"
    );
    let types: BTreeSet<u32> = decode(&["-Y", "nvme-tcp", "-T", "fields", "-e", "nvme-tcp.type"])
        .split(['\n', ','])
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    // ICReq, ICResp, CapsuleCmd, CapsuleResp, H2CData, C2HData, R2T.
    for t in [0u32, 1, 4, 5, 6, 7, 9] {
        assert!(
            types.contains(&t),
            "PDU type {t} not seen by the dissector: {types:?}"
        );
    }
    // The second session ran with digests, and the dissector checked them.
    let digests = decode(&[
        "-Y",
        "nvme-tcp.ddgst && nvme-tcp.hdgst",
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]);
    assert!(!digests.trim().is_empty(), "no PDU with both digests seen");
    let _ = std::fs::remove_dir_all(&dir);
}
