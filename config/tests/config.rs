//! Loading, error reporting and round-tripping of vmpathd configs.

use std::path::{Path, PathBuf};

use vmpath_config::{
    BdevConfig, BdevKind, Config, ConfigError, Location, MallocBdevParams, NullBdevParams,
    ReactorsConfig, RpcConfig, UringBdevParams,
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vmpath.toml")
}

/// Parses `text` and returns the error, which must be `Invalid`.
fn invalid(text: &str) -> (String, Option<Location>, String, String) {
    match Config::from_str(text, "test.toml") {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e @ ConfigError::Invalid { .. }) => {
            let shown = e.to_string();
            let ConfigError::Invalid {
                origin,
                key,
                location,
                message,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(origin, "test.toml");
            assert!(shown.starts_with("test.toml"), "{shown}");
            (key, location, message, shown)
        }
        Err(e) => panic!("expected Invalid, got {e}"),
    }
}

#[test]
fn example_config_parses() {
    let c = Config::from_file(example_path()).unwrap();
    assert_eq!(c.reactors, ReactorsConfig::default());
    assert_eq!(c.rpc.socket, Path::new("/var/tmp/vmpath.sock"));
    let names: Vec<&str> = c.bdevs.iter().map(BdevConfig::name).collect();
    assert_eq!(names, ["Malloc0", "Slow0", "Null0"]);
    let BdevConfig::Malloc(slow) = c.bdev("Slow0").unwrap() else {
        panic!("Slow0 is not malloc")
    };
    assert_eq!(slow.latency_us, 100);
    assert_eq!(slow.max_iops, 20000);
    assert_eq!(slow.max_bw_mbps, 80);
    assert_eq!(slow.size_bytes(), 128 << 20);
}

#[test]
fn example_commented_uring_block_parses() {
    // The uring table is commented out in the example; uncomment it and parse again.
    let text = std::fs::read_to_string(example_path()).unwrap();
    let start = text.find("# [[bdev]]").unwrap();
    let uncommented: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let full = format!("{}{uncommented}\n", &text[..start]);
    let c = Config::from_str(&full, "example").unwrap();
    let BdevConfig::Uring(u) = c.bdev("Uring0").unwrap() else {
        panic!("Uring0 is not uring")
    };
    assert_eq!(u.filename, "/var/tmp/vmpath-uring0.img");
    assert_eq!(u.block_size, Some(4096));
    assert!(u.direct);
}

#[test]
fn builtin_default() {
    let c = Config::default_builtin();
    assert_eq!(c.reactors.cpumask, None);
    assert_eq!(c.reactors.cores, None);
    assert_eq!(c.reactors.core_list(), Ok(None));
    assert_eq!(c.reactors.idle_sleep_us, 200);
    assert_eq!(c.rpc.socket, Path::new("/var/tmp/vmpath.sock"));
    let BdevConfig::Malloc(m) = c.bdev("Malloc0").unwrap() else {
        panic!("Malloc0 is not malloc")
    };
    assert_eq!(m.size_bytes(), 64 << 20);
    assert_eq!(m.block_size, 4096);
    assert_eq!(c.bdev("Null0").unwrap().kind(), BdevKind::Null);
    // Malloc0 is exported over NVMe/TCP on 127.0.0.1:4420.
    assert_eq!(c.nvmf_subsystems.len(), 1);
    let s = &c.nvmf_subsystems[0];
    assert_eq!(s.nqn, "nqn.2016-06.io.vmpath:cnode1");
    assert!(s.allow_any_host);
    assert_eq!(s.namespaces[0].bdev_name, "Malloc0");
    assert_eq!(s.namespaces[0].nsid, Some(1));
    assert_eq!(
        (
            s.listeners[0].traddr.as_str(),
            s.listeners[0].trsvcid.as_str()
        ),
        ("127.0.0.1", "4420")
    );
    c.validate("builtin").unwrap();
}

