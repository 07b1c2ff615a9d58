//! Replays every input of the fuzz corpus (`fuzz/corpus/host_rx`) through the fuzz entry point,
//! so inputs that once crashed stay fixed. Also runs a bounded pseudo-random sweep.

use nvme_paths::fuzzing::host_rx;

#[test]
fn corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/host_rx");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus directory") {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        host_rx(&data);
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} inputs");
}

#[test]
fn mutated_corpus_inputs_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/host_rx");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let mut d = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() % d.len() as u64) as usize;
            d[i] = next() as u8;
        }
        host_rx(&d);
    }
}
