mod common;
use common::*;
use nvmf_target::testing::Host;

#[test]
fn smoke_write_read() {
    let f = fixture();
    let mut h = Host::connect(f.addr, NQN, &opts(), 1).unwrap();
    let io = &mut h.io[0];
    let data = pattern(4096, 3);
    io.write(1, 8, &data, BS).unwrap().ok().unwrap();
    let r = io.read(1, 8, 8, BS).unwrap().ok().unwrap();
    assert_eq!(r.data, data);
}