#[test]
fn nvmf_subsystems_load_and_report_errors() {
    let base = "[[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_blocks = 8\nblock_size = 512\n";
    let ok = format!(
        "{base}[[nvmf_subsystem]]\nnqn = \"nqn.2016-06.io.vmpath:a\"\nhosts = [\"nqn.2014-08.org.nvmexpress:uuid:1\"]\n\
         [[nvmf_subsystem.namespace]]\nbdev_name = \"M\"\nanagrpid = 3\n\
         [[nvmf_subsystem.listener]]\ntraddr = \"127.0.0.1\"\ntrsvcid = \"4421\"\nana_state = \"inaccessible\"\n"
    );
    let c = Config::from_str(&ok, "t.toml").unwrap();
    let s = &c.nvmf_subsystems[0];
    assert_eq!(s.namespaces[0].anagrpid, Some(3));
    assert_eq!(s.listeners[0].ana_state, "inaccessible");
    assert_eq!(s.listeners[0].trtype, "tcp");
    assert_eq!(
        Config::from_str(&c.to_toml_string().unwrap(), "again").unwrap(),
        c
    );
    let (key, _, msg, _) = invalid(&ok.replace("bdev_name = \"M\"", "bdev_name = \"Nope\""));
    assert_eq!(key, "nvmf_subsystem[0].namespace[0].bdev_name");
    assert!(msg.contains("Nope"), "{msg}");
    let (key, _, _, _) = invalid(&ok.replace("\"4421\"", "\"99999\""));
    assert_eq!(key, "nvmf_subsystem[0].listener[0].trsvcid");
    let (key, _, _, _) = invalid(&format!(
        "{ok}[[nvmf_subsystem]]\nnqn = \"nqn.2016-06.io.vmpath:a\"\n"
    ));
    assert_eq!(key, "nvmf_subsystem[1].nqn");
    let (key, _, _, _) = invalid(&ok.replace("anagrpid = 3", "anagroup = 3"));
    assert!(key.starts_with("nvmf_subsystem[0].namespace"), "{key}");
}

#[test]
fn host_bindings_load_round_trip_and_report_errors() {
    let nqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000bb";
    let ok = format!("[[vm]]\nname = \"vm-a\"\n[[host]]\nnqn = \"{nqn}\"\nvm = \"vm-a\"\n");
    let c = Config::from_str(&ok, "t.toml").unwrap();
    assert_eq!(c.hosts[0].nqn, nqn);
    assert_eq!(c.hosts[0].vm, "vm-a");
    assert_eq!(
        Config::from_str(&c.to_toml_string().unwrap(), "again").unwrap(),
        c
    );
    let (key, _, msg, _) = invalid(&ok.replace("vm = \"vm-a\"\n", "vm = \"vm-b\"\n"));
    assert_eq!(key, "host[0].vm");
    assert!(msg.contains("vm-b"), "{msg}");
    let (key, _, _, _) = invalid(&ok.replace(nqn, "not-an-nqn"));
    assert_eq!(key, "host[0].nqn");
    let (key, _, msg, _) = invalid(&format!("{ok}[[host]]\nnqn = \"{nqn}\"\nvm = \"vm-a\"\n"));
    assert_eq!(key, "host[1].nqn");
    assert!(msg.contains("host[0]"), "{msg}");
    let (key, _, _, _) = invalid(&format!("{ok}colour = 1\n"));
    assert!(key.starts_with("host[0]"), "{key}");
}

#[test]
fn empty_text_gives_empty_config() {
    assert_eq!(Config::from_str("", "empty").unwrap(), Config::default());
}

#[test]
fn round_trips() {
    let full = Config {
        reactors: ReactorsConfig {
            cpumask: None,
            cores: Some(vec![0, 2]),
            idle_sleep_us: 0,
        },
        rpc: RpcConfig {
            socket: "/run/vmpath/x.sock".into(),
        },
        bdevs: vec![
            BdevConfig::Malloc(MallocBdevParams {
                name: "M".into(),
                uuid: Some("8d5e5a3c-1f2d-4c5e-9a7b-1234567890ab".into()),
                num_blocks: 3,
                block_size: 512,
                latency_us: 7,
                max_iops: 8,
                max_bw_mbps: 9,
            }),
            BdevConfig::Null(NullBdevParams {
                name: "N".into(),
                uuid: Some("00000000-0000-0000-0000-00000000000a".into()),
                num_blocks: 1 << 40,
                block_size: 4096,
                latency_us: 1,
                max_iops: 2,
                max_bw_mbps: 3,
            }),
            BdevConfig::Uring(UringBdevParams {
                name: "U".into(),
                filename: "/dev/sdz".into(),
                block_size: Some(4096),
                uuid: None,
                direct: false,
            }),
            BdevConfig::Uring(UringBdevParams {
                name: "U2".into(),
                filename: "/tmp/file with spaces".into(),
                block_size: None,
                uuid: Some("8d5e5a3c-1f2d-4c5e-9a7b-1234567890ac".into()),
                direct: true,
            }),
        ],
        ..Config::default()
    };
    let mask = Config {
        reactors: ReactorsConfig {
            cpumask: Some("[0,2-3]".into()),
            ..ReactorsConfig::default()
        },
        ..Config::default()
    };
    let example = Config::from_file(example_path()).unwrap();
    for c in [
        Config::default_builtin(),
        Config::default(),
        full,
        mask,
        example,
    ] {
        let text = c.to_toml_string().unwrap();
        let back =
            Config::from_str(&text, "saved").unwrap_or_else(|e| panic!("{e}\n--- text:\n{text}"));
        assert_eq!(back, c, "text:\n{text}");
    }
}

