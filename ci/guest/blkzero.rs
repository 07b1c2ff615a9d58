//! `blkzero DEVICE OFFSET LENGTH`: asks the kernel to zero a byte range of a block device with the
//! `BLKZEROOUT` ioctl (linux/fs.h). On a virtio-blk disk that negotiated VIRTIO_BLK_F_WRITE_ZEROES
//! (virtio spec 1.2, 5.2.6 "Device Operation") the kernel sends VIRTIO_BLK_T_WRITE_ZEROES requests.
//! Busybox has no tool for this, so the vmpath test guest carries this one (built by
//! ci/guest/build.sh with plain `rustc`, statically linked, no crates).
#![allow(unsafe_code)] // one FFI call: ioctl(2) has no safe std wrapper

use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;
use std::process::ExitCode;

/// `_IO(0x12, 127)`: the argument is a pointer to `[start, length]` in bytes.
const BLKZEROOUT: std::os::raw::c_ulong = 0x127f;

extern "C" {
    fn ioctl(fd: std::os::raw::c_int, request: std::os::raw::c_ulong, ...) -> std::os::raw::c_int;
}

fn parse(name: &str, text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|e| format!("{name} '{text}' is not a byte count: {e}"))
}

fn run(args: &[String]) -> Result<(), String> {
    if args.len() != 4 {
        return Err("usage: blkzero DEVICE OFFSET LENGTH (bytes, 512-byte aligned)".into());
    }
    let offset = parse("OFFSET", &args[2])?;
    let length = parse("LENGTH", &args[3])?;
    if offset % 512 != 0 || length % 512 != 0 || length == 0 {
        return Err(format!(
            "OFFSET {offset} and LENGTH {length} must be non-zero multiples of 512"
        ));
    }
    let dev = OpenOptions::new()
        .write(true)
        .open(&args[1])
        .map_err(|e| format!("open {}: {e}", args[1]))?;
    let range: [u64; 2] = [offset, length];
    // SAFETY: `dev` keeps the descriptor open for the call; BLKZEROOUT only reads two u64 values
    // through the pointer, which points to `range`, alive and properly aligned for the call.
    let rc = unsafe { ioctl(dev.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
    if rc != 0 {
        return Err(format!(
            "BLKZEROOUT {}+{} on {}: {}",
            offset,
            length,
            args[1],
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blkzero: {e}");
            ExitCode::FAILURE
        }
    }
}