#[test]
fn config_is_also_json() {
    let c = Config::default_builtin();
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains(r#""type":"malloc""#), "{json}");
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    // JSON goes through the same checks.
    let bad = json.replace("4096", "1000");
    let e = serde_json::from_str::<Config>(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("block_size: must be 512 or 4096, got 1000"),
        "{e}"
    );
}

#[test]
fn missing_file() {
    let e = Config::from_file("/nonexistent/vmpath.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/vmpath.toml"), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");
}

#[test]
fn file_name_in_errors() {
    let dir = std::env::temp_dir().join(format!("vmpath-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[rpc]\nsocket = 3\n").unwrap();
    let e = Config::from_file(&path).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        e.starts_with(&format!("{}:2:10: rpc.socket: ", path.display())),
        "{e}"
    );
}

#[test]
fn syntax_error() {
    let (key, loc, msg, _) = invalid("[reactors]\nidle_sleep_us = = 3\n");
    assert_eq!(key, "");
    assert_eq!(loc.unwrap().line, 2);
    assert!(!msg.is_empty());
    let (_, loc, msg, _) = invalid("[[bdev]]\nname = \"a\"\nname = \"b\"\n");
    assert_eq!(loc.unwrap().line, 3);
    assert!(msg.contains("duplicate key"), "{msg}");
}

#[test]
fn unknown_fields() {
    let (key, loc, msg, _) = invalid("[rpc]\nsocket = \"/x\"\n\n[reactor]\ncores = [0]\n");
    assert_eq!(key, "reactor");
    assert_eq!(loc.unwrap().line, 4);
    assert!(msg.contains("unknown field `reactor`"), "{msg}");
    assert!(msg.contains("`reactors`"), "{msg}");

    let (key, loc, msg, _) = invalid("[reactors]\nidle_sleep = 5\n");
    assert_eq!(key, "reactors.idle_sleep");
    assert_eq!(loc.unwrap().line, 2);
    assert!(msg.contains("unknown field `idle_sleep`"), "{msg}");

    let text = "[[bdev]]\ntype = \"null\"\nname = \"N\"\nnum_blocks = 1\nblock_size = 512\n\
                [[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_block = 1\nblock_size = 512\n";
    let (key, loc, msg, shown) = invalid(text);
    assert_eq!(key, "bdev[1].num_block");
    assert_eq!(loc.unwrap().line, 9);
    assert!(msg.contains("unknown field `num_block`"), "{msg}");
    assert!(
        shown.starts_with("test.toml:9:1: bdev[1].num_block: unknown field"),
        "{shown}"
    );
}

#[test]
fn field_of_another_bdev_type() {
    let text = "[[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_blocks = 1\nblock_size = 512\n\
                filename = \"/tmp/x\"\n";
    let (key, loc, msg, _) = invalid(text);
    assert_eq!(key, "bdev[0].filename");
    assert_eq!(loc.unwrap().line, 6);
    assert!(msg.contains("not a parameter of malloc bdevs"), "{msg}");

    let text = "[[bdev]]\ntype = \"uring\"\nname = \"U\"\nfilename = \"/x\"\nmax_iops = 5\n";
    let (key, _, msg, _) = invalid(text);
    assert_eq!(key, "bdev[0].max_iops");
    assert!(msg.contains("not a parameter of uring bdevs"), "{msg}");
}

#[test]
fn missing_fields() {
    let (key, _, msg, _) = invalid("[[bdev]]\ntype = \"malloc\"\nname = \"M\"\nblock_size = 512\n");
    assert_eq!(key, "bdev[0].num_blocks");
    assert_eq!(msg, "required for malloc bdevs");
    let (key, _, msg, _) = invalid("[[bdev]]\ntype = \"uring\"\nname = \"U\"\n");
    assert_eq!(key, "bdev[0].filename");
    assert_eq!(msg, "required for uring bdevs");
    let (key, _, msg, _) = invalid("[[bdev]]\nname = \"U\"\n");
    assert_eq!(key, "bdev[0]");
    assert!(msg.contains("missing field `type`"), "{msg}");
    let (key, _, msg, _) = invalid("[[bdev]]\ntype = \"null\"\nnum_blocks = 1\nblock_size = 512\n");
    assert_eq!(key, "bdev[0]");
    assert!(msg.contains("missing field `name`"), "{msg}");
}

#[test]
fn wrong_types() {
    let text =
        "[[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_blocks = \"many\"\nblock_size = 512\n";
    let (key, loc, msg, shown) = invalid(text);
    assert_eq!(key, "bdev[0].num_blocks");
    assert_eq!(
        loc,
        Some(Location {
            line: 4,
            column: 14
        })
    );
    assert!(msg.contains("invalid type: string"), "{msg}");
    assert!(
        shown.starts_with("test.toml:4:14: bdev[0].num_blocks: invalid type"),
        "{shown}"
    );

    let (key, loc, msg, _) = invalid("[reactors]\ncores = \"0,1\"\n");
    assert_eq!(key, "reactors.cores");
    assert_eq!(loc.unwrap().line, 2);
    assert!(msg.contains("expected a sequence"), "{msg}");

    let (key, _, msg, _) =
        invalid("[[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_blocks = -1\nblock_size = 512\n");
    assert_eq!(key, "bdev[0].num_blocks");
    assert!(msg.contains("-1"), "{msg}");

    let (key, _, msg, _) = invalid("[[bdev]]\ntype = \"disk\"\nname = \"D\"\n");
    assert_eq!(key, "bdev[0].type");
    assert!(msg.contains("unknown variant `disk`"), "{msg}");

    let (key, _, _, _) = invalid("rpc = 5\n");
    assert_eq!(key, "rpc");
}

#[test]
fn bad_values() {
    let text = "[[bdev]]\ntype = \"null\"\nname = \"N\"\nnum_blocks = 1\nblock_size = 512\n\
                [[bdev]]\ntype = \"null\"\nname = \"N1\"\nnum_blocks = 1\nblock_size = 512\n\
                [[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_blocks = 8\nblock_size = 1000\n";
    let (key, loc, msg, shown) = invalid(text);
    assert_eq!(key, "bdev[2].block_size");
    assert_eq!(msg, "must be 512 or 4096, got 1000");
    assert_eq!(
        loc,
        Some(Location {
            line: 15,
            column: 14
        })
    );
    assert_eq!(
        shown,
        "test.toml:15:14: bdev[2].block_size: must be 512 or 4096, got 1000"
    );

    let (key, _, _, _) =
        invalid("[[bdev]]\ntype = \"null\"\nname = \"N\"\nnum_blocks = 0\nblock_size = 512\n");
    assert_eq!(key, "bdev[0].num_blocks");
    let (key, _, _, _) =
        invalid("[[bdev]]\ntype = \"null\"\nname = \"\"\nnum_blocks = 1\nblock_size = 512\n");
    assert_eq!(key, "bdev[0].name");
    let (key, _, _, _) = invalid("[[bdev]]\ntype = \"null\"\nname = \"N\"\nnum_blocks = 1\nblock_size = 512\nlatency_us = 99999999\n");
    assert_eq!(key, "bdev[0].latency_us");
    let (key, _, _, _) = invalid("[[bdev]]\ntype = \"uring\"\nname = \"U\"\nfilename = \"\"\n");
    assert_eq!(key, "bdev[0].filename");
    let (key, _, msg, _) = invalid(&format!("[rpc]\nsocket = \"/{}\"\n", "s".repeat(200)));
    assert_eq!(key, "rpc.socket");
    assert!(msg.contains("107 bytes"), "{msg}");
    let (key, _, _, _) = invalid("[reactors]\nidle_sleep_us = 20000000\n");
    assert_eq!(key, "reactors.idle_sleep_us");
}

#[test]
fn bad_cpumask_and_cores() {
    let (key, loc, msg, _) = invalid("[reactors]\ncpumask = \"0xq\"\n");
    assert_eq!(key, "reactors.cpumask");
    assert_eq!(
        loc,
        Some(Location {
            line: 2,
            column: 11
        })
    );
    assert!(msg.contains("'q' is not a hex digit"), "{msg}");
    let (key, _, msg, _) = invalid("[reactors]\ncpumask = \"0x0\"\n");
    assert_eq!(key, "reactors.cpumask");
    assert!(msg.contains("selects no core"), "{msg}");
    let (key, _, msg, _) = invalid("[reactors]\ncpumask = \"0x1\"\ncores = [0]\n");
    assert_eq!(key, "reactors.cores");
    assert!(msg.contains("not both"), "{msg}");
    let (key, _, msg, _) = invalid("[reactors]\ncores = [1, 0, 1]\n");
    assert_eq!(key, "reactors.cores");
    assert!(msg.contains("core 1 is listed twice"), "{msg}");
    let (key, _, _, _) = invalid("[reactors]\ncores = []\n");
    assert_eq!(key, "reactors.cores");

    let c = Config::from_str("[reactors]\ncpumask = \"0x5\"\n", "t").unwrap();
    assert_eq!(c.reactors.core_list(), Ok(Some(vec![0, 2])));
    let c = Config::from_str("[reactors]\ncores = [3, 1]\n", "t").unwrap();
    assert_eq!(c.reactors.core_list(), Ok(Some(vec![1, 3])));
}

#[test]
fn duplicate_bdev_names() {
    let text = "[[bdev]]\ntype = \"malloc\"\nname = \"Disk\"\nnum_blocks = 1\nblock_size = 512\n\n\
                [[bdev]]\ntype = \"null\"\nname = \"Disk\"\nnum_blocks = 1\nblock_size = 512\n";
    let (key, loc, msg, _) = invalid(text);
    assert_eq!(key, "bdev[1].name");
    assert_eq!(loc.unwrap().line, 9);
    assert_eq!(
        msg,
        "duplicate bdev name \"Disk\" (already used by bdev[0])"
    );

    // The same check for configs built in code.
    let mut c = Config::default_builtin();
    c.bdevs.push(c.bdevs[0].clone());
    let e = c.validate("running state").unwrap_err().to_string();
    assert_eq!(
        e,
        "running state: bdev[2].name: duplicate bdev name \"Malloc0\" (already used by bdev[0])"
    );
}

const VM_SECTIONS: &str = r#"
[[bdev]]
type = "malloc"
name = "Malloc0"
num_blocks = 1024
block_size = 4096

[scheduler]
migrate_window_ms = 500

[[path]]
name = "local0"
bdev = "Malloc0"
capacity_iops = 100000
capacity_mbps = 1000

[[vm]]
name = "vm-a"
shares = 2000
reservation = { iops = 5000 }
limit = { iops = 50000, mbps = 400 }
path_policy = { selector = "least-queue-depth", affinity = ["local0"] }
failover = "suspend"

[[vm]]
name = "vm-b"

[[volume]]
name = "vm-a-disk"
vm = "vm-a"
paths = ["local0"]
num_blocks = 512

[hooks]
vm_migrate = "logger vmpath migrate $VMPATH_VM"
"#;

#[test]
fn vm_path_and_volume_sections_parse_and_round_trip() {
    let c = Config::from_str(VM_SECTIONS, "vms.toml").unwrap();
    assert_eq!(c.paths.len(), 1);
    assert_eq!(c.vms.len(), 2);
    assert_eq!(c.vms[0].shares, 2000);
    assert_eq!(c.vms[0].reservation.iops, Some(5000));
    assert_eq!(c.vms[1].shares, 1000);
    assert_eq!(c.volumes[0].num_blocks, Some(512));
    assert_eq!(c.scheduler.as_ref().unwrap().migrate_window_ms, 500);
    assert!(c.hooks.vm_migrate.as_deref().unwrap().contains("VMPATH_VM"));
    let text = c.to_toml_string().unwrap();
    assert_eq!(Config::from_str(&text, "saved").unwrap(), c, "{text}");
}

#[test]
fn vm_section_errors_name_the_field() {
    let cases = [
        ("shares = 2000", "shares = 0", "vm[0].shares"),
        ("vm = \"vm-a\"", "vm = \"vm-z\"", "volume[0].vm"),
        (
            "paths = [\"local0\"]",
            "paths = [\"nope\"]",
            "volume[0].paths",
        ),
        (
            "affinity = [\"local0\"]",
            "affinity = [\"nope\"]",
            "vm[0].path_policy.affinity",
        ),
        (
            "capacity_iops = 100000",
            "capacity_iops = 0",
            "path[0].capacity_iops",
        ),
        (
            "failover = \"suspend\"",
            "failover = \"explode\"",
            "vm[0].failover",
        ),
        (
            "migrate_window_ms = 500",
            "migrate_windw_ms = 500",
            "scheduler",
        ),
        ("name = \"vm-b\"", "name = \"vm-a\"", "vm[1].name"),
    ];
    for (from, to, key) in cases {
        assert!(VM_SECTIONS.contains(from), "{from}");
        let text = VM_SECTIONS.replace(from, to);
        let e = Config::from_str(&text, "vms.toml").unwrap_err().to_string();
        assert!(e.contains("vms.toml"), "{e}");
        assert!(e.contains(key), "expected {key} in: {e}");
    }
}
